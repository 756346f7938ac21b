"""A small stand-in for a training job: `hpcenv submit examples/train.py --env llm-finetune`.

It reports where it runs (env prefix, kernels build, GPUs and Slurm job), fits y = 3x + 1 by
gradient descent in pure Python, and behaves as a preemptible job should:
- SIGUSR1 (e.g. `--signal=USR1@60` before the time limit): write a checkpoint, keep going;
- SIGTERM (time limit, preemption, `scancel`): write a checkpoint, exit 143 (128 + SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType


class Signals:
    """Flags set by signal handlers and acted on between steps (never mid-update)."""

    def __init__(self) -> None:
        self.stop = False
        self.checkpoint = False
        self.wake = threading.Event()  # cuts a step's pause short when a signal arrives
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        self.wake.set()

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self.checkpoint = True
        self.wake.set()


def kernels_variant() -> str:
    try:
        import hpcdemo_kernels  # type: ignore[import-not-found]  # from the demo channel
    except ImportError:
        return "not installed"
    return hpcdemo_kernels.VARIANT


def save_checkpoint(path: Path | None, step: int, w: float, b: float) -> None:
    if path is not None:
        path.write_text(json.dumps({"step": step, "w": w, "b": b}) + "\n")
    print(f"checkpoint: step={step} w={w:.4f} b={b:.4f}"
          + (f" -> {path}" if path is not None else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=0.05,
                        help="pause per step, to make the job last (signal tests)")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--checkpoint", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--exit-code", type=int, default=0, help="exit with this code when done")
    args = parser.parse_args(argv)
    signals = Signals()

    print(f"prefix: {sys.prefix}", flush=True)
    print(f"python: {sys.version.split()[0]}", flush=True)
    print(f"kernels: {kernels_variant()}", flush=True)
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURMD_NODENAME"):
        print(f"{var}: {os.environ.get(var, '')}", flush=True)

    xs = [i / 10 for i in range(20)]
    ys = [3.0 * x + 1.0 for x in xs]
    w = b = 0.0
    for step in range(1, args.steps + 1):
        grads = [(w * x + b - y) for x, y in zip(xs, ys)]
        w -= args.lr * 2 * sum(g * x for g, x in zip(grads, xs)) / len(xs)
        b -= args.lr * 2 * sum(grads) / len(xs)
        loss = sum(g * g for g in grads) / len(xs)
        print(f"step {step}/{args.steps} loss={loss:.5f}", flush=True)
        signals.wake.wait(args.step_seconds)
        signals.wake.clear()
        if signals.stop:
            save_checkpoint(args.checkpoint, step, w, b)
            print("SIGTERM received: stopping after checkpoint", flush=True)
            return 128 + signal.SIGTERM
        if signals.checkpoint:
            signals.checkpoint = False
            save_checkpoint(args.checkpoint, step, w, b)

    save_checkpoint(args.checkpoint, args.steps, w, b)
    print(f"done: w={w:.3f} b={b:.3f}", flush=True)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
