"""Conda ``environment.yml`` files: parsing, normalisation, content hash and env-name rules.

Files are parsed the way people really write them (see the corpus under ``shared/corpus``):
comments and blank lines inside lists, ``---`` document markers, ``prefix:`` lines from
``conda env export``, ``variables:``, ``channel::pkg`` specs, spaces inside specs
(``python >= 3.8``), ``name version build`` triples and ``pip:`` sections with option lines.
Scalars are taken as written (``python=3.10`` stays ``3.10``; YAML never turns it into a float),
and every dependency keeps the line it came from so CUDA inference can quote it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hpcenv.errors import InvalidInput, shown_value, where
from hpcenv.yamlio import YNode, load_yaml_text, read_text_file

_ENV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME_RULE = ("use 1-64 characters from letters, digits, '.', '_' and '-', starting with a "
                  "letter or digit, with no '/' and no '..' (e.g. 'cv-resnet50-exp1')")

# `prefix:` is machine-specific output of `conda env export` and `platforms:` is read by
# conda-lock; neither defines the environment's content, so both are accepted and ignored.
_KNOWN_KEYS = ("name", "channels", "dependencies", "variables", "prefix", "platforms")

# Variable names reach activation scripts (`export NAME=...`) and the process environment, so
# only portable shell identifiers are accepted: anything else would be shell code or unsettable.
_VARIABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VARIABLE_NAME_RULE = ("a variable name must match ^[A-Za-z_][A-Za-z0-9_]*$ (letters, digits "
                       "and '_', not starting with a digit), e.g. OMP_NUM_THREADS")

_OPERATOR_CHARS = "=<>!~"
# Whitespace around operators and separators carries no meaning in a match spec:
# "python >= 3.8, < 3.10" is "python>=3.8,<3.10".
_SQUEEZE_RE = re.compile(r"\s*([=<>!~,|])\s*")
_SPEC_NAME_RE = re.compile(r"[A-Za-z0-9_*][A-Za-z0-9_.*+-]*")
_PIP_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$", re.DOTALL)
_PIP_OPTION_RE = re.compile(r"^(-{1,2}[A-Za-z][A-Za-z-]*)(?:(?:=|\s+)(.*))?$", re.DOTALL)

# What conda's own version parser accepts, plus `=<` (written in real files, see the corpus).
# conda reads a '-' inside a version as '_' (`1.0-1`), so it is allowed after the first character.
_VERSION_TERM_RE = re.compile(r"(?:==|!=|>=|<=|~=|=<|>|<|=)?[A-Za-z0-9_.*+!][A-Za-z0-9_.*+!-]*")
_VERSION_RULE = ("write an operator (==, !=, >=, <=, >, <, ~=, =) and a version, "
                 "e.g. 'python>=3.10,<3.12' or 'python=3.11'")
_BUILD_RE = re.compile(r"[A-Za-z0-9_.*+!-]+")
_BRACKET_KEYS = ("version", "build", "channel", "subdir", "build_number", "md5", "sha256",
                 "url", "fn", "license", "features", "track_features")
# A list item indented one level too deep is folded into the previous plain scalar by YAML:
# "- python=3.11\n    - pip" reads as the single spec "python=3.11 - pip".
_BRACKET_ITEM_RE = re.compile(r"""\s*([A-Za-z_]+)\s*=\s*('[^']*'|"[^"]*"|[^,'"]*?)\s*(?:,|$)""")
_RUN_TOGETHER_RE = re.compile(r"\s-(?:\s|$)")

# Options pip accepts in a requirements file (pip's req_file SUPPORTED_OPTIONS), with whether
# they need a value.
_PIP_OPTIONS: dict[str, bool] = {
    "-i": True, "--index-url": True, "--extra-index-url": True, "--no-index": False,
    "-c": True, "--constraint": True, "-r": True, "--requirement": True,
    "-e": True, "--editable": True, "-f": True, "--find-links": True,
    "--no-binary": True, "--only-binary": True, "--prefer-binary": False,
    "--require-hashes": False, "--pre": False, "--trusted-host": True, "--use-feature": True,
}
# Options pip allows after a requirement on the same line.
_PIP_REQUIREMENT_OPTIONS = ("--hash", "--global-option", "--config-settings")
_PIP_REQ_RE = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?:\s*\[\s*[A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*\s*\])?"
    r"(?P<rest>.*)", re.DOTALL)
# `=` is not PEP 440, but real files use it (`dm-tree=0.1.8`, see the corpus) and old pips
# took it; rejecting it here would refuse files that build.
_PIP_VERSION_TERM_RE = re.compile(r"(?:===|==|!=|>=|<=|~=|>|<|=)\s*[A-Za-z0-9_.*+!-]+")


