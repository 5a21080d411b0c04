"""VQToken for transformers' LLaVA-OneVision (written against transformers 5.23; 5.17 on the GPU host).

Config, model and processor subclasses with their own ``model_type`` ("vqtoken_llava_onevision").
One config key, ``video_compressor``, holds the compressor spec (the core's ``CompressorConfig``
field names). The compressor replaces LLaVA-OneVision's video pooling at the named hook points:
``apply_pooling`` becomes the identity, and ``get_video_features`` compresses the un-pooled
post-projector grid and appends the learned ``image_newline`` (K + 1 tokens per video).
Images keep their path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    LlavaOnevisionProcessor,
)

from ...config import CONFIG_KEY, CheckpointError, CompressorConfig
from ...core import build_compressor
from ...core.compressor import CompressedVideo, CompressionError, expected_tokens
from ...core.streaming import FeatureStore, check_streamable, compress_streamed
from .features import grid_size

MODEL_TYPE = "vqtoken_llava_onevision"
COMPRESSOR_PREFIX = "model.video_compressor."
#: frames per chunk when a caller streams a spec whose chunk_frames is 0 (the CLI on a long clip)
STREAM_CHUNK = 32
log = logging.getLogger("llava_vqtoken")


@strict
class VQTokenLlavaOnevisionConfig(LlavaOnevisionConfig):
    """LLaVA-OneVision config plus ``video_compressor``: the compressor spec (a dict of
    :class:`CompressorConfig` fields)."""

    model_type = MODEL_TYPE
    video_compressor: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.video_compressor is not None:
            # validate early, with a message that names the field; store the full normalised spec
            self.video_compressor = CompressorConfig.from_dict(self.video_compressor).to_dict()

    @property
    def compressor(self) -> CompressorConfig:
        if self.video_compressor is None:
            raise CheckpointError(
                "this config has no video_compressor spec: it describes a stock LLaVA-OneVision; pass "
                "video_compressor={...} (e.g. {'num_tokens': 32}) to convert it"
            )
        return CompressorConfig.from_dict(self.video_compressor)


def tokens_per_video(spec: CompressorConfig, frames: int, grid: tuple[int, int]) -> int | None:
    """Video placeholder tokens per video (newline included); None for adaptive K."""
    n = expected_tokens(spec, frames, *grid)
    return None if n is None else n + int(spec.newline)


class VQTokenLlavaOnevisionModel(LlavaOnevisionModel):
    config_class = VQTokenLlavaOnevisionConfig

    def __init__(self, config: VQTokenLlavaOnevisionConfig) -> None:
        super().__init__(config)
        spec = config.compressor
        self.video_compressor = build_compressor(spec, config.text_config.hidden_size, grid=grid_size(config))
        self._pending: list[CompressedVideo] = []
        self.last_video_tokens: list[int] = []
        self.post_init()

    def apply_pooling(self, image_features: torch.Tensor) -> torch.Tensor:
        """The compressor replaces LLaVA-OneVision's 2x bilinear video pooling."""
        return image_features

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs: Any,
    ):
        if pixel_values_videos.dim() != 5 or 0 in pixel_values_videos.shape:
            raise CompressionError(
                f"pixel_values_videos must be [videos, frames, 3, H, W] with at least one frame, got shape "
                f"{tuple(pixel_values_videos.shape)}"
            )
        spec = self.config.compressor
        chunk = spec.chunk_frames
        first = pixel_values_videos[:, :chunk] if chunk else pixel_values_videos
        out, feats, forward_adds_newline = self._grid_features(
            first, vision_feature_layer, vision_feature_select_strategy, **kwargs
        )
        if chunk:
            videos = [
                self.compress_video_stream(
                    (pixel_values_videos[i : i + 1, s : s + chunk] for s in range(chunk, pixel_values_videos.shape[1],
                                                                                  chunk)),
                    first_chunk=feats[i], vision_feature_layer=vision_feature_layer,
                    vision_feature_select_strategy=vision_feature_select_strategy, **kwargs,
                )
                for i in range(pixel_values_videos.shape[0])
            ]
        else:
            videos = self.video_compressor(feats, defer_checks=True)
            self._pending.extend(videos)
        if forward_adds_newline and not spec.newline:
            raise ValueError("newline=False needs transformers >= 5.23 (older versions always append a newline)")
        rows = []
        for v in videos:
            tok = v.tokens
            if spec.newline and not forward_adds_newline:
                tok = torch.cat([tok, self.image_newline[None].to(tok.dtype)])
            rows.append(tok)
        lengths = [r.shape[0] + int(forward_adds_newline) for r in rows]
        self.last_video_tokens = lengths
        if len({r.shape[0] for r in rows}) > 1 and forward_adds_newline:
            raise ValueError("a batch of videos with different K needs transformers >= 5.23 (mm_encoder_outputs)")
        # equal lengths: [B, M, D]; per-video K (adaptive): one row [1, sum M_b, D] in batch order,
        # which the stock forward flattens and scatters into the placeholders in the same order
        out.pooler_output = torch.stack(rows) if len({r.shape[0] for r in rows}) == 1 else torch.cat(rows)[None]
        out["video_num_tokens"] = lengths
        out["video_key_map"] = [v.key_map for v in videos]
        return out

    def _grid_features(
        self, pixel_values_videos: torch.Tensor, vision_feature_layer=None, vision_feature_select_strategy=None,
        **kwargs: Any,
    ) -> tuple[Any, torch.Tensor, bool]:
        """The stock video path without its pooling: (its output, post-projector grid [B, T, H, W, D],
        whether this transformers appends the newline in ``forward`` rather than here)."""
        out = super().get_video_features(
            pixel_values_videos,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kwargs,
        )
        b, t = pixel_values_videos.shape[:2]
        h, w = grid_size(self.config)
        pooled, n = out.pooler_output, t * h * w
        if pooled.shape[1] not in (n, n + 1):
            raise ValueError(f"unexpected video feature length {pooled.shape[1]} for {t} frames of {h}x{w}")
        # transformers 5.23 appends the newline here; older 5.x (e.g. 5.17) append it in forward instead
        grid = pooled[:, :n]
        return out, grid.reshape(b, t, h, w, grid.shape[-1]), pooled.shape[1] == n

    @torch.no_grad()
    def compress_video_stream(
        self, pixel_chunks: Iterable[torch.Tensor], first_chunk: torch.Tensor | None = None,
        video_id: int | None = None, chunk_frames: int | None = None, spill_dir: str | None = None, **kwargs: Any,
    ) -> CompressedVideo:
        """One video, streamed (``chunk_frames`` > 0): each chunk of pixel values [1, t, 3, S, S] goes
        through the vision tower and the projector, its features into a CPU store; then the streaming
        fit (``core.streaming``). ``first_chunk``: features [t, H, W, D] already computed. The device
        holds one chunk at a time. ``chunk_frames``: the fit's blocks (default: the spec's, else
        STREAM_CHUNK); ``spill_dir``: keep the features in files there, not in memory (``FeatureStore``).
        The CLI's ``compress`` runs this too."""
        comp = check_streamable(self.video_compressor)
        store = FeatureStore(chunk_frames or comp.config.chunk_frames or STREAM_CHUNK, spill_dir=spill_dir)
        if first_chunk is not None:
            store.append(first_chunk)
        device = self.image_newline.device
        for pixels in pixel_chunks:
            store.append(self._grid_features(pixels.to(device), **kwargs)[1][0])
        return compress_streamed(comp, store, device, video_id)

    def forward(self, input_ids=None, pixel_values_videos=None, mm_encoder_outputs=None, **kwargs):
        if pixel_values_videos is not None and input_ids is not None:
            self._check_placeholders(input_ids, pixel_values_videos)
        if self.training and pixel_values_videos is None and not (mm_encoder_outputs or {}).get("video"):
            input_ids, kwargs["inputs_embeds"] = None, self._embed_with_blank_video(input_ids, kwargs)
        out = super().forward(
            input_ids=input_ids, pixel_values_videos=pixel_values_videos, mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )
        pending, self._pending = self._pending, []
        for v in pending:  # deferred NaN/Inf check: the LLM's kernels are already queued
            v.verify()
        return out

    def _embed_with_blank_video(self, input_ids: torch.Tensor | None, kwargs: dict[str, Any]) -> torch.Tensor:
        """A training batch without video still runs the video path, on one blank frame with weight 0,
        right after the token embedding as a batch with video does: under ZeRO-3 every rank must gather
        the same parameters in the same order, or the collectives mismatch (a crash with gloo, a hang
        or silently wrong parameters with NCCL; DeepSpeed #7170). ``x + 0.0`` leaves the embeddings as
        they were."""
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = self.get_input_embeddings()(input_ids)
        size = self.config.vision_config.image_size
        p = next(self.vision_tower.parameters())
        blank = torch.zeros(1, 1, 3, size, size, device=p.device, dtype=p.dtype)
        feats = self.get_video_features(blank, return_dict=True).pooler_output
        self._pending.clear()
        return embeds + (0.0 * feats.float().sum()).to(embeds.dtype)

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features=None, video_features=None):
        """The stock check, preceded by ours wherever video features are scattered into the prompt
        (also inside ``generate``, whose forward gets the features without ``pixel_values_videos``)."""
        if video_features is not None:
            if input_ids is not None:
                n = int((input_ids == self.config.video_token_id).sum())
            else:
                token = self.get_input_embeddings()(
                    torch.tensor(self.config.video_token_id, device=inputs_embeds.device)
                )
                n = int((inputs_embeds == token).all(-1).sum())
            rows = video_features.numel() // inputs_embeds.shape[-1]
            if n != rows:
                raise CheckpointError(
                    f"the prompt holds {n} video placeholder tokens but the VQToken compressor gave {rows} "
                    f"({self.last_video_tokens} per video); use the processor saved with this checkpoint "
                    "(VQTokenLlavaOnevisionProcessor)"
                )
        return super().get_placeholder_mask(input_ids, inputs_embeds, image_features, video_features)

    def _check_placeholders(self, input_ids: torch.Tensor, pixel_values_videos: torch.Tensor) -> None:
        per_video = tokens_per_video(self.config.compressor, pixel_values_videos.shape[1], grid_size(self.config))
        if per_video is None:
            return
        n = int((input_ids == self.config.video_token_id).sum())
        want = per_video * pixel_values_videos.shape[0]
        if n != want:
            raise CheckpointError(
                f"the prompt holds {n} video placeholder tokens but the VQToken compressor gives {per_video} per "
                f"video ({want} for {pixel_values_videos.shape[0]} video(s)); use the processor saved with this "
                f"checkpoint (VQTokenLlavaOnevisionProcessor with num_video_tokens={per_video})"
            )


class VQTokenLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    config_class = VQTokenLlavaOnevisionConfig

    def __init__(self, config: VQTokenLlavaOnevisionConfig) -> None:
        super().__init__(config)
        self.model = VQTokenLlavaOnevisionModel(config)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, video_compressor=None, **kwargs):
        """Load a VQToken checkpoint, or convert a stock LLaVA-OneVision one with ``video_compressor=``.

        A stock checkpoint loads every stock weight and creates only the compressor's parameters.
        Loading a stock checkpoint without a spec raises CheckpointError instead of running uncompressed.
        """
        config = kwargs.pop("config", None)
        if config is None:
            raw = AutoConfig.from_pretrained(pretrained_model_name_or_path, **_hub_kwargs(kwargs))
            if raw.model_type not in ("llava_onevision", MODEL_TYPE):
                raise CheckpointError(
                    f"{pretrained_model_name_or_path} is a {raw.model_type!r} checkpoint, not LLaVA-OneVision"
                )
            data = raw.to_dict()
            data.pop("model_type", None)
            if video_compressor is not None:
                data[CONFIG_KEY] = CompressorConfig.from_dict(video_compressor).to_dict()
            elif raw.model_type != MODEL_TYPE or not data.get(CONFIG_KEY):
                raise CheckpointError(
                    f"{pretrained_model_name_or_path} is a stock LLaVA-OneVision checkpoint (no video_compressor "
                    "spec); pass video_compressor={'num_tokens': 32} (or another spec) to convert it"
                )
            config = VQTokenLlavaOnevisionConfig(**{k: v for k, v in data.items() if not k.startswith("_")})
        want_info = kwargs.pop("output_loading_info", False)
        with _load_report_as_one_line() as report:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, config=config, output_loading_info=True, **kwargs
            )
        report.summarise(str(pretrained_model_name_or_path), model, info)
        return (model, info) if want_info else model

    def _initialize_missing_keys(self, is_quantized: bool) -> None:
        """transformers initialises missing weights from the global RNG; the compressor's new
        parameters are then set from its own seed, so converting a checkpoint twice gives the same
        weights whatever the process did before."""
        comp = self.model.video_compressor
        fresh = [n for n, p in comp.named_parameters() if not getattr(p, "_is_hf_initialized", False)]
        super()._initialize_missing_keys(is_quantized)
        if fresh:
            seed_compressor_parameters(comp, fresh, self.config.compressor, self.config)


