#!/usr/bin/env bash
# Set up ./.venv if needed, then run the main job: compress a video with VQToken and draw its key map.
# With no arguments it uses the embedded default: a tiny random-weight LLaVA-OneVision built locally
# and a generated clip. Any arguments go to `llava-vqtoken compress` (see --help).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
mkdir -p runs
if [ $# -eq 0 ]; then
  set -- --heatmap runs/keymap.png --json
fi
exec .venv/bin/llava-vqtoken compress "$@"