def _name_problem(name: str) -> str | None:
    if ".." in name or not _ENV_NAME_RE.fullmatch(name):
        return f"invalid environment name {shown_value(name)}: {_ENV_NAME_RULE}"
    return None


def validate_env_name(name: str) -> str:
    """Return ``name`` if it is a valid environment name, else raise InvalidInput.

    Names become directory names on shared filesystems, so no path separators, no ``..`` and
    no leading punctuation: ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``.
    """
    problem = _name_problem(name)
    if problem is not None:
        raise InvalidInput(problem)
    return name


def is_variable_name(name: str) -> bool:
    """True for names an env's ``variables:`` may set: ``^[A-Za-z_][A-Za-z0-9_]*$``."""
    return _VARIABLE_NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class MatchSpec:
    """A conda match spec split into its parts; ``version`` keeps its operator (``>=3.8``)."""

    name: str
    version: str | None = None
    build: str | None = None
    channel: str | None = None


def squeeze_spec(text: str) -> str:
    """Canonical spelling of a spec: no space around operators, single spaces elsewhere."""
    text = " ".join(text.split())
    text = _SQUEEZE_RE.sub(r"\1", text)
    return re.sub(r"\s*::\s*", "::", text)


def _split_build(constraint: str) -> tuple[str, str | None]:
    """Split ``>=0.3=*cuda*`` / ``=1.0=py38_0`` into version and build at the separating ``=``.

    The separator is an ``=`` that is neither the first character nor part of an operator
    (``==``, ``>=``, ``<=``, ``!=``, ``~=``, ``=<``).
    """
    for i in range(1, len(constraint)):
        if constraint[i] != "=":
            continue
        before, after = constraint[i - 1], constraint[i + 1:i + 2]
        if before in _OPERATOR_CHARS or after in ("=", "<", ">"):
            continue
        return constraint[:i], constraint[i + 1:] or None
    return constraint, None


def parse_match_spec(text: str) -> MatchSpec:
    """Parse and check a conda match spec as written in environment files.

    Handles ``name``, ``name=1.0``, ``name==1.0``, ``name >=1.0,<2``, ``name=1.0=build``,
    ``name 1.0 build``, ``name >=1.0 build``, ``name=*=*cuda*``, ``name >= 0.3=*cuda*``,
    ``channel::name...`` (the channel may be a label path such as
    ``nvidia/label/cuda-11.7.1``) and the bracket form ``name[version='>=1.0',build=*cuda*]``.
    Operators, version and build characters are checked so that typos (``python>=>3.11``)
    are caught when the file is read, not by the solver.  Raises InvalidInput naming the spec.
    """
    spec = squeeze_spec(text)
    channel: str | None = None
    if "::" in spec:
        channel, spec = spec.split("::", 1)
        if not channel or " " in channel:
            raise InvalidInput(f"invalid conda spec {text!r}: bad channel {channel!r} "
                               "before '::'")
    match = _SPEC_NAME_RE.match(spec)
    if match is None:
        raise InvalidInput(f"invalid conda spec {text!r}: it must start with a package name")
    name, rest = match.group(0), spec[match.end():]
    bracket: dict[str, str] = {}
    if rest.endswith("]") and "[" in rest:
        cut = rest.index("[")
        rest, bracket = rest[:cut], _parse_brackets(text, rest[cut:])
    elif "[" in rest:
        raise InvalidInput(f"invalid conda spec {text!r}: unclosed '['")
    version: str | None = None
    build: str | None = None
    if rest and rest[0] in _OPERATOR_CHARS:
        constraint, _, build = rest.partition(" ")
        version, build_part = _split_build(constraint)
        if build_part is not None:
            if build:
                raise InvalidInput(f"invalid conda spec {text!r}: two build strings")
            build = build_part
    elif rest.startswith(" "):
        parts = rest.split()
        if len(parts) > 2:
            raise InvalidInput(f"invalid conda spec {text!r}: expected 'name [version [build]]'")
        version = parts[0]
        build = parts[1] if len(parts) == 2 else None
    elif rest:
        raise InvalidInput(f"invalid conda spec {text!r}: unexpected {rest!r} after the name")
    version = bracket.get("version", version) or None
    build = bracket.get("build", build) or None
    if version is not None:
        _check_version(text, version)
    if build is not None and not _BUILD_RE.fullmatch(build):
        raise InvalidInput(f"invalid conda spec {text!r}: bad build string {build!r}; use "
                           "letters, digits and '_.*+!-' (e.g. '*cuda*')")
    return MatchSpec(name=name, version=version, build=build,
                     channel=bracket.get("channel", channel))


