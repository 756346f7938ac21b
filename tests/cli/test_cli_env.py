"""``hpcenv env build|list|show|history|export|rollback|rm|gc`` and ``run -n`` through the real
console script, on real envs built from the demo channel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_with_tty_stderr

from hpcenv.demo.site import write_demo_site
from hpcenv.store import store_for

HPCENV = str(Path(sys.executable).with_name("hpcenv"))

CUDA_SPEC = """\
name: kern
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - cuda-version=12.4
  - pip:
    - hpcdemo_extra
variables:
  KERN_MODE: fast
"""

CPU_SPEC = """\
name: kern
dependencies:
  - python=3.11
  - hpcdemo-kernels
"""


class Cli:
    def __init__(self, site: Path) -> None:
        self.site = site
        self.root = site.parent

    def argv(self, *args: str) -> list[str]:
        return [HPCENV, "--site", str(self.site), *args]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"hpcenv {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)

    def spec(self, text: str, name: str = "environment.yml") -> Path:
        path = self.root / name
        path.write_text(text)
        return path


def package_set(prefix: str | Path) -> set[tuple[str, str, str]]:
    out = set()
    for path in (Path(prefix) / "conda-meta").glob("*.json"):
        rec = json.loads(path.read_text())
        out.add((rec["name"], rec["version"], rec["build"]))
    return out


def pip_set(prefix: str | Path) -> set[str]:
    return {p.name for p in Path(prefix).glob("lib/python*/site-packages/*.dist-info")}


@pytest.fixture
def cli(tmp_path: Path, demo_channel) -> Cli:
    return Cli(write_demo_site(tmp_path / "site", demo_channel))


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_channel) -> tuple[Cli, dict]:
    """One CUDA env, built once for the read-only tests of this module."""
    cli = Cli(write_demo_site(tmp_path_factory.mktemp("cli") / "site", demo_channel))
    result = cli.json("env", "build", str(cli.spec(CUDA_SPEC)))
    return cli, result


def test_build_json_then_reused(built: tuple[Cli, dict]) -> None:
    cli, first = built
    assert first["status"] == "built"
    assert (first["name"], first["version"], first["cuda"]) == ("kern", 1, "12.4")
    assert set(first) >= {"name", "version", "key", "prefix", "status", "cuda"}
    assert any(b.startswith("cuda124") for n, _, b in package_set(first["prefix"]) if n == "hpcdemo-kernels")
    started = time.monotonic()
    again = cli.json("env", "build", str(cli.root / "environment.yml"))
    elapsed = time.monotonic() - started
    print(f"\nsecond 'env build' (reused) wall time: {elapsed:.3f}s")
    assert again["status"] == "reused"
    assert (again["prefix"], again["version"], again["key"]) == (first["prefix"], 1, first["key"])


def _imported(cli: Cli, *args: str) -> set[str]:
    """Every module the command imported (``-X importtime`` names each once)."""
    proc = subprocess.run(cli.argv(*args), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1",
                               "XDG_CACHE_HOME": str(cli.root / "cache")})
    assert proc.returncode == 0, proc.stderr
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:")}


def test_everyday_commands_import_only_what_they_use(built: tuple[Cli, dict]) -> None:
    # Issue 10: each of these is a fresh process whose start-up is mostly imports.  A reuse
    # needs the spec parser, the plan and the registry, never what only a new build runs.
    cli, _ = built
    assert "yaml" in _imported(cli, "env", "build", str(cli.root / "environment.yml"))
    # Run again: the site file and the spec, unchanged, are read from the YAML cache.
    hit = _imported(cli, "env", "build", str(cli.root / "environment.yml"))
    assert {"hpcenv.build.builder", "hpcenv.build.plan", "hpcenv.store.registry"} <= hit
    for name in ("hpcenv.build.installer", "hpcenv.build.export", "hpcenv.engine.lockfile",
                 "hpcenv.engine.rattler_engine", "hpcenv.engine.conda_cli", "rattler",
                 "hpcenv.scheduler.job_options", "email.parser", "yaml"):
        assert name not in hit, name
    # Listing reads the registry: no scheduler, no host-name or random-token libraries.
    listed = _imported(cli, "env", "list")
    assert "hpcenv.store.registry" in listed
    for name in ("hpcenv.scheduler.base", "hpcenv.build.builder", "hpcenv.spec.environment",
                 "socket", "secrets", "hashlib", "yaml"):
        assert name not in listed, name


def test_progress_is_plain_lines_when_stderr_is_not_a_tty(cli: Cli) -> None:
    proc = cli("env", "build", str(cli.spec(CPU_SPEC)))
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert "installing" in proc.stderr
    assert proc.stdout.startswith("built kern version 1 (no CUDA)")


def test_list_show_history(built: tuple[Cli, dict]) -> None:
    cli, first = built
    (row,) = cli.json("env", "list")
    assert (row["name"], row["current"], row["cuda"], row["prefix"]) == ("kern", 1, "12.4", first["prefix"])
    shown = cli.json("env", "show", "kern")
    assert shown["prefix"] == first["prefix"] and shown["current"] is True
    assert shown["status"] == "ready" and shown["packages"] == len(package_set(first["prefix"]))
    text = cli("env", "show", "kern").stdout
    assert "kern version 1 (current): ready" in text and "12.4 (inferred)" in text
    (entry,) = cli.json("env", "history", "kern")
    assert entry["current"] and entry["key"] == first["key"]
    assert cli("env", "history", "kern").stdout.splitlines()[1].startswith("*")
    missing = cli("env", "show", "nope", check=False)
    assert missing.returncode == 1 and "hpcenv env list" in missing.stderr


def test_run_by_name_sees_activation_and_passes_exit_code(built: tuple[Cli, dict]) -> None:
    cli, first = built
    code = "import os, sys; print(os.environ['CONDA_PREFIX'], os.environ['KERN_MODE']); sys.exit(7)"
    proc = cli("run", "-n", "kern", "--", "python", "-c", code, check=False)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.split() == [first["prefix"], "fast"]
    missing = cli("run", "-n", "nope", "--", "python", check=False)
    assert missing.returncode == 1 and "no environment named 'nope'" in missing.stderr


@pytest.mark.parametrize("form", ["yml", "no-builds", "lock", "explicit"])
def test_export_builds_the_same_env_again(built: tuple[Cli, dict], form: str) -> None:
    cli, first = built
    flag = {"yml": [], "no-builds": ["--no-builds"], "lock": ["--lock"], "explicit": ["--explicit"]}[form]
    exported = cli.root / f"export-{form}.txt"
    cli("env", "export", "kern", *flag, "-o", str(exported))
    name = f"again-{form}"
    if form == "explicit":
        # An @EXPLICIT list cannot carry the pip packages and variables: alone, it is refused
        # (exit 2, saying what it lacks); with the environment file, it rebuilds it all.
        alone = cli("env", "build", "--from-lock", str(exported), "--name", name, check=False)
        assert alone.returncode == 2, alone.stderr
        assert "pip hpcdemo_extra==0.1.0" in alone.stderr and "variable KERN_MODE" in alone.stderr
        assert "--lock" in alone.stderr
        assert "hpcdemo_extra" in cli("env", "export", "kern", *flag).stderr
        result = cli.json("env", "build", str(cli.root / "environment.yml"), "--from-lock",
                          str(exported), "--name", name)
    elif form == "lock":
        # The lock holds the whole env: nothing to warn about, and the lock alone rebuilds it.
        assert cli("env", "export", "kern", *flag).stderr == ""
        result = cli.json("env", "build", "--from-lock", str(exported), "--name", name)
    else:
        result = cli.json("env", "build", str(exported), "--name", name)
    assert result["status"] == "built"
    assert package_set(result["prefix"]) == package_set(first["prefix"])
    assert result["cuda"] == first["cuda"] == "12.4"  # a CUDA env stays one for routing
    if form in ("lock", "explicit"):
        assert "12.4 (from the locked packages)" in cli("env", "show", name).stdout
    assert pip_set(result["prefix"]) == pip_set(first["prefix"])
    assert json.loads((Path(result["prefix"]) / "conda-meta" / "state").read_text()) == \
        {"env_vars": {"KERN_MODE": "fast"}}


def test_explicit_list_with_a_vanished_package_names_the_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text(f"@EXPLICIT\n{(tmp_path / 'linux-64' / 'gone-1.0-0.conda').as_uri()}#{'0' * 64}\n")
    proc = cli("env", "build", "--from-lock", str(bad), "--name", "x", check=False)
    assert proc.returncode == 1
    assert f"{bad}:2:" in proc.stderr and "does not exist" in proc.stderr


def test_rollback_rm_and_gc(cli: Cli) -> None:
    v1 = cli.json("env", "build", str(cli.spec(CUDA_SPEC)))
    v2 = cli.json("env", "build", str(cli.spec(CPU_SPEC, "cpu.yml")))
    assert (v1["version"], v2["version"], v2["cuda"]) == (1, 2, None)

    back = cli.json("env", "rollback", "kern")
    assert (back["version"], back["previous"]) == (1, 2)
    assert cli.json("env", "show", "kern")["version"] == 1
    assert os.path.realpath(cli.root / "envs" / "kern") == v1["prefix"]
    cli("env", "rollback", "kern", "--to", "2")
    assert cli.json("env", "show", "kern")["version"] == 2

    refused = cli("env", "rm", "kern", "--version", "2", check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert Path(v2["prefix"]).is_dir()

    dry = cli.json("env", "gc", "--dry-run")
    assert dry["removed"] == []  # both versions are live

    removed = cli.json("env", "rm", "kern", "--version", "1")
    assert removed["removed"] == [1] and removed["current"] == 2
    assert not Path(v1["prefix"]).exists()
    history = cli.json("env", "history", "kern")
    assert [(h["version"], h["status"]) for h in history] == [(1, "retired"), (2, "ready")]

    cache = cli.root / "pkgs"
    cuda_entry = next(p.name for p in cache.iterdir()
                      if p.is_dir() and p.name.startswith("hpcdemo-kernels-") and "cuda124" in p.name)
    dry = cli.json("env", "gc", "--dry-run")
    assert cuda_entry in {Path(i["path"]).name for i in dry["removed"]}
    assert (cache / cuda_entry).is_dir()
    report = cli.json("env", "gc")
    assert report["bytes_freed"] == dry["bytes_freed"] > 0
    assert report["files_freed"] == dry["files_freed"]
    assert not (cache / cuda_entry).exists()
    assert "freed" in cli("env", "gc").stdout
    # what gc left behind still runs
    proc = cli("run", "-n", "kern", "--", "python", "-c", "import hpcdemo_kernels", check=False)
    assert proc.returncode == 0, proc.stderr

    whole = cli("env", "rm", "kern", check=False)
    assert whole.returncode == 1 and "--force" in whole.stderr
    gone = cli.json("env", "rm", "kern", "--force")
    assert gone["removed"] == [2] and gone["current"] is None
    assert not (cli.root / "envs" / "kern").exists()


def test_16_concurrent_cli_builds_build_once(cli: Cli) -> None:
    spec = cli.spec(CPU_SPEC)
    procs = [subprocess.Popen(cli.argv("env", "build", str(spec), "--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(16)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["built"] + ["reused"] * 15
    assert len({r["prefix"] for r in results}) == 1
    assert len({r["version"] for r in results}) == 1
    assert len(cli.json("env", "history", "kern")) == 1


def test_waiting_builder_says_who_holds_the_lock(cli: Cli) -> None:
    from hpcenv.build.plan import plan_build
    from hpcenv.site.config import load_site
    from hpcenv.spec.environment import load_spec
    from hpcenv.store.layout import key_lock

    spec_path = cli.spec(CPU_SPEC)
    site = load_site(cli.site)
    plan = plan_build(load_spec(spec_path), site)
    lock = key_lock(store_for(site), plan.key)
    lock.acquire()
    try:
        proc = subprocess.Popen(cli.argv("env", "build", str(spec_path), "--json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("hpcenv: waiting for ") and f"pid {os.getpid()} since " in line
        assert proc.poll() is None
    finally:
        lock.release()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    result = json.loads(out)
    assert result["status"] == "built" and result["waited"] is True


def test_unsolvable_spec_is_one_line_exit_2_and_leaves_nothing(cli: Cli) -> None:
    spec = cli.spec("name: ghost\ndependencies:\n  - python=3.11\n  - doesnotexist\n")
    proc = cli("env", "build", str(spec), "--json", check=False)
    assert proc.returncode == 2
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("hpcenv: error:")]
    assert json.loads(proc.stdout) == {"error": error.removeprefix("hpcenv: error: "),
                                       "exit_code": 2}
    assert error.startswith(f"hpcenv: error: {spec}:4: ") and "doesnotexist" in error
    assert "channels searched: file://" in error and "Traceback" not in proc.stderr
    assert cli.json("env", "list") == []
    assert not (cli.root / "registry" / "ghost").exists()
    assert not os.path.lexists(cli.root / "envs" / "ghost")
    builds = cli.root / "envs" / ".hpcenv" / "builds"
    assert not builds.exists() or list(builds.iterdir()) == []


def test_json_output_is_pure_json_on_stdout(cli: Cli) -> None:
    spec = str(cli.spec(CPU_SPEC))
    for args in (["env", "build", spec], ["env", "build", spec], ["env", "list"],
                 ["env", "show", "kern"], ["env", "history", "kern"], ["env", "gc", "--dry-run"],
                 ["env", "export", "kern"], ["env", "rm", "kern", "--force"]):
        proc = cli(*args, "--json")
        json.loads(proc.stdout)  # nothing but the JSON document
        assert not proc.stdout.startswith(("solving", "installing", "hpcenv:"))
    built = cli("env", "build", spec, "--json")
    assert "installing" in built.stderr and "installing" not in built.stdout


def test_usage_errors(cli: Cli, tmp_path: Path) -> None:
    nothing = cli("env", "build", check=False)
    assert nothing.returncode == 2 and "--from-lock" in nothing.stderr
    both = cli("env", "build", "x.yml", "--cuda", "12.4", "--no-cuda", check=False)
    assert both.returncode == 2
    no_file = cli("env", "build", "--from-lock", str(tmp_path / "missing.lock"), "--name", "x", check=False)
    assert no_file.returncode == 2 and "no such file" in no_file.stderr


@pytest.mark.parametrize("args", [["env", "show", "../../etc"], ["env", "history", "../x"],
                                  ["env", "export", "a/b"], ["env", "rm", "..", "--force"],
                                  ["env", "rollback", "../../etc"]])
def test_env_names_outside_the_registry_are_bad_input(cli: Cli, args: list[str]) -> None:
    (cli.root / "etc").mkdir(exist_ok=True)
    proc = cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("hpcenv: error: invalid environment name ")
    assert "starting with a letter or digit" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_export_to_a_file_is_atomic(built: tuple[Cli, dict], tmp_path: Path) -> None:
    cli, _ = built
    out = tmp_path / "env.yml"
    out.write_text("old\n")
    cli("env", "export", "kern", "-o", str(out))
    assert out.read_text().startswith("name: kern\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.yml"]  # no temp files left
    bad = cli("env", "export", "kern", "-o", str(tmp_path / "missing" / "env.yml"), check=False)
    assert bad.returncode == 1
    assert bad.stderr == (f"hpcenv: error: -o {tmp_path / 'missing' / 'env.yml'}: cannot write "
                          "it (No such file or directory); pick a writable path\n")


def test_progress_is_a_spinner_when_stderr_is_a_tty(cli: Cli) -> None:
    code, out, err = run_with_tty_stderr(cli.argv("env", "build", str(cli.spec(CPU_SPEC))))
    assert code == 0 and out.startswith("built kern")
    assert "\r\x1b[K" in err and "installing" in err
    assert err.endswith("\r\x1b[K")  # the status line is cleared at the end


def test_walkthrough_current_moves_are_reported_once_each(cli: Cli) -> None:
    """A reuse that moves 'current' (here: undoing a rollback) says so; the build summary is
    printed once, not also as a progress line."""
    v1 = cli("env", "build", str(cli.spec(CPU_SPEC)))
    assert (v1.stdout + v1.stderr).count("built kern version 1") == 1
    cli("env", "build", str(cli.spec(CUDA_SPEC, "cuda.yml")))
    cli("env", "rollback", "kern")
    moved = cli("env", "build", str(cli.root / "cuda.yml"))
    assert moved.stdout.splitlines()[0].startswith("reused kern version 2 (CUDA 12.4) in ")
    assert moved.stdout.splitlines()[0].endswith("; current version is now 2 (was 1)")
    back = cli("env", "build", str(cli.root / "environment.yml"), "--json")
    assert json.loads(back.stdout)["previous_current"] == 2
    assert "kern: current version is now 1 (was 2)" in back.stderr
    same = cli("env", "build", str(cli.root / "environment.yml"))
    assert "current version is now" not in same.stdout + same.stderr


def test_walkthrough_failed_builds_leave_no_ghosts(cli: Cli) -> None:
    bad = cli.spec("name: pipfail\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n"
                   "    - not-a-real-wheel\n", "bad.yml")
    assert cli("env", "build", str(bad), check=False).returncode == 1
    cli("env", "build", str(cli.spec(CPU_SPEC)))
    listed = cli("env", "list").stdout.splitlines()
    assert [line.split()[0] for line in listed[1:-2]] == ["kern"]
    assert listed[-2] == ("pipfail: no ready version (v1 failed); see 'hpcenv env history "
                          "pipfail', clear with 'hpcenv env rm pipfail'")
    assert listed[-1].startswith("  last error: ") and "not-a-real-wheel" in listed[-1]
    assert [row["name"] for row in cli.json("env", "list")] == ["kern"]
    gone = cli("env", "rm", "pipfail")
    assert gone.stdout.strip() == "pipfail: removed version(s) 1; current: none"
    assert "pipfail" not in cli("env", "list").stdout
    cli("env", "rm", "kern", "--force")
    assert cli("env", "list").stdout.startswith("no environments in ")
    # Only the sole version, current: nothing to roll back to, so no rollback advice.
    cli("env", "build", str(cli.spec(CPU_SPEC)))
    only = cli("env", "rm", "kern", "--version", "2", check=False)
    assert only.returncode == 1 and "rollback" not in only.stderr and "--force" in only.stderr


def test_no_cuda_on_a_spec_pinning_cuda_version_is_refused(cli: Cli) -> None:
    """--no-cuda of a spec pinning cuda-version would install the pin among CPU builds: refused
    with the line, and nothing is built."""
    spec_file = cli.spec(CUDA_SPEC)
    pin_line = next(n for n, line in enumerate(spec_file.read_text().splitlines(), start=1)
                    if "cuda-version" in line)
    refused = cli("env", "build", str(spec_file), "--no-cuda", check=False)
    assert refused.returncode == 2
    assert f"--no-cuda: {spec_file}:{pin_line} pins CUDA 12.4" in refused.stderr
    assert "remove that line" in refused.stderr
    assert cli.json("env", "list") == []


def test_walkthrough_explicit_header_command_works(cli: Cli) -> None:
    import shlex

    cli("env", "build", str(cli.spec(CPU_SPEC)))
    listing = cli.root / "kern.explicit.txt"
    cli("env", "export", "kern", "--explicit", "-o", str(listing))
    (command,) = [line[len("# $ "):] for line in listing.read_text().splitlines()
                  if line.startswith("# $ ")]
    argv = shlex.split(command.replace("<this file>", shlex.quote(str(listing))))
    assert argv[:2] == ["hpcenv", "env"] and argv[-2:] == ["--name", "kern"]
    result = json.loads(cli(*argv[1:], "--json").stdout)
    assert result["name"] == "kern" and result["status"] == "built"


def test_walkthrough_bad_names_and_unknown_envs(cli: Cli) -> None:
    empty = cli("env", "build", str(cli.spec(CPU_SPEC)), "--name", "", check=False)
    assert empty.returncode == 2
    assert empty.stderr.startswith("hpcenv: error: --name '': invalid environment name ''")
    nope = cli("env", "rollback", "nope", check=False)
    assert nope.returncode == 1
    assert nope.stderr == (f"hpcenv: error: no environment 'nope' in the registry "
                           f"{cli.root / 'registry'}; see 'hpcenv env list'\n")


def test_walkthrough_unreachable_and_unindexed_channels(cli: Cli, tmp_path: Path) -> None:
    spec = cli.spec("name: off\nchannels: [nodefaults, http://127.0.0.1:9/ch]\n"
                    "dependencies: [python]\n", "off.yml")
    proc = cli("env", "build", str(spec), check=False)
    assert proc.returncode == 1
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("hpcenv:")]
    assert error.startswith("hpcenv: error: cannot fetch repodata for channel "
                            "http://127.0.0.1:9/ch: ")
    assert proc.stderr.endswith(f"{error}\n") and "Caused by" not in proc.stderr
    assert "fix the spec" not in proc.stderr
    assert "Caused by" in cli("env", "build", str(spec), "-v", check=False).stderr
    (tmp_path / "raw" / "linux-64").mkdir(parents=True)
    spec = cli.spec(f"name: raw\nchannels: [nodefaults, {tmp_path / 'raw'}]\n"
                    "dependencies: [python]\n", "raw.yml")
    proc = cli("env", "build", str(spec), check=False)
    assert proc.returncode == 2
    assert proc.stderr.endswith(f"\nhpcenv: error: channel {(tmp_path / 'raw').as_uri()} has "
                                "no noarch/repodata.json: build or index it first\n")


def test_dry_run_shows_the_solved_plan_and_changes_nothing(cli: Cli) -> None:
    spec_file = cli.spec(CUDA_SPEC)
    plan = cli.json("env", "build", str(spec_file), "--dry-run")
    assert plan["dry_run"] is True and plan["existing_version"] is None
    assert plan["cuda"] == "12.4" and plan["pip"] == ["hpcdemo_extra"]
    assert plan["variables"] == {"KERN_MODE": "fast"}
    builds = {p["name"]: p["build"] for p in plan["packages"]}
    assert builds["hpcdemo-kernels"].startswith("cuda124_")
    assert cli.json("env", "list") == [] and not (cli.root / "envs" / "kern").exists()
    assert "would build a new version of kern" in cli("env", "build", str(spec_file),
                                                      "--dry-run").stdout
    built = cli.json("env", "build", str(spec_file))
    again = cli.json("env", "build", str(spec_file), "--dry-run")
    assert again["existing_version"] == built["version"] == again["current_version"]
    # The packages it showed are the ones a build installs.
    assert {(p["name"], p["version"], p["build"]) for p in plan["packages"]} == \
        package_set(built["prefix"])


def test_no_publish_builds_a_version_that_stays_out_of_service(cli: Cli) -> None:
    v1 = cli.json("env", "build", str(cli.spec(CPU_SPEC)))
    trial = cli.json("env", "build", str(cli.spec(CUDA_SPEC, "gpu.yml")), "--no-publish")
    assert trial["status"] == "built" and trial["published"] is False
    assert trial["version"] == 2 and trial["previous_current"] == 1
    shown = cli.json("env", "show", "kern")
    assert shown["version"] == 1 and shown["current"] is True
    link = cli.root / "envs" / "kern"
    assert os.path.realpath(link) == os.path.realpath(v1["prefix"])
    # The trial runs by prefix, and publishing it later is a rollback --to.
    out = cli("run", "-p", trial["prefix"], "--", "python", "-c",
              "import hpcdemo_kernels; print(hpcdemo_kernels.VARIANT)").stdout
    assert out.strip() == "cuda124"
    cli("env", "rollback", "kern", "--to", "2")
    assert os.path.realpath(link) == os.path.realpath(trial["prefix"])
    # A first build of a name with --no-publish leaves no current version at all.
    cli.json("env", "build", str(cli.spec(CPU_SPEC)), "--name", "fresh", "--no-publish")
    assert not (cli.root / "envs" / "fresh").exists()
    fresh = cli("run", "-n", "fresh", "--", "true", check=False)
    assert fresh.returncode != 0


def test_conda_spellings_create_export_remove(cli: Cli) -> None:
    spec_file = cli.spec(CPU_SPEC)
    created = cli.json("env", "create", "-f", str(spec_file), "-n", "lab")
    assert (created["name"], created["status"]) == ("lab", "built")
    assert cli.json("env", "show", "-n", "lab")["version"] == 1
    assert "name: lab" in cli("env", "export", "-n", "lab").stdout
    assert cli.json("env", "build", "--file", str(spec_file), "--name", "lab")["status"] == \
        "reused"
    missing = cli("env", "export", check=False)
    assert missing.returncode == 2 and "give the env NAME (or -n NAME)" in missing.stderr
    cli("env", "remove", "-n", "lab", "--force")
    assert cli.json("env", "list") == []


def test_failed_build_keeps_its_reason_for_show_list_and_gc(cli: Cli) -> None:
    bad = cli.spec(CPU_SPEC.replace("name: kern", "name: broken")
                   + "  - pip\n  - pip:\n    - no-such-package-anywhere==9.9\n", "bad.yml")
    assert cli("env", "build", str(bad), check=False).returncode == 1
    shown = cli("env", "show", "broken", "--version", "1").stdout
    (error,) = [line for line in shown.splitlines() if line.strip().startswith("error:")]
    assert "pip install failed" in error and "no-such-package-anywhere" in error
    (log,) = [line.split(":", 1)[1].strip() for line in shown.splitlines()
              if line.strip().startswith("build log:")]
    assert "no-such-package-anywhere" in Path(log).read_text()
    assert "last error: " in cli("env", "list").stdout
    gc = cli("env", "gc").stdout
    assert "retired record  broken version 1 (failed: " in gc and "pip install failed" in gc


def test_list_shows_unique_and_shared_bytes_and_counts_versions_in_service(cli: Cli) -> None:
    v1 = cli.json("env", "build", str(cli.spec(CPU_SPEC)))
    cli.json("env", "build", str(cli.spec(CUDA_SPEC, "gpu.yml")))
    (row,) = cli.json("env", "list")
    assert row["versions"] == 2
    # The packages are hardlinks into the cache; only pip's files and metadata are the env's.
    assert row["unique_bytes"] + row["shared_bytes"] == row["size_bytes"]
    assert row["shared_bytes"] > 10 * row["unique_bytes"] > 0
    header = cli("env", "list").stdout.splitlines()[0].split()
    assert header[:6] == ["NAME", "CURRENT", "VERSIONS", "CUDA", "UNIQUE", "SHARED"]
    # A retired version no longer counts as one of the env's versions.
    cli("env", "rm", "kern", "--version", str(v1["version"]))
    (row,) = cli.json("env", "list")
    assert row["versions"] == 1


@pytest.mark.parametrize(("cuda", "why"), [
    ("12.7", "CUDA 12.7 was never released"),
    ("twelve", "'twelve' is not a CUDA version"),
    ("12.7.1", "CUDA 12.7 was never released"),
])
def test_cuda_option_takes_released_versions_only(cli: Cli, cuda: str, why: str) -> None:
    """--cuda is parsed once, at the command line, by the rule site configs use for max_cuda:
    nothing is solved or built for a CUDA that does not exist."""
    refused = cli("env", "build", str(cli.spec(CPU_SPEC)), "--cuda", cuda, check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(f"hpcenv: error: --cuda {cuda}: ") and why in refused.stderr
    assert "--no-cuda" in refused.stderr
    assert cli("--json", "env", "list").stdout.strip() in ("[]", "")


def test_cuda_option_newer_than_the_driver_table_builds_with_a_warning(cli: Cli) -> None:
    from hpcenv.spec.drivers import known_cuda_versions

    newest = known_cuda_versions()[-1]
    future = f"{int(newest.split('.')[0]) + 1}.0"
    built = cli("env", "build", str(cli.spec(CPU_SPEC)), "--cuda", future, "--json")
    assert "newer than hpcenv's driver table" in built.stderr
    assert json.loads(built.stdout)["cuda"] == future
