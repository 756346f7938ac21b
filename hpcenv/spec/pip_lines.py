"""The lines of a ``pip:`` section, judged by the rules pip itself applies to a requirements file.

conda hands a ``pip:`` section to pip as a requirements file, so a line is valid exactly when pip
accepts it there:

- pip splits a line at the first word that starts with ``-``: words before it are the
  requirement, the rest are options, parsed like a command line (quotes, ``--opt=value``,
  unambiguous abbreviations such as ``--extra-index``);
- the options are the ones pip accepts in requirements files (listed below), whether or not a
  requirement precedes them: ``dipy --only-binary dipy`` is a valid line;
- a requirement is a URL (``https:``, ``file:``, ``git+...``), a local path or archive
  (``./pkg``, ``..``, ``pkg-1.0.tar.gz``), or a PEP 508 requirement as the ``packaging``
  library parses it (pip's own parser): ``nibabel=2.5.1`` is refused, ``nibabel==2.5.1`` is not;
- ``-e`` takes a local path or a VCS URL that names its project (``#egg=`` or ``name @ URL``).

Paths are not looked up: pip resolves them at install time, relative to the environment file.
"""

from __future__ import annotations

import optparse
import re
import shlex
from dataclasses import dataclass
from typing import NoReturn

# Options pip accepts in a requirements file (pip 26), with whether each takes a value.
# ``--global-option`` left pip in 25.3, but envs that pin an older pip still use it.
_OPTIONS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("-i", "--index-url", "--pypi-url"), True),
    (("--extra-index-url",), True),
    (("--no-index",), False),
    (("-c", "--constraint"), True),
    (("-r", "--requirement"), True),
    (("-e", "--editable"), True),
    (("-f", "--find-links"), True),
    (("--no-binary",), True),
    (("--only-binary",), True),
    (("--prefer-binary",), False),
    (("--require-hashes",), False),
    (("--no-require-hashes",), False),
    (("--pre",), False),
    (("--all-releases",), True),
    (("--only-final",), True),
    (("--trusted-host",), True),
    (("--use-feature",), True),
    (("--hash",), True),
    (("-C", "--config-settings"), True),
    (("--global-option",), True),
)
_HASH_ALGORITHMS = ("sha256", "sha384", "sha512")
_VCS = ("git", "hg", "svn", "bzr")
_URL_SCHEMES = ("http", "https", "file", "ftp", *_VCS,
                *(f"{vcs}+{proto}" for vcs in _VCS
                  for proto in ("http", "https", "ssh", "git", "file", "svn", "ftp", "sftp")))
_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz", ".tar.xz",
                     ".txz", ".tlz", ".tar.lz", ".tar.lzma")
# pip drops "# comment" tails and expands ${VAR} (upper case, digits, '_') before parsing.
_COMMENT_RE = re.compile(r"(^|\s+)#.*$")
_ENV_VAR_RE = re.compile(r"\$\{[A-Z0-9_]+\}")
_EGG_RE = re.compile(r"[#&]egg=([^&]+)")


@dataclass(frozen=True)
class PipLine:
    """One requirements-file line split the way pip splits it."""

    requirement: str | None     # the words before the first option, if any
    editables: tuple[str, ...]  # values of -e/--editable
    hashes: tuple[str, ...]     # values of --hash
    config_settings: tuple[str, ...]
    has_options: bool


class _OptionError(Exception):
    pass


class _Parser(optparse.OptionParser):
    """pip's option parser for requirements-file lines; errors raise instead of exiting."""

    def __init__(self) -> None:
        super().__init__(add_help_option=False)
        for flags, takes_value in _OPTIONS:
            self.add_option(*flags, dest=flags[-1].lstrip("-").replace("-", "_"),
                            action="append" if takes_value else "store_true")

    def error(self, msg: str) -> NoReturn:
        raise _OptionError(msg)


def full_option_name(flag: str) -> str:
    """The option pip reads for ``flag``: ``--extra-index`` is ``--extra-index-url`` (pip, like
    any optparse program, takes an unambiguous prefix of a long option); other flags as given."""
    if not flag.startswith("--"):
        return flag
    names = [f for flags, _ in _OPTIONS for f in flags if f.startswith("--")]
    if flag in names:
        return flag
    matches = [name for name in names if name.startswith(flag)]
    return matches[0] if len(matches) == 1 else flag