def _check_version(text: str, version: str) -> None:
    if version.count("(") != version.count(")"):
        raise InvalidInput(f"invalid conda spec {text!r}: unbalanced parentheses in "
                           f"{version!r}")
    for term in re.split(r"[,|]", version.replace("(", "").replace(")", "")):
        if not _VERSION_TERM_RE.fullmatch(term):
            raise InvalidInput(f"invalid conda spec {text!r}: bad version constraint "
                               f"{term or version!r}; {_VERSION_RULE}")


def _parse_brackets(text: str, rest: str) -> dict[str, str]:
    """``[version='>=1.0,<2',build=*cuda*]`` as a dict; commas inside quotes are kept."""
    body, pos = rest[1:-1], 0
    fields: dict[str, str] = {}
    while pos < len(body) or not fields:
        item = _BRACKET_ITEM_RE.match(body, pos)
        if item is None or item.end() == pos:
            raise InvalidInput(f"invalid conda spec {text!r}: expected key=value pairs inside "
                               "[...], e.g. [version='>=1.0',build=*cuda*]")
        key, value = item.group(1), item.group(2).strip("'\"")
        if key not in _BRACKET_KEYS:
            raise InvalidInput(f"invalid conda spec {text!r}: unknown key {key!r} inside [...] "
                               f"(known: {', '.join(_BRACKET_KEYS)})")
        fields[key] = value
        pos = item.end()
    return fields


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
    return option.group(1), value or None


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
    if rest and not (rest[0] in "[=<>!~;@ ,"):
        return line
    return re.sub(r"[-_.]+", "-", name).lower() + _SQUEEZE_RE.sub(r"\1", rest)