def seed_compressor_parameters(comp: torch.nn.Module, names: list[str], spec: CompressorConfig, config) -> None:
    """Set the named parameters of ``comp`` to those of a compressor built from ``spec`` with the
    CPU RNG seeded from ``spec.seed`` (the process's RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        state = build_compressor(spec, config.text_config.hidden_size, grid=grid_size(config)).state_dict()
    params = dict(comp.named_parameters())
    with _gathered([params[n] for n in names]), torch.no_grad():
        for n in names:
            params[n].copy_(state[n])


@contextlib.contextmanager
def _gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Full parameters under DeepSpeed ZeRO-3 (partitioned at load), a no-op otherwise."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield


class _LoadReport(logging.Filter):
    """Holds back transformers' multi-row load report; :meth:`summarise` says it in one line, and
    refuses a load that left a stock (non-compressor) weight missing or unused."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.records.append(record)
            return False
        return True

    def summarise(self, where: str, model, info: dict[str, Any]) -> None:
        missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
        stock_missing = [k for k in missing if not k.startswith(COMPRESSOR_PREFIX)]
        stock_unused = [k for k in unexpected if not k.startswith(COMPRESSOR_PREFIX)]
        if stock_missing or stock_unused:
            raise CheckpointError(
                f"{where}: {len(stock_missing)} stock weight(s) missing ({_few(stock_missing)}) and "
                f"{len(stock_unused)} unused ({_few(stock_unused)}); the checkpoint does not match this model"
            )
        new = [k for k in missing if k.startswith(COMPRESSOR_PREFIX)]
        if new or unexpected:
            state = model.state_dict()
            count = sum(state[k].numel() for k in new if k in state)
            parts = [f"{len(new)} new compressor tensors ({count:,} parameters, seed {model.config.compressor.seed})"]
            if unexpected:
                parts.append(f"{len(unexpected)} trained compressor tensors dropped")
            log.warning("%s: %s; every stock weight loaded", where, ", ".join(parts))


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") if keys else "none"


