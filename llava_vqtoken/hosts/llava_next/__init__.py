"""LLaVA-NeXT (package ``llava``) plugin: one config key swaps the video path for VQToken.

``install()`` applies a few version-checked patches (and fails loudly on an LLaVA-NeXT it does not
know): the compressor is built from ``config.video_compressor`` both at model construction
(``LlavaMetaModel.__init__``, so ``load_pretrained_model`` restores it) and in
``initialize_vision_modules`` (training from a stock checkpoint), and it replaces ``get_2dPool`` for
video samples only; images keep their path. In training, every forward calls the compressor exactly
once, right after the vision tower and projector, on all of the batch's videos together (or, for a
batch without video, on one image crop with weight 0): under ZeRO-3 every rank must gather the same
parameters in the same order, and a per-video call count that differs between ranks hangs them.
At inference, a spec with ``chunk_frames`` > 0 streams each video as the transformers host does: its
first chunk goes through LLaVA-NeXT's one batched vision pass, the rest ``chunk_frames`` frames at a
time through the vision tower and projector into a ``FeatureStore``, then ``compress_streamed``; in
training such a spec is refused in one line (``check_streamable``).
With the released checkpoint's spec (``CompressorConfig.released()``) the attention module is
registered as ``model.cross_attention``, the authors' layout. Written against LLaVA-NeXT b42941c /
df17966 with transformers 4.45.2.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ...config import CONFIG_KEY, CheckpointError, CompressorConfig
from ...core.compressor import CompressedVideo
from ...core.streaming import FeatureStore, check_streamable, compress_streamed
from ...spec_rule import PARAMETER_FIELDS, SpecDecision, resolve_spec

#: config attribute (an ``overwrite_config`` entry) that lets the given spec change a checkpoint's
#: trained-with or parameter fields (README "Which spec runs"); never saved
OVERRIDE_KEY = "video_compressor_override_spec"
#: weight-name prefix of the authors' released checkpoint (its config.json has no video_compressor)
RELEASED_PREFIX = "model.cross_attention."

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


def _note(line: str) -> None:
    print(f"[llava-vqtoken] {line}", file=sys.stderr)


def _weight_keys(path: Path) -> list[str]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return list(json.loads(index.read_text())["weight_map"])
    if (path / "model.safetensors").exists():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "pt") as f:
            return list(f.keys())
    return []


def _local_dir(name: str) -> Path | None:
    """The directory holding a checkpoint's config.json: the path itself, or a hub id's cached snapshot."""
    if (Path(name) / "config.json").is_file():
        return Path(name)
    from transformers.utils import cached_file

    try:
        found = cached_file(name, "config.json", local_files_only=True, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):  # not a hub id, or not in the cache
        return None
    return Path(found).parent if found else None


def saved_spec(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The spec a local llava_qwen checkpoint was saved with: its config.json's ``video_compressor``,
    else :meth:`CompressorConfig.released` for the authors' layout (``model.cross_attention.*``
    weights), else None (stock). A hub id is read from the local hub cache, where the loader has put
    the files before it builds the model."""
    root = _local_dir(str(path))
    if root is None:
        return None
    raw = json.loads((root / "config.json").read_text()).get(CONFIG_KEY)
    if raw is not None:
        return CompressorConfig.from_dict(raw).to_dict()
    if any(k.startswith(RELEASED_PREFIX) for k in _weight_keys(root)):
        return CompressorConfig.released().to_dict()
    if any(".video_compressor." in k for k in _weight_keys(root)):
        raise CheckpointError(f"{path} holds video_compressor weights but no video_compressor spec in config.json")
    return None


