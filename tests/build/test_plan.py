"""Build planning (hpcenv.build.plan): the key changes with exactly the documented inputs (env
name, normalised spec, platform, channel URLs, channel priority, ``__cuda``; lockfile bytes for
``--from-lock``) and with nothing else; channels resolve through the site's mirrors; the
``__cuda`` value follows --cuda / --no-cuda / inference."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcenv.build.plan import build_key, plan_build, resolve_channels, resolve_cuda
from hpcenv.demo.site import write_demo_site
from hpcenv.engine.base import current_platform
from hpcenv.errors import InvalidInput
from hpcenv.site.config import SiteConfig, load_site
from hpcenv.spec.cuda_target import NO_CUDA, CudaTarget
from hpcenv.spec.environment import parse_spec

KERN = """\
name: kern
channels: [conda-forge]
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - cuda-version=12.4
variables:
  A: "1"
  B: "2"
"""




def key_of(text: str, site: SiteConfig, **kwargs: object) -> str:
    return plan_build(parse_spec(text), site, **kwargs).key  # type: ignore[arg-type]


def test_key_is_a_stable_function_of_its_inputs() -> None:
    """A fixed value: if this changes, every registry record's key changes and every env is
    rebuilt once; bump KEY_SCHEMA on purpose rather than by accident."""
    key = build_key(name="kern", content={"schema": 1, "conda": ["python=3.11"]},
                    platform="linux-64", channels=["file:///c"], channel_priority="strict",
                    cuda=CudaTarget.of("12.4"))
    assert key == "4f5dc03ea579dba8560530864d034ef7d88002557988877f85abe1d6eeafe129"
    assert key == build_key(name="kern", content={"conda": ["python=3.11"], "schema": 1},
                            platform="linux-64", channels=("file:///c",),
                            channel_priority="strict", cuda=CudaTarget.of("12.4"))
    base = dict(name="kern", content={"schema": 1, "conda": ["python=3.11"]},
                platform="linux-64", channels=["file:///c"], channel_priority="strict",
                cuda=CudaTarget.of("12.4"))
    variants = [dict(base, name="kern2"), dict(base, content={"schema": 1, "conda": []}),
                dict(base, platform="linux-aarch64"), dict(base, channels=["file:///d"]),
                dict(base, channels=["file:///c", "file:///d"]),
                dict(base, channel_priority="flexible"), dict(base, cuda=NO_CUDA),
                dict(base, cuda=CudaTarget.of("12.4.1"))]
    keys = {build_key(**v) for v in variants}  # type: ignore[arg-type]
    assert len(keys) == len(variants) and key not in keys


def test_key_ignores_how_the_spec_is_written(site: SiteConfig, tmp_path: Path,
                                             demo_channel) -> None:
    reference = key_of(KERN, site)
    reordered = """\
# the same environment, written differently
variables: {B: "2", A: "1"}
dependencies:
  - cuda-version =12.4
  - hpcdemo-kernels
  - python=3.11
  - hpcdemo-kernels

channels:
  - conda-forge
name: kern
"""
    assert key_of(reordered, site) == reference
    # Where the file lives is not what the environment is.
    moved = tmp_path / "elsewhere" / "environment.yml"
    moved.parent.mkdir()
    assert plan_build(parse_spec(KERN, source=moved), site).key == reference
    # Nor where the site keeps envs, registry and cache: only what the solve sees counts.
    other_root = load_site(write_demo_site(tmp_path / "other-site", demo_channel))
    assert other_root.envs_dirs != site.envs_dirs
    assert key_of(KERN, other_root) == reference


def test_key_changes_with_each_documented_input(site: SiteConfig, tmp_path: Path,
                                                demo_channel) -> None:
    reference = key_of(KERN, site)
    changed = {
        "name": key_of(KERN, site, name="kern2"),
        "dependency": key_of(KERN.replace("python=3.11", "python=3.12"), site),
        "extra dependency": key_of(KERN.replace("  - hpcdemo-kernels\n",
                                                "  - hpcdemo-kernels\n  - hpcdemo-tools\n"),
                                   site),
        "variable": key_of(KERN.replace('B: "2"', 'B: "3"'), site),
        "pip": key_of(KERN.replace("  - cuda-version=12.4\n",
                                   "  - cuda-version=12.4\n  - pip:\n    - hpcdemo_extra\n"),
                      site),
        "spec channel": key_of(KERN.replace("[conda-forge]", "[bioconda, conda-forge]"), site),
        "--cuda": key_of(KERN, site, cuda_override=CudaTarget.of("11.8")),
        "priority": key_of(KERN, load_site(write_demo_site(
            tmp_path / "flex", demo_channel, channel_priority="flexible"))),
        # The same channel name mirrored elsewhere is another channel URL: another build.
        "mirror": key_of(KERN, load_site(write_demo_site(
            tmp_path / "mirror", demo_channel, mirrors=f"{{conda-forge: {tmp_path}/mirror2}}"))),
    }
    assert reference not in changed.values()
    assert len(set(changed.values())) == len(changed), changed


def test_name_is_in_the_key_but_not_in_the_spec_hash(site: SiteConfig) -> None:
    """The spec hash leaves the name out (same content, same spec), the key puts the chosen
    name in (each name has its own builds); --name replaces the file's name."""
    a, b = parse_spec(KERN), parse_spec(KERN.replace("name: kern", "name: other"))
    assert a.content_hash() == b.content_hash()
    assert plan_build(a, site).key != plan_build(b, site).key
    assert plan_build(a, site, name="x").key == plan_build(b, site, name="x").key
    assert plan_build(b, site, name="kern").key == plan_build(a, site).key
    assert plan_build(b, site, name="kern").name == "kern"


