"""vLLM host: serve VQToken LLaVA-OneVision checkpoints with vLLM (an out-of-tree plugin, no edit of vLLM).

``register`` is the ``vllm.general_plugins`` entry point (``pip install llava-vqtoken[vllm]``): vLLM calls
it in every process it starts. It registers, through vLLM's and transformers' public registries only,

- the config class of ``model_type`` ``vqtoken_llava_onevision`` with transformers' ``AutoConfig``;
- the architecture ``VQTokenLlavaOnevisionForConditionalGeneration`` (what our checkpoints' config.json
  names) with ``vllm.ModelRegistry``, lazily (``module:class``), so vLLM is imported only where it runs.

The model class (:mod:`.model`) registers its multimodal processor with vLLM's processor registry.
This package imports no other host.
"""

from __future__ import annotations

ARCHITECTURE = "VQTokenLlavaOnevisionForConditionalGeneration"
MODEL_CLASS = "llava_vqtoken.hosts.vllm.model:VQTokenLlavaOnevisionForVllm"


def register() -> None:
    """Register the config class and the architecture (idempotent; vLLM may call it in several processes)."""
    from vllm import ModelRegistry

    from .hf_config import register_config

    register_config()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


__all__ = ["ARCHITECTURE", "MODEL_CLASS", "register"]
