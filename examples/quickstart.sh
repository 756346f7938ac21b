#!/usr/bin/env bash
# The README's first command (`make demo` runs it after installing): offline, build the demo conda
# channel, then inspect and build the example environment and run examples/train.py in it as a
# job on this machine (site config examples/site.yaml: the embedded local defaults, with the demo
# channel instead of conda-forge, and the local executor instead of Slurm).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/hpcenv ]; then
    echo "quickstart: .venv is missing: run 'make demo' (it creates the venv first)" >&2
    exit 2
fi
hpcenv() { .venv/bin/hpcenv --site examples/site.yaml "$@"; }
step() { printf '\n==> %s\n' "$*"; }

step "building the demo conda channel into .hpcenv-demo/ (cached)"
.venv/bin/python -m hpcenv.demo.channel .hpcenv-demo

step "hpcenv env inspect examples/llm-finetune.yml"
hpcenv env inspect examples/llm-finetune.yml

step "hpcenv env build examples/llm-finetune.yml"
hpcenv env build examples/llm-finetune.yml

step "hpcenv submit examples/train.py --env llm-finetune --wait"
job=$(hpcenv --json submit examples/train.py --env llm-finetune --wait \
          --output .hpcenv-demo/logs/%x-%j.out |
      .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')

step "hpcenv logs $job"
hpcenv logs "$job"
