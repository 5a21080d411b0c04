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
# The venv takes about 7 GB (torch 2.14.1 is a CUDA build even when it runs on the CPU). Say so up front
# rather than let pip fail half-way with "No space left on device".
NEED_GB=${LLAVA_VQTOKEN_NEED_GB:-7}
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ ! -x "$VENV/bin/python" ] && [ "$free_kb" -lt $((NEED_GB * 1024 * 1024)) ]; then
  echo "[bootstrap] error: $((free_kb / 1024)) MB free in $(pwd), the venv needs about ${NEED_GB} GB" \
       "(set LLAVA_VQTOKEN_NEED_GB to override)" >&2
  exit 1
fi
export PIP_NO_CACHE_DIR=1
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
# torch and torchvision must be the same build: PyPI's torchvision beside a CPU-only torch fails to import.
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
export DS_BUILD_OPS=0
"$PY" -m pip install -q -e ".[hf,eval,dev]"
echo "$want" > "$STAMP"
echo "[bootstrap] ready: $VENV" >&2
