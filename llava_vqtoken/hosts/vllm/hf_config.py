"""The transformers config class of our checkpoints, for vLLM's transformers (no import of hosts/hf).

vLLM reads config.json through transformers' ``AutoConfig``; ``model_type`` ``vqtoken_llava_onevision``
is ours, so it is registered here. ``video_compressor`` holds the compressor spec (the core's
:class:`~llava_vqtoken.config.CompressorConfig` fields), as the transformers host writes it.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlavaOnevisionConfig

from ...config import CONFIG_KEY, CheckpointError, CompressorConfig
from ...spec_rule import resolve_spec

MODEL_TYPE = "vqtoken_llava_onevision"
ADAPTIVE_REFUSAL = (
    "adaptive K ({adaptive}) cannot be served by vLLM: vLLM reserves each video's placeholder tokens before "
    "the vision tower runs, and adaptive K is known only after clustering; serve a fixed-K checkpoint "
    "(video_compressor.adaptive null, num_tokens K)"
)


@strict
class VQTokenVllmConfig(LlavaOnevisionConfig):
    """LLaVA-OneVision config plus ``video_compressor`` (the compressor spec; validated when served)."""

    model_type = MODEL_TYPE
    video_compressor: dict | None = None


def served_spec(config: LlavaOnevisionConfig, where: str = "the checkpoint") -> CompressorConfig:
    """The spec that runs: the checkpoint's saved spec (``spec_rule``; vLLM has no flag to change it).

    Raises CheckpointError (one line) for a stock config and for adaptive K.
    """
    saved = getattr(config, CONFIG_KEY, None)
    if not saved:
        raise CheckpointError(
            f"{where} has no {CONFIG_KEY} spec (a stock LLaVA-OneVision): convert it with llava-vqtoken's "
            "transformers host and serve the converted checkpoint"
        )
    spec = resolve_spec(saved, None, where=where).spec
    if spec.adaptive is not None:
        raise CheckpointError(f"{where}: " + ADAPTIVE_REFUSAL.format(adaptive=spec.adaptive))
    return spec


def register_config() -> None:
    AutoConfig.register(MODEL_TYPE, VQTokenVllmConfig, exist_ok=True)
