#!/usr/bin/env bash
# Create or update .venv at the repo root; a no-op (seconds) when it is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing the project and its dependencies into .venv (first time: a few minutes, torch is large)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[train,serve,app,dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
