"""Video features from a transformers LLaVA-OneVision: frames -> vision tower -> projector.

The compressor sits right after the projector and replaces LLaVA-OneVision's bilinear pooling, so
these are the *un-pooled* post-projector tokens as a grid [B, T, H, W, D].
"""

from __future__ import annotations

import numpy as np
import torch


def grid_size(config) -> tuple[int, int]:
    v = config.vision_config
    g = v.image_size // v.patch_size
    return g, g


def preprocess_frames(processor, frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """uint8 [T, H, W, 3] (or a list of them) -> pixel_values_videos [B, T, 3, S, S] via the real processor."""
    videos = frames if isinstance(frames, list) else [frames]
    out = processor.video_processor(videos=videos, return_tensors="pt")
    return out["pixel_values_videos"]


def project_video(model, pixel_values_videos: torch.Tensor) -> torch.Tensor:
    """pixel_values_videos [B, T, 3, S, S] -> post-projector grid features [B, T, H, W, D].

    ``model`` is a ``LlavaOnevisionForConditionalGeneration`` or its inner ``LlavaOnevisionModel``.
    Follows the config's ``vision_feature_layer`` (int or list of ints, concatenated) and
    ``vision_feature_select_strategy`` ("default" drops a leading CLS token).
    """
    inner = getattr(model, "model", model)
    cfg = inner.config
    b, t = pixel_values_videos.shape[:2]
    pixels = pixel_values_videos.flatten(0, 1).to(inner.vision_tower.dtype)
    out = inner.vision_tower(pixels, output_hidden_states=True)
    layer = cfg.vision_feature_layer
    if isinstance(layer, int):
        feats = out.hidden_states[layer]
    else:
        feats = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
    if cfg.vision_feature_select_strategy == "default":
        feats = feats[:, 1:]
    feats = inner.multi_modal_projector(feats)
    h, w = grid_size(cfg)
    return feats.reshape(b, t, h, w, feats.shape[-1])
