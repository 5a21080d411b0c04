"""LLaVA-NeXT (package ``llava``) plugin: one config key swaps the video path for VQToken.

``install()`` applies a few version-checked patches (and fails loudly on an LLaVA-NeXT it does not
know): the compressor is built from ``config.video_compressor`` both at model construction
(``LlavaMetaModel.__init__``, so ``load_pretrained_model`` restores it) and in
``initialize_vision_modules`` (training from a stock checkpoint), and it replaces ``get_2dPool`` for
video samples only; images keep their path. With the released checkpoint's spec
(``CompressorConfig.released()``) the attention module is registered as ``model.cross_attention``,
the authors' layout. Written against LLaVA-NeXT b42941c / df17966 with transformers 4.45.2.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import torch

from ..config import CONFIG_KEY, CompressorConfig

KNOWN = {
    "LlavaMetaModel.__init__": ["self", "config"],
    "LlavaMetaModel.initialize_vision_modules": ["self", "model_args", "fsdp"],
    "LlavaMetaForCausalLM.get_2dPool": ["self", "image_feature", "stride"],
}
_ORIGINAL: dict[str, Any] = {}


class UnsupportedLlavaNext(RuntimeError):
    """The installed LLaVA-NeXT does not have the hook points this plugin was written for."""


def _check(arch) -> None:
    for qual, params in KNOWN.items():
        cls_name, meth = qual.split(".")
        fn = getattr(getattr(arch, cls_name, None), meth, None)
        if fn is None:
            raise UnsupportedLlavaNext(f"llava-vqtoken: LLaVA-NeXT has no {qual}; supported: commits b42941c..df17966")
        got = list(inspect.signature(fn).parameters)
        if got != params:
            raise UnsupportedLlavaNext(
                f"llava-vqtoken: LLaVA-NeXT's {qual}{tuple(got)} differs from the supported {tuple(params)}; "
                "supported: commits b42941c..df17966"
            )


def spec_of(config) -> CompressorConfig | None:
    raw = getattr(config, CONFIG_KEY, None)
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = json.loads(raw)
    return CompressorConfig.from_dict(raw)


def attach_compressor(model, config) -> None:
    """Build the compressor on an ``LlavaMetaModel`` from ``config.video_compressor`` (idempotent)."""
    from ..core import build_compressor
    from ..core.vq_attention import ReleasedVQAttention

    spec = spec_of(config)
    if spec is None or getattr(model, "video_compressor", None) is not None:
        return
    if getattr(config, "mm_newline_position", "one_token") == "grid":
        raise ValueError(
            "llava-vqtoken: mm_newline_position='grid' needs a square token grid; use one_token (LLaVA-OneVision's "
            "video setting), frame or no_token with a video_compressor"
        )
    side = model.get_vision_tower().num_patches_per_side
    comp = build_compressor(spec, config.hidden_size, grid=(side, side))
    ref = next(iter(model.mm_projector.parameters()), None) if hasattr(model, "mm_projector") else None
    if ref is not None:
        comp.to(device=ref.device, dtype=ref.dtype)
    if isinstance(getattr(comp, "attention", None), ReleasedVQAttention):
        model.cross_attention = comp.detach_attention()  # the authors' parameter names: model.cross_attention.*
    model.video_compressor = comp
    setattr(config, CONFIG_KEY, spec.to_dict())


def install() -> None:
    """Patch LLaVA-NeXT's hook points (idempotent). Import ``llava`` first or let this do it."""
    if _ORIGINAL:
        return
    from llava.model import llava_arch as arch

    _check(arch)
    meta, causal = arch.LlavaMetaModel, arch.LlavaMetaForCausalLM
    _ORIGINAL.update(init=meta.__init__, init_vision=meta.initialize_vision_modules, pool=causal.get_2dPool)

    def __init__(self, config):
        _ORIGINAL["init"](self, config)
        if hasattr(config, "mm_vision_tower") and spec_of(config) is not None:
            attach_compressor(self, config)

    def initialize_vision_modules(self, model_args, fsdp=None):
        _ORIGINAL["init_vision"](self, model_args, fsdp)
        spec = getattr(model_args, CONFIG_KEY, None)
        if spec:
            setattr(self.config, CONFIG_KEY, json.loads(spec) if isinstance(spec, str) else spec)
        attach_compressor(self, self.config)

    def get_2dPool(self, image_feature, stride=2):
        comp = getattr(self.get_model(), "video_compressor", None)
        if comp is None:
            return _ORIGINAL["pool"](self, image_feature, stride)
        t, n, d = image_feature.shape
        side = self.get_vision_tower().num_patches_per_side
        video = comp(image_feature.reshape(1, t, side, side, d))[0]
        self.get_model().last_video_tokens = video.num_tokens
        return video.tokens.unsqueeze(0)  # one pseudo-frame: LLaVA-NeXT's newline code adds image_newline

    meta.__init__ = __init__
    meta.initialize_vision_modules = initialize_vision_modules
    causal.get_2dPool = get_2dPool


def uninstall() -> None:
    if not _ORIGINAL:
        return
    from llava.model import llava_arch as arch

    arch.LlavaMetaModel.__init__ = _ORIGINAL["init"]
    arch.LlavaMetaModel.initialize_vision_modules = _ORIGINAL["init_vision"]
    arch.LlavaMetaForCausalLM.get_2dPool = _ORIGINAL["pool"]
    _ORIGINAL.clear()


def compressor_parameters(model) -> list[torch.nn.Parameter]:
    """The compressor's trainable parameters, including a detached released-layout attention."""
    inner = model.get_model()
    params = list(getattr(inner, "video_compressor", torch.nn.Module()).parameters())
    if getattr(inner, "cross_attention", None) is not None:
        params += list(inner.cross_attention.parameters())
    return params
