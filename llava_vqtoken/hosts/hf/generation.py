"""Generation helpers for the transformers host, including adaptive K (a different K per video)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


@torch.no_grad()
def generate_adaptive(
    model, processor, videos: list[np.ndarray], prompts: list[str], **generate_kwargs: Any
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Generate for a batch whose videos may get different K (adaptive elbow/silhouette).

    Features come first (vision tower -> projector -> compressor), then the prompts are tokenised
    with K_i + 1 placeholders for video i, then ``generate`` reuses the features through
    ``mm_encoder_outputs``. Returns (generated ids, inputs). Beam search expands the cached features,
    which is exact only when all videos have the same K; use ``num_beams=1`` otherwise.
    """
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts")
    pixels = processor.video_processor(videos=videos, return_tensors="pt")["pixel_values_videos"]
    pixels = pixels.to(model.device, model.dtype)
    feats = model.model.get_video_features(pixels, return_dict=True)
    counts = list(feats["video_num_tokens"])
    if generate_kwargs.get("num_beams", 1) > 1 and len(set(counts)) > 1:
        raise ValueError(f"beam search with different K per video ({counts}) is not supported; use num_beams=1")
    if len(set(counts)) > 1 or feats.pooler_output.shape[0] != len(videos):
        feats.pooler_output = torch.cat(_split(feats.pooler_output, counts))[None]
    side = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    try:
        inputs = processor(text=prompts, videos=videos, num_video_tokens=counts, return_tensors="pt", padding=True)
    finally:
        processor.tokenizer.padding_side = side
    inputs.pop("pixel_values_videos", None)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    out = model.generate(**inputs, mm_encoder_outputs={"video": feats}, **generate_kwargs)
    return out, inputs


def _split(pooled: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    if pooled.shape[0] == len(counts):  # [B, M, D] with equal M
        return [pooled[i] for i in range(len(counts))]
    return list(pooled[0].split(counts))
