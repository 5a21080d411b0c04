"""Compressors: video features [B, T, H, W, D] -> a few tokens per video, behind one interface.

``build_compressor(config, hidden_size, grid=(H, W))`` returns an ``nn.Module`` whose forward gives
one :class:`CompressedVideo` per video. VQToken and every baseline share the config, the output type
and the token budget, so swapping the method is one field.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..config import CompressorConfig, ConfigError
from .adaptive import adaptive_kmeans
from .baselines import (
    pool_tokens,
    prune_tokens,
    random_tokens,
    temporal_merge_tokens,
    tome_tokens,
    uniform_tokens,
)
from .graphs import CodeCache, maybe_graphed
from .keymap import canonical_order, codebook_means, key_map_grid
from .kmeans import VideoStreams, cosine_kmeans, video_seed
from .vq_attention import ReleasedVQAttention, VQAttention


class CompressionError(ValueError):
    """The input cannot be compressed as asked (bad shape, non-finite values, K too large...)."""


@dataclass
class CompressedVideo:
    """What one video becomes. ``tokens`` is what the LLM receives (newline excluded)."""

    tokens: torch.Tensor  # [M, D]
    tokens_in: int  # T*H*W
    key_map: torch.Tensor | None = None  # [T, H, W] code per grid token (VQToken only)
    codebook: torch.Tensor | None = None  # [K, D]
    num_codes: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def verify(self) -> CompressedVideo:
        """Raise CompressionError if the input features or the compressor's output were not finite
        (for deferred checks; one host sync)."""
        flags = [f for f in (self.stats.get("finite"), self.stats.get("finite_output")) if f is not None]
        if not flags:
            return self
        ok = torch.stack([torch.as_tensor(f, device=flags[0].device if torch.is_tensor(flags[0]) else None)
                          for f in flags]).tolist()
        if not ok[0]:
            raise CompressionError("video features contain NaN or Inf; check the vision tower's dtype and input frames")
        if len(ok) > 1 and not ok[1]:
            raise CompressionError(
                "the compressor's output contains NaN or Inf although its input is finite; check its weights and dtype"
            )
        return self


def pad_tokens(videos: list[CompressedVideo]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack to a rectangle for hosts that need one: ([B, M_max, D] zero-padded, lengths [B])."""
    m = max(v.num_tokens for v in videos)
    first = videos[0].tokens
    out = first.new_zeros(len(videos), m, first.shape[-1])
    for i, v in enumerate(videos):
        out[i, : v.num_tokens] = v.tokens
    return out, torch.tensor([v.num_tokens for v in videos], device=first.device)


def expected_tokens(cfg: CompressorConfig, frames: int, height: int, width: int) -> int | None:
    """Tokens a compressor emits for a T x H x W video (newline excluded); None when adaptive."""
    return COMPRESSORS[cfg.name].expected_tokens(cfg, frames, height, width)


def check_features(features: torch.Tensor, finite: bool = True) -> None:
    """Shape checks, and (``finite``) a NaN/Inf check, which costs a host sync on CUDA."""
    if features.dim() != 5:
        raise CompressionError(f"video features must be [B, T, H, W, D], got shape {tuple(features.shape)}")
    if 0 in features.shape:
        raise CompressionError(f"video features are empty: shape {tuple(features.shape)} (zero frames?)")
    if finite and not torch.isfinite(features).all():
        raise CompressionError("video features contain NaN or Inf; check the vision tower's dtype and input frames")


#: std of VQ-Attention's output projection at width 64 (scaled by 1/sqrt(width / 64)): a fresh module
#: adds a small correction to the codebook
OUT_PROJ_STD = 0.02


def _param_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for one parameter: from the config seed and the parameter's name only, so a
    parameter's initial value depends on neither the global RNG nor the other parameters."""
    return torch.Generator().manual_seed(video_seed(seed, zlib.crc32(name.encode())))


def _uniform(shape: torch.Size, bound: float, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2.0 - 1.0).mul_(bound).float()


