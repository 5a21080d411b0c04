"""Widths and depths of the models LLaVA-OneVision ships with (Qwen2 LLMs, the SigLIP-so400m/14 vision
tower at 384 px) and of the tiny stand-ins the tests and demos build: one table, read by the prefill FLOP
count (``core.metrics``), the random models of both hosts and the benchmarks."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


def _frozen(table: dict[str, dict[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({name: MappingProxyType(shape) for name, shape in table.items()})


#: Qwen2 LLMs, as ``Qwen2Config`` fields ("tiny": the CPU stand-in)
QWEN2 = _frozen({
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151_936),
    "7b": dict(hidden_size=3584, intermediate_size=18_944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152_064),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
})

#: SigLIP vision towers, as ``SiglipVisionConfig`` fields ("tiny": the CPU stand-in, same grid)
SIGLIP = _frozen({
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                   image_size=384, patch_size=14),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=384, patch_size=14),
})


#: LLaVA-OneVision's vision grid per frame: SigLIP-so400m/14 at 384 px gives 27 x 27 patches
GRID = SIGLIP["so400m"]["image_size"] // SIGLIP["so400m"]["patch_size"]
#: visual tokens per frame before any pooling or compression (27 x 27 = 729)
FRAME_TOKENS = GRID * GRID
#: frames per video of the paper's setting (32 x 729 = 23,328 tokens: its 100%)
VIDEO_FRAMES = 32


def without(shape: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """A copy of ``shape`` without ``keys`` (e.g. the vocabulary size, where the tokenizer decides it)."""
    return {k: v for k, v in shape.items() if k not in keys}