def decide(config) -> SpecDecision | None:
    """The spec rule at model construction: the checkpoint on disk (``config._name_or_path``) against
    the spec in ``config`` (an ``overwrite_config`` entry, whole or partial). None: stock, no spec."""
    raw = getattr(config, CONFIG_KEY, None)
    requested = CompressorConfig.from_dict(raw).to_dict() if isinstance(raw, str) else raw
    path = str(getattr(config, "_name_or_path", "") or "")
    saved = saved_spec(path) if path else None
    allow = bool(getattr(config, OVERRIDE_KEY, False))
    if hasattr(config, OVERRIDE_KEY):
        delattr(config, OVERRIDE_KEY)
    if saved is None and requested is None:
        return None
    decision = resolve_spec(saved, requested or {}, allow, where=path or "the checkpoint")
    line = decision.line()
    if line:
        _note(f"{path}: {line}")
    elif saved is not None and raw is None and CONFIG_KEY not in _saved_keys(path):
        _note(f"{path}: the authors' released layout (model.cross_attention.*): running CompressorConfig.released()")
    return decision


def _saved_keys(path: str) -> set[str]:
    root = _local_dir(path)
    return set(json.loads((root / "config.json").read_text())) if root is not None else set()


def _new_parameters(decision: SpecDecision) -> bool:
    """The compressor's parameters are not in the checkpoint: a conversion, or an asked-for change of its layout."""
    return not decision.from_checkpoint or bool(set(decision.overridden) & PARAMETER_FIELDS)


def _seed_when_loaded(comp) -> None:
    """transformers (4.45) leaves a new module's weights that its ``_init_weights`` does not know as
    uninitialised memory; it calls every module's ``_tie_weights`` after loading, so a new compressor
    is set from its own seed there (on this instance only)."""

    def seed() -> None:
        if not any(p.is_meta for m in comp.compute_modules().values() for p in m.parameters(recurse=False)):
            comp.reset_parameters()

    object.__setattr__(comp, "_tie_weights", seed)


def attach_compressor(model, config) -> None:
    """Build the compressor on an ``LlavaMetaModel`` from ``config.video_compressor`` (idempotent),
    obeying the spec rule against the checkpoint being loaded."""
    from ...core import build_compressor
    from ...core.vq_attention import ReleasedVQAttention

    if getattr(model, "video_compressor", None) is not None:
        return
    decision = decide(config)
    if decision is None:
        return
    spec = decision.spec
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
    if _new_parameters(decision):
        _seed_when_loaded(comp)


def follow_training_flags(model, given: str | dict) -> None:
    """``--video_compressor`` on a checkpoint that already has a compressor: the spec rule (runtime
    fields change and are reported, any other change is refused in one line)."""
    comp = model.video_compressor
    fields = CompressorConfig.from_dict(given).to_dict() if isinstance(given, str) else dict(given)
    decision = resolve_spec(comp.config, fields, where="the checkpoint being trained")
    if decision.changes:
        comp.config = decision.spec
        setattr(model.config, CONFIG_KEY, decision.spec.to_dict())
        _note(f"--video_compressor: {decision.line()}")


