"""disk_sharing: two envs with overlapping packages cost about one env on disk, not two.

Target (issue 3): envs are installed by hardlink from the site's package cache, so packages two
envs share are stored once (~1x the larger env, where copies would cost ~2x).  That only holds
when the package cache and the envs sit on one filesystem, so the benchmark also checks that
they share ``st_dev``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common import (
    BUILD_NOTE,
    EXAMPLES,
    BenchResult,
    Check,
    Metric,
    build_once,
    demo_channel,
    scratch,
    write_site,
)

SPEC_A = EXAMPLES / "llm-finetune.yml"    # CUDA kernels variant, pip section
SPEC_B = EXAMPLES / "cpu-analysis.yml"    # CPU kernels variant; same python and tools
MIB = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    inode: tuple[int, int]   # (st_dev, st_ino)
    disk: int                # bytes of allocated blocks
    apparent: int            # st_size for regular files, 0 otherwise


def walk(root: Path) -> Iterator[Entry]:
    """Every file, dir and symlink under ``root`` (symlinks not followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            yield Entry((st.st_dev, st.st_ino), st.st_blocks * 512,
                        st.st_size if stat.S_ISREG(st.st_mode) else 0)


def disk_bytes(entries: Iterable[Entry]) -> int:
    """What ``du`` reports: each inode counted once however many paths lead to it."""
    return sum({e.inode: e.disk for e in entries}.values())


def run() -> BenchResult:
    result = BenchResult("disk_sharing")
    with scratch("disk") as root:
        site = write_site(root / "site", demo_channel())
        _, a = build_once(site, SPEC_A)
        _, b = build_once(site, SPEC_B)
        prefix_a, prefix_b = Path(a["prefix"]), Path(b["prefix"])
        pkgs = root / "site" / "pkgs"
        env_a, env_b, cache = list(walk(prefix_a)), list(walk(prefix_b)), list(walk(pkgs))
        same_dev = os.stat(pkgs).st_dev == os.stat(prefix_a).st_dev == os.stat(prefix_b).st_dev

    disk_a, disk_b = disk_bytes(env_a), disk_bytes(env_b)
    larger = max(disk_a, disk_b)
    union = disk_bytes(env_a + env_b)
    shared = {e.inode for e in env_a if e.apparent} & {e.inode for e in env_b if e.apparent}
    shared_bytes = sum({e.inode: e.disk for e in env_b if e.inode in shared}.values())
    result.metrics += [
        Metric("env A alone (du)", disk_a / MIB, "MiB"),
        Metric("env B alone (du)", disk_b / MIB, "MiB"),
        Metric("A + B if copied (naive)", (disk_a + disk_b) / MIB, "MiB", larger / MIB,
               "larger env"),
        Metric("A + B on disk (unique inodes)", union / MIB, "MiB", larger / MIB, "larger env"),
        Metric("A + B + package cache on disk", disk_bytes(env_a + env_b + cache) / MIB, "MiB",
               larger / MIB, "larger env"),
        Metric("apparent size A + B (per path)",
               sum(e.apparent for e in env_a + env_b) / MIB, "MiB", union / MIB,
               "A + B on disk"),
    ]
    result.checks += [
        Check("package cache and envs on one filesystem (same st_dev)", same_dev,
              "hardlinks need one filesystem; rattler silently copies across them",
              kind="invariant"),
        Check("the two envs share files by inode", bool(shared),
              f"{len(shared)} files, {shared_bytes / MIB:.1f} MiB of env B also in env A",
              kind="invariant"),
        Check("two envs cost < 1.5x the larger one", union < 1.5 * larger,
              f"{union / larger:.2f}x"),
    ]
    result.notes += [BUILD_NOTE,
                     f"A = {SPEC_A.name}, B = {SPEC_B.name}; MiB of allocated blocks"]
    return result