def test_explicit_cuda_equal_to_the_inferred_one_is_the_same_build(site: SiteConfig) -> None:
    inferred = plan_build(parse_spec(KERN), site)
    explicit = plan_build(parse_spec(KERN), site, cuda_override=CudaTarget.parse("12.4"))
    assert (inferred.cuda, explicit.cuda) == (CudaTarget.of("12.4"), CudaTarget.of("12.4"))
    assert inferred.key == explicit.key
    assert (inferred.cuda_override, explicit.cuda_override) == (None, CudaTarget.of("12.4"))
    # On a CPU spec, --no-cuda changes nothing either: both solve without __cuda.
    cpu = KERN.replace("  - cuda-version=12.4\n", "")
    assert key_of(cpu, site) == key_of(cpu, site, cuda_override=NO_CUDA)
    # --cuda on that CPU spec is another build; --no-cuda on the spec pinning 12.4 is refused.
    assert key_of(cpu, site, cuda_override=CudaTarget.of("12.4")) != key_of(cpu, site)
    with pytest.raises(InvalidInput, match="^--no-cuda: .* pins CUDA 12.4"):
        plan_build(parse_spec(KERN), site, cuda_override=NO_CUDA)


@pytest.mark.parametrize(("dependencies", "override", "cuda", "gpu", "note"), [
    ("[cuda-version=12.4, python]", None, "12.4", True, "CUDA 12.4 inferred from "),
    ("[python]", None, "", False, None),
    ("[pytorch-cpu]", None, "", False, None),
    ("[cupy-cuda12x]", None, "12", True, "CUDA 12 inferred"),
    ("[cuda-version=12.4, cuda-version=11.8]", None, "12.4", True,
     "(candidates 11.8, 12.4; pass --cuda X.Y to choose)"),
    ("[cudnn]", None, "", True, "names no CUDA version: building without __cuda"),
    ("[cuda-version=12.4]", "11.8", "11.8", True, "CUDA 11.8 (--cuda)"),
    ("[hpcdemo-kernels]", "", "", False, "no CUDA (--no-cuda)"),
    ("[python]", "12.4.1", "12.4.1", True, "CUDA 12.4.1 (--cuda)"),
])
def test_cuda_value_follows_override_then_inference(site: SiteConfig, dependencies: str,
                                                    override: str | None, cuda: str, gpu: bool,
                                                    note: str | None) -> None:
    spec = parse_spec(f"name: a\ndependencies: {dependencies}\n")
    target = None if override is None else CudaTarget.parse(override) if override else NO_CUDA
    plan = plan_build(spec, site, cuda_override=target)
    assert (plan.cuda.version or "", plan.gpu_required) == (cuda, gpu)
    if note is None:
        assert plan.notes == ()
    else:
        assert len(plan.notes) == 1 and note in plan.notes[0], plan.notes
    assert resolve_cuda(spec, target) == (plan.cuda, plan.notes, plan.gpu_required)


def test_framework_without_pin_picks_the_newest_candidate(site: SiteConfig) -> None:
    spec = parse_spec("name: a\nchannels: [pytorch]\ndependencies: [pytorch=1.12]\n")
    cuda, notes, gpu = resolve_cuda(spec, None)
    assert (cuda, gpu) == (CudaTarget.of("11.6"), True)
    assert notes[0].startswith("CUDA 11.6 chosen among 10.2, 11.3, 11.6 ")
    assert notes[0].endswith("pass --cuda X.Y to choose another")


def test_cuda_is_never_detected_from_the_machine() -> None:
    """No spec and no override: no __cuda, whatever GPU this host has."""
    assert resolve_cuda(None, None) == (NO_CUDA, (), None)


@pytest.mark.parametrize("bad", ["twelve", "12.", "v12", "12.4.1.0", "12 .4", "-1", "12.7"])
def test_bad_cuda_override_is_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        CudaTarget.parse(bad)
    message = str(caught.value)
    assert message.startswith(f"--cuda {bad.strip()}: ") and message.endswith(
        "or --no-cuda for CPU builds") and "\n" not in message


# --- channels ----------------------------------------------------------------------------------

