"""transformers (>= 5) LLaVA-OneVision host. Importing it registers the VQToken classes."""

from .generation import generate_adaptive
from .modeling import (
    MODEL_TYPE,
    CheckpointError,
    VQTokenLlavaOnevisionConfig,
    VQTokenLlavaOnevisionForConditionalGeneration,
    VQTokenLlavaOnevisionModel,
    VQTokenLlavaOnevisionProcessor,
    register,
    tokens_per_video,
)

__all__ = [
    "MODEL_TYPE",
    "CheckpointError",
    "VQTokenLlavaOnevisionConfig",
    "VQTokenLlavaOnevisionForConditionalGeneration",
    "VQTokenLlavaOnevisionModel",
    "VQTokenLlavaOnevisionProcessor",
    "generate_adaptive",
    "register",
    "tokens_per_video",
]
