#!/usr/bin/env bash
# Fine-tune a VQToken LLaVA-OneVision. With no arguments: the embedded default (a tiny random model on a
# generated dataset, a few dozen CPU steps, loss printed, checkpoint saved and reloaded for one generate).
#
#   ./train.sh [--host hf|llava-next] [--gpus N] [DeepSpeed launcher options] [training options]
#
# --host hf (default): transformers host (python -m llava_vqtoken.train.hf_train --help lists its options:
#   --model --data --frames --num-tokens/--adaptive ... --deepspeed zero2|zero3|PATH --lora --freeze
#   --lr --compressor-lr --projector-lr --vision-lr --epochs|--max-steps --batch-size --grad-accum --save-steps ...).
#   Length: --epochs E (default 1) or --max-steps N, never both (refused). --adaptive is refused (fixed K only).
# --host llava-next: LLaVA-NeXT's own train() with VQToken added (python -m llava_vqtoken.train.llava_next;
#   LLaVA-NeXT's flags plus --video_compressor '{"num_tokens": 32}' --video_compressor_lr and the
#   video_compressor entry of --mm_tunable_parts). Needs LLaVA-NeXT installed (README) and arguments.
# --gpus N: processes on this node. DeepSpeed's multi-node options pass through unchanged to its launcher:
#   --hostfile F --master_addr A --master_port P --num_nodes K --node_rank R --include S --exclude S
# Re-running with the same arguments resumes from the last checkpoint in --output-dir.
set -euo pipefail
cd "$(dirname "$0")"
host=hf; gpus=1; launcher=()
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host=$2; shift 2;;
    --gpus) gpus=$2; shift 2;;
    --hostfile|--master_addr|--master_port|--num_nodes|--node_rank|--include|--exclude)
      launcher+=("$1" "$2"); shift 2;;
    *) args+=("$1"); shift;;
  esac
done
if [ "$host" != "hf" ] && [ "$host" != "llava-next" ]; then
  echo "train.sh: error: --host must be hf or llava-next, got '$host'" >&2; exit 2
fi
if [ "$host" = "llava-next" ]; then
  # LLaVA-NeXT lives in its own environment (transformers 4.45.2): use the python on PATH, or $LLAVA_NEXT_PYTHON
  PY=${LLAVA_NEXT_PYTHON:-python3}; DS=${LLAVA_NEXT_DEEPSPEED:-deepspeed}
  if ! "$PY" -c "import llava" 2>/dev/null; then
    echo "train.sh: error: --host llava-next needs LLaVA-NeXT importable by $PY (see README 'LLaVA-NeXT plugin')" >&2; exit 2
  fi
  if [ ${#args[@]} -eq 0 ]; then
    echo "train.sh: error: --host llava-next needs LLaVA-NeXT training arguments (see README)" >&2; exit 2
  fi
  module=llava_vqtoken.train.llava_next
elif [ -z "${NO_VENV:-}" ]; then ./scripts/bootstrap.sh; PY=.venv/bin/python; DS=.venv/bin/deepspeed; module=llava_vqtoken.train.hf_train
else PY=python3; DS=deepspeed; module=llava_vqtoken.train.hf_train; fi
if [ ${#args[@]} -eq 0 ]; then
  echo "train.sh: no arguments: embedded default (tiny RANDOM-weight model, generated videos, CPU steps)" >&2
  args=(--output-dir runs/train-demo --max-steps 40 --save-steps 20 --lr 2e-3 --projector-lr 2e-3 --compressor-lr 2e-3)
fi
if [ "$gpus" -gt 1 ] || [ ${#launcher[@]} -gt 0 ]; then
  exec "$DS" --num_gpus "$gpus" "${launcher[@]}" --module "$module" "${args[@]}"
fi
exec "$PY" -m "$module" "${args[@]}"
