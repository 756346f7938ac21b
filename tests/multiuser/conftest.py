"""A lab of real Unix users sharing one store: alice and bob in group ``lab``, carol in ``lab``
and ``labadmin`` (the site's admins), eve in neither.

Created idempotently as root (``groupadd``/``useradd``); every test here skips with one line
when not root.  The users run hpcenv from a venv of Debian's ``/usr/bin/python3`` in a
world-readable place (the developer's interpreter may live under a private home such as /root),
with hpcenv installed from this checkout; the demo channel is copied beside it.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcenv.demo.channel import DemoChannel
from hpcenv.demo.site import write_demo_site
from hpcenv.store.debris import force_rmtree

USERS = {"alice": ["lab"], "bob": ["lab"], "carol": ["lab", "labadmin"], "eve": []}
SYSTEM_PYTHON = Path("/usr/bin/python3")
REPO = Path(__file__).resolve().parents[2]
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
SHARED_ROOT = Path(os.environ.get("HPCENV_MULTIUSER_ROOT") or "/var/tmp/hpcenv-multiuser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="multi-user tests create Unix users: run them as root")
        for item in items:
            if "multiuser" in str(item.fspath):
                item.add_marker(skip)


def _ensure_users() -> None:
    for group in ("lab", "labadmin"):
        subprocess.run(["groupadd", "-f", group], check=True)
    for user, groups in USERS.items():
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", user], check=True)
        if groups:
            subprocess.run(["usermod", "-a", "-G", ",".join(groups), user], check=True)


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted([REPO / "pyproject.toml", *(REPO / "hpcenv").rglob("*.py"),
                        *(REPO / "slurm_templates").iterdir(), *(REPO / "site_configs").iterdir()]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _shared_venv() -> Path:
    """A venv every user can run, with this checkout's hpcenv installed (reused while the
    source is unchanged)."""
    venv = SHARED_ROOT / f"venv-{_source_digest()}"
    if (venv / "bin" / "hpcenv").exists():
        return venv
    for old in SHARED_ROOT.glob("venv-*"):
        shutil.rmtree(old, ignore_errors=True)
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    build = SHARED_ROOT / "build-src"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(REPO, build, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__",
                                                               ".hpcenv-demo", "tests"))
    subprocess.run([*pip, str(build)], check=True)
    shutil.rmtree(build, ignore_errors=True)
    return venv


@dataclass(frozen=True)
class Lab:
    """A shared store (group ``lab``, setgid 2775 dirs) and how to run hpcenv as its users."""

    root: Path
    site: Path
    hpcenv: Path

    def run(self, user: str, *args: str, umask: str = "002", check: bool = False,
            env: Mapping[str, str] | None = None,
            cwd: Path | str = "/") -> subprocess.CompletedProcess[str]:
        """``hpcenv ARGS`` as ``user``; ``env`` adds variables (e.g. ``SLURM_CONF``)."""
        home = pwd.getpwnam(user).pw_dir
        env = {"PATH": f"{self.hpcenv.parent}:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8",
               "HPCENV_SITE": str(self.site), **(env or {})}
        command = f"umask {umask} && exec \"$@\""
        proc = subprocess.run([RUNUSER, "-u", user, "--", "bash", "-c", command, "bash",
                               str(self.hpcenv), *args], env=env, capture_output=True,
                              text=True, timeout=600, cwd=cwd)
        if check and proc.returncode != 0:
            raise AssertionError(f"{user}: hpcenv {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stderr}")
        return proc

    def spawn_python(self, user: str, code: str, *args: str) -> subprocess.Popen[str]:
        """``code`` run by the lab's python (hpcenv importable) as ``user``, in the background:
        the process itself, so killing it ends it (runuser would stay in between)."""
        account = pwd.getpwnam(user)
        groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
        python = self.hpcenv.parent / "python"
        return subprocess.Popen([str(python), "-c", code, *args], cwd="/", user=account.pw_uid,
                                group=account.pw_gid, extra_groups=groups, umask=0o022,
                                env={"PATH": "/usr/bin:/bin", "HOME": account.pw_dir,
                                     "LANG": "C.UTF-8"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def write(self, name: str, text: str) -> Path:
        """A world-readable file in the lab (specs the users build)."""
        path = self.root / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
        return path


def _world_readable(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


@pytest.fixture(scope="session")
def lab_python(demo_channel: DemoChannel) -> tuple[Path, DemoChannel]:
    if os.geteuid() != 0:
        pytest.skip("multi-user tests create Unix users: run them as root")
    if not SYSTEM_PYTHON.exists():
        pytest.skip("multi-user tests need Debian's /usr/bin/python3 for the users' venv")
    _ensure_users()
    SHARED_ROOT.mkdir(parents=True, exist_ok=True)
    SHARED_ROOT.chmod(0o755)
    venv = _shared_venv()
    channel_copy = SHARED_ROOT / "channel"
    if not (channel_copy / "stamp.json").exists() or (channel_copy / "stamp.json").read_bytes() \
            != (demo_channel.path.parent / "stamp.json").read_bytes():
        shutil.rmtree(channel_copy, ignore_errors=True)
        shutil.copytree(demo_channel.path.parent, channel_copy, symlinks=True)
        _world_readable(channel_copy)
    channel = DemoChannel(path=channel_copy / demo_channel.path.name,
                          wheels=channel_copy / demo_channel.wheels.name,
                          python_version=demo_channel.python_version)
    return venv / "bin" / "hpcenv", channel


@pytest.fixture
def lab(lab_python: tuple[Path, DemoChannel]) -> Iterator[Lab]:
    hpcenv, channel = lab_python
    labs = SHARED_ROOT / "labs"
    labs.mkdir(exist_ok=True)
    labs.chmod(0o755)
    root = Path(tempfile.mkdtemp(dir=labs))
    root.chmod(0o755)
    store = root / "store"
    store.mkdir()
    os.chown(store, 0, grp.getgrnam("lab").gr_gid)
    store.chmod(0o2775)
    site = write_demo_site(store, channel, path=root / "site.yaml",
                           state_dir="\"${HOME}/.local/state/hpcenv-lab\"",
                           permissions="{group: lab, dir_mode: \"2775\", admins: [\"@labadmin\"]}")
    site.chmod(0o644)
    yield Lab(root=root, site=site, hpcenv=hpcenv)
    force_rmtree(root)
