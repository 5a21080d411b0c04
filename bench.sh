#!/usr/bin/env bash
# Benchmarks: compressor speed and end-to-end latency (see docs/BENCHMARKS.md). Arguments go to
# `llava-vqtoken bench`; on a CPU the end-to-end part uses tiny models, so its code paths can be checked.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/llava-vqtoken ] || [ -z "${NO_VENV:-}" ] && [ -z "${NO_VENV:-}" ]; then
  ./scripts/bootstrap.sh
  exec .venv/bin/llava-vqtoken bench "$@"
fi
exec python3 -m llava_vqtoken.cli bench "$@"
