#!/usr/bin/env bash
# The main job end to end on the embedded default data: sets up .venv, then runs scripts/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python scripts/demo.py "$@"
