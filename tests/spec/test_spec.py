"""Environment-file parsing, match specs, normalisation, content hash and env-name rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcenv.errors import InvalidInput
from hpcenv.spec.environment import (
    EnvSpec,
    MatchSpec,
    canonical_conda_spec,
    canonical_pip_line,
    is_variable_name,
    load_spec,
    parse_match_spec,
    parse_spec,
    split_pip_option,
)
from hpcenv.spec.names import validate_env_name
from hpcenv.spec.pip_lines import pip_line_problem

BASIC = """\
name: demo
channels:
  - conda-forge
  - nvidia
dependencies:
  - python >= 3.10
  - numpy=1.26
  - pip
  - pip:
      - --extra-index-url https://wheels.example.org/simple
      - requests==2.31
      - tqdm
variables:
  OMP_NUM_THREADS: 4
  EMPTY:
"""


# --- match specs -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("numpy", MatchSpec("numpy")),
    ("python=3.10", MatchSpec("python", "=3.10")),
    ("python==3.10.4", MatchSpec("python", "==3.10.4")),
    ("python >= 3.8", MatchSpec("python", ">=3.8")),
    ("python>=3.8, < 3.10", MatchSpec("python", ">=3.8,<3.10")),
    ("python = 3.9", MatchSpec("python", "=3.9")),
    ("python ~=3.7", MatchSpec("python", "~=3.7")),
    ("pandoc=<2.0.0", MatchSpec("pandoc", "=<2.0.0")),
    ("cupy>=6.6.0,<8.0.0a0,!=7.1.0", MatchSpec("cupy", ">=6.6.0,<8.0.0a0,!=7.1.0")),
    ("python 3.10.*", MatchSpec("python", "3.10.*")),
    ("arrow-cpp-proc * cuda", MatchSpec("arrow-cpp-proc", "*", "cuda")),
    ("pytorch=1.7.1=py3.7_cuda11.0.221_cudnn8.0.5_0",
     MatchSpec("pytorch", "=1.7.1", "py3.7_cuda11.0.221_cudnn8.0.5_0")),
    ("cudatoolkit=11.8.0=h6a678d5_0", MatchSpec("cudatoolkit", "=11.8.0", "h6a678d5_0")),
    ("jaxlib=*=cuda*", MatchSpec("jaxlib", "=*", "cuda*")),
    ("jaxlib >= 0.3=*cuda*", MatchSpec("jaxlib", ">=0.3", "*cuda*")),
    ("pytorch::pytorch-mutex = *=*cuda*", MatchSpec("pytorch-mutex", "=*", "*cuda*", "pytorch")),
    ("nvidia/label/cuda-11.7.1::cuda-toolkit = 11.7",
     MatchSpec("cuda-toolkit", "=11.7", None, "nvidia/label/cuda-11.7.1")),
    ("conda-forge::cattrs ==1.1.1", MatchSpec("cattrs", "==1.1.1", None, "conda-forge")),
    ("pytorch[version='>=1.8', build=*cuda*]", MatchSpec("pytorch", ">=1.8", "*cuda*")),
    ("nvcc_linux-64=11.0", MatchSpec("nvcc_linux-64", "=11.0")),
    ("pytorch-mutex=1.0=cuda", MatchSpec("pytorch-mutex", "=1.0", "cuda")),
    ("numpy[version='>=1.0,<2', build=*cuda*]", MatchSpec("numpy", ">=1.0,<2", "*cuda*")),
    ("numpy>=1.8 py37*", MatchSpec("numpy", ">=1.8", "py37*")),
    ("numpy>=1[build=py*]", MatchSpec("numpy", ">=1", "py*")),
    ("python>3.9|<2", MatchSpec("python", ">3.9|<2")),
    ("openssl=1.0.2-k", MatchSpec("openssl", "=1.0.2-k")),
])
def test_parse_match_spec(text: str, expected: MatchSpec) -> None:
    assert parse_match_spec(text) == expected


@pytest.mark.parametrize("text", [
    # What conda 26's MatchSpec refuses (test_conda_verdicts.py asks the real one).
    ">=1.0", "foo$bar", "x[version=1", "foo+bar", "a--b", "-numpy",
    # Operators and version characters are checked, not left to the solver.
    "python>=>3.11", "python>=3.8,", "python==3.8,,<4", "numpy>=", "numpy==",
    "numpy=1.0=b=c", "numpy=1.0=", "python>=(3.8", "numpy>=1.0@x",
    # Keys inside brackets are conda's match fields, with a value.
    "numpy[foo=1]", "numpy[version='']", "numpy[a][b]",
])
def test_parse_match_spec_rejects_garbage(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid conda spec"):
        parse_match_spec(text)


@pytest.mark.parametrize(("text", "expected", "reading"), [
    # Pip-style extras: conda keeps only key=value pairs inside brackets and skips the rest.
    ("nbconvert[execute]!=6.0.0,!=6.0.1", MatchSpec("nbconvert", "!=6.0.0,!=6.0.1"),
     "nbconvert!=6.0.0,!=6.0.1"),
    ("gymnasium[classic_control,atari]", MatchSpec("gymnasium"), "gymnasium"),
    ("conda-forge::foo[ext, build=x*] >=1", MatchSpec("foo", ">=1", "x*", "conda-forge"),
     "conda-forge::foo[build=x*] >=1"),
    ("numpy[version]", MatchSpec("numpy"), "numpy"),
    ("numpy[]", MatchSpec("numpy"), "numpy"),
])
def test_conda_skips_what_is_not_key_value_inside_brackets(text: str, expected: MatchSpec,
                                                          reading: str) -> None:
    spec = parse_match_spec(text)
    assert spec == expected
    assert spec.reading == reading
    assert bool(spec.ignored) == (text not in ("numpy[]",))


@pytest.mark.parametrize(("text", "expected", "note"), [
    ("python=>3.9", MatchSpec("python", "=>3.9"), "as '>' (strictly greater)"),
    ("a b c d", MatchSpec("a", "b", "c d"), "holds a space"),
    ("numpy>=1.0 a b", MatchSpec("numpy", ">=1.0", "a b"), "holds a space"),
    ("numpy 1.0=x", MatchSpec("numpy", "1.0", "x"), None),
    ("::numpy", MatchSpec("numpy"), None),
    ("numpy=", MatchSpec("numpy"), None),
])
def test_odd_specs_conda_accepts_are_accepted_with_a_note(text: str, expected: MatchSpec,
                                                          note: str | None) -> None:
    spec = parse_match_spec(text)
    assert spec == expected
    assert (note is None and not spec.notes) or any(note in n for n in spec.notes)


def test_canonical_forms_ignore_spacing_but_keep_meaning() -> None:
    assert canonical_conda_spec("python >= 3.8") == canonical_conda_spec("python>=3.8")
    assert canonical_conda_spec("Python  =  3.9") == "python=3.9"
    assert canonical_conda_spec("conda-forge :: cattrs ==1.1.1") == "conda-forge::cattrs==1.1.1"
    assert canonical_conda_spec("python 3.10.*") != canonical_conda_spec("python=3.10")
    assert canonical_pip_line("Wavio  >= 0.0.5") == "wavio>=0.0.5"
    assert canonical_pip_line("Foo_Bar.baz[x]==1") == "foo-bar-baz[x]==1"
    assert canonical_pip_line("--extra-index-url  https://x.example/s") == \
        canonical_pip_line("--extra-index-url=https://x.example/s")
    assert canonical_pip_line("git+https://h.example/A_B.git") == "git+https://h.example/A_B.git"


@pytest.mark.parametrize("line", [
    "numpy", "Foo_Bar.baz", "requests[security, socks] >= 2.31 , <3", "file:.",
    "file:///home/u/pkg", "dipy --only-binary dipy", "pkg==1 --config-settings=k=v",
    "--extra-index https://h.example/simple",   # pip (optparse) takes unambiguous prefixes
    "-e git+https://h.example/x.git#egg=x", "-e x @ git+https://h.example/x.git",
    "pkg-1.0.tar.gz", "torch @ https://h.example/cu101/torch-1.4.0-cp37-none-any.whl",
    "torch==2.1.0+cu118", "pkg (>=1.0)", "pkg===1.0", "numpy>=1.0 ; sys_platform == 'linux'",
    "pkg==1.0 --hash=sha256:abc", "foo @ https://h.example/foo-1.0.whl",
    "git+https://h.example/x.git@main#egg=x", "./libs/pointops", "submodules/simple-knn",
    "-e .", "-e.", "--editable=.[dev]", "-r ./requirements.txt", "-rreq.txt", "--pre",
    "--no-index", "--extra-index-url  https://h.example/simple", "-f /wheels",
])
def test_pip_lines_that_pip_reads_are_accepted(line: str) -> None:
    assert pip_line_problem(line) is None


@pytest.mark.parametrize(("line", "fragment"), [
    ("nibabel=2.5.1", "invalid pip requirement 'nibabel=2.5.1'"),
    ("nibabel=2.5.1", "'=' is not a pip operator: write '=='"),
    ("numpy=>1.0", "invalid pip requirement 'numpy=>1.0'"),
    ("name with space", "invalid pip requirement 'name with space'"),
    ("foo @", "invalid pip requirement 'foo @'"),
    ("$pkg", "invalid pip requirement '$pkg'"),
    ("numpy; python_versio < '3'", "bad environment marker"),
    ("--extra-index", "--extra-index-url option requires 1 argument"),
    ("--no", "ambiguous option: --no"),
    ("-x foo", "no such option: -x"),
    ("-r", "-r option requires 1 argument"),
    ("--index-url", "--index-url option requires 1 argument"),
    ("pkg==1 --hash=md5:abc", "pip option --hash 'md5:abc'"),
    ("pkg==1 -C novalue", "write KEY=VALUE"),
    ("-e git+https://h.example/x.git", "add '#egg=NAME' or write 'NAME @ URL'"),
    ("-e https://h.example/x.zip", "needs a local path or a VCS URL"),
    ("--pre 'unclosed", "cannot split the options"),
])
def test_pip_line_problems_say_what_is_wrong(line: str, fragment: str) -> None:
    problem = pip_line_problem(line)
    assert problem is not None and fragment in problem, problem


# --- parsing ---------------------------------------------------------------------------------

def test_parse_basic_keeps_everything_in_order() -> None:
    spec = parse_spec(BASIC)
    assert spec.name == "demo"
    assert spec.channels == ("conda-forge", "nvidia")
    assert spec.conda == ("python >= 3.10", "numpy=1.26", "pip")
    assert spec.pip == ("--extra-index-url https://wheels.example.org/simple",
                        "requests==2.31", "tqdm")
    assert spec.variables == (("OMP_NUM_THREADS", "4"), ("EMPTY", ""))
    assert spec.source is None
    assert spec.conda_lines == (6, 7, 8)
    assert spec.pip_lines == (10, 11, 12)
    assert spec.source_line(6) == "- python >= 3.10"


def test_scalars_are_taken_as_written() -> None:
    spec = parse_spec("name: '1.10'\ndependencies:\n  - python=3.10\n  - '3.0'\n")
    assert spec.name == "1.10"
    assert spec.conda == ("python=3.10", "3.0")


def test_real_world_quirks() -> None:
    text = ("---\n# yaml-language-server: $schema=x\n"
            "channels:\n  # comment\n  - conda-forge # inline\n"
            "dependencies:\n- bioconda::fastqc=0.12.1\n\n    # comment in list\n"
            "- pip:   \n  - \"--editable=.[dev]\"\n"
            "prefix: /home/u/miniconda3/envs/x\nplatforms: [linux-64]\n"
            "name: late-name \n"
            "# caf\u00e9 \u00a9 non-ascii")
    spec = parse_spec(text)
    assert spec.name == "late-name"
    assert spec.channels == ("conda-forge",)
    assert spec.conda == ("bioconda::fastqc=0.12.1",)
    assert spec.pip == ("--editable=.[dev]",)


def test_empty_sections_and_missing_keys() -> None:
    spec = parse_spec("dependencies: []\n")
    assert (spec.name, spec.channels, spec.conda, spec.pip) == (None, (), (), ())
    spec = parse_spec("name: x\ndependencies:\n  - a\n  - pip:\n")
    assert spec.pip == ()


def test_yaml_11_look_alikes_stay_text() -> None:
    # conda reads YAML 1.2: `ON:` is a variable name and 2024-13-45 is no date to reject.
    spec = parse_spec("dependencies:\n  - '2024-13-45'\n  - yes\n  - 12:30\nvariables:\n  ON: 1\n"
                      "  NO: off\n")
    assert spec.conda == ("2024-13-45", "yes", "12:30")
    assert spec.variables == (("ON", "1"), ("NO", "off"))


def test_load_spec_reads_utf8_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "env.yml"
    path.write_bytes("# \u00a9 2024\nname: x\ndependencies:\n  - numpy".encode())
    spec = load_spec(path)
    assert spec.source == path
    assert spec.conda == ("numpy",)
    assert load_spec(str(path)) == spec
    # Windows editors' byte-order mark is not part of the first key.
    path.write_bytes(b"\xef\xbb\xbfname: x\r\ndependencies:\r\n  - numpy\r\n")
    assert load_spec(path) == spec


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("name: x\ndependencies:\n  - a\n - b\n", 4, "invalid YAML"),
    ("name: x\ndependencies: [a, b\n", 3, "invalid YAML"),
    ("- a\n- b\n", 1, "top level must be a mapping"),
    ("just text\n", 1, "top level must be a mapping"),
    ("name: x\ndependencies: numpy\n", 2, "'dependencies' must be a list"),
    ("name: x\ndependencies:\n  - numpy\n  - pip: numpy\n", 4, "'pip' must be a list"),
    # conda refuses a name, dependency or channel that YAML reads as a number or boolean,
    # and sections that are empty (null) rather than an empty list or mapping.
    ("name: 1.10\ndependencies: [a]\n", 1, "'name' must be text, not the number 1.10"),
    ("name:\ndependencies: [a]\n", 1, "'name' must be a single value, not nothing"),
    ("name: x\ndependencies:\n  - 3.0\n", 3, "must be text, not the number 3.0; quote it"),
    ("name: x\ndependencies:\n  - 1e3\n", 3, "must be text, not the number 1e3"),
    ("name: x\ndependencies:\n  - 2024-13-45\n", 3, "must be text, not the date 2024-13-45"),
    ("name: x\nchannels: [true]\ndependencies: [a]\n", 2, "must be text, not the boolean"),
    ("dependencies:\n", 1, "'dependencies' must be a list"),
    ("channels:\ndependencies: [a]\n", 1, "'channels' must be a list"),
    ("variables:\ndependencies: [a]\n", 1, "'variables' must be a mapping"),
    ("prefix: 1\ndependencies: [a]\n", 1, "'prefix' must be text"),
    ("dependecies:\n  - a\n", 1, "unknown key 'dependecies'; did you mean 'dependencies'?"),
    ("name: x\ndependencies:\n  - [a, b]\n", 3, "'dependencies' entry"),
    ("name: x\ndependencies:\n  - pip:\n    - {a: 1}\n", 4, "'pip' entry"),
    ("name: x\nchannels: conda-forge\n", 2, "'channels' must be a list"),
    ("name: x\nvariables: [A]\n", 2, "'variables' must be a mapping"),
    ("name: x\ndependecies:\n  - a\n", 2, "unknown key 'dependecies'; did you mean"),
    ("name: x\nname: y\n", 2, "duplicate key 'name'"),
    ("name: x\nvariables:\n  A: 1\n  A: 2\n", 4, "duplicate key 'A' (first on line 3)"),
    ("name: x\ndependencies: [a]\n---\nname: y\n", 3, "invalid YAML"),
    ("name: [x]\n", 1, "'name' must be a single value"),
    ("name: ../evil\n", 1, "invalid environment name"),
    ("dependencies:\n  - '>=1.0'\n", 2, "invalid conda spec"),
    ("dependencies:\n  - numpy\n  - python>=>3.11\n", 3,
     "invalid conda spec 'python>=>3.11': bad version constraint '>=>3.11'"),
    ("dependencies:\n  - pip\n  - pip:\n    - requests\n    - numpy=>1\n", 5,
     "invalid pip requirement 'numpy=>1'"),
    ("dependencies:\n  - pip:\n    - --extra-indx https://h.example\n", 3,
     "no such option: --extra-indx"),
    ("dependencies:\n  - pip\n  - pip:\n    - nibabel=2.5.1\n", 4,
     "invalid pip requirement 'nibabel=2.5.1'"),
    ("dependencies:\n  - foo+bar\n", 2, "the package name contains '+'"),
    ("dependencies:\n  - ''\n", 2, "empty 'dependencies' entry"),
    ("# my env\nname: x\nchannels: [conda-forge]\n", 2, "no 'dependencies:' section"),
    ("dependencies: &d\n  - *d\n", 1, "recursive YAML alias"),
    ("dependencies:\n  - numpy\x07\n", 2, "control character U+0007"),
    ("dependencies:\n  - numpy\n? [a]\n: b\n", 3, "mapping keys must be plain names"),
])
def test_bad_specs_name_file_line_and_key(text: str, line: int, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_spec(text, source=Path("env.yml"))
    message = str(info.value)
    assert message.startswith(f"env.yml:{line}: "), message
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("name", [
    "A=1; touch /tmp/pwned; B",   # would be shell code in `export NAME=...`
    "MY VAR",
    "$(id)",
    "1ST",
    "A-B",
    "é",
    "A\nB",
    "A\0B",
])
def test_variable_names_must_be_shell_identifiers(name: str) -> None:
    text = f"dependencies:\n  - numpy\nvariables:\n  OK: 1\n  {json.dumps(name)}: x\n"
    with pytest.raises(InvalidInput) as info:
        parse_spec(text, source=Path("env.yml"))
    message = str(info.value)
    assert message.startswith("env.yml:5: invalid variable name "), message
    assert "^[A-Za-z_][A-Za-z0-9_]*$" in message and "\n" not in message


@pytest.mark.parametrize("value", ["a\x00b", "\x00", "trailing\x00"])
def test_a_nul_in_a_variable_value_is_refused_at_parse_time(value: str) -> None:
    text = f"dependencies:\n  - numpy\nvariables:\n  OK: 1\n  BAD: {json.dumps(value)}\n"
    with pytest.raises(InvalidInput) as info:
        parse_spec(text, source=Path("env.yml"))
    message = str(info.value)
    assert message.startswith("env.yml:5: the value of variable BAD holds a NUL character")
    assert "\n" not in message


@pytest.mark.parametrize(("source", "value"), [
    ('"line\\n"', "line\n"),            # a trailing newline, as conda keeps it
    ('"  padded  "', "  padded  "),
    ('"cr\\r"', "cr\r"),
    ("|\n    block\n", "block\n"),      # a block scalar keeps its final newline (clip)
    ("plain  ", "plain"),
])
def test_variable_values_are_kept_byte_exact(source: str, value: str) -> None:
    spec = parse_spec(f"dependencies: [numpy]\nvariables:\n  V: {source}\n")
    assert spec.variables == (("V", value),)


@pytest.mark.parametrize("name", ["A", "_", "_private", "OMP_NUM_THREADS", "cuda_home2"])
def test_shell_identifier_variable_names_are_kept(name: str) -> None:
    spec = parse_spec(f"dependencies: [numpy]\nvariables:\n  {name}: v\n")
    assert spec.variables == ((name, "v"),)
    assert is_variable_name(name)


@pytest.mark.parametrize(("line", "expected"), [
    ("--extra-index-url https://x.org/s", ("--extra-index-url", "https://x.org/s")),
    ("--index-url=https://x.org/s", ("--index-url", "https://x.org/s")),
    ("-r   reqs.txt ", ("-r", "reqs.txt")),
    ("--pre", ("--pre", None)),
    ("--no-deps=", ("--no-deps", None)),
    # pip takes unambiguous prefixes of its long options.
    ("--extra-index https://x.org/s", ("--extra-index-url", "https://x.org/s")),
    ("--find https://x.org/w", ("--find-links", "https://x.org/w")),
    ("--no https://x.org/s", ("--no", "https://x.org/s")),
    ("numpy>=1", None),
    ("-", None),
])
def test_split_pip_option(line: str, expected: tuple[str, str | None] | None) -> None:
    assert split_pip_option(line) == expected


def test_empty_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "e.yml"
    path.write_text("# only a comment\n")
    with pytest.raises(InvalidInput, match="empty environment file"):
        load_spec(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such environment file"):
        load_spec(tmp_path / "missing.yml")
    with pytest.raises(InvalidInput, match="is a directory"):
        load_spec(tmp_path)
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"name: x\n# caf\xe9\n")
    with pytest.raises(InvalidInput, match=r"latin1.yml:2: not UTF-8"):
        load_spec(path)


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "cv-resnet50-exp1", "all_cuda-118_arch-x86_64",
                                  "mf-colabfold-1.5.5", "X" * 64, "1.10"])
def test_valid_env_names(name: str) -> None:
    assert validate_env_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "_x", "a/b", "a..b", "..", "a b",
                                  "X" * 65, "caf\u00e9", "a\\b", "x\n"])
def test_invalid_env_names_explain_the_rule(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_env_name(name)
    assert "letters, digits, '.', '_' and '-'" in str(info.value)


# --- normalisation and hash ------------------------------------------------------------------

def _spec(**kw: object) -> EnvSpec:
    base: dict[str, object] = {"name": "a", "channels": ("conda-forge", "bioconda"),
                               "conda": ("python>=3.8", "numpy"), "pip": ("requests",),
                               "variables": (), "source": None}
    base.update(kw)
    return EnvSpec(**base)  # type: ignore[arg-type]


def test_hash_is_order_and_spacing_independent_and_ignores_name() -> None:
    one = parse_spec("name: a\nchannels: [conda-forge, bioconda]\n"
                     "dependencies:\n  - python >= 3.8\n  - numpy\n  - pip:\n    - Requests\n"
                     "    - tqdm >=4\nvariables: {B: '2', A: '1'}\n")
    two = parse_spec("name: b\nchannels: [conda-forge, bioconda]\n"
                     "dependencies:\n  - pip:\n    - tqdm>=4\n    - requests\n  - numpy\n"
                     "  - python>=3.8\nvariables: {A: '1', B: '2'}\n")
    assert one.normalized() == two.normalized()
    assert one.content_hash() == two.content_hash()
    assert "name" not in one.normalized()


def test_hash_changes_with_content_and_channel_order() -> None:
    reference = _spec().content_hash()
    assert len(reference) == 64 and int(reference, 16) >= 0
    assert _spec(name="other").content_hash() == reference
    assert _spec(conda=("numpy", "python>=3.8")).content_hash() == reference
    assert _spec(channels=("bioconda", "conda-forge")).content_hash() != reference
    assert _spec(conda=("python>=3.9", "numpy")).content_hash() != reference
    assert _spec(pip=("requests", "tqdm")).content_hash() != reference
    assert _spec(variables=(("A", "1"),)).content_hash() != reference


def test_pip_option_lines_keep_their_order() -> None:
    a = _spec(pip=("--index-url https://a.example/s", "--extra-index-url https://b.example/s",
                   "x", "y"))
    b = _spec(pip=("y", "--index-url https://a.example/s", "x",
                   "--extra-index-url https://b.example/s"))
    c = _spec(pip=("--extra-index-url https://b.example/s", "--index-url https://a.example/s",
                   "x", "y"))
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != c.content_hash()


def test_hash_is_stable_across_runs() -> None:
    # A fixed value: a change here means every registry record's key changes too.
    spec = _spec()
    assert spec.normalized() == {
        "schema": 1,
        "channels": ["conda-forge", "bioconda"],
        "conda": ["numpy", "python>=3.8"],
        "pip": {"options": [], "requirements": ["requests"]},
        "variables": [],
    }
    assert spec.content_hash() == spec.content_hash()
    assert spec.content_hash() == _STABLE_HASH


def test_provenance_does_not_affect_equality() -> None:
    assert parse_spec(BASIC) == parse_spec("\n\n" + BASIC)
    assert parse_spec(BASIC).content_hash() == parse_spec("\n\n" + BASIC).content_hash()


_STABLE_HASH = "2017d8e228182f0dc08ddbe3f204dfc8dd037a9b1f91a6144557d32770b4a929"


def test_pip_rules_are_imported_only_for_pip_lines() -> None:
    # Issue 10: a conda-only spec (and every cache hit of one) parses and infers its CUDA
    # without pip's rules and packaging (~10 ms of imports); a pip line brings them.
    import subprocess
    import sys

    script = ("import sys\nfrom hpcenv.spec.environment import parse_spec\n"
              "from hpcenv.spec.cuda import infer_cuda\n"
              "infer_cuda(parse_spec(sys.argv[1]))\n"
              "print(sorted(m for m in sys.modules if m.startswith(('packaging', "
              "'hpcenv.spec.pip_lines', 'optparse'))))")

    def imported(text: str) -> str:
        return subprocess.run([sys.executable, "-c", script, text], capture_output=True,
                              text=True, check=True).stdout.strip()

    assert imported("name: x\ndependencies:\n  - python=3.11\n  - numpy\n") == "[]"
    with_pip = imported("name: x\ndependencies:\n  - python\n  - pip:\n    - requests>=2\n")
    assert "'hpcenv.spec.pip_lines'" in with_pip and "'packaging.requirements'" in with_pip
