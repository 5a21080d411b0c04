#!/usr/bin/env bash
# Re-resolve a lock from setup.py's ranges, on purpose (README, "Dependencies: the lock"):
#   scripts/refresh_lock.sh main          -> locks/main.txt        (extras hf, eval, dev)
#   scripts/refresh_lock.sh llava-next    -> locks/llava-next.txt  (extras llava-next, eval, dev)
# It installs into a fresh temporary venv (never ./.venv), writes `pip freeze` of it as exact pins, and removes
# the venv. The new lock is untested: rebuild from it and run the tests before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch and torchvision must be the same build (PyPI's torchvision beside another torch fails to import);
# these are the CUDA builds of this machine's local wheel directories, found through pip's configuration.
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
case "${1:-}" in
  main) EXTRAS="hf,eval,dev" ;;
  llava-next) EXTRAS="llava-next,eval,dev" ;;
  *) echo "usage: scripts/refresh_lock.sh main|llava-next" >&2; exit 2 ;;
esac
LOCK="locks/$1.txt"
NEED_GB=${LLAVA_VQTOKEN_NEED_GB:-7}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/refresh-lock.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
free_kb=$(df -Pk "$TMP" | awk 'NR==2 {print $4}')
if [ "$free_kb" -lt $((NEED_GB * 1024 * 1024)) ]; then
  echo "[refresh_lock] error: $((free_kb / 1024)) MB free in $TMP, the venv needs about ${NEED_GB} GB" \
       "(set TMPDIR, or LLAVA_VQTOKEN_NEED_GB to override)" >&2
  exit 1
fi
echo "[refresh_lock] resolving .[$EXTRAS] into $TMP/venv (a few minutes)" >&2
export PIP_NO_CACHE_DIR=1 DS_BUILD_OPS=0
python3 -m venv "$TMP/venv"
PY="$TMP/venv/bin/python"
pip_install() { "$PY" -m pip install -qq --disable-pip-version-check "$@"; }
pip_install --upgrade pip setuptools wheel
pip_install "${TORCH_PINS[@]}"
pip_install --no-build-isolation -e ".[$EXTRAS]"
{
  echo "# Lock of the $1 environment: exact versions from scripts/refresh_lock.sh $1 ($(date -u +%Y-%m-%d))."
  echo "# $("$PY" -c 'import platform; print("Python", platform.python_version(), platform.system(), platform.machine())');" \
       "torch/torchvision are the CUDA builds of this machine's local wheel directories."
  echo "# scripts/bootstrap.sh installs exactly this; refresh it on purpose only (README, \"Dependencies: the lock\")."
  echo "# Our own package (and LLaVA-NeXT's source) are installed on top with --no-deps."
  "$PY" -m pip freeze --all --exclude-editable --disable-pip-version-check 2>/dev/null | LC_ALL=C sort -f
} > "$TMP/lock.txt"
mkdir -p locks
touch "$LOCK"
changes=$(diff <(grep -v '^#' "$LOCK") <(grep -v '^#' "$TMP/lock.txt") | grep -E '^[<>]' | sed 's/^</  was/; s/^>/  now/' || true)
mv "$TMP/lock.txt" "$LOCK"
echo "[refresh_lock] wrote $LOCK ($(grep -c '==' "$LOCK") packages); pins changed:" >&2
echo "${changes:-  none}" >&2
if [ "$1" = main ]; then
  echo "[refresh_lock] before committing it: ./test.sh (it rebuilds ./.venv from the new lock)" >&2
else
  echo "[refresh_lock] before committing it: scripts/bootstrap.sh --llava-next SRC, then" \
       ".venv-llava-next/bin/python -m pytest tests/llava_next (README, \"LLaVA-NeXT plugin\")" >&2
fi
