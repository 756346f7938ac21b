"""Session fixtures shared by the whole suite.

Sections (add new fixtures under a heading of their own):
- test cache: a directory that survives between sessions, for expensive artefacts
- demo channel: the real offline conda channel (``hpcenv.demo.channel``)

Service fixtures live in their own plugin modules: ``conftest_slurm`` (the real test Slurm
cluster) and ``conftest_ssh`` (a key-only sshd on 127.0.0.1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytest_plugins = ["conftest_slurm", "conftest_ssh"]

if TYPE_CHECKING:
    from hpcenv.demo.channel import DemoChannel


# --- test cache ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def test_cache_dir() -> Path:
    """``$HPCENV_TEST_CACHE`` or ``~/.cache/hpcenv-test``: reused across sessions, never wiped."""
    root = os.environ.get("HPCENV_TEST_CACHE") or Path.home() / ".cache" / "hpcenv-test"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- demo channel ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def demo_channel(test_cache_dir: Path) -> DemoChannel:
    """The demo channel and wheel dir, rebuilt only when the builder or host python changed."""
    from hpcenv.demo.channel import build_demo_channel

    return build_demo_channel(test_cache_dir / "channel")
