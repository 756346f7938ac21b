"""Site-config settings declared once: a dataclass field made with :func:`setting` carries its
value kind (how YAML text becomes the value, with ``file:line`` errors), its default and its help.

From those declarations come the reader (:func:`read_section`: unknown keys with "did you mean",
defaults, provenance), the effective config as data (:func:`dump_section`, for ``site show`` and
``--json``) and the README's reference table (:mod:`hpcenv.site.reference`).  Adding a key is one
field declaration; a cross-field rule is a section's ``check``.

Defaults that depend on the environment (``${XDG_DATA_HOME:-~/.local/share}/hpcenv/envs``) are
given as YAML text (``yaml_default``) and read by the same kind as a value from a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hpcenv.errors import InvalidInput, where
from hpcenv.yamlio import YNode, closest

DEFAULT = "default"  # provenance of a value no file set

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*")


def setting(kind: Kind, help: str, *, default: Any = MISSING,
            default_factory: Callable[[], Any] | Any = MISSING, yaml_default: Any = MISSING,
            required: str | None = None) -> Any:
    """A site-config key: a dataclass field whose metadata says how to read, show and document it.

    ``default``/``default_factory`` are Python values; ``yaml_default`` is a default written as
    in a site file (environment variables, ``~``), read by ``kind`` when the file omits the key.
    ``required``: the key must be written; the text says how (``add host: login.example.org``).
    """
    metadata = {"kind": kind, "help": help, "yaml_default": yaml_default, "required": required}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def settings_of(cls: type) -> dict[str, Field[Any]]:
    """The declared settings of a section class, in declaration order."""
    return {f.name: f for f in fields(cls) if "kind" in f.metadata}


class Reader:
    """Reads one site file's YAML tree; every error names ``file:line: key``."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.file = path
        self.base = path.parent.absolute()
        self.env = environ
        self.provenance: dict[str, str] = {}

    def fail(self, node: YNode | int | None, key: str, problem: str, fix: str) -> InvalidInput:
        line = node.line if isinstance(node, YNode) else node
        prefix = f"{key}: " if key else ""
        return InvalidInput(f"{where(self.file, line)}: {prefix}{problem}; {fix}")

    def at(self, node: YNode) -> str:
        return f"{self.file}:{node.key_line}"

    def record(self, key: str, node: YNode) -> None:
        self.provenance[key] = self.at(node)

    def mapping(self, node: YNode, key: str, allowed: Sequence[str]) -> dict[str, YNode]:
        allowed = tuple(allowed)
        if not node.is_mapping:
            raise self.fail(node, key, f"expected a mapping of {', '.join(allowed[:3])}, ..., "
                            f"got {node.describe()}",
                            f"write it as '{key}:' followed by indented keys")
        for name, child in node.value.items():
            if name not in allowed:
                where_ = f" in {key}" if key else ""
                close = closest(name, allowed)
                hint = (f"did you mean {close!r}?" if close
                        else f"valid keys: {', '.join(allowed)}")
                raise InvalidInput(f"{where(self.file, child.key_line)}: unknown key "
                                   f"{name!r}{where_} ({hint})")
        items: dict[str, YNode] = node.value
        return items

    def mapping_any(self, node: YNode, key: str) -> dict[str, YNode]:
        if node.value is None:
            return {}
        if not node.is_mapping:
            raise self.fail(node, key, f"expected a mapping, got {node.describe()}",
                            f"write '{key}:' followed by indented 'name: value' lines")
        items: dict[str, YNode] = node.value
        return items

    def expand(self, node: YNode, key: str, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            name, has_default, default = m.group(1), m.group(2), m.group(3)
            value = self.env.get(name)
            if value:  # like the shell's :-, an empty variable takes the default too
                return value
            if has_default is not None:
                return default or ""
            raise self.fail(node, key, f"environment variable {name} is not set",
                            f"set it, or write ${{{name}:-fallback}}")
        expanded = _VAR.sub(repl, text)
        if "${" in expanded:
            raise self.fail(node, key, f"cannot expand {text!r}",
                            "write variables as ${NAME} or ${NAME:-default}")
        return expanded

    def string(self, node: YNode, key: str, *, allow_none: bool = True) -> str | None:
        if node.value is None and allow_none:
            return None
        if isinstance(node.value, (dict, list)) or node.value is None:
            raise self.fail(node, key, f"expected text, got {node.describe()}",
                            "write a single value")
        # Scalars keep their source spelling: `qos: 2024` stays "2024", `time: 1:00:00` is not
        # YAML 1.1's sexagesimal 3600.
        text = node.text if node.text is not None else str(node.value)
        if "\n" in text or "\x00" in text:
            raise self.fail(node, key, "contains a line break or NUL", "write it on one line")
        return text

    def required_string(self, node: YNode, key: str) -> str:
        text = self.string(node, key, allow_none=False)
        assert text is not None
        if not text.strip():
            raise self.fail(node, key, "is empty", "give it a value or remove the key")
        return text

    def string_list(self, node: YNode, key: str) -> list[tuple[YNode, str]]:
        items = node.value if node.is_sequence else [node] if isinstance(node.value, str) else None
        if items is None:
            raise self.fail(node, key, f"expected a list, got {node.describe()}",
                            f"write '{key}: [a, b]' or one '- item' per line")
        return [(item, self.required_string(item, key)) for item in items]

    def path(self, node: YNode, key: str) -> Path:
        if node.value is not None and not isinstance(node.value, (str, list, dict)):
            raise self.fail(node, key, f"expected a path, got {node.describe()}",
                            "write a directory path (absolute, or relative to this file)")
        text = self.expand(node, key, self.required_string(node, key))
        if text.startswith("file://"):
            text = text[len("file://"):]
        elif "://" in text:
            raise self.fail(node, key, f"{text!r} is a URL, not a filesystem path",
                            "give a directory path (absolute, or relative to this file)")
        expanded = expand_home(text, self.env)
        if expanded.startswith("~"):
            raise self.fail(node, key, f"cannot expand {text!r} (unknown user)",
                            "write an absolute path")
        if not expanded.strip():
            raise self.fail(node, key, "expands to an empty path",
                            "set the variables it uses or give a default with ${VAR:-path}")
        return Path(os.path.normpath(self.base / expanded))

    def channel(self, node: YNode, key: str) -> str:
        raw = self.required_string(node, key)
        text = self.expand(node, key, raw).strip()
        if text.startswith(("http://", "https://")):
            return text.rstrip("/")
        if text.startswith("file://") or text.startswith(("/", "./", "../", "~")) or text in (
                ".", ".."):
            return self.path(node, key).as_uri()
        if _CHANNEL_NAME.fullmatch(text):
            return text
        raise self.fail(node, key, f"{raw!r} is not a channel name (like conda-forge), a URL, "
                        "or a path", "write local channels as absolute paths, ./relative paths "
                        "or file:// URLs")


def expand_home(text: str, env: Mapping[str, str]) -> str:
    # $HOME from the environment the config is read under (tests pass their own), then pwd.
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME")
        if home:
            return home + text[1:]
    return os.path.expanduser(text)


def yaml_node(value: Any) -> YNode:
    """A default written as YAML data, as a node without a line (errors name no line)."""
    if isinstance(value, dict):
        return YNode({k: yaml_node(v) for k, v in value.items()}, 0, 0)
    if isinstance(value, (list, tuple)):
        return YNode([yaml_node(v) for v in value], 0, 0)
    text = None if value is None else ("true" if value is True else "false" if value is False
                                       else str(value))
    return YNode(value, 0, 0, text)


# --------------------------------------------------------------------------- value kinds

class Kind:
    """How one setting's YAML value is read, shown as data and documented."""

    shape = "value"

    def read(self, r: Reader, node: YNode, key: str) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [self.dump(v) for v in value]
        if isinstance(value, Mapping):
            return {k: self.dump(v) for k, v in value.items()}
        return value


@dataclass(frozen=True)
class Choice(Kind):
    """One of ``options``, spelled exactly (a near miss gets "did you mean")."""

    options: tuple[str, ...]

    @property
    def shape(self) -> str:  # type: ignore[override]
        return " \\| ".join(self.options)

    def read(self, r: Reader, node: YNode, key: str) -> str:
        value = node.value
        if not isinstance(value, str) or value not in self.options:
            shown = node.text if node.text is not None else node.describe()
            close = closest(str(shown), self.options)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise r.fail(node, key, f"{shown!r} is not one of {' | '.join(self.options)}{hint}",
                         f"use one of: {', '.join(self.options)}")
        return value


@dataclass(frozen=True)
class Text(Kind):
    """One line of text, optional (null) unless ``required``; ``check`` returns a problem or
    None; ``pattern`` must match the whole text (``what``/``fix`` say what it should be)."""

    required: bool = False
    pattern: re.Pattern[str] | None = None
    mismatch: str = "is not a valid value"   # said after the quoted text when pattern fails
    fix: str = ""
    check: Callable[[str], str | None] | None = None   # the whole problem, or None
    shape: str = "text"

    def read(self, r: Reader, node: YNode, key: str) -> str | None:
        text = r.required_string(node, key) if self.required else r.string(node, key)
        if text is None:
            return None
        if self.pattern is not None and not self.pattern.fullmatch(text):
            raise r.fail(node, key, f"{text!r} {self.mismatch}", self.fix)
        problem = self.check(text) if self.check is not None else None
        if problem is not None:
            raise InvalidInput(f"{where(r.file, node.line)}: {key}: {problem}")
        return text


@dataclass(frozen=True)
class Integer(Kind):
    """A whole number from ``minimum`` to ``maximum`` (no bound when None); null only if
    ``optional``."""

    minimum: int
    maximum: int | None = None
    optional: bool = False
    shape: str = "whole number"

    def read(self, r: Reader, node: YNode, key: str) -> int | None:
        value = node.value
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise r.fail(node, key, f"expected a whole number, got {node.describe()}",
                         f"write a number like {max(self.minimum, 1)}")
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            bound = (f"between {self.minimum} and {self.maximum}" if self.maximum is not None
                     else f">= {self.minimum}")
            raise r.fail(node, key, f"{value} is out of range", f"use a number {bound}")
        return value


@dataclass(frozen=True)
class Seconds(Kind):
    """A positive, finite number of seconds; null only if ``optional``."""

    optional: bool = False
    shape: str = "seconds"

    def read(self, r: Reader, node: YNode, key: str) -> float | None:
        value = node.value
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
                or value != value or value == float("inf"):
            raise r.fail(node, key, f"expected a positive number of seconds, got "
                         f"{node.text if node.text is not None else node.describe()!r}",
                         "write e.g. 3600" + (" (or null)" if self.optional else ""))
        return float(value)


@dataclass(frozen=True)
class Boolean(Kind):
    """true or false, nothing YAML would merely read as truthy."""

    shape: str = "true \\| false"

    def read(self, r: Reader, node: YNode, key: str) -> bool:
        if not isinstance(node.value, bool):
            raise r.fail(node, key, f"expected true or false, got {node.describe()}",
                         "write true or false")
        return node.value


def _own_dir(r: Reader, node: YNode, key: str, path: Path) -> Path:
    # hpcenv creates entries directly under these dirs (env names, .hpcenv/, records): the
    # filesystem root would put them beside /usr and /etc.
    if path == Path(path.anchor):
        raise r.fail(node, key, f"{path} is the filesystem root",
                     "give a directory of its own, e.g. /shared/conda/envs")
    return path


@dataclass(frozen=True)
class PathValue(Kind):
    """A directory or file path; relative paths resolve against the site file's directory.
    ``own_dir``: a directory hpcenv fills, so never the filesystem root."""

    optional: bool = False
    own_dir: bool = False
    shape: str = "path"

    def read(self, r: Reader, node: YNode, key: str) -> Path | None:
        if node.value is None and self.optional:
            return None
        path = r.path(node, key)
        return _own_dir(r, node, key, path) if self.own_dir else path


@dataclass(frozen=True)
class PathList(Kind):
    """Directories hpcenv fills (never the filesystem root), at least one."""

    shape: str = "list of paths"

    def read(self, r: Reader, node: YNode, key: str) -> tuple[Path, ...]:
        items = r.string_list(node, key)
        if not items:
            raise r.fail(node, key, "needs at least one directory", "list one or more directories")
        return tuple(_own_dir(r, item, key, r.path(item, key)) for item, _ in items)


@dataclass(frozen=True)
class ChannelList(Kind):
    """Channels by name, URL or path (a path becomes a ``file://`` URL)."""

    shape: str = "list of channels"

    def read(self, r: Reader, node: YNode, key: str) -> tuple[str, ...]:
        return tuple(r.channel(item, key) for item, _ in r.string_list(node, key))


@dataclass(frozen=True)
class ChannelMap(Kind):
    """Channel name -> local path or URL (mirrors for offline sites)."""

    shape: str = "channel: path or URL"

    def read(self, r: Reader, node: YNode, key: str) -> Mapping[str, str]:
        out: dict[str, str] = {}
        for name, child in r.mapping_any(node, key).items():
            if not _CHANNEL_NAME.fullmatch(name):
                raise r.fail(child.key_line, key, f"{name!r} is not a channel name",
                             "map channel names (like conda-forge) to a path or URL")
            r.record(f"{key}.{name}", child)
            url = r.channel(child, f"{key}.{name}")
            if not url.startswith(("file://", "http://", "https://")):
                raise r.fail(child, f"{key}.{name}", f"{url!r} is not a path or URL",
                             "give the mirror's directory or URL")
            out[name] = url
        return MappingProxyType(out)

    def dump(self, value: Any) -> Any:
        return dict(value)


@dataclass(frozen=True)
class Url(Kind):
    """An http(s):// URL, a file:// URL or a directory path (made a file:// URL)."""

    optional: bool = False
    shape: str = "URL or path"

    def read(self, r: Reader, node: YNode, key: str) -> str | None:
        if node.value is None and self.optional:
            return None
        text = r.expand(node, key, r.required_string(node, key)).strip()
        if text.startswith(("http://", "https://")):
            return text
        if text.startswith("file://") or text.startswith(("/", ".", "~")):
            return r.path(node, key).as_uri()
        raise r.fail(node, key, f"{text!r} is not a URL or path",
                     "write an http(s):// URL, a file:// URL or a directory path")


@dataclass(frozen=True)
class ListOf(Kind):
    """A list of one-line texts, each read by ``item``."""

    item: Kind
    shape: str = "list"

    def read(self, r: Reader, node: YNode, key: str) -> tuple[Any, ...]:
        return tuple(self.item.read(r, item, key) for item, _ in r.string_list(node, key))


@dataclass(frozen=True)
class OctalMode(Kind):
    """A directory mode written in octal (``"2775"``), never writable by everyone."""

    shape: str = "octal mode text"

    def read(self, r: Reader, node: YNode, key: str) -> int | None:
        text = r.string(node, key)
        if text is None:
            return None
        # The source text is read as octal whether or not it was quoted: YAML would turn an
        # unquoted 2775 into decimal and 02775 into 1533.
        if not re.fullmatch(r"0?[0-7]{3,4}", text):
            raise r.fail(node, key, f"{text!r} is not an octal mode",
                         "write it like \"2775\" (setgid, group-writable)")
        mode = int(text, 8)
        if mode & 0o002:
            # Anyone could then plant files in the lab's dirs, or lock files the lab must open.
            raise r.fail(node, key, f"{text!r} lets everyone write the shared dirs",
                         "write \"2775\" (everyone reads) or \"2770\" (the group alone)")
        return mode

    def dump(self, value: Any) -> Any:
        return None if value is None else format(value, "04o")


SectionCheck = Callable[[Reader, Any, Mapping[str, YNode], YNode, str], None]


@dataclass(frozen=True)
class Section(Kind):
    """A mapping of the settings ``cls`` declares; ``check`` adds cross-field rules."""

    cls: type
    check: SectionCheck | None = None
    shape: str = "section"

    def read(self, r: Reader, node: YNode, key: str) -> Any:
        return read_section(r, self.cls, node, key, check=self.check)

    def dump(self, value: Any) -> Any:
        return dump_section(value)


@dataclass(frozen=True)
class NamedSections(Kind):
    """Several sections of ``cls`` each with a unique name: a list of mappings with a ``name:``
    key (``as_list``, order kept) or a mapping ``NAME: {...}``.  Provenance: ``key.NAME``."""

    cls: type
    name_pattern: re.Pattern[str]
    noun: str                     # what one is called in messages: "partition", "remote"
    as_list: bool
    check: SectionCheck | None = None
    omit_empty: bool = False      # dump: leave out None/0 values (the name stays)
    shape: str = "section per name"

    def read(self, r: Reader, node: YNode, key: str) -> Any:
        if self.as_list:
            return self._read_list(r, node, key)
        out: dict[str, Any] = {}
        for name, child in r.mapping_any(node, key).items():
            if not self.name_pattern.fullmatch(name):
                raise r.fail(child.key_line, key, f"{name!r} is not a {self.noun} name",
                             "use letters, digits, '.', '_' and '-'")
            full = f"{key}.{name}"
            r.record(full, child)
            out[name] = read_section(r, self.cls, child, full, check=self.check,
                                     given={"name": name, "source": r.at(child)},
                                     record=False)
        return MappingProxyType(out)

    def _read_list(self, r: Reader, node: YNode, key: str) -> tuple[Any, ...]:
        if not node.is_sequence:
            raise r.fail(node, key, f"expected a list, got {node.describe()}",
                         "write one '- {name: ...}' entry per item")
        seen: dict[str, int] = {}
        out = []
        for index, item in enumerate(node.value):
            at = f"{key}[{index}]"
            items = r.mapping(item, at, tuple(settings_of(self.cls)))
            if "name" not in items:
                raise r.fail(item, at, "has no name", settings_of(self.cls)["name"].metadata[
                    "required"] or f"add name: {self.noun.upper()}")
            name_node = items["name"]
            name = r.required_string(name_node, f"{at}.name")
            if not self.name_pattern.fullmatch(name):
                raise r.fail(name_node, f"{at}.name", f"{name!r} is not a {self.noun} name",
                             "use letters, digits, '.', '_' and '-'")
            if name in seen:
                raise r.fail(name_node, f"{at}.name", f"duplicate {self.noun} {name!r} (first on "
                             f"line {seen[name]})", f"list each {self.noun} once")
            seen[name] = name_node.line
            r.provenance[f"{key}.{name}"] = r.at(item)
            out.append(read_section(r, self.cls, item, f"{key}.{name}", check=self.check,
                                    given={"name": name}, record=False))
        return tuple(out)

    def dump(self, value: Any) -> Any:
        def one(section: Any) -> dict[str, Any]:
            data = {k: v for k, v in dump_section(section).items() if k not in ("name", "source")}
            if self.omit_empty:
                data = {k: v for k, v in data.items() if v not in (None, 0, [], {})}
            return data
        if self.as_list:
            return [{"name": s.name, **one(s)} for s in value]
        return {name: one(s) for name, s in value.items()}


# --------------------------------------------------------------------------- sections

def read_section(r: Reader, cls: type, node: YNode, key: str, *,
                 check: SectionCheck | None = None, given: Mapping[str, Any] | None = None,
                 record: bool = True) -> Any:
    """Read the settings ``cls`` declares from ``node`` (a mapping): unknown keys refused,
    omitted keys take their defaults, every value set is recorded in the provenance."""
    declared = settings_of(cls)
    items = r.mapping(node, key, tuple(declared)) if node.value is not None or key else {}
    values: dict[str, Any] = dict(given or {})
    for name, child in items.items():
        if name in values:
            continue
        full = f"{key}.{name}" if key else name
        if record or key == "":
            r.record(full, child)
        values[name] = declared[name].metadata["kind"].read(r, child, full)
    for name, spec in declared.items():
        if name in values:
            continue
        if spec.metadata["required"]:
            raise r.fail(node, key, f"has no {name}", spec.metadata["required"])
        full = f"{key}.{name}" if key else name
        if not key:
            r.provenance[full] = DEFAULT
        yaml_default = spec.metadata["yaml_default"]
        if yaml_default is not MISSING:
            values[name] = spec.metadata["kind"].read(r, yaml_node(yaml_default), full)
    section = cls(**values)
    if check is not None:
        check(r, section, items, node, key)
    return section


def dump_section(section: Any) -> dict[str, Any]:
    """A section's settings as JSON-able data, as ``site show`` prints them."""
    return {name: spec.metadata["kind"].dump(getattr(section, name))
            for name, spec in settings_of(type(section)).items()}
