#!/usr/bin/env bash
# Set up ./.venv if needed, then lint and run the whole test suite (CPU only, no network needed).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
.venv/bin/ruff check llava_vqtoken tests
exec .venv/bin/python -m pytest -q "$@"