def initial_value(
    module: nn.Module, name: str, shape: torch.Size, g: torch.Generator, parent: nn.Module | None, child: str
) -> torch.Tensor:
    """The initial value of parameter ``name`` of ``module`` (held by ``parent`` as ``child``), by
    PyTorch's own rules for its layer types: Linear U(+-1/sqrt(fan_in)); attention in-projection
    Xavier-uniform, the attention's biases zero; LayerNorm 1 and 0; VQ-Attention's output projection
    N(0, (OUT_PROJ_STD / sqrt(width / 64))^2) with zero bias, so a fresh module barely moves the codebook."""
    if isinstance(module, nn.MultiheadAttention):
        if name == "in_proj_weight":
            return _uniform(shape, math.sqrt(6.0 / (shape[0] + shape[1])), g)
        return torch.zeros(shape)
    if isinstance(module, nn.LayerNorm):
        return torch.ones(shape) if name == "weight" else torch.zeros(shape)
    if isinstance(module, nn.Linear):
        if isinstance(parent, VQAttention) and child == "out_proj":
            std = OUT_PROJ_STD / math.sqrt(module.in_features / 64)
            return torch.randn(shape, generator=g) * std if name == "weight" else torch.zeros(shape)
        if isinstance(parent, nn.MultiheadAttention) and name == "bias":
            return torch.zeros(shape)
        return _uniform(shape, 1.0 / math.sqrt(module.in_features), g)
    raise TypeError(f"no initialisation rule for parameter {name!r} of {type(module).__name__}")