def test_channels_go_through_mirrors_spec_first_then_site(site: SiteConfig,
                                                          tmp_path: Path) -> None:
    mirror = site.mirrors["conda-forge"]
    assert mirror.startswith("file://")
    assert resolve_channels(parse_spec(KERN), site) == (mirror,)
    assert resolve_channels(None, site) == (mirror,)
    local = tmp_path / "local-channel"
    local.mkdir()
    spec = parse_spec(f"name: a\nchannels: [bioconda, {local}/, conda-forge, bioconda]\n"
                      "dependencies: [python]\n")
    # Names not mirrored pass through, paths become file:// URLs, duplicates (including the
    # site's own conda-forge, already listed) are dropped, order is kept.
    assert resolve_channels(spec, site) == ("bioconda", local.resolve().as_uri(), mirror)
    plan = plan_build(spec, site)
    assert plan.channels == ("bioconda", local.resolve().as_uri(), mirror)


def test_nodefaults_drops_the_site_channels(site: SiteConfig, tmp_path: Path) -> None:
    spec = parse_spec("name: a\nchannels: [bioconda, nodefaults]\ndependencies: [python]\n")
    assert resolve_channels(spec, site) == ("bioconda",)
    source = tmp_path / "environment.yml"
    only = parse_spec("name: a\nchannels: [nodefaults]\ndependencies: [python]\n",
                      source=source)
    with pytest.raises(InvalidInput) as caught:
        plan_build(only, site)
    assert str(caught.value) == (f"{source}: no channels to solve from; add 'channels:' to the "
                                 "file or to the site config")


def test_a_site_without_channels_needs_them_in_the_spec(tmp_path: Path, demo_channel) -> None:
    site = load_site(write_demo_site(tmp_path / "site", demo_channel, channels="[]"))
    with pytest.raises(InvalidInput, match=r"^<environment.yml>: no channels to solve from"):
        plan_build(parse_spec("name: a\ndependencies: [python]\n"), site)
    assert plan_build(parse_spec(KERN), site).channels == (site.mirrors["conda-forge"],)


# --- from a lockfile ---------------------------------------------------------------------------

def test_from_lock_keys_on_the_lockfile_bytes(site: SiteConfig, tmp_path: Path) -> None:
    lock = tmp_path / "a" / "lock.yml"
    lock.parent.mkdir()
    lock.write_text("version: 1\npackages: []\n")
    plan = plan_build(None, site, name="copy", from_lock=lock)
    assert (plan.channels, plan.cuda, plan.notes, plan.gpu_required) == ((), NO_CUDA, (), None)
    copy = tmp_path / "b.yml"
    copy.write_bytes(lock.read_bytes())
    assert plan_build(None, site, name="copy", from_lock=copy).key == plan.key
    copy.write_bytes(lock.read_bytes() + b"\n")
    assert plan_build(None, site, name="copy", from_lock=copy).key != plan.key
    assert plan_build(None, site, name="other", from_lock=lock).key != plan.key
    with_cuda = plan_build(None, site, name="copy", from_lock=lock,
                           cuda_override=CudaTarget.of("12.4"))
    assert (with_cuda.cuda, with_cuda.gpu_required) == (CudaTarget.of("12.4"), True)
    assert with_cuda.key != plan.key
    # A spec alongside the lock adds its pip section and variables, not its conda list.
    spec = parse_spec(KERN)
    spec_other_deps = parse_spec(KERN.replace("python=3.11", "python=3.12"))
    assert plan_build(spec, site, name="copy", from_lock=lock).key == \
        plan_build(spec_other_deps, site, name="copy", from_lock=lock).key
    assert plan_build(spec, site, name="copy", from_lock=lock).key != plan.key


def test_plan_errors_are_bad_input(site: SiteConfig, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yml"
    with pytest.raises(InvalidInput, match=r"missing.yml: cannot read lockfile \(No such file"):
        plan_build(None, site, name="x", from_lock=missing)
    with pytest.raises(InvalidInput, match=r"a lockfile names no env; pass --name NAME"):
        plan_build(None, site, from_lock=missing)
    with pytest.raises(InvalidInput, match=r"^nothing to build: give an environment file or "
                                           r"--from-lock LOCK$"):
        plan_build(None, site, name="x")
    with pytest.raises(InvalidInput, match=r"^--name '\.\./x': "):
        plan_build(parse_spec(KERN), site, name="../x")


def test_plan_follows_the_site_naming_policy(tmp_path: Path, demo_channel) -> None:
    site = load_site(write_demo_site(tmp_path / "site", demo_channel,
                                     permissions='{env_name_pattern: "{team}-{project}"}'))
    with pytest.raises(InvalidInput, match=r"env name 'kern' breaks the site naming policy"):
        plan_build(parse_spec(KERN), site)
    plan = plan_build(parse_spec(KERN), site, name="ml-kern")
    assert (plan.name, plan.platform) == ("ml-kern", current_platform())
    assert plan.channel_priority == site.channel_priority == "strict"
