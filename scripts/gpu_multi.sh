#!/usr/bin/env bash
# Multi-GPU DeepSpeed check for the transformers host (run on the lent 2-GPU machine; see docs/BENCHMARKS.md).
# Carried: .whl (deepspeed sdist + its pure-Python needs), .gpu/data (generated videos + JSON). Prepare them here:
#   pip download --no-deps -d .whl deepspeed==0.19.8
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl hjson pydantic pydantic-core==<pydantic's pin> annotated-types \
#       typing-inspection "typing-extensions>=4.16"
#   .venv/bin/python -c "from llava_vqtoken.synthetic import make_demo_dataset; make_demo_dataset('.gpu/data', n=64)"
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
DS_BUILD_OPS=0 python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/deepspeed-*.tar.gz || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, deepspeed; print(torch.__version__, transformers.__version__, deepspeed.__version__)"
python3 -c "from llava_vqtoken.hosts.hf.tiny import build_tiny_llava_onevision as b; print(b(preset='0.5b', cache_dir='/tmp/cache'))" || exit 1
STEPS=${STEPS:-30}
for stage in ${STAGES-zero2 zero3}; do
  for n in ${NPROCS:-1 2}; do
    gen=--no-generate; [ "$stage" = zero3 ] && [ "$n" = 2 ] && gen=
    echo "=== $stage, $n process(es)"
    timeout ${RUN_TIMEOUT:-200} torchrun --nproc_per_node "$n" --master_port $((29500 + n)) -m llava_vqtoken.train.hf_train \
      --preset 0.5b --cache-dir /tmp/cache --data .gpu/data/data.json --output-dir /tmp/run-$stage-$n --deepspeed $stage --bf16 \
      --max-steps $STEPS --batch-size 2 --frames 8 --save-steps $STEPS --logging-steps 5 --num-tokens 32 \
      --lr 1e-4 --projector-lr 1e-3 --compressor-lr 1e-3 $gen > "$OUT/log-$stage-$n.txt" 2>&1
    echo "rc=$?"
    grep -E "losses|identical|reloaded|optimizer groups|Error|error" "$OUT/log-$stage-$n.txt" | grep -v "skipping" | tail -6
    cp /tmp/run-$stage-$n/train_summary.json "$OUT/summary-$stage-$n.json" 2>/dev/null
    python3 -c "import json; d = json.load(open('/tmp/run-$stage-$n/train_summary.json')); \
print('steady samples/s', d['steady_samples_per_second'], 'peak GB', [r['peak_mem_gb'] for r in d['ranks']['per_rank']])"
  done
done
