"""Session fixtures shared by the whole suite.

Sections (add new fixtures under a heading of their own):
- test cache: a directory that survives between sessions, for expensive artefacts
- demo channel: the real offline conda channel (``hpcenv.demo.channel``)
- job programs: a fake ``conda`` and signal-catching programs, shared by the launcher and
  scheduler tests (plain names: ``from conftest import ...``)
- terminal: running a command with stderr on a pseudo-terminal
- console script: running the venv's ``hpcenv`` with no user or site config leaking in
- privileges: what a test needs that only root (or a second group) has, skipped with the reason
- real conda: conda 26.7.1 from the shared test assets, with this checkout installed in it

Service fixtures live in their own plugin modules: ``conftest_slurm`` (the real test Slurm
cluster) and ``conftest_ssh`` (a key-only sshd on 127.0.0.1).
"""

from __future__ import annotations

import grp
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytest_plugins = ["conftest_slurm", "conftest_ssh"]

if TYPE_CHECKING:
    from hpcenv.demo.channel import DemoChannel
    from hpcenv.site.config import SiteConfig


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


@pytest.fixture
def site(tmp_path: Path, demo_channel: DemoChannel) -> SiteConfig:
    """A throw-away site config on the demo channel (envs, cache and registry under tmp_path)."""
    from hpcenv.demo.site import write_demo_site
    from hpcenv.site.config import load_site

    return load_site(write_demo_site(tmp_path / "site", demo_channel))


# --- job programs ----------------------------------------------------------------------------

# ``conda run -p PREFIX --no-capture-output CMD...`` as far as a job script can tell: activates,
# then stays the program's parent and forwards no signal (a signal kills this shell, not its
# child), so a signal that reaches the program proves the job script's own forwarding.  The
# real conda (``real_conda`` below) needs the shared test assets and takes seconds per call.
FAKE_CONDA = """\
#!/bin/bash
[[ $1 == run && $2 == -p && $4 == --no-capture-output ]] || { echo "fake conda: bad args: $*" >&2; exit 99; }
export CONDA_PREFIX=$3 PATH=$3/bin:$PATH
shift 4
"$@"
"""


def write_fake_conda(directory: Path) -> Path:
    """``directory/conda``, executable: the fake above."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "conda"
    path.write_text(FAKE_CONDA)
    path.chmod(0o755)
    return path


# Prints "ready", then "got NAME" for each SIGUSR1/SIGTERM; exits 40 + the count once no
# further one came for 2 s (a duplicate, e.g. forwarded by the launcher on top of a direct
# delivery, comes within ms).
COUNT_SIGNALS = """\
import signal, sys, time
got = []
def handler(sig, frame):
    got.append(signal.Signals(sig).name)
    print("got", got[-1], flush=True)
signal.signal(signal.SIGUSR1, handler)
signal.signal(signal.SIGTERM, handler)
print("ready", flush=True)
for _ in range(1200):
    if got:
        break
    time.sleep(0.1)
time.sleep(2)
sys.exit(40 + len(got))
"""

# A job body whose child python records the first SIGTERM/SIGUSR1 it gets in ./got-signal and
# exits 0; it writes ./ready once its handlers are in place.
SIGNAL_CHILD = """\
python3 - <<'EOF'
import signal, sys, time, pathlib
def handler(sig, frame):
    pathlib.Path("got-signal").write_text(signal.Signals(sig).name)
    sys.exit(0)
signal.signal(signal.SIGTERM, handler)
signal.signal(signal.SIGUSR1, handler)
pathlib.Path("ready").write_text("")
time.sleep(120)
EOF
"""


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.1)


# --- terminal --------------------------------------------------------------------------------

def run_with_tty_stderr(argv: Sequence[str], *, cwd: Path | None = None,
                        timeout: float = 300) -> tuple[int, str, str]:
    """Run ``argv`` with stdout piped and stderr on a pseudo-terminal, as at a user's terminal;
    return the exit code, stdout and everything the terminal received."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    out, _ = proc.communicate(timeout=timeout)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode()


# --- console script --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]  # the checkout under test
HPCENV = Path(sys.executable).with_name("hpcenv")  # the console script of the venv under test


def isolated_environ(home: Path) -> dict[str, str]:
    """This process's environment with HOME at ``home`` and no ``HPCENV_SITE`` or ``XDG_*``, so
    no user or site config of the machine running the tests is picked up."""
    home.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items()
             if k != "HPCENV_SITE" and not k.startswith("XDG_")}
    clean["HOME"] = str(home)
    return clean


def hpcenv(*args: str, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script with ``args``; output captured as text."""
    return subprocess.run([str(HPCENV), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60)


# --- privileges ------------------------------------------------------------------------------

def other_group() -> grp.struct_group:
    """A group other than this process's that it may give files to (chgrp): any group for
    root, else one of the user's supplementary groups.  Skips the test when there is none."""
    if os.geteuid() == 0:
        candidates = [g for g in grp.getgrall() if g.gr_gid != os.getgid()]
    else:
        candidates = [grp.getgrgid(gid) for gid in os.getgroups() if gid != os.getgid()]
    if not candidates:
        pytest.skip("needs root or membership in a second group (to test group ownership)")
    return candidates[0]


# --- real conda ------------------------------------------------------------------------------

# A real conda (built from conda's source, classic solver) comes from the shared test assets
# beside the checkout: ``<repo>/../shared/conda/install DEST``, or $HPCENV_CONDA_INSTALLER.
CONDA_INSTALLER = Path(os.environ.get("HPCENV_CONDA_INSTALLER") or
                       REPO.parent / "shared" / "conda" / "install")


@pytest.fixture(scope="session")
def real_conda(test_cache_dir: Path) -> Path:
    """The ``conda`` command of a real conda installed once into the test cache, with this
    checkout installed (editable) into conda's own environment, as a site would install hpcenv
    for ``conda hpcenv``.  One conda per checkout, so worktrees do not fight over it."""
    import hashlib

    if not CONDA_INSTALLER.is_file():
        pytest.skip(f"no conda installer at {CONDA_INSTALLER} (set HPCENV_CONDA_INSTALLER)")
    tag = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
    dest = test_cache_dir / f"conda-{tag}"
    proc = subprocess.run([str(CONDA_INSTALLER), str(dest)], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"conda installer failed: {proc.stderr[-2000:]}"
    conda = Path(proc.stdout.strip().splitlines()[-1])
    python = dest / "venv" / "bin" / "python"
    # cwd: not the checkout, whose hpcenv/ would be imported from the current directory
    where = subprocess.run([str(python), "-c", "import hpcenv; print(hpcenv.__file__)"],
                           capture_output=True, text=True, cwd=dest)
    if where.stdout.strip() != str(REPO / "hpcenv" / "__init__.py"):
        pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", "-e", str(REPO)],
                             capture_output=True, text=True, timeout=1800)
        assert pip.returncode == 0, f"installing hpcenv into conda's env failed: {pip.stderr[-2000:]}"
    return conda


def conda_environ(home: Path, condarc: Path | None = None) -> dict[str, str]:
    """A clean environment for running conda: HOME at ``home`` (no ~/.condarc of the machine),
    ``CONDARC`` when given, the system PATH."""
    env = isolated_environ(home)
    env = {k: v for k, v in env.items() if not k.startswith(("CONDA", "MAMBA"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    if condarc is not None:
        env["CONDARC"] = str(condarc)
    return env