class VideoCompressor(nn.Module):
    """Base class: subclasses implement ``compress(features, defer_checks) -> list[CompressedVideo]``."""

    def __init__(self, config: CompressorConfig, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        # captured CUDA graphs and compiled steps of this module only: they die with it
        self.code_cache = CodeCache()

    def compute_modules(self) -> dict[str, nn.Module]:
        """Every submodule the forward uses, by name (also one handed to the host by ``detach_attention``)."""
        return dict(self.named_modules())

    def reset_parameters(self) -> None:
        """Initialise every parameter from ``config.seed`` alone (own generators, never the global RNG), so
        two compressors built from one config start with identical weights on any device."""
        modules = self.compute_modules()
        parents = {id(c): (m, n) for m in modules.values() for n, c in m.named_children()}
        for prefix, module in modules.items():
            parent, child = parents.get(id(module), (None, ""))
            for name, p in module.named_parameters(recurse=False):
                if p.numel() == 0 and hasattr(p, "ds_shape"):
                    # partitioned at construction by DeepSpeed ZeRO-3: the host sets it once gathered
                    # (hosts/hf: seed_compressor_parameters, from a compressor built by this method)
                    continue
                g = _param_generator(self.config.seed, f"{prefix}.{name}" if prefix else name)
                value = initial_value(module, name, p.shape, g, parent, child)
                with torch.no_grad():
                    p.copy_(value)

    #: True when ``compress`` checks finiteness itself, inside its computation (no up-front host sync)
    folds_finite_check = False

    def forward(
        self, features: torch.Tensor, defer_checks: bool = False, video_ids: Sequence[int] | None = None
    ) -> list[CompressedVideo]:
        """Compress [B, T, H, W, D] features into one CompressedVideo per video.

        With ``defer_checks``, a compressor that folds the NaN/Inf check into its computation never
        waits for the GPU: the check is left to ``CompressedVideo.verify()`` (hosts call it at their
        next sync), so the CPU keeps queueing the LLM's kernels while the GPU works.

        A video's result depends on the video and ``config.seed`` only, never on its batch mates or its
        place in the batch. ``video_ids`` (one int per video, e.g. its index in the dataset) gives each
        video its own random stream; without it every video uses the seed's.
        """
        check_features(features, finite=not self.folds_finite_check)
        if features.shape[-1] != self.hidden_size:
            raise CompressionError(
                f"features have width {features.shape[-1]} but the compressor was built for {self.hidden_size}"
            )
        if video_ids is not None and len(video_ids) != features.shape[0]:
            raise ValueError(f"video_ids has {len(video_ids)} entries for a batch of {features.shape[0]} videos")
        return self.compress(features, defer_checks, video_ids)

    def compress(  # pragma: no cover - abstract
        self, features: torch.Tensor, defer_checks: bool = False, video_ids: Sequence[int] | None = None
    ) -> list[CompressedVideo]:
        raise NotImplementedError

    def expected_tokens(self, frames: int, height: int, width: int) -> int | None:
        """Tokens emitted for a video of this grid (newline excluded); None if content-dependent."""
        return expected_tokens(self.config, frames, height, width)


class VQTokenCompressor(VideoCompressor):
    """VQToken: cosine k-means codebook + key map (token hash) + VQ-Attention."""

    def __init__(self, config: CompressorConfig, hidden_size: int, grid_cells: int | None = None) -> None:
        super().__init__(config, hidden_size)
        self.attention: nn.Module | None = None
        if config.attention in ("paper", "random"):
            self.attention = VQAttention(
                hidden_size, config.heads, config.footprint_freqs, mode=config.attention, footprint=config.footprint
            )
        elif config.attention == "released":
            if grid_cells is None:
                raise CompressionError("attention='released' needs grid_cells (tokens per frame, e.g. 27*27)")
            self.attention = ReleasedVQAttention(hidden_size, grid_cells, config.heads, config.ffn_dim)
        self.reset_parameters()

    def detach_attention(self) -> nn.Module | None:
        """Hand the attention module to the host: it leaves this module's parameters (the host
        registers it under its own name, e.g. the released checkpoint's ``cross_attention``) and is
        still used here. Returns the module."""
        att = self._modules.pop("attention", None)
        object.__setattr__(self, "attention", att)  # a plain reference, not a submodule
        return att

    def compute_modules(self) -> dict[str, nn.Module]:
        modules = dict(self.named_modules())
        if self.attention is not None and "attention" not in modules:  # detached: still ours to initialise
            modules.update({f"attention.{n}" if n else "attention": m for n, m in self.attention.named_modules()})
        return modules

    def _streams(self, batch: int, device: torch.device, offset: int, video_ids) -> VideoStreams:
        return VideoStreams(batch, device, self.config.seed + offset, video_ids)

    def _graph_key(self, t: int, h: int, w: int) -> tuple:
        """Everything the post-processing graph depends on besides its inputs: the full config and the
        parameters it reads (address, shape, dtype)."""
        params = [p for m in self.compute_modules().values() for p in m.parameters(recurse=False)]
        return (
            "vqtoken-post", self.config.to_json(), t, h, w,
            tuple((p.data_ptr(), tuple(p.shape), p.dtype, str(p.device)) for p in params),
        )

    @property
    def folds_finite_check(self) -> bool:  # type: ignore[override]
        # fixed K: one sync at the end (or none, deferred); adaptive K syncs anyway, so it checks first
        return self.config.adaptive is None

    def _cluster(self, x: torch.Tensor, video_ids):
        """(k-means result, K per video, adaptive choices or None, active codes [B, width])."""
        cfg = self.config
        b, n, _ = x.shape
        if cfg.adaptive is None:
            if cfg.num_tokens > n:
                raise CompressionError(f"num_tokens={cfg.num_tokens} exceeds the video's {n} tokens")
            res = cosine_kmeans(
                x, cfg.num_tokens, cfg.iters, cfg.tol, cfg.seed, cfg.seed_sample, cuda_graphs=cfg.cuda_graphs,
                compiled=cfg.compile, cache=self.code_cache, video_ids=video_ids, oversample=cfg.oversample,
            )
            active = torch.ones(b, cfg.num_tokens, dtype=torch.bool, device=x.device)
            return res, [cfg.num_tokens] * b, None, active
        if cfg.max_codes > n:
            raise CompressionError(f"max_codes={cfg.max_codes} exceeds the video's {n} tokens")
        res, choices = adaptive_kmeans(
            x, cfg.min_codes, cfg.max_codes, cfg.adaptive, cfg.iters, cfg.refine_iters, cfg.tol, cfg.seed,
            cfg.seed_sample, cfg.silhouette_sample, cfg.cuda_graphs, cfg.compile, cache=self.code_cache,
            video_ids=video_ids, oversample=cfg.oversample,
        )
        ks = [c.k for c in choices]
        width = res.centroids.shape[1]
        active = torch.arange(width, device=x.device)[None, :] < torch.tensor(ks, device=x.device)[:, None]
        return res, ks, choices, active

    def compress(
        self, features: torch.Tensor, defer_checks: bool = False, video_ids: Sequence[int] | None = None
    ) -> list[CompressedVideo]:
        cfg = self.config
        b, t, h, w, d = features.shape
        n = t * h * w
        x = features.reshape(b, n, d)
        ids = None if video_ids is None else tuple(int(i) for i in video_ids)
        with torch.no_grad():
            res, ks, choices, active = self._cluster(x, ids)
        needs_grad = torch.is_grad_enabled() and (
            features.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        graphable = cfg.hash == "kmeans" and cfg.attention != "random" and not (
            cfg.attention == "released" and cfg.apply_attention
        )
        tokens, key_map, codebook, finite, finite_out = maybe_graphed(
            self.code_cache, self._graph_key(t, h, w), self._post, (x, res.labels, res.centroids, active),
            dict(frames=t, height=h, width=w, video_ids=ids),
            enabled=cfg.cuda_graphs and graphable and not needs_grad,
        )
        if isinstance(self.attention, ReleasedVQAttention) and cfg.apply_attention:
            outs = [self.attention(codebook[i, : ks[i]], key_map[i]) for i in range(b)]
            finite_out = finite_out & torch.stack([torch.isfinite(o).all() for o in outs]).all()
        else:
            outs = [tokens[i, : ks[i]] for i in range(b)]
        videos = []
        for i in range(b):
            stats: dict[str, Any] = {
                "num_codes": ks[i], "inertia": res.inertia[i], "finite": finite, "finite_output": finite_out,
            }
            if choices is not None:
                stats.update(clamped=choices[i].clamped, k_unclamped=choices[i].k_unclamped)
            videos.append(
                CompressedVideo(
                    tokens=outs[i], tokens_in=n, key_map=key_map[i], codebook=codebook[i, : ks[i]],
                    num_codes=ks[i], stats=stats,
                )
            )
        if not defer_checks:
            videos[0].verify()  # the one host sync of a fixed-K call
        return videos

    def _post(self, x, labels, centroids, active, *, frames: int, height: int, width: int, video_ids=None):
        """Clustering -> (tokens, key map, codebook, input finite, output finite); sync-free, so
        graph-capturable (except the random ablations, which draw per video)."""
        cfg = self.config
        b, n, d = x.shape
        k = centroids.shape[1]
        finite = torch.isfinite(x).all()
        labels, perm = canonical_order(labels, k)
        centroids = centroids.gather(1, perm.unsqueeze(-1).expand(-1, -1, d))
        codebook, _ = codebook_means(x, labels, k, centroids, normalized=cfg.codebook == "normalized")
        key_map = key_map_grid(labels, frames, height, width)
        tokens = codebook
        if isinstance(self.attention, VQAttention) and cfg.apply_attention:
            attn_map = key_map  # the random-hash ablation's key map is drawn only where attention reads it
            if cfg.hash == "random":
                ks = active.sum(dim=1, keepdim=True)
                streams = self._streams(b, x.device, 1, video_ids)
                r = streams.draw(lambda g: torch.rand(1, n, device=x.device, generator=g))
                attn_map = key_map_grid((r * ks).long(), frames, height, width)
            draw = None
            if cfg.attention == "random":
                streams = self._streams(b, x.device, 2, video_ids)
                draw = streams.draw
            tokens = self.attention(codebook, attn_map, active=active, draw=draw)
        finite_out = torch.isfinite(tokens).all() & torch.isfinite(codebook).all()
        return tokens, key_map, codebook, finite, finite_out


@dataclass(frozen=True)
class Baseline:
    """How one baseline reduces a video to its budget: ``reduce(video [T, H, W, D], budget, generator)
    -> [M, D]``; ``batched``: ``reduce(features [B, T, H, W, D], budget, None)`` gives every video's
    tokens in one pass; ``seeded``: it draws from the video's own random stream (the generator);
    ``bounded``: a budget above the video's token count is refused."""

    reduce: Callable[..., Any]
    batched: bool = False
    seeded: bool = False
    bounded: bool = True


def _all_tokens(video: torch.Tensor, budget: int | None, g: torch.Generator | None) -> torch.Tensor:
    return video.reshape(-1, video.shape[-1])


#: baseline name -> how it reduces a video (tome and temporal_merge run batched: per-video Python
#: overhead dominated the steps)
BASELINES: dict[str, Baseline] = {
    "none": Baseline(_all_tokens, bounded=False),
    "pool": Baseline(lambda v, budget, g: pool_tokens(v, budget)),
    "uniform": Baseline(lambda v, budget, g: uniform_tokens(v, budget)),
    "prune": Baseline(lambda v, budget, g: prune_tokens(v, budget)),
    "tome": Baseline(lambda f, budget, g: tome_tokens(f, budget), batched=True),
    "temporal_merge": Baseline(lambda f, budget, g: temporal_merge_tokens(f, budget), batched=True),
    "random": Baseline(random_tokens, seeded=True),
}


class BaselineCompressor(VideoCompressor):
    """Pooling, sampling, pruning and merging baselines under the same total budget (``BASELINES``)."""

    def compress(
        self, features: torch.Tensor, defer_checks: bool = False, video_ids: Sequence[int] | None = None
    ) -> list[CompressedVideo]:
        cfg = self.config
        baseline = BASELINES[cfg.name]
        b, t, h, w, d = features.shape
        n = t * h * w
        budget = cfg.num_tokens
        if baseline.bounded and budget is not None and budget > n:
            raise CompressionError(f"num_tokens={budget} exceeds the video's {n} tokens")
        if baseline.batched:
            return [CompressedVideo(tokens=tok, tokens_in=n) for tok in baseline.reduce(features, budget, None)]
        out = []
        for i in range(b):
            g = self._video_generator(features.device, video_ids, i) if baseline.seeded else None
            out.append(CompressedVideo(tokens=baseline.reduce(features[i], budget, g), tokens_in=n))
        return out

    def _video_generator(self, device: torch.device, video_ids: Sequence[int] | None, i: int) -> torch.Generator:
        """The video's own stream (the seed's, or its id's), never its place in the batch."""
        g = torch.Generator(device=device)
        g.manual_seed(video_seed(self.config.seed, None if video_ids is None else video_ids[i]))
        return g


@dataclass(frozen=True)
class Registered:
    """One compressor name: how to build it (config, hidden size, grid (H, W) or None) and how many
    tokens it emits for a T x H x W video (config, T, H, W; None when the count depends on the content)."""

    build: Callable[[CompressorConfig, int, tuple[int, int] | None], VideoCompressor]
    expected_tokens: Callable[[CompressorConfig, int, int, int], int | None]


def _build_vqtoken(config: CompressorConfig, hidden_size: int, grid: tuple[int, int] | None) -> VideoCompressor:
    return VQTokenCompressor(config, hidden_size, None if grid is None else grid[0] * grid[1])


def _build_baseline(config: CompressorConfig, hidden_size: int, grid: tuple[int, int] | None) -> VideoCompressor:
    return BaselineCompressor(config, hidden_size)


def _vqtoken_tokens(cfg: CompressorConfig, frames: int, height: int, width: int) -> int | None:
    if cfg.adaptive is not None:
        return None
    if cfg.attention == "released" and cfg.apply_attention:
        return max(frames, cfg.num_tokens)
    return cfg.num_tokens


def _budget_tokens(cfg: CompressorConfig, frames: int, height: int, width: int) -> int | None:
    return None if cfg.adaptive is not None else cfg.num_tokens


def _shape_tokens(name: str) -> Callable[[CompressorConfig, int, int, int], int]:
    """Token count of a baseline whose output size follows the grid (pool, uniform): run it on zeros."""

    def count(cfg: CompressorConfig, frames: int, height: int, width: int) -> int:
        return int(BASELINES[name].reduce(torch.zeros(frames, height, width, 1), cfg.num_tokens, None).shape[0])

    return count


#: compressor name (``CompressorConfig.name``) -> its implementation
COMPRESSORS: dict[str, Registered] = {
    "vqtoken": Registered(_build_vqtoken, _vqtoken_tokens),
    "none": Registered(_build_baseline, lambda cfg, frames, height, width: frames * height * width),
    "pool": Registered(_build_baseline, _shape_tokens("pool")),
    "uniform": Registered(_build_baseline, _shape_tokens("uniform")),
    "prune": Registered(_build_baseline, _budget_tokens),
    "tome": Registered(_build_baseline, _budget_tokens),
    "temporal_merge": Registered(_build_baseline, _budget_tokens),
    "random": Registered(_build_baseline, _budget_tokens),
}


def build_compressor(
    config: CompressorConfig | dict[str, Any], hidden_size: int, grid: tuple[int, int] | None = None
) -> VideoCompressor:
    """The compressor named by ``config.name`` (``COMPRESSORS``). ``grid`` (H, W) is needed only by the
    released attention layout (its query width is H*W)."""
    config = CompressorConfig.from_dict(config)
    try:
        return COMPRESSORS[config.name].build(config, hidden_size, grid)
    except ConfigError:
        raise
    except ValueError as e:  # a spec that does not fit this model's width (e.g. heads): one line, not a crash
        raise ConfigError(f"compressor config does not fit this model: {e}") from None
