"""transformers (>= 5) LLaVA-OneVision host. Importing it registers the VQToken classes."""

from .generation import generate_adaptive
from .load import LoadedModel, load_model
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
    "LoadedModel",
    "VQTokenLlavaOnevisionConfig",
    "VQTokenLlavaOnevisionForConditionalGeneration",
    "VQTokenLlavaOnevisionModel",
    "VQTokenLlavaOnevisionProcessor",
    "generate_adaptive",
    "load_model",
    "register",
    "tokens_per_video",
]
