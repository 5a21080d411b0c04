#!/usr/bin/env bash
# Multi-GPU DeepSpeed check for the LLaVA-NeXT host (run on the lent 2-GPU machine).
# Carried: .whl-ln (transformers 4.45.2, tokenizers 0.20.3, accelerate 0.34.2, huggingface-hub 0.36.2,
# datasets 4.8.5, dill 0.3.8, multiprocess 0.70.16, tyro 1.0.17, docstring-parser, typeguard, shtab,
# and DeepSpeed's sdist + needs as in gpu_multi.sh), .llava (LLaVA-NeXT b42941c: llava/ and its vendored trl/),
# .gpu/data (generated videos + JSON).
# The GPU image has neither av nor decord (llava/utils.py imports them together, so both are needed, and
# av's wheel alone is 35 MB, over the carry limit with the rest). So the clips are decoded there with the
# image's OpenCV into frame folders, which LLaVA-NeXT's dataset reads with PIL when the path contains
# `shareVideoGPTV` (train.py:1162; `--force_sample` takes `--frames_upbound` frames). The mp4 path through
# decord is covered by tests/llava_next on CPU.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/lnsite .whl-ln/*.whl || exit 1
DS_BUILD_OPS=0 python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/lnsite .whl-ln/deepspeed-*.tar.gz || exit 1
export PYTHONPATH=/tmp/lnsite:$PWD/.llava:$PWD PYTHONUNBUFFERED=1 HF_HOME=/tmp/hfhome HF_HUB_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, deepspeed, llava; print(torch.__version__, transformers.__version__, deepspeed.__version__)" || exit 1
python3 - <<'PY' || exit 1
import json, pathlib, cv2
src = pathlib.Path(".gpu/data"); dst = pathlib.Path("/tmp/lndata"); recs = []
for r in json.loads((src / "data.json").read_text()):
    if "video" in r:
        cap, k = cv2.VideoCapture(str(src / r["video"])), 0
        folder = dst / "shareVideoGPTV" / pathlib.Path(r["video"]).stem
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            cv2.imwrite(str(folder / f"{k:04d}.jpg"), frame); k += 1
        if k == 0:
            continue  # the deliberately corrupt clip
        r = dict(r, video=str(folder.relative_to(dst)))
    recs.append(r)
(dst / "data.json").write_text(json.dumps(recs))
print("frame folders:", sum("video" in r for r in recs), "records:", len(recs))
PY
python3 -c "from llava_vqtoken.hosts.llava_next.tiny import build_tiny_llava_qwen as b; print(b('/tmp/llava-qwen-05b', preset='0.5b'))" || exit 1
for stage in ${STAGES-zero2 zero3}; do
  for n in ${NPROCS:-1 2}; do
    echo "=== LLaVA-NeXT $stage, $n process(es)"
    timeout ${RUN_TIMEOUT:-170} torchrun --nproc_per_node "$n" --master_port $((29600 + n)) -m llava_vqtoken.train.llava_next \
      --model_name_or_path /tmp/llava-qwen-05b --version qwen_1_5 --data_path /tmp/lndata/data.json \
      --video_folder /tmp/lndata --image_folder /tmp/lndata --force_sample True --vision_tower tiny-org/tiny-siglip-patch14-384-26l \
      --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False \
      --mm_patch_merge_type spatial_unpad --mm_newline_position one_token --mm_spatial_pool_mode bilinear \
      --image_aspect_ratio anyres_max_9 --image_grid_pinpoints "[[384, 384], [384, 768]]" --frames_upbound 8 \
      --mm_tunable_parts mm_mlp_adapter,video_compressor,mm_language_model --video_compressor '{"num_tokens": 32}' \
      --video_compressor_lr 1e-3 --mm_projector_lr 1e-3 --learning_rate 1e-4 --output_dir /tmp/ln-$stage-$n \
      --max_steps ${STEPS:-60} --per_device_train_batch_size 2 --gradient_accumulation_steps 1 --save_strategy no \
      --logging_steps 5 --report_to none --model_max_length 4096 --dataloader_num_workers 2 --lazy_preprocess True \
      --attn_implementation sdpa --bf16 True --deepspeed configs/deepspeed/$stage.json > "$OUT/ln-$stage-$n.txt" 2>&1
    echo "rc=$?"
    grep -E "'loss'|train_runtime|identical|Error" "$OUT/ln-$stage-$n.txt" | tail -8
    cp /tmp/ln-$stage-$n/vqtoken_ranks.json "$OUT/ln-ranks-$stage-$n.json" 2>/dev/null
    python3 -c "import json; d = json.load(open('/tmp/ln-$stage-$n/vqtoken_ranks.json')); \
print('steady samples/s', d['steady_samples_per_second'], 'peak GB', [r['peak_mem_gb'] for r in d['per_rank']])"
  done
done
echo "=== reload the ZeRO-3 / 2-GPU checkpoint for inference"
python3 - <<'PY'
import numpy as np, torch
from llava_vqtoken.hosts.llava_next import install
install()
from llava.model.builder import load_pretrained_model
from llava.mm_utils import tokenizer_image_token
from llava.constants import IMAGE_TOKEN_INDEX
tok, model, proc, _ = load_pretrained_model("/tmp/ln-zero3-2", None, "llava_qwen", device_map="auto",
                                            torch_dtype="bfloat16", attn_implementation="sdpa")
video = np.random.default_rng(0).integers(0, 255, size=(8, 240, 320, 3), dtype=np.uint8)
pix = proc.preprocess(list(video), return_tensors="pt")["pixel_values"].to(model.device, torch.bfloat16)
ids = tokenizer_image_token("<|im_start|>user\n<image>\nwhat moves ?<|im_end|>\n<|im_start|>assistant\n", tok,
                            IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0).to(model.device)
with torch.no_grad():
    out = model.generate(ids, images=[pix], modalities=["video"], max_new_tokens=4, do_sample=False)
print("reloaded ZeRO-3 checkpoint: video tokens", model.get_model().last_video_tokens, "generated", out.shape)
PY