@contextlib.contextmanager
def _load_report_as_one_line() -> Iterator[_LoadReport]:
    """While loading, transformers' load report is held back (and shown if the load fails)."""
    hf_log = logging.getLogger("transformers.modeling_utils")
    report = _LoadReport()
    hf_log.addFilter(report)
    try:
        yield report
    except BaseException:
        hf_log.removeFilter(report)
        for record in report.records:
            hf_log.handle(record)
        raise
    finally:
        hf_log.removeFilter(report)


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("cache_dir", "revision", "token", "local_files_only", "trust_remote_code")
    return {k: kwargs[k] for k in keys if k in kwargs}


class VQTokenLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """Emits exactly the video placeholder tokens the compressor produces for each video.

    ``video_compressor`` (the spec) and ``video_grid`` (H, W of a frame's token grid) are saved with
    the processor; the count per video follows from its frame count. For adaptive K the count is
    known only after the features: pass ``num_video_tokens=[K_1 + 1, ...]`` to ``__call__`` (see
    :func:`llava_vqtoken.hosts.hf.generate_adaptive`).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
        video_compressor=None,
        video_grid=None,
        **kwargs,
    ):
        if video_compressor is not None:
            video_compressor = CompressorConfig.from_dict(video_compressor).to_dict()
        self.video_compressor = video_compressor
        self.video_grid = None if video_grid is None else list(video_grid)
        self._per_call: list[int] | None = None
        super().__init__(
            image_processor, tokenizer, video_processor, num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
            image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs,
        )

    @classmethod
    def from_stock(cls, processor: LlavaOnevisionProcessor, config: VQTokenLlavaOnevisionConfig):
        """Wrap a stock LLaVA-OneVision processor's parts for a VQToken model config."""
        return cls(
            image_processor=processor.image_processor, tokenizer=processor.tokenizer,
            video_processor=processor.video_processor, num_image_tokens=processor.num_image_tokens,
            vision_feature_select_strategy=processor.vision_feature_select_strategy,
            chat_template=processor.chat_template, vision_aspect_ratio=processor.vision_aspect_ratio,
            video_compressor=config.video_compressor, video_grid=grid_size(config),
        )

    def __call__(self, *args, num_video_tokens: list[int] | int | None = None, **kwargs):
        self._per_call = [num_video_tokens] if isinstance(num_video_tokens, int) else num_video_tokens
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._per_call = None

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        frames = int(video_inputs["pixel_values_videos"][video_idx].shape[0])
        if frames < 1:
            raise CompressionError(f"video {video_idx} has no frames (a zero-frame array); give at least one frame")
        if self._per_call is not None:
            counts = self._per_call
            return self.video_token * (counts[video_idx] if len(counts) > 1 else counts[0])
        if self.video_compressor is None or self.video_grid is None:
            raise CheckpointError("this processor has no video_compressor/video_grid; build it with from_stock()")
        n = tokens_per_video(CompressorConfig.from_dict(self.video_compressor), frames, tuple(self.video_grid))
        if n is None:
            raise CheckpointError(
                "adaptive K: the token count is known only after the features; pass num_video_tokens=[...] "
                "per call (llava_vqtoken.hosts.hf.generate_adaptive does this)"
            )
        return self.video_token * n


_REGISTERED = False


def register() -> None:
    """Register the classes with the Auto* factories and the legacy-key conversion (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    AutoConfig.register(MODEL_TYPE, VQTokenLlavaOnevisionConfig, exist_ok=True)
    AutoModel.register(VQTokenLlavaOnevisionConfig, VQTokenLlavaOnevisionModel, exist_ok=True)
    AutoModelForImageTextToText.register(
        VQTokenLlavaOnevisionConfig, VQTokenLlavaOnevisionForConditionalGeneration, exist_ok=True
    )
    AutoProcessor.register(VQTokenLlavaOnevisionConfig, VQTokenLlavaOnevisionProcessor, exist_ok=True)
    # Without this, stock checkpoints (saved in the legacy key layout) would load with the whole LLM
    # and vision tower left at random init, reported only as MISSING keys.
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError as e:  # a transformers without the v5 conversion registry
        raise ImportError(f"llava-vqtoken needs transformers >= 5 with its weight-conversion registry: {e}") from e
    mapping = get_checkpoint_conversion_mapping("llava_onevision")
    if mapping is not None:
        register_checkpoint_conversion_mapping(MODEL_TYPE, mapping, overwrite=True)
    _REGISTERED = True


register()