def is_url(text: str) -> bool:
    """pip's test for a URL requirement: a known scheme before the first ``:``."""
    scheme, sep, _ = text.partition(":")
    return bool(sep) and scheme.lower() in _URL_SCHEMES


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith(".")


def split_pip_line(line: str) -> PipLine:
    """Split ``line`` into its requirement and options as pip does; ValueError with pip's
    reason when the options do not parse."""
    line = _COMMENT_RE.sub("", line).strip()
    words = line.split(" ")
    cut = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
    requirement = " ".join(words[:cut]).strip() or None
    option_text = " ".join(words[cut:]).strip()
    if not option_text:
        return PipLine(requirement, (), (), (), has_options=False)
    try:
        tokens = shlex.split(option_text)
    except ValueError as exc:
        raise ValueError(f"cannot split the options {option_text!r}: {exc}") from None
    try:
        values, _ = _Parser().parse_args(tokens)
    except _OptionError as exc:
        raise ValueError(str(exc)) from None
    return PipLine(requirement, tuple(values.editable or ()), tuple(values.hash or ()),
                   tuple(values.config_settings or ()), has_options=True)


def pip_line_problem(line: str) -> str | None:
    """Why pip would refuse ``line`` in a requirements file, or ``None`` if it accepts it."""
    try:
        parsed = split_pip_line(line)
    except ValueError as exc:
        return f"invalid pip line {line.strip()!r}: {exc}"
    for value in parsed.hashes:
        algorithm, sep, digest = value.partition(":")
        if not sep or not digest or algorithm not in _HASH_ALGORITHMS:
            return (f"pip option --hash {value!r}: write one of {', '.join(_HASH_ALGORITHMS)}, "
                    "a colon and the digest, e.g. --hash=sha256:abcd...")
    for value in parsed.config_settings:
        if "=" not in value:
            return f"pip option --config-settings {value!r}: write KEY=VALUE"
    if parsed.requirement is not None:
        return requirement_problem(parsed.requirement)
    if parsed.editables:
        return _editable_problem(parsed.editables[0])
    if not parsed.has_options:
        return "empty pip line; remove it"
    return None


def requirement_problem(text: str) -> str | None:
    """Why pip refuses ``text`` as the requirement part of a line, or None (pip's rules)."""
    if _ENV_VAR_RE.search(text):
        return None   # pip expands ${VAR} from the environment of the build
    # packaging (~10 ms to import) only for a spec with pip lines: importing this module, as the
    # spec parser and the CUDA rules do, is paid by every spec, pip section or not.
    from packaging.markers import InvalidMarker, Marker
    from packaging.requirements import InvalidRequirement, Requirement

    url = is_url(text)
    name, sep, markers = text.partition("; " if url else ";")
    if sep and markers.strip():
        try:
            Marker(markers.strip())
        except InvalidMarker as exc:
            return f"invalid pip requirement {text!r}: bad environment marker: {_first_line(exc)}"
    name = name.strip()
    if url:
        return None
    at_head = name.split("@", 1)[0]
    if _looks_like_path(name) and not ("@" in name and not _looks_like_path(at_head)):
        return None   # a local directory or archive, resolved when pip runs
    if name.lower().endswith(_ARCHIVE_SUFFIXES) and "@" not in name:
        return None
    try:
        Requirement(name)
    except InvalidRequirement as exc:
        hint = ""
        if "=" in name and not any(op in name for op in ("~=", "==", "!=", "<=", ">=", "===")):
            hint = "; '=' is not a pip operator: write '==' (e.g. 'numpy==1.26.4')"
        return f"invalid pip requirement {name!r}: {_first_line(exc)}{hint}"
    return None


def _editable_problem(value: str) -> str | None:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        if Requirement(value).url:
            return None
    except InvalidRequirement:
        pass
    target = re.sub(r"\[[^\]]*\]$", "", value)
    if target.lower().startswith("file:"):
        return None
    scheme = target.partition(":")[0].lower() if ":" in target else ""
    if scheme in _URL_SCHEMES and scheme.split("+")[0] in _VCS:
        if _EGG_RE.search(target) is None:
            return (f"pip option -e {value!r}: pip cannot tell the project's name; add "
                    "'#egg=NAME' or write 'NAME @ URL'")
        return None
    if scheme in _URL_SCHEMES or "://" in target:
        return (f"pip option -e {value!r}: an editable install needs a local path or a VCS URL "
                "(git+https://..., hg+..., svn+..., bzr+...)")
    return None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
