"""LLaVA-NeXT (package ``llava``) plugin: one config key swaps the video path for VQToken.

``install()`` applies a few version-checked patches (and fails loudly on an LLaVA-NeXT it does not
know): the compressor is built from ``config.video_compressor`` both at model construction
(``LlavaMetaModel.__init__``, so ``load_pretrained_model`` restores it) and in
``initialize_vision_modules`` (training from a stock checkpoint), and it replaces ``get_2dPool`` for
video samples only; images keep their path. In training, every forward calls the compressor exactly
once, right after the vision tower and projector, on all of the batch's videos together (or, for a
batch without video, on one image crop with weight 0): under ZeRO-3 every rank must gather the same
parameters in the same order, and a per-video call count that differs between ranks hangs them.
With the released checkpoint's spec (``CompressorConfig.released()``) the attention module is
registered as ``model.cross_attention``, the authors' layout. Written against LLaVA-NeXT b42941c /
df17966 with transformers 4.45.2.
"""

from __future__ import annotations

import inspect
import json
import warnings
from typing import Any

import torch

from ..config import CONFIG_KEY, CompressorConfig

KNOWN = {
    "LlavaMetaModel.__init__": ["self", "config"],
    "LlavaMetaModel.initialize_vision_modules": ["self", "model_args", "fsdp"],
    "LlavaMetaForCausalLM.get_2dPool": ["self", "image_feature", "stride"],
    "LlavaMetaForCausalLM.encode_images": ["self", "images"],
    "LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal": [
        "self", "input_ids", "position_ids", "attention_mask", "past_key_values", "labels", "images", "modalities",
        "image_sizes",
    ],
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
    _ORIGINAL.update(init=meta.__init__, init_vision=meta.initialize_vision_modules, pool=causal.get_2dPool,
                     encode=causal.encode_images, prepare=causal.prepare_inputs_labels_for_multimodal)

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
        if getattr(self.get_model(), "video_compressor", None) is None:
            return _ORIGINAL["pool"](self, image_feature, stride)
        return pool_video(self, image_feature)

    def encode_images(self, images):
        return after_encode(self, _ORIGINAL["encode"](self, images))

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                             images, modalities=["image"], image_sizes=None):  # noqa: B006 - upstream's
        args = (input_ids, position_ids, attention_mask, past_key_values, labels, images, modalities, image_sizes)
        return prepare_with_one_call(self, _ORIGINAL["prepare"], *args)

    meta.__init__ = __init__
    meta.initialize_vision_modules = initialize_vision_modules
    causal.get_2dPool = get_2dPool
    causal.encode_images = encode_images
    causal.prepare_inputs_labels_for_multimodal = prepare_inputs_labels_for_multimodal


# The three hooks below are what ``install()`` patches in, and what the git patch in ``patches/`` calls.


def pool_video(model, image_feature: torch.Tensor) -> torch.Tensor:
    """``get_2dPool`` for one video's features [T, H*W, D] -> [1, M, D]: its tokens from the batch's one
    compressor call in training, else a call of its own."""
    step = getattr(model, "_vq_step", None)
    if step is not None and step["done"]:
        return step["done"].pop(0)
    comp = model.get_model().video_compressor
    t, n, d = image_feature.shape
    side = model.get_vision_tower().num_patches_per_side
    video = comp(image_feature.reshape(1, t, side, side, d))[0]
    model.get_model().last_video_tokens = video.num_tokens
    return video.tokens.unsqueeze(0)  # one pseudo-frame: LLaVA-NeXT's newline code adds image_newline


def after_encode(model, feats: torch.Tensor) -> torch.Tensor:
    """End of ``encode_images``: in a training forward, compress all of the batch's videos now."""
    step = getattr(model, "_vq_step", None)
    if step is not None:
        _compress_batch(model, feats, step)
    return feats


def prepare_with_one_call(model, prepare, input_ids, position_ids, attention_mask, past_key_values, labels, images,
                          modalities=("image",), image_sizes=None):
    """Run LLaVA-NeXT's ``prepare_inputs_labels_for_multimodal`` (``prepare``) so that a training
    forward calls the compressor exactly once (see the module doc)."""
    args = (input_ids, position_ids, attention_mask, past_key_values, labels, images, modalities, image_sizes)
    comp = getattr(model.get_model(), "video_compressor", None)
    if comp is None or not model.training or images is None or input_ids.shape[1] == 1:
        return prepare(model, *args)
    mods = [modalities] if isinstance(modalities, str) else list(modalities)
    if isinstance(images, list):
        sizes = [x.shape[0] if x.ndim == 4 else 1 for x in images]
    else:
        sizes = [images.shape[1]] * images.shape[0] if images.ndim == 5 else [1] * images.shape[0]
    model._vq_step = {"sizes": sizes, "videos": [i for i, m in enumerate(mods) if m == "video"], "done": [],
                      "zero": None}
    try:
        out = list(prepare(model, *args))
        zero = model._vq_step["zero"]
    finally:
        model._vq_step = None
    if zero is not None and out[4] is not None:
        out[4] = out[4] + zero.to(out[4].dtype)
    return tuple(out)


def _compress_batch(model, feats: torch.Tensor, step: dict) -> None:
    """One compressor call for the whole training batch, right after the projector (see the module doc)."""
    comp = model.get_model().video_compressor
    side = model.get_vision_tower().num_patches_per_side
    d = feats.shape[-1]
    parts = torch.split(feats, step["sizes"])
    videos = [parts[i] for i in step["videos"] if i < len(parts)]
    if not videos:  # no video in this batch: run the compressor on one crop, weight 0
        out = comp(feats[:1].reshape(1, 1, side, side, d))
        step["zero"] = 0.0 * out[0].tokens.float().sum()
        return
    frames = {v.shape[0] for v in videos}
    if len(frames) == 1:
        out = comp(torch.stack(videos).reshape(len(videos), frames.pop(), side, side, d))
    else:  # different frame counts cannot share one call; ranks may then disagree on the count (ZeRO-3)
        warnings.warn("llava-vqtoken: videos with different frame counts in one batch are compressed one call "
                      "each; under ZeRO-3 use a fixed frame count (--frames_upbound with --force_sample True)",
                      stacklevel=2)  # shown once per call site by Python's default warning filter
        out = [comp(v.reshape(1, v.shape[0], side, side, d))[0] for v in videos]
    model.get_model().last_video_tokens = out[-1].num_tokens
    step["done"] = [v.tokens.unsqueeze(0) for v in out]


def uninstall() -> None:
    if not _ORIGINAL:
        return
    from llava.model import llava_arch as arch

    arch.LlavaMetaModel.__init__ = _ORIGINAL["init"]
    arch.LlavaMetaModel.initialize_vision_modules = _ORIGINAL["init_vision"]
    arch.LlavaMetaForCausalLM.get_2dPool = _ORIGINAL["pool"]
    arch.LlavaMetaForCausalLM.encode_images = _ORIGINAL["encode"]
    arch.LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal = _ORIGINAL["prepare"]
    _ORIGINAL.clear()


def compressor_parameters(model) -> list[torch.nn.Parameter]:
    """The compressor's trainable parameters, including a detached released-layout attention."""
    inner = model.get_model()
    params = list(getattr(inner, "video_compressor", torch.nn.Module()).parameters())
    if getattr(inner, "cross_attention", None) is not None:
        params += list(inner.cross_attention.parameters())
    return params
