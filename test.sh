#!/usr/bin/env bash
# Set up ./.venv and ./.venv-vllm if needed, then lint and run the whole test suite (CPU only, no network
# needed once both environments exist). With arguments, only the main suite runs, with those arguments;
# the vLLM host's tests (tests/vllm) run in their own environment, and only in a full run.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
.venv/bin/ruff check llava_vqtoken tests
.venv/bin/lint-imports --no-cache --no-logo  # the import contract in pyproject.toml (README "Layout")
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
  ./scripts/bootstrap.sh --vllm
  .venv-vllm/bin/python -m pytest -q tests/vllm
fi
