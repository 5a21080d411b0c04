#!/usr/bin/env bash
# Set up ./.venv if needed, then lint and run the whole test suite (CPU only, no network needed).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
.venv/bin/ruff check llava_vqtoken tests
.venv/bin/lint-imports --no-cache --no-logo  # the import contract in pyproject.toml (README "Layout")
exec .venv/bin/python -m pytest -q "$@"
