"""VQToken LLaVA-OneVision for vLLM 0.32, built on vLLM's own LLaVA-OneVision (subclasses, no patching).

- :class:`VQTokenProcessingInfo` reserves the compressor's token count per video (K + 1 with the
  newline) where vLLM asks for it (``get_num_video_tokens``), before the vision tower runs.
- :class:`VQTokenLlavaOnevisionForVllm` runs the vision tower and projector on each video's frames,
  then the core compressor on the un-pooled grid (in place of the 2x bilinear pooling), then appends the
  learned ``image_newline``. Each video is compressed on its own, so a video's tokens never depend on
  the other requests of a batch. Images keep vLLM's stock path.
- Weights load from the hub layout (``vision_tower.vision_model.*``) and from what transformers 5's
  ``save_pretrained`` writes (``vision_tower.*``, ``model.video_compressor.*``); a checkpoint without
  the compressor's weights is refused in one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.llava_onevision import (
    _MAX_FRAMES_PER_VIDEO,
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
    LlavaOnevisionVideoPixelInputs,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ...config import CheckpointError, CompressorConfig
from ...core import build_compressor
from ...core.compressor import CompressionError, expected_tokens
from .hf_config import VQTokenVllmConfig, served_spec

#: our module name for the compressor, and the prefix transformers' save_pretrained gives it
COMPRESSOR = "video_compressor"
SAVED_COMPRESSOR_PREFIX = f"model.{COMPRESSOR}."
#: a vision-tower key in transformers 5's save layout (no ``vision_model.``), renamed to the hub layout
_SAVED_VISION_KEY = re.compile(r"^(model\.)?vision_tower\.(?!vision_model\.)")


def frame_grid(config) -> tuple[int, int]:
    """(H, W) of a frame's token grid: image size over patch size."""
    g = config.vision_config.image_size // config.vision_config.patch_size
    return g, g


def video_tokens(spec: CompressorConfig, frames: int, grid: tuple[int, int]) -> int:
    """Placeholder tokens of one video: the compressor's count plus the newline."""
    n = expected_tokens(spec, frames, *grid)
    if n is None:  # served_spec refuses adaptive K before this point
        raise CheckpointError("adaptive K has no token count before the vision tower runs")
    return n + int(spec.newline)


def hub_key(name: str) -> str:
    """A checkpoint key in the layout vLLM's LLaVA-OneVision loads."""
    if name.startswith(SAVED_COMPRESSOR_PREFIX):
        return COMPRESSOR + "." + name[len(SAVED_COMPRESSOR_PREFIX):]
    return _SAVED_VISION_KEY.sub(lambda m: f"{m.group(1) or ''}vision_tower.vision_model.", name)


class VQTokenProcessingInfo(LlavaOnevisionProcessingInfo):
    """Token counts of the compressed video path."""

    def get_hf_config(self) -> VQTokenVllmConfig:
        return self.ctx.get_hf_config(VQTokenVllmConfig)

    def get_num_video_tokens(self, *, image_width: int, image_height: int, num_frames: int) -> int:
        config = self.get_hf_config()
        spec = served_spec(config, where=str(self.ctx.model_config.model))
        return video_tokens(spec, num_frames, frame_grid(config))

    def get_num_frames_with_most_features(self, seq_len: int, mm_counts: Mapping[str, int]) -> int:
        """Frames of the dummy videos vLLM profiles with. The stock search adds frames until the token
        count exceeds ``seq_len``, which never happens for a fixed K; take the most frames (up to vLLM's
        profiling cap) whose videos still fit."""
        videos = max(mm_counts.get("video", 0), 1)
        fits = [
            f for f in range(1, _MAX_FRAMES_PER_VIDEO + 1)
            if videos * self.get_num_video_tokens(image_width=0, image_height=0, num_frames=f) <= seq_len
        ]
        return max(fits, default=1)


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionMultiModalProcessor,
    info=VQTokenProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class VQTokenLlavaOnevisionForVllm(LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision with the video pooling replaced by a VQToken compressor (fixed K)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        self.where = str(vllm_config.model_config.model)
        self.spec = served_spec(config, where=self.where)
        self.grid = frame_grid(config)
        self.video_compressor = build_compressor(self.spec, config.text_config.hidden_size, grid=self.grid)

    def _process_video_pixels(self, inputs: LlavaOnevisionVideoPixelInputs) -> list[torch.Tensor]:
        """One [K + 1, D] embedding per video, each video on its own."""
        return [self._compress_video(frames) for frames in inputs["pixel_values_videos"]]

    def _compress_video(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[0] == 0:
            raise CompressionError(f"a video must be [frames, 3, H, W] with frames >= 1, got {tuple(frames.shape)}")
        feats = self.vision_tower(frames, feature_select_strategy=self.config.vision_feature_select_strategy)
        feats = self.multi_modal_projector(feats)
        h, w = self.grid
        grid = feats.reshape(1, frames.shape[0], h, w, feats.shape[-1])
        (video,) = self.video_compressor(grid)
        tokens = video.tokens
        if self.spec.newline:
            tokens = torch.cat([tokens, self.image_newline[None].to(tokens.dtype)])
        return tokens

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights((hub_key(name), w) for name, w in weights)
        missing = [n for n in self._compressor_parameter_names() if n not in loaded]
        if missing:
            raise CheckpointError(
                f"{self.where} has no trained weights for its {self.spec.name!r} compressor "
                f"({len(missing)} of {len(self._compressor_parameter_names())} tensors missing, e.g. "
                f"{SAVED_COMPRESSOR_PREFIX}{missing[0].removeprefix(COMPRESSOR + '.')}); serve a checkpoint "
                "saved by llava-vqtoken with its compressor, not a stock or stripped one"
            )
        return loaded

    def _compressor_parameter_names(self) -> list[str]:
        return [f"{COMPRESSOR}.{n}" for n, _ in self.video_compressor.named_parameters()]
