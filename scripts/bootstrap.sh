#!/usr/bin/env bash
# Create ./.venv with everything the project needs, once. Idempotent: a second run only checks a stamp.
# Works offline on the reference machine: torch/torchvision come from the local wheel cache, the rest from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.llava_vqtoken_ready"
want="$(sha256sum setup.py scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] setting up $VENV (first run takes a few minutes)" >&2
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
# torch and torchvision must be the same build: PyPI's torchvision beside a CPU-only torch fails to import.
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
export DS_BUILD_OPS=0
"$PY" -m pip install -q -e ".[hf,eval,dev]"
echo "$want" > "$STAMP"
echo "[bootstrap] ready: $VENV" >&2
