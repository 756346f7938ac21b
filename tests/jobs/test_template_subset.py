"""The Jinja2 subset renderer writes what Jinja2 writes, or declines.

Every case renders the same template and context through :mod:`hpcenv.jobs.template_subset`
and through Jinja2 (the job environment's settings) and compares the text byte for byte.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hpcenv.jobs import template_subset
from hpcenv.jobs.templates import (
    FILTERS,
    JobScript,
    _render_with_jinja2,
    job_context,
    render_job_script,
    template_dirs,
)
from hpcenv.scheduler.job_options import JobOptions

STAGE = {"shared_prefix": "/shared/envs/x 1", "pack": "/packs/x.tar.zst", "build": "x-1-abc",
         "bytes": "1048576", "python": "bin/python3", "decompress": "zstd",
         "root": "/local/$USER"}
COMMANDS = (("python", "train.py"), ("bash", "-c", "echo $(id) 'q' \"d\"\nnext line"),
            ("./run", "ünïcode", "", "--flag=a b"))


def _jobs() -> list[tuple[JobScript, dict[str, object] | None]]:
    cases = []
    for command, launcher, nodes, version, stage, sbatch in itertools.product(
            COMMANDS, ("activate", "conda-run"), (None, "2"), (None, "3"),
            (False, True), ({}, {"partition": "gpu", "time": "1:00:00", "mem": "4G"})):
        options = JobOptions(job_name="t", nodes=nodes, **sbatch)  # type: ignore[arg-type]
        job = JobScript(options=options, launcher=launcher, command=command,  # type: ignore[arg-type]
                        prefix=Path("/shared/envs/x 1"), env_name="demo\nname",
                        env_version=version, conda_exe="/opt/conda/bin/conda",
                        activation="export PATH=/shared/envs/x/bin:$PATH\n")
        cases.append((job, {"stage": STAGE} if stage else None))
    return cases


@pytest.mark.parametrize("job, extra", _jobs())
def test_the_shipped_templates_render_as_jinja2_renders_them(
        job: JobScript, extra: dict[str, object] | None) -> None:
    dirs = template_dirs(None)
    context = job_context(job, extra)
    text = template_subset.render("job.sh.j2", dirs, context, FILTERS)
    assert text is not None  # the shipped templates keep to the subset
    assert text == _render_with_jinja2("job.sh.j2", dirs, context, None)


# Templates a site might write, each inside the subset, for the whitespace rules above all:
# block and comment tags alone on a line or mid-line, indented, at the start and the end,
# nested, with and without a final newline.
SITE_TEMPLATES = [
    "plain text, no tags\n",
    "no final newline {{ name }}",
    "{{ name }}\n{{ name|quote }} {{ name | quote | comment }}\n",
    "{% if flag %}yes{% else %}no{% endif %}\n",
    "{% if flag %}\nyes\n{% else %}\nno\n{% endif %}\nafter\n",
    "  {% if flag %}\n    indented {{ name }}\n  {% endif %}\n",
    "a {% if flag %}b{% endif %} c\n  {# a comment #}\nd\n",
    "{# comment\n   over lines #}\nfirst\n\t{# tabbed #}\nsecond\n",
    "{% for x in items %}{{ x }}{% if not loop.last %}, {% endif %}{% endfor %}\n",
    "{% for x in items %}\n  - {{ loop.index }}/{{ loop.length }} {{ x }}{% if loop.first %}"
    " first{% endif %}\n{% else %}\nnone\n{% endfor %}\n",
    "{% for x in empty %}\n{{ x }}\n{% else %}\n  nothing\n{% endfor %}\n",
    "{% for x in items %}\n  {% for y in items %}\n    {{ x }}{{ y }}\n  {% endfor %}\n"
    "{% endfor %}\n",
    "{% if mode == \"a\" %}A{% elif mode != 'b' %}not b{% else %}B{% endif %}\n",
    "{% if not flag and mode == \"a\" or missing is defined %}x{% endif %}\n",
    "{% if missing is not defined %}no missing{% endif %}\n",
    "{% if info.key is defined %}{{ info.key }}{% endif %}{% if info.nope is defined %}?"
    "{% endif %}\n",
    "{{ info.key }} {{ info.items }}\n",
    "{% include \"part.j2\" %}between\n{% include 'part.j2' %}",
    "{% for x in items %}{% include \"part.j2\" %}{% endfor %}",
    "line {{ name }} {% if flag %}\n  still\n{% endif %}end\n",
    "}} %} #} alone are text\n",
    "\n\n{% if flag %}\n\n{% endif %}\n\n",
    "   {% if flag %}   x   {% endif %}   \n",
    "windows\r\n  {% if flag %}\r\nline ends {{ name }}\r\n{% endif %}\r\n",
]
CONTEXTS = [
    {"name": "a b", "flag": True, "items": ["1", "2", "3"], "empty": [], "mode": "a",
     "info": {"key": "v"}},
    {"name": "$(x)", "flag": False, "items": ["only"], "empty": (), "mode": "c",
     "info": {"key": ""}},
]
PART = "{% if flag %}  part {{ name }}\n{% endif %}"


@pytest.mark.parametrize("source", SITE_TEMPLATES)
def test_site_templates_in_the_subset_render_as_jinja2_renders_them(source: str,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text(source)
    (tmp_path / "part.j2").write_text(PART)
    for context in CONTEXTS:
        context = {**context, "loop_var_seen_by_include": True}
        scope = {**context, "x": "loop value"} if "include" in source else context
        text = template_subset.render("t.j2", [tmp_path], scope, FILTERS)
        assert text is not None, source
        assert text == _render_with_jinja2("t.j2", [tmp_path], scope, None), source


@pytest.mark.parametrize("source", [
    "{{ name | upper }}",                      # one of Jinja2's own filters
    "{%- if flag %}x{% endif %}",              # whitespace control
    "{% if flag %}x{% endif -%}",
    "{% set y = 1 %}{{ y }}",                  # a tag outside the subset
    "{% raw %}{{ x }}{% endraw %}",
    "{{ name ~ 'x' }}",                        # an expression outside the subset
    "{{ undefined_name }}",                    # StrictUndefined: Jinja2 raises, and says where
    "{% if undefined_name %}x{% endif %}",
    "{{ info.nope }}",
    "{% if flag %}never closed",
    "{% if flag %}a{% else %}b{% else %}c{% endif %}",
    "{% for x in items %}a{% else %}b{% else %}c{% endfor %}",
    "{% if flag %}a{% endfor %}",
    "{% for x in flag %}{{ x }}{% endfor %}",  # not iterable
    "{{ name",
    "{{# a comment #}",                        # Jinja2 reads "{{" first: a syntax error
    "{% if flag %}{{% endif %}",
    "text {{{ name }}",
    "{% include 'no-such.j2' %}",
    "{% include '../t.j2' %}",
])
def test_templates_outside_the_subset_are_left_to_jinja2(source: str, tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text(source)
    assert template_subset.render("t.j2", [tmp_path], CONTEXTS[0], FILTERS) is None


def test_a_site_template_outside_the_subset_still_renders(tmp_path: Path) -> None:
    (tmp_path / "sbatch_header.sh.j2").write_text(
        "{% for line in sbatch %}#SBATCH {{ line | trim }}\n{% endfor %}#SBATCH --comment=site\n")
    job = JobScript(JobOptions(job_name="t"), "activate", ("true",), Path("/p"), "demo")
    text = render_job_script(job, templates_dir=tmp_path)
    assert "#SBATCH --comment=site\n" in text and "#SBATCH --job-name=t\n" in text


def test_rendering_the_shipped_templates_does_not_import_jinja2(tmp_path: Path) -> None:
    code = ("import json, sys; from pathlib import Path; "
            "from hpcenv.jobs.templates import JobScript, render_job_script; "
            "from hpcenv.scheduler.job_options import JobOptions; "
            "render_job_script(JobScript(JobOptions(job_name='t'), 'activate', ('true',), "
            "Path('/p'), 'demo')); print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "jinja2" not in json.loads(result.stdout)


# --------------------------------------------------------------------------- random templates

_FUZZ_NAMES = ("a", "b", "flag", "items", "empty", "info", "none_v", "zero", "missing", "text",
               "num", "u", "opts")
_FUZZ_TEXT = ("", " ", "  ", "\n", "\t", " \n", "\n\n", "x", "y\n", "  z  ", "\r\n", "\r",
              " \r\n ", "é\n", "{", "}", "%", "#")
_FUZZ_CONTEXT = {"a": "x y", "b": "", "flag": True, "items": ["p", "q r", ""], "empty": [],
                 "info": {"key": "v", "n": 0}, "none_v": None, "zero": 0,
                 "text": "it's \"q\"\n$x", "num": 3, "u": "ünï\r\nx",
                 "opts": JobOptions(job_name="j", partition="gpu")}


def _fuzz_condition(r: random.Random, depth: int = 0) -> str:
    name = r.choice(_FUZZ_NAMES) + r.choice(("", "", "", ".key", ".n", ".nope", ".partition"))
    roll = r.random()
    if roll < 0.25 and depth < 2:
        return (r.choice(("not ", "")) + _fuzz_condition(r, depth + 1)
                + r.choice((" and ", " or ")) + _fuzz_condition(r, depth + 1))
    if roll < 0.4:
        return name + r.choice((' == "v"', " != 'x y'", ' == ""', " is defined",
                                " is not defined"))
    return r.choice(("not ", "")) + name


def _fuzz_block(r: random.Random, depth: int = 0) -> str:
    parts = []
    for _ in range(r.randint(1, 4)):
        roll = r.random()
        if roll < 0.35:
            parts.append(r.choice(_FUZZ_TEXT))
        elif roll < 0.6:
            value = r.choice(_FUZZ_NAMES + ("info.key", "opts.job_name", "loop.index",
                                            "loop.first", "loop.last", "loop.length"))
            spaces = r.choice(("", " "))
            parts.append("{{" + spaces + value + r.choice(("", " | quote", "|quote", " | comment",
                                                          " | quote | comment", " | upper"))
                         + spaces + "}}")
        elif roll < 0.7:
            parts.append("{# c #}" + r.choice(("", "\n")))
        elif roll < 0.85 and depth < 3:
            branch = (r.choice(("", "  ", "\t")) + "{% if " + _fuzz_condition(r) + " %}"
                      + r.choice(("", "\n")) + _fuzz_block(r, depth + 1))
            if r.random() < 0.4:
                branch += ("{% elif " + _fuzz_condition(r) + " %}" + r.choice(("", "\n"))
                           + _fuzz_block(r, depth + 1))
            if r.random() < 0.5:
                branch += "{% else %}" + r.choice(("", "\n")) + _fuzz_block(r, depth + 1)
            parts.append(branch + r.choice(("", "  ")) + "{% endif %}" + r.choice(("", "\n")))
        elif depth < 3:
            loop = (r.choice(("", "  ")) + "{% for x in "
                    + r.choice(("items", "empty", "text", "num", "info", "a", "none_v")) + " %}"
                    + r.choice(("", "\n")) + _fuzz_block(r, depth + 1)
                    + r.choice(("{{ x }}", "{{ x|quote }}", "")))
            if r.random() < 0.3:
                loop += "{% else %}" + _fuzz_block(r, depth + 1)
            parts.append(loop + "{% endfor %}" + r.choice(("", "\n")))
    return "".join(parts)


def test_random_templates_render_as_jinja2_renders_them_or_not_at_all(tmp_path: Path) -> None:
    """Whatever the subset renders, Jinja2 renders to the same bytes; whatever Jinja2 refuses
    (a syntax error, an undefined name), the subset leaves to it.  A fixed seed: the same
    3,000 templates every run."""
    r = random.Random(20261206)
    rendered = 0
    for i in range(3000):
        source = _fuzz_block(r) + r.choice(("", "\n"))
        (tmp_path / f"t{i}.j2").write_text(source)
        text = template_subset.render(f"t{i}.j2", [tmp_path], _FUZZ_CONTEXT, FILTERS)
        if text is None:
            continue
        rendered += 1
        assert text == _render_with_jinja2(f"t{i}.j2", [tmp_path], _FUZZ_CONTEXT, None), source
    assert rendered > 500  # the generator stays mostly inside the subset
