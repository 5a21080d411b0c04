"""Checkpoints, inputs and greedy reference answers for the vLLM tests, made with the transformers host.

Run with the main environment's Python (transformers 5.24, not vLLM's 5.19):
    .venv/bin/python tests/vllm/hf_reference.py OUT_DIR
It writes to OUT_DIR:
  vq/          a tiny VQToken checkpoint as our save_pretrained writes it (K = NUM_TOKENS)
  vq-hub/      the same weights in the hub key layout (vision_tower.vision_model.*)
  stripped/    the same without the compressor's weights
  adaptive/    the same with adaptive K in its spec
  video_<i>.npy, image.npy   the inputs; reference.json   prompts, prompt ids and greedy answers
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

NUM_TOKENS = 8
FRAMES = (2, 4, 6)  # one video each, different lengths
MAX_NEW = 6
TOP = 3  # logprobs compared per step
VIDEO_PROMPT = "<|im_start|>user\n<video>\nwhat moves left<|im_end|>\n<|im_start|>assistant\n"
IMAGE_PROMPT = "<|im_start|>user\n<image>\nwhat color is the square<|im_end|>\n<|im_start|>assistant\n"
TEXT_PROMPT = "<|im_start|>user\nhow many red circle move left<|im_end|>\n<|im_start|>assistant\n"
SHAPES = dict(vision_hidden=64, text_hidden=256)  # 4 heads of 64: vLLM's CPU attention refuses head_dim 16


def greedy(model, inputs) -> dict:
    out = model.generate(
        **inputs, max_new_tokens=MAX_NEW, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    n = inputs["input_ids"].shape[1]
    steps = []
    for scores in out.scores:
        logp = torch.log_softmax(scores[0].float(), -1)
        top = torch.topk(logp, TOP)
        steps.append({str(int(i)): float(v) for v, i in zip(top.values, top.indices)})
    return {"prompt_ids": inputs["input_ids"][0].tolist(), "tokens": out.sequences[0, n:].tolist(), "logprobs": steps}


def rewrite(src: Path, dst: Path, keep) -> None:
    """Copy a checkpoint, renaming (or dropping, when ``keep`` returns None) its weight keys."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    state = load_file(str(src / "model.safetensors"))
    new = {keep(k): v for k, v in state.items() if keep(k) is not None}
    save_file(new, str(dst / "model.safetensors"), metadata={"format": "pt"})


def hub_name(key: str) -> str:
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + key[len("vision_tower."):]
    return key


def main(out: Path) -> None:
    from llava_vqtoken.hosts.hf import load_model
    from llava_vqtoken.hosts.hf.tiny import build_tiny_llava_onevision
    from llava_vqtoken.video import load_video, make_video

    torch.set_num_threads(2)
    stock = build_tiny_llava_onevision(out / "stock", **SHAPES)
    loaded = load_model(str(stock), {"num_tokens": NUM_TOKENS})
    model, processor = loaded.model.eval(), loaded.processor
    model.save_pretrained(out / "vq")
    processor.save_pretrained(out / "vq")
    rewrite(out / "vq", out / "vq-hub", hub_name)
    rewrite(out / "vq", out / "stripped", lambda k: None if "video_compressor" in k else k)
    shutil.copytree(out / "vq", out / "adaptive", dirs_exist_ok=True)
    cfg = json.loads((out / "adaptive" / "config.json").read_text())
    cfg["video_compressor"].update(adaptive="elbow", num_tokens=None)
    (out / "adaptive" / "config.json").write_text(json.dumps(cfg, indent=2))

    ref: dict = {"num_tokens": NUM_TOKENS, "top": TOP, "video_token_id": model.config.video_token_id,
                 "video_prompt": VIDEO_PROMPT, "image_prompt": IMAGE_PROMPT, "text_prompt": TEXT_PROMPT, "videos": []}
    for i, frames in enumerate(FRAMES):
        clip = make_video(out / f"clip_{i}.mp4", frames=24, seed=i)
        video = load_video(clip, frames)
        np.save(out / f"video_{i}.npy", video)
        inputs = processor(text=VIDEO_PROMPT, videos=[video], return_tensors="pt")
        with torch.no_grad():
            ref["videos"].append(greedy(model, inputs))
            feats = model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True)
        np.save(out / f"pixels_{i}.npy", inputs["pixel_values_videos"][0].numpy())
        np.save(out / f"embeds_{i}.npy", feats.pooler_output.reshape(-1, feats.pooler_output.shape[-1]).numpy())
    image = np.load(out / "video_0.npy")[0]
    np.save(out / "image.npy", image)
    with torch.no_grad():
        ref["image"] = greedy(model, processor(text=IMAGE_PROMPT, images=[image], return_tensors="pt"))
        ref["text"] = greedy(model, processor(text=TEXT_PROMPT, return_tensors="pt"))
    (out / "reference.json").write_text(json.dumps(ref))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
