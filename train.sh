#!/usr/bin/env bash
# Fine-tune a VQToken LLaVA-OneVision. With no arguments: the embedded default (a tiny random model on a
# generated dataset, a few dozen CPU steps, loss printed, checkpoint saved and reloaded for one generate).
#
#   ./train.sh [--host hf|llava-next] [--gpus N] [DeepSpeed launcher options] [training options]
#
# --host hf (default): transformers host (python -m llava_vqtoken.train.hf_train --help lists its options:
#   --model --data --frames --num-tokens/--adaptive ... --deepspeed zero2|zero3|PATH --lora --freeze
#   --lr --compressor-lr --projector-lr --vision-lr --max-steps --batch-size --grad-accum --save-steps ...).
# --host llava-next: the LLaVA-NeXT launcher (issue 4; not available yet).
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
if [ "$host" = "llava-next" ]; then
  echo "train.sh: error: --host llava-next is not implemented yet (issue 4)" >&2; exit 2
elif [ "$host" != "hf" ]; then
  echo "train.sh: error: --host must be hf or llava-next, got '$host'" >&2; exit 2
fi
if [ -z "${NO_VENV:-}" ]; then ./scripts/bootstrap.sh; PY=.venv/bin/python; DS=.venv/bin/deepspeed; else PY=python3; DS=deepspeed; fi
if [ ${#args[@]} -eq 0 ]; then
  echo "train.sh: no arguments: embedded default (tiny RANDOM-weight model, generated videos, CPU steps)" >&2
  args=(--output-dir runs/train-demo --max-steps 40 --save-steps 20 --lr 2e-3 --projector-lr 2e-3 --compressor-lr 2e-3)
fi
if [ "$gpus" -gt 1 ] || [ ${#launcher[@]} -gt 0 ]; then
  exec "$DS" --num_gpus "$gpus" "${launcher[@]}" --module llava_vqtoken.train.hf_train "${args[@]}"
fi
exec "$PY" -m llava_vqtoken.train.hf_train "${args[@]}"
