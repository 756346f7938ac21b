"""Conda ``environment.yml`` files: parsing, normalisation, content hash and env-name rules.

Files are parsed the way people really write them: comments and blank lines inside lists, ``---``
document markers, ``prefix:`` lines from ``conda env export``, ``variables:``, ``channel::pkg``
specs, spaces inside specs (``python >= 3.8``), ``name version build`` triples and ``pip:``
sections with option lines.  What is valid is what conda 26 and pip accept: conda specs are read
as conda's own parser reads them, YAML types as conda's YAML 1.2 reader sees them, ``pip:`` lines
by pip's rules (:mod:`.pip_lines`).  What conda reads differently from how it looks (pip-style
extras, a second ``pip:`` section, ignored keys) is accepted with a ``file:line`` warning.
Scalars are taken as written (``python=3.10`` stays ``3.10``), and every dependency keeps the
line it came from so CUDA inference can quote it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hpcenv.errors import InvalidInput, where
from hpcenv.spec.names import env_name_problem
from hpcenv.yamlio import YNode, closest, load_yaml_text, read_text_file

# `prefix:` is machine-specific output of `conda env export` and `platforms:` is read by
# conda-lock; neither defines the environment's content, so both are accepted and ignored.
_KNOWN_KEYS = ("name", "channels", "dependencies", "variables", "prefix", "platforms")

# Variable names reach activation scripts (`export NAME=...`) and the process environment, so
# only portable shell identifiers are accepted: anything else would be shell code or unsettable.
_VARIABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VARIABLE_NAME_RULE = ("a variable name must match ^[A-Za-z_][A-Za-z0-9_]*$ (letters, digits "
                       "and '_', not starting with a digit), e.g. OMP_NUM_THREADS")

# Whitespace around operators and separators carries no meaning in a match spec:
# "python >= 3.8, < 3.10" is "python>=3.8,<3.10".
_SQUEEZE_RE = re.compile(r"\s*([=<>!~,|])\s*")
_SPEC_NAME_RE = re.compile(r"[A-Za-z0-9_*][A-Za-z0-9_.*+-]*")
_PIP_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$", re.DOTALL)
_PIP_OPTION_RE = re.compile(r"^(-{1,2}[A-Za-z][A-Za-z-]*)(?:(?:=|\s+)(.*))?$", re.DOTALL)

# conda's version grammar, plus `=<` (written in real files, see the corpus).  conda reads a '-'
# inside a version as '_' (`1.0-1`), so it is allowed after the first character.
_VERSION_TERM_RE = re.compile(r"(?:==|!=|>=|<=|~=|=<|=>|>|<|=)?[A-Za-z0-9_.*+!][A-Za-z0-9_.*+!-]*"
                              r"|-")
_VERSION_RULE = ("write an operator (==, !=, >=, <=, >, <, ~=, =) and a version, "
                 "e.g. 'python>=3.10,<3.12' or 'python=3.11'")
# Package names as conda 26 accepts them (CEP 26): lower-case letters and digits in runs joined
# by single '.', '_' or '-', optionally ending in one; a leading '_' (two for virtual packages).
_PACKAGE_NAME_RE = re.compile(r"_{0,2}[a-z0-9]+(?:[._-][a-z0-9]+)*[._-]?")
# Fields conda lets a `[key=value]` section set.
_BRACKET_KEYS = ("channel", "subdir", "name", "version", "build", "build_number",
                 "track_features", "features", "url", "md5", "sha256", "license",
                 "license_family", "fn", "when", "extras", "flags")
# One `key=value` inside brackets as conda finds them: the value may be quoted, and ends at a
# comma, a space or the end.  Anything else inside the brackets (pip-style extras such as
# `[execute]`) conda skips without a word.
_BRACKET_PAIR_RE = re.compile(r"""([A-Za-z0-9_-]+?)=(['"]?)([^'"]*?)\2(?:[, ]|$)""")
# A list item indented one level too deep is folded into the previous plain scalar by YAML:
# "- python=3.11\n    - pip" reads as the single spec "python=3.11 - pip".
_RUN_TOGETHER_RE = re.compile(r"\s-(?:\s|$)")
# conda reads a spec that ends in a package file as that file.
_PACKAGE_FILE_SUFFIXES = (".conda", ".tar.bz2")


def is_variable_name(name: str) -> bool:
    """True for names an env's ``variables:`` may set: ``^[A-Za-z_][A-Za-z0-9_]*$``."""
    return _VARIABLE_NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class MatchSpec:
    """A conda match spec split into its parts; ``version`` keeps its operator (``>=3.8``).

    ``ignored`` holds what conda skips without using it (pip-style extras such as
    ``[execute]``); ``notes`` says where conda's reading is unlikely to be what was meant
    (``python=>3.9`` is ``>3.9``).  Neither takes part in ``==``.
    """

    name: str
    version: str | None = None
    build: str | None = None
    channel: str | None = None
    ignored: tuple[str, ...] = field(default=(), compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)
    # The spec as conda uses it: as written, less what conda skips (`nbconvert!=6.0.0`).
    reading: str = field(default="", compare=False)


def squeeze_spec(text: str) -> str:
    """Canonical spelling of a spec: no space around operators, single spaces elsewhere."""
    text = " ".join(text.split())
    text = _SQUEEZE_RE.sub(r"\1", text)
    return re.sub(r"\s*::\s*", "::", text)


def _split_version_build(rest: str) -> tuple[str, str | None]:
    """Split ``>=0.3=*cuda*`` / ``=1.0 py38_0`` / ``* cuda`` into version and build, as conda.

    The build starts after the first space or ``=`` that does not follow an operator and is
    followed only by characters a build may hold (no ``-=,|<>~``).
    """
    for i in range(1, len(rest)):
        if rest[i] in " =" and rest[i - 1] not in "=!|,<>~" and \
                re.fullmatch(r"[^-=,|<>~]+", rest[i + 1:]):
            return rest[:i].replace(" ", ""), rest[i + 1:].strip() or None
    return rest.replace(" ", ""), None


def parse_match_spec(text: str) -> MatchSpec:
    """Parse a conda match spec the way conda 26 reads it, and refuse what conda refuses.

    Handles ``name``, ``name=1.0``, ``name==1.0``, ``name >=1.0,<2``, ``name=1.0=build``,
    ``name 1.0 build``, ``name >=1.0 build``, ``name=*=*cuda*``, ``name >= 0.3=*cuda*``,
    ``channel::name...`` (the channel may be a label path such as
    ``nvidia/label/cuda-11.7.1``), the bracket form ``name[version='>=1.0',build=*cuda*]`` and
    pip-style extras ``name[extra]``, which conda skips (kept in ``ignored``).  Package names,
    operators and version characters are checked as conda checks them, so typos conda refuses
    (``python>=>3.11``, ``foo+bar``) are caught when the file is read.  Raises InvalidInput
    naming the spec.
    """
    def bad(reason: str) -> InvalidInput:
        return InvalidInput(f"invalid conda spec {text!r}: {reason}")

    spec = text.split("#", 1)[0].split(" if ", 1)[0].strip()
    if spec.endswith(_PACKAGE_FILE_SUFFIXES):
        return MatchSpec(name=spec.replace("\\", "/").rsplit("/", 1)[-1])
    ignored: list[str] = []
    bracket: dict[str, str] = {}
    reading = text.strip()
    if "]" in spec and "[" in spec[:spec.rindex("]")]:
        close = spec.rindex("]")
        open_ = spec.rindex("[", 0, close)
        body = spec[open_ + 1:close]
        spec = spec[:open_] + spec[close + 1:]
        kept = ",".join(m.group(0).rstrip(", ") for m in _BRACKET_PAIR_RE.finditer(body))
        reading = spec[:open_] + (f"[{kept}]" if kept else "") + spec[open_:]
        pos = 0
        for pair in _BRACKET_PAIR_RE.finditer(body):
            ignored.extend(w for w in re.split(r"[\s,]+", body[pos:pair.start()]) if w)
            pos = pair.end()
            key, value = pair.group(1), pair.group(3)
            if not value:
                raise bad(f"'{key}=' inside [...] needs a value")
            if key not in _BRACKET_KEYS:
                raise bad(f"unknown key {key!r} inside [...] (conda knows: "
                          f"{', '.join(_BRACKET_KEYS)})")
            bracket[key] = value
        ignored.extend(w for w in re.split(r"[\s,]+", body[pos:]) if w)
    # conda also drops a "(...)" section (e.g. "(optional)").
    if ")" in spec and "(" in spec[:spec.rindex(")")]:
        close = spec.rindex(")")
        spec = spec[:spec.rindex("(", 0, close)] + spec[close + 1:]
    channel: str | None = None
    parts = spec.rsplit(":", 2)
    if len(parts) == 3:
        channel, spec = parts[0].strip() or None, parts[2]
    elif len(parts) == 2:
        spec = parts[1]
    channel = bracket.get("channel", channel)
    match = re.match(r"([^ =<>!~]+)?([><!=~ ].+)?", spec.strip(), re.DOTALL)
    if match is None or match.group(1) is None:
        raise bad("it must start with a package name")
    name, rest = match.group(1), (match.group(2) or "").strip()
    if "*" not in name:
        invalid = "".join(dict.fromkeys(re.findall(r"[^a-z0-9._-]", name.lower())))
        if invalid:
            raise bad(f"the package name contains {invalid!r}; use letters, digits, '.', '_' "
                      "and '-'")
        if not _PACKAGE_NAME_RE.fullmatch(name.lower()):
            raise bad(f"{name!r} is not a conda package name (no doubled or leading "
                      "separators)")
    if "[" in rest or "]" in rest:
        raise bad("one [...] section at most, closed with ']'")
    version, build = _split_version_build(rest) if rest else (None, None)
    version = bracket.get("version", version) or None
    build = bracket.get("build", build) or None
    notes: list[str] = []
    if version is not None:
        if version in ("=", "=="):
            version = None if version == "=" and not text.rstrip().endswith("= ") else version
        if version is not None:
            _check_version(text, version)
            if "=>" in version:
                notes.append(f"conda reads '=>' in {text.strip()!r} as '>' (strictly greater); "
                             "write '>=' for 'at least'")
    if build is not None and " " in build:
        notes.append(f"the build string {build!r} of {text.strip()!r} holds a space and matches "
                     "no package; is a list item indented too deep?")
    return MatchSpec(name=name, version=version, build=build, channel=channel,
                     ignored=tuple(ignored), notes=tuple(notes), reading=reading.strip())


def _check_version(text: str, version: str) -> None:
    if version.count("(") != version.count(")"):
        raise InvalidInput(f"invalid conda spec {text!r}: unbalanced parentheses in "
                           f"{version!r}")
    for term in re.split(r"[,|]", version.replace("(", "").replace(")", "")):
        if not _VERSION_TERM_RE.fullmatch(term):
            raise InvalidInput(f"invalid conda spec {text!r}: bad version constraint "
                               f"{term or version!r}; {_VERSION_RULE}")


def canonical_conda_spec(text: str) -> str:
    """Order-free comparable form of one conda spec: squeezed, package name lower-cased."""
    spec = squeeze_spec(text)
    channel, sep, rest = spec.rpartition("::")
    match = _SPEC_NAME_RE.match(rest)
    if match is not None:
        rest = match.group(0).lower() + rest[match.end():]
    return f"{channel}{sep}{rest}"


def is_pip_option(line: str) -> bool:
    """True for pip option lines (``--extra-index-url URL``, ``-r file``, ``-e .``, ``--pre``)."""
    return line.startswith("-")


def split_pip_option(line: str) -> tuple[str, str | None] | None:
    """``("--extra-index-url", "URL")`` for a pip option line (``--opt=value`` too), ``None``
    for requirements and for option lines hpcenv cannot split."""
    if not is_pip_option(line):
        return None
    option = _PIP_OPTION_RE.match(line.strip())
    if option is None:
        return None
    value = (option.group(2) or "").strip()
    from hpcenv.spec.pip_lines import full_option_name  # pip lines only: see _Builder

    return full_option_name(option.group(1)), value or None


def canonical_pip_line(line: str) -> str:
    """Comparable form of one pip line.

    Options are spelled ``--opt value``; requirements get a PEP 503 name and no space
    around operators.  URLs and paths are left alone.
    """
    line = " ".join(line.split())
    if is_pip_option(line):
        option = split_pip_option(line)
        if option is None:
            return line
        flag, value = option
        return flag if value is None else f"{flag} {value}"
    match = _PIP_NAME_RE.match(line)
    if match is None or "://" in line or line.startswith((".", "/")):
        return line
    name, rest = match.groups()
    if rest and rest[0] not in "[=<>!~;@ ,":
        return line
    return re.sub(r"[-_.]+", "-", name).lower() + _SQUEEZE_RE.sub(r"\1", rest)


@dataclass(frozen=True)
class EnvSpec:
    """One environment file, as written (order kept) plus where each entry came from.

    ``channel_lines``/``conda_lines``/``pip_lines`` give the 1-based source line of each entry
    of ``channels``/``conda``/``pip`` and ``text`` the whole file; they are provenance only and
    ignored by ``==``.
    """

    name: str | None
    channels: tuple[str, ...]
    conda: tuple[str, ...]
    pip: tuple[str, ...]
    variables: tuple[tuple[str, str], ...]
    source: Path | None
    channel_lines: tuple[int, ...] = field(default=(), compare=False, repr=False)
    conda_lines: tuple[int, ...] = field(default=(), compare=False, repr=False)
    pip_lines: tuple[int, ...] = field(default=(), compare=False, repr=False)
    text: str | None = field(default=None, compare=False, repr=False)
    # "file:line: ..." notes on what conda reads differently from how it looks (ignored pip
    # extras, sections conda skips); the file is valid, but its author may want to know.
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # conda adds `pip` to the solve when a `pip:` section exists and no conda spec names it.
    has_pip_section: bool = field(default=False, compare=False, repr=False)

    def conda_to_solve(self) -> tuple[str, ...]:
        """The conda specs as conda solves them: each spec less what conda skips in it
        (pip-style extras), plus ``pip`` when a ``pip:`` section needs it and none is listed."""
        specs = [parse_match_spec(spec).reading for spec in self.conda]
        if (self.pip or self.has_pip_section) and not any(
                parse_match_spec(spec).name.lower() == "pip" for spec in self.conda):
            specs.append("pip")
        return tuple(specs)

    def source_line(self, lineno: int) -> str | None:
        """The stripped text of source line ``lineno`` (1-based), when the text is known."""
        lines = self._text_lines
        return lines[lineno - 1].strip() if 1 <= lineno <= len(lines) else None

    @cached_property
    def _text_lines(self) -> list[str]:
        return self.text.splitlines() if self.text is not None else []

    def normalized(self) -> dict[str, Any]:
        """Order-independent canonical form: what the environment *is*, not how it is written.

        - conda specs: canonical spelling (no space around operators), sorted, de-duplicated;
        - channels: order kept, because channel order decides which package wins;
        - pip: requirements sorted, option lines (``-r``, ``-e``, ``--extra-index-url``...)
          kept in their order because index order and includes are semantic;
        - variables: sorted by name.

        The env ``name`` is deliberately left out: the same content under two names is the
        same environment (so builds and registry records can be shared), and ``prefix`` is
        machine-specific and never part of a spec.
        """
        pip_options = [canonical_pip_line(p) for p in self.pip if is_pip_option(p)]
        pip_reqs = sorted({canonical_pip_line(p) for p in self.pip if not is_pip_option(p)})
        return {
            "schema": 1,
            "channels": list(self.channels),
            "conda": sorted({canonical_conda_spec(parse_match_spec(s).reading)
                             for s in self.conda}),
            "pip": {"options": pip_options, "requirements": pip_reqs},
            "variables": sorted([k, v] for k, v in self.variables),
        }

    def content_hash(self) -> str:
        """sha256 hex of :meth:`normalized` as compact, key-sorted JSON (stable across runs)."""
        blob = json.dumps(self.normalized(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_spec(path: Path | str, *, yaml_cache: Path | None = None) -> EnvSpec:
    """Read and parse an environment file; InvalidInput (``file:line: ...``) on any problem.
    ``yaml_cache``: see :func:`hpcenv.yamlio.load_yaml_text`."""
    path = Path(path)
    return parse_spec(read_text_file(path, "environment file"), source=path,
                      yaml_cache=yaml_cache)


def parse_spec(text: str, source: Path | None = None, *,
               yaml_cache: Path | None = None) -> EnvSpec:
    """Parse environment-file text; ``source`` is only used in messages and provenance."""
    label = str(source) if source is not None else "<environment.yml>"
    root = load_yaml_text(text, label, cache=yaml_cache)
    return _Builder(label).build(root, text, source)


# What conda's YAML reader (ruamel, YAML 1.2) resolves to a number, boolean or date when written
# without quotes.  PyYAML's 1.1 rules differ both ways (`yes`, `on` and `12:30` are text to
# conda, `0o17` and `1e3` are not), so plain scalars are judged by this, not by PyYAML.
_YAML12_NON_TEXT_RE = re.compile(
    r"[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+"
    r"|[-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|true|True|TRUE|false|False|FALSE"
    r"|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)?")


def _is_yaml12_text(node: YNode) -> bool:
    if node.quoted or node.text is None:
        return True
    return not _YAML12_NON_TEXT_RE.fullmatch(node.text.strip())


class _Builder:
    """Walks the YAML tree of one file, so every error can name its line and key.

    What conda 26 refuses is refused (a non-text ``name``, a ``dependencies:`` that is no
    list, a spec conda cannot parse); what conda accepts but reads differently from how it
    looks is accepted with a warning (keys conda ignores, pip-style extras in conda specs, a
    second ``pip:`` section, list items run together by an indentation slip).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.warnings: list[str] = []

    def fail(self, line: int, message: str) -> InvalidInput:
        return InvalidInput(f"{where(self.label, line)}: {message}")

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(f"{where(self.label, line)}: {message}")

    def scalar(self, node: YNode, what: str) -> str:
        # The source text, not YAML's reading of it: `python=3.10` and `name: 1.10` stay as is.
        if node.text is None or node.is_null:
            raise self.fail(node.line, f"{what} must be a single value, not {node.describe()}")
        return node.text.strip()

    def variable_value(self, node: YNode) -> str:
        """A ``variables:`` value byte for byte as conda keeps it: a quoted or block value
        keeps its leading and trailing whitespace (a trailing newline too), as YAML gives it."""
        if node.quoted and node.text is not None:
            return node.text
        return self.scalar(node, "a 'variables' value")

    def text_value(self, node: YNode, what: str) -> str:
        """A scalar that conda's YAML 1.2 reads as text, as conda requires (``name: 1.10`` is
        a number, ``name: yes`` is text)."""
        value = self.scalar(node, what)
        if not _is_yaml12_text(node):
            kind = "the boolean" if value.lower() in ("true", "false") else \
                "the date" if re.match(r"\d{4}-", value) else "the number"
            raise self.fail(node.line, f"{what} must be text, not {kind} {value}; quote it: "
                            f"'{value}'")
        return value

    def entry(self, node: YNode, what: str, text: str) -> str:
        """A dependency or pip entry; two list items run together are flagged, not refused:
        conda reads them as one (odd) spec."""
        value = self.scalar(node, what)
        if _RUN_TOGETHER_RE.search(value):
            message = f"{value!r} looks like two list items run together; "
            lines = text.splitlines()[node.line:node.end_line]
            folded = [node.line + 1 + i for i, line in enumerate(lines)
                      if line.lstrip().startswith("-")]
            if folded:
                message += f"check the indentation of line {folded[0]}"
            else:
                message += "put each item on its own '- ' line"
            self.warn(node.line, message)
        return value

    def sequence(self, node: YNode | None, key: str, *, allow_null: bool = False) -> list[YNode]:
        if node is None or (allow_null and node.is_null):
            return []
        if not node.is_sequence:
            raise self.fail(node.line, f"'{key}' must be a list ('- item' lines), "
                            f"not {node.describe()}")
        items: list[YNode] = node.value
        return items

    def build(self, root: YNode | None, text: str, source: Path | None) -> EnvSpec:
        if root is None:
            raise InvalidInput(f"{self.label}: empty environment file; it needs at least "
                               "'dependencies:'")
        if not root.is_mapping:
            raise self.fail(root.line, "top level must be a mapping with keys like 'name:', "
                            f"'channels:' and 'dependencies:', not {root.describe()}")
        sections: dict[str, YNode] = root.value
        unknown = [key for key in sections if key not in _KNOWN_KEYS]
        if "dependencies" not in sections:
            # conda refuses a file without it; a misspelt key is the usual cause.
            typo = next((k for k in unknown if closest(k, ("dependencies",))), None)
            if typo is not None:
                raise self.fail(sections[typo].key_line, f"unknown key {typo!r}; did you mean "
                                "'dependencies'?")
        for key in unknown:
            self.warn(sections[key].key_line, f"unknown key {key!r} is ignored (conda ignores "
                      f"it too); an environment file has {', '.join(_KNOWN_KEYS)}")

        name: str | None = None
        if "name" in sections:
            name = self.text_value(sections["name"], "'name'")
            problem = env_name_problem(name)
            if problem is not None:
                raise self.fail(sections["name"].line, problem)
        if "prefix" in sections:
            self.text_value(sections["prefix"], "'prefix'")

        channels: list[str] = []
        channel_lines: list[int] = []
        for item in self.sequence(sections.get("channels"), "channels"):
            channel = self.text_value(item, "a 'channels' entry")
            if not channel:
                raise self.fail(item.line, "empty 'channels' entry; remove it")
            channels.append(channel)
            channel_lines.append(item.line)

        conda: list[str] = []
        conda_lines: list[int] = []
        pip_items: list[YNode] = []
        pip_sections: list[int] = []
        for item in self.sequence(sections.get("dependencies"), "dependencies"):
            if item.is_mapping:
                section = self.dependency_section(item)
                if section is not None:
                    pip_sections.append(item.line)
                    pip_items = section
                continue
            spec = self.entry(item, "a 'dependencies' entry", text)
            self.text_value(item, "a 'dependencies' entry")
            if not spec:
                raise self.fail(item.line, "empty 'dependencies' entry; remove it")
            try:
                match = parse_match_spec(spec)
            except InvalidInput as exc:
                raise self.fail(item.line, f"{exc}; fix the 'dependencies' entry") from None
            if match.ignored:
                self.warn(item.line, f"conda ignores [{', '.join(match.ignored)}] in {spec!r} "
                          f"(pip-style extras; conda installs {match.reading!r}); list the "
                          "extra packages, or move the line to the 'pip:' section")
            for note in match.notes:
                self.warn(item.line, note)
            conda.append(spec)
            conda_lines.append(item.line)
        if len(pip_sections) > 1:
            earlier = ", ".join(str(line) for line in pip_sections[:-1])
            self.warn(pip_sections[-1], f"{len(pip_sections)} 'pip:' sections: conda installs "
                      f"only this last one and ignores the one(s) on line {earlier}; merge "
                      "them into one")

        pip: list[str] = []
        pip_lines: list[int] = []
        if pip_items:
            # pip's rules (optparse, shlex, the option table; packaging when a requirement is
            # judged) are imported for a spec with pip lines only: a conda-only spec, and every
            # cache hit of one, parses without them.
            from hpcenv.spec.pip_lines import pip_line_problem
        for pip_item in pip_items:
            line = self.entry(pip_item, "a 'pip' entry", text)
            problem = pip_line_problem(line)
            if problem is not None:
                raise self.fail(pip_item.line, f"{problem}; fix the 'pip' entry")
            pip.append(line)
            pip_lines.append(pip_item.line)

        variables: list[tuple[str, str]] = []
        variables_node = sections.get("variables")
        if variables_node is not None:
            if not variables_node.is_mapping:
                raise self.fail(variables_node.line, "'variables' must be a mapping "
                                f"(NAME: value), not {variables_node.describe()}")
            for var, value_node in variables_node.value.items():
                if not is_variable_name(var):
                    raise self.fail(value_node.key_line, f"invalid variable name {var!r} in "
                                    f"'variables': {_VARIABLE_NAME_RULE}")
                value = "" if value_node.is_null else self.variable_value(value_node)
                if "\0" in value:
                    raise self.fail(value_node.line, f"the value of variable {var} holds a NUL "
                                    "character, which no environment variable can carry; "
                                    "remove it from 'variables'")
                variables.append((var, value))

        # Checked last so a more specific problem in another section is reported first.
        if "dependencies" not in sections:
            raise self.fail(root.line, "no 'dependencies:' section; list the packages to "
                            "install under 'dependencies:'")

        return EnvSpec(name=name, channels=tuple(channels), conda=tuple(conda), pip=tuple(pip),
                       variables=tuple(variables), source=source,
                       channel_lines=tuple(channel_lines), conda_lines=tuple(conda_lines),
                       pip_lines=tuple(pip_lines), text=text,
                       warnings=tuple(dict.fromkeys(self.warnings)),
                       has_pip_section=bool(pip_sections))

    def dependency_section(self, item: YNode) -> list[YNode] | None:
        """The entries of a ``- pip:`` item (None for other sections, which conda ignores)."""
        entries: list[YNode] | None = None
        for key, value_node in item.value.items():
            if key != "pip":
                self.warn(value_node.key_line, f"conda ignores the dependency section {key!r}; "
                          "only '- pip:' installs anything")
                continue
            if not value_node.is_null and not value_node.is_sequence:
                # conda would hand pip each character of the text as a requirement.
                raise self.fail(value_node.line, f"'pip' must be a list of requirements, "
                                f"not {value_node.describe()}")
            entries = self.sequence(value_node, "pip", allow_null=True)
        return entries
