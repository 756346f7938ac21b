#!/usr/bin/env bash
# The README's first command, offline: build the demo conda channel, then inspect, build and run
# the example environment on this machine (site config examples/site.yaml, local executor).
# Steps whose command this hpcenv does not have yet are skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "quickstart: .venv is missing: run 'make demo' (it creates the venv first)" >&2
    exit 2
fi
hpcenv() { .venv/bin/hpcenv --site examples/site.yaml "$@"; }
has() {  # has GROUP... COMMAND: does `hpcenv GROUP... --help` list COMMAND?
    local cmd=${*: -1}
    .venv/bin/hpcenv "${@:1:$#-1}" --help 2>/dev/null | grep -Eq "^\s+$cmd\b|[{,]$cmd[,}]"
}
step() { printf '\n==> %s\n' "$*"; }

step "building the demo conda channel into .hpcenv-demo/ (cached)"
"$PY" -m hpcenv.demo.channel .hpcenv-demo

step "hpcenv env inspect examples/llm-finetune.yml"
hpcenv env inspect examples/llm-finetune.yml

if ! has env build; then
    step "skipped: this hpcenv has no 'env build' yet"
    exit 0
fi
step "hpcenv env build examples/llm-finetune.yml"
hpcenv env build examples/llm-finetune.yml

if has submit; then
    step "hpcenv submit examples/train.py --env llm-finetune --wait"
    mkdir -p .hpcenv-demo/logs
    rc=0
    submitted=$(hpcenv --json submit examples/train.py --env llm-finetune --wait \
                    --output '.hpcenv-demo/logs/train-%j.out') || rc=$?
    [ -n "$submitted" ] || exit "$rc"
    # --json --wait prints the submission record first (then the final status): take its job_id
    job=$(printf '%s' "$submitted" | "$PY" -c \
        'import json, sys; print(json.JSONDecoder().raw_decode(sys.stdin.read())[0]["job_id"])')
    if has logs; then
        step "hpcenv logs $job"
        hpcenv logs "$job"
    fi
    exit "$rc"
elif has run; then
    step "no 'submit' yet: hpcenv run -n llm-finetune -- python examples/train.py"
    hpcenv run -n llm-finetune -- python examples/train.py
else
    step "skipped: this hpcenv has no 'submit' or 'run' yet"
fi
