#!/usr/bin/env bash
# Evaluate with lmms-eval over a sweep of compressors and write a report (markdown + JSON, and a plot
# of accuracy vs tokens for a sweep). With no arguments: the embedded default, fully offline (a tiny
# random model and a generated local video task), VQToken vs the baselines at the same budget.
#
#   ./eval.sh [--model DIR] [--tasks nextqa_mc_test,videomme,...] [--compressors vqtoken:num_tokens=32 pool:num_tokens=32 ...]
#             [--frames 32] [--batch-size B] [--gpus N] [--limit N] [--out runs/eval]
#
# Exit code: 2, with one line and nothing launched, for a bad flag or --compressors setting (each is checked
# first, as the plugin will read it); 1 when any run produced no results (lmms-eval's own CLI exits 0 on
# failures), with the exception line of that run's log.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${NO_VENV:-}" ]; then ./scripts/bootstrap.sh; PY=.venv/bin/python; else PY=python3; fi
exec "$PY" -m llava_vqtoken.eval.run "$@"
