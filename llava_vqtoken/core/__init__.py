"""Host-free core: clustering, key map, VQ-Attention, baselines, metrics. Imports torch, numpy and the
package's floor 0 (config, shapes) only: no host library (the import contract in pyproject.toml checks it)."""

from .adaptive import AdaptiveChoice, adaptive_kmeans
from .compressor import (
    BaselineCompressor,
    CompressedVideo,
    CompressionError,
    VideoCompressor,
    VQTokenCompressor,
    build_compressor,
    pad_tokens,
)
from .graphs import CodeCache
from .kmeans import KMeansResult, cosine_kmeans
from .metrics import REFERENCE_TOKENS, prefill_flops, tokdense, token_ratio

__all__ = [
    "AdaptiveChoice",
    "BaselineCompressor",
    "CodeCache",
    "CompressedVideo",
    "CompressionError",
    "KMeansResult",
    "REFERENCE_TOKENS",
    "VQTokenCompressor",
    "VideoCompressor",
    "adaptive_kmeans",
    "build_compressor",
    "cosine_kmeans",
    "pad_tokens",
    "prefill_flops",
    "tokdense",
    "token_ratio",
]