def pip_line_problem(line: str) -> str | None:
    """Why ``line`` is no pip requirement-file line, or ``None`` if it looks like one.

    A light check, meant to catch typos before a build: a recognised option, a URL or path,
    or a PEP 508 name with extras, version constraints, ``@ URL`` and markers.
    """
    line = " ".join(line.split())
    if is_pip_option(line):
        option = split_pip_option(line)
        flag, value = option if option is not None else (line[:2], line[2:] or None)
        if flag not in _PIP_OPTIONS:
            return (f"unknown pip option {flag!r}; a requirements file accepts "
                    f"{', '.join(o for o in _PIP_OPTIONS if o.startswith('--'))}")
        if _PIP_OPTIONS[flag] and value is None:
            return f"pip option {flag!r} needs a value (e.g. '{flag} ...')"
        return None
    if "://" in line or line.startswith((".", "/", "~")) or "/" in line.split(" ")[0] \
            or "\\" in line:
        return None
    match = _PIP_REQ_RE.fullmatch(line)
    if match is None:
        return f"invalid pip requirement {line!r}: it must start with a package name"
    rest = match.group("rest").partition(";")[0]
    for flag in _PIP_REQUIREMENT_OPTIONS:
        rest = rest.partition(f" {flag}")[0]
    rest = rest.strip()
    if rest.startswith("@"):
        if len(rest) > 1:
            return None
        return f"invalid pip requirement {line!r}: a URL must follow '@'"
    if rest.startswith("(") and rest.endswith(")"):
        rest = rest[1:-1]
    if rest and rest[0] not in "=<>!~":
        return (f"invalid pip requirement {line!r}: unexpected {rest!r} after the package "
                "name; write 'name', 'name==1.0' or 'name>=1.0,<2'")
    if rest and not all(_PIP_VERSION_TERM_RE.fullmatch(term.strip())
                        for term in rest.split(",")):
        return (f"invalid pip requirement {line!r}: bad version constraint {rest!r}; write e.g. "
                "'requests>=2.31,<3' or 'requests==2.31.0'")
    return None


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
            "conda": sorted({canonical_conda_spec(s) for s in self.conda}),
            "pip": {"options": pip_options, "requirements": pip_reqs},
            "variables": sorted([k, v] for k, v in self.variables),
        }

    def content_hash(self) -> str:
        """sha256 hex of :meth:`normalized` as compact, key-sorted JSON (stable across runs)."""
        blob = json.dumps(self.normalized(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_spec(path: Path | str) -> EnvSpec:
    """Read and parse an environment file; InvalidInput (``file:line: ...``) on any problem."""
    path = Path(path)
    return parse_spec(read_text_file(path, "environment file"), source=path)


def parse_spec(text: str, source: Path | None = None) -> EnvSpec:
    """Parse environment-file text; ``source`` is only used in messages and provenance."""
    label = str(source) if source is not None else "<environment.yml>"
    root = load_yaml_text(text, label)
    return _Builder(label).build(root, text, source)


class _Builder:
    """Walks the YAML tree of one file, so every error can name its line and key."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, line: int, message: str) -> InvalidInput:
        return InvalidInput(f"{where(self.label, line)}: {message}")

    def scalar(self, node: YNode, what: str) -> str:
        # The source text, not YAML's reading of it: `python=3.10` and `name: 1.10` stay as is.
        if node.text is None or node.is_null:
            raise self.fail(node.line, f"{what} must be a single value, not {node.describe()}")
        return node.text.strip()

    def entry(self, node: YNode, what: str, text: str) -> str:
        """A dependency or pip entry, refused when it holds two list items run together."""
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
            raise self.fail(node.line, message)
        return value

    def sequence(self, node: YNode | None, key: str) -> list[YNode]:
        if node is None or node.is_null:
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
        for key, node in sections.items():
            if key not in _KNOWN_KEYS:
                raise self.fail(node.key_line, f"unknown key {key!r}; an environment file has "
                                f"{', '.join(_KNOWN_KEYS)}")

        name: str | None = None
        if "name" in sections and not sections["name"].is_null:
            name = self.scalar(sections["name"], "'name'")
            problem = _name_problem(name)
            if problem is not None:
                raise self.fail(sections["name"].line, problem)

        channels: list[str] = []
        channel_lines: list[int] = []
        for item in self.sequence(sections.get("channels"), "channels"):
            channel = self.scalar(item, "a 'channels' entry")
            if not channel:
                raise self.fail(item.line, "empty 'channels' entry; remove it")
            channels.append(channel)
            channel_lines.append(item.line)

        conda: list[str] = []
        conda_lines: list[int] = []
        pip: list[str] = []
        pip_lines: list[int] = []
        for item in self.sequence(sections.get("dependencies"), "dependencies"):
            if item.is_mapping:
                for pip_item in self.pip_section(item):
                    line = self.entry(pip_item, "a 'pip' entry", text)
                    problem = pip_line_problem(line)
                    if problem is not None:
                        raise self.fail(pip_item.line, f"{problem}; fix the 'pip' entry")
                    pip.append(line)
                    pip_lines.append(pip_item.line)
                continue
            spec = self.entry(item, "a 'dependencies' entry", text)
            if not spec:
                raise self.fail(item.line, "empty 'dependencies' entry; remove it")
            try:
                parse_match_spec(spec)
            except InvalidInput as exc:
                raise self.fail(item.line, f"{exc}; fix the 'dependencies' entry") from None
            conda.append(spec)
            conda_lines.append(item.line)

        variables: list[tuple[str, str]] = []
        variables_node = sections.get("variables")
        if variables_node is not None and not variables_node.is_null:
            if not variables_node.is_mapping:
                raise self.fail(variables_node.line, "'variables' must be a mapping "
                                f"(NAME: value), not {variables_node.describe()}")
            for var, value_node in variables_node.value.items():
                if not is_variable_name(var):
                    raise self.fail(value_node.key_line, f"invalid variable name {var!r} in "
                                    f"'variables': {_VARIABLE_NAME_RULE}")
                value = "" if value_node.is_null else self.scalar(value_node,
                                                                  "a 'variables' value")
                variables.append((var, value))

        # Checked last so a more specific problem in another section is reported first.
        if "dependencies" not in sections:
            # Without it conda creates an empty env: almost always a slip, never what a
            # shared, built-once environment should be.
            raise self.fail(root.line, "no 'dependencies:' section; list the packages to "
                            "install under 'dependencies:'")

        return EnvSpec(name=name, channels=tuple(channels), conda=tuple(conda), pip=tuple(pip),
                       variables=tuple(variables), source=source,
                       channel_lines=tuple(channel_lines), conda_lines=tuple(conda_lines),
                       pip_lines=tuple(pip_lines), text=text)

    def pip_section(self, item: YNode) -> list[YNode]:
        entries: list[YNode] = []
        for key, value_node in item.value.items():
            if key != "pip":
                raise self.fail(value_node.key_line, f"unsupported dependency section {key!r}; "
                                "only '- pip:' may hold a list inside 'dependencies'")
            if not value_node.is_null and not value_node.is_sequence:
                raise self.fail(value_node.line, f"'pip' must be a list of requirements, "
                                f"not {value_node.describe()}")
            entries.extend(self.sequence(value_node, "pip"))
        return entries
