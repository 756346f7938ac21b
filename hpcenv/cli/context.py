"""Per-invocation state of the CLI: global options, output mode and the loaded site config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcenv.site.config import SiteConfig


@dataclass
class Context:
    """One invocation's global options, its output mode and the site config, loaded once."""

    site_path: Path | None = None
    json: bool = False
    verbosity: int = 0  # -1 quiet, 0 normal, >0 verbose
    remote: str | None = None
    _site: SiteConfig | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        verbosity = -1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0)
        site = getattr(args, "site", None)
        return cls(site_path=Path(site) if site else None, json=getattr(args, "json", False),
                   verbosity=verbosity, remote=getattr(args, "remote", None))

    def site(self) -> SiteConfig:
        """The effective site config, loaded once per invocation."""
        if self._site is None:
            from hpcenv.site.config import load_site
            from hpcenv.yamlio import yaml_cache_dir

            self._site = load_site(self.site_path, yaml_cache=yaml_cache_dir())
        return self._site

    def emit(self, data: Any, human: Callable[[Any], str] | None = None) -> None:
        """Print a result: JSON on stdout with ``--json``, else ``human(data)`` (or ``data``)."""
        if self.json:
            json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
            sys.stdout.write("\n")
        else:
            text = human(data) if human is not None else str(data)
            if text:
                print(text)
        sys.stdout.flush()

    def info(self, message: str) -> None:
        """A progress or log line on stderr (silenced by ``-q``)."""
        if self.verbosity >= 0:
            print(message, file=sys.stderr, flush=True)

    def debug(self, message: str) -> None:
        if self.verbosity > 0:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"hpcenv: warning: {message}", file=sys.stderr, flush=True)