def install() -> None:
    """Patch LLaVA-NeXT's hook points (idempotent). Import ``llava`` first or let this do it."""
    if _ORIGINAL:
        return
    from llava.model import llava_arch as arch

    _check(arch)
    meta, causal = arch.LlavaMetaModel, arch.LlavaMetaForCausalLM
    _ORIGINAL.update(init=meta.__init__, init_vision=meta.initialize_vision_modules, pool=causal.get_2dPool,
                     encode=causal.encode_images, prepare=causal.prepare_inputs_labels_for_multimodal,
                     default_dtype=torch.get_default_dtype())

    def __init__(self, config):
        _ORIGINAL["init"](self, config)
        if not hasattr(config, "mm_vision_tower"):
            return
        try:  # a spec in config, or a checkpoint saved with one
            attach_compressor(self, config)
        except Exception:
            # transformers 4.45 sets the checkpoint's dtype as torch's default while it builds the model
            # and does not put it back when the constructor raises: put back the process's own
            torch.set_default_dtype(_ORIGINAL["default_dtype"])
            raise

    def initialize_vision_modules(self, model_args, fsdp=None):
        _ORIGINAL["init_vision"](self, model_args, fsdp)
        spec = getattr(model_args, CONFIG_KEY, None)
        if spec and getattr(self, "video_compressor", None) is not None:
            follow_training_flags(self, spec)
        elif spec:
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
    compressor call in training, else a call of its own (then ``last_video_tokens`` is ``[M]``: a list
    of tokens per video, as on the transformers host, LLaVA-NeXT's newline not counted)."""
    step = getattr(model, "_vq_step", None)
    if step is not None and step["done"]:
        return step["done"].pop(0)
    stream = getattr(model, "_vq_stream", None)
    if stream is not None:
        video = _stream_video(model, image_feature, stream["rest"].pop(0))
        stream["done"].append(video)
        return video.tokens.unsqueeze(0)
    comp = model.get_model().video_compressor
    t, n, d = image_feature.shape
    side = model.get_vision_tower().num_patches_per_side
    video = comp(image_feature.reshape(1, t, side, side, d))[0]
    seen = getattr(model, "_vq_seen", None)
    if not seen:  # the forward's first video (or a call outside prepare_with_one_call): start the lists
        model.get_model().last_video_tokens, model.get_model().last_video_key_maps = [], []
    if seen is not None:
        seen.append(video)
    model.get_model().last_video_tokens.append(video.num_tokens)
    model.get_model().last_video_key_maps.append(video.key_map)
    return video.tokens.unsqueeze(0)  # one pseudo-frame: LLaVA-NeXT's newline code adds image_newline


@torch.no_grad()
def _stream_video(model, first: torch.Tensor, rest: torch.Tensor) -> CompressedVideo:
    """One video streamed: ``first`` [t, H*W, D], its first chunk's features from the batched vision pass,
    then the frames ``rest`` [T - t, 3, S, S] ``chunk_frames`` at a time through ``encode_images``."""
    comp = check_streamable(model.get_model().video_compressor)
    chunk = comp.config.chunk_frames
    side = model.get_vision_tower().num_patches_per_side
    store = FeatureStore(chunk)
    store.append(first.reshape(first.shape[0], side, side, first.shape[-1]))
    for s in range(0, rest.shape[0], chunk):
        feats = model.encode_images(rest[s : s + chunk])
        store.append(feats.reshape(feats.shape[0], side, side, feats.shape[-1]))
    return compress_streamed(comp, store, first.device)


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
    if comp is None or images is None or input_ids.shape[1] == 1:
        return prepare(model, *args)
    if comp.config.chunk_frames:
        return _prepare_streamed(model, prepare, args)
    if not model.training:  # every video its own call in pool_video; last_video_* list them all
        model._vq_seen = []
        try:
            return prepare(model, *args)
        finally:
            model._vq_seen = None
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


def _prepare_streamed(model, prepare, args: tuple) -> tuple:
    """``prepare`` with every video streamed (``chunk_frames`` > 0, inference only): the batched vision
    pass sees each video's first chunk only; ``pool_video`` streams the rest (see the module doc)."""
    input_ids, position_ids, attention_mask, past_key_values, labels, images, modalities, image_sizes = args
    comp = check_streamable(model.get_model().video_compressor)  # one line in training
    if not isinstance(images, list) and images.ndim != 5:  # one image batch: LLaVA-NeXT's image path
        return prepare(model, *args)
    mods = [modalities] if isinstance(modalities, str) else list(modalities)
    items = [x.unsqueeze(0) if x.ndim == 3 else x for x in images]  # as LLaVA-NeXT reads them
    chunk = comp.config.chunk_frames
    videos = [i for i, m in enumerate(mods) if m == "video" and i < len(items)]
    rest = [items[i][chunk:] for i in videos]
    for i in videos:
        items[i] = items[i][:chunk]
    model._vq_stream = {"rest": rest, "done": []}
    try:
        out = prepare(model, input_ids, position_ids, attention_mask, past_key_values, labels, items, modalities,
                      image_sizes)
        done = model._vq_stream["done"]
    finally:
        model._vq_stream = None
    if done:
        model.get_model().last_video_tokens = [v.num_tokens for v in done]
        model.get_model().last_video_key_maps = [v.key_map for v in done]
    return out


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
    model.get_model().last_video_tokens = [v.num_tokens for v in out]
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
