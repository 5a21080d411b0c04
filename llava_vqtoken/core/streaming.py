"""Streaming VQToken: a codebook and key map for videos that do not fit in memory at once.

Frames arrive in chunks (decode -> vision tower -> projector, a chunk at a time) and go into a
:class:`FeatureStore`: fixed blocks of ``chunk_frames`` frames, kept on the CPU (or any store device)
in the features' own dtype. The fit then reads the store block by block, so the compute device holds
one block at a time, the codebook and the key map (one int per token, the output itself):

1. Seeding: the same noise as the in-memory fit (``draw_seed_noise`` from the video's stream), so
   the k-means++ pool is the same random sample of tokens, gathered from the store by index, and
   seeded by the same ``seed_centres``.
2. Lloyd: full-batch spherical Lloyd steps, each one pass over the blocks (per-code sums in fp32,
   the update, re-seeding of empty codes from the worst-fitted token of each of K contiguous
   segments, as in memory); stops when the centroids shift by less than ``tol``.
3. A final pass assigns every token (the key map covers every frame) and sums each code's members
   for the codebook (and, for adaptive K, the sums and Gram matrix that the Ward merge reads).
4. VQ-Attention's footprint statistics are sums over tokens: they are summed block by block too.

Adaptive K runs the in-memory recipe on the streamed statistics: a fit at the top of the range, the
Ward merge tree and the selection rule on its curve, then Lloyd refinement from the merged centroids.

What is and is not bit-identical: the store re-blocks whatever chunks it is given, so the result
does not depend on how the producer chunked the frames (vision batch size) or on the batch mates (a
video is streamed alone, from its own random stream). Against the in-memory fit the seeds are the
same, and every step is the same algorithm; sums are taken per block, so they differ in rounding,
which can flip a token that is nearly tied between two codes (tested: inertia within 2%, key maps
agree on >= 95% of tokens). A different ``chunk_frames`` likewise changes only the rounding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .adaptive import (
    GAP_BAND,
    MIN_MASS_DIVISOR,
    AdaptiveChoice,
    elbow_k,
    is_static,
    merge_sides,
    partition_levels,
    released_elbow_k,
    separation_k,
    silhouette_scores,
    value_halves,
    ward_merge_tree,
)
from .compressor import CompressedVideo, CompressionError, VQTokenCompressor
from .keymap import canonical_order, key_map_grid, member_sums
from .kmeans import (
    OVERSAMPLE,
    OVERSEED_TRIALS,
    SeedNoise,
    VideoStreams,
    assign,
    draw_seed_noise,
    normalize_tokens,
    one_hot,
    oversampled_iters,
    seed_centres,
    ward_merge_down,
)
from .vq_attention import ReleasedVQAttention, VQAttention, fourier_features

#: Lloyd re-seeds empty codes on every RESEED_EVERY-th step from the second, as ``kmeans.lloyd`` does
RESEED_EVERY = 3
#: a segment's worst fit before any token was seen
NO_TOKEN = -1.0


#: how a block is written to and read from a spill file: its dtype viewed as an integer type of the same width
_SPILL_VIEW = {torch.float32: (torch.int32, np.int32), torch.bfloat16: (torch.int16, np.int16),
               torch.float16: (torch.int16, np.int16)}


class FeatureStore:
    """One video's post-projector features [T, H, W, D], appended in any chunks, kept in blocks of
    ``chunk_frames`` frames on ``device`` (the CPU by default) in the dtype of the first chunk. Features
    that come from a GPU land in pinned blocks, so each pass reads them back asynchronously. With
    ``spill_dir`` every full block is written to a file there and read back per pass, so the process
    holds one block at a time (the files are the caller's to delete, e.g. a temporary directory)."""

    def __init__(
        self, chunk_frames: int, device: torch.device | str = "cpu", spill_dir: str | os.PathLike[str] | None = None
    ) -> None:
        if chunk_frames < 1:
            raise CompressionError(f"chunk_frames must be >= 1 to stream, got {chunk_frames}")
        self.chunk_frames = chunk_frames
        self.device = torch.device(device)
        self.spill_dir = None if spill_dir is None else Path(spill_dir)
        if self.spill_dir is not None and (self.device.type != "cpu" or not self.spill_dir.is_dir()):
            raise CompressionError(f"spill_dir {spill_dir} must be an existing folder, with the store on the CPU")
        self._raw: list[torch.Tensor | Path] = []  # [chunk_frames, H*W, D] or its file; the last filled to _fill
        self._fill = 0
        self._pin = False
        self.dtype: torch.dtype | None = None
        self.grid: tuple[int, int] | None = None
        self.dim: int | None = None
        self.frames = 0

    @property
    def num_blocks(self) -> int:
        return len(self._raw)

    def block(self, i: int) -> torch.Tensor:
        """Block ``i``'s frames [f, H*W, D] (``chunk_frames`` frames, fewer in the last)."""
        raw = self._raw[i]
        if isinstance(raw, Path):
            as_int, np_int = _SPILL_VIEW[self.dtype]
            raw = torch.from_numpy(np.fromfile(raw, dtype=np_int)).view(self.dtype)
            raw = raw.reshape(self.chunk_frames, self.cells, self.dim or 0)
        return raw if i < len(self._raw) - 1 else raw[: self._fill]

    def append(self, feats: torch.Tensor) -> None:
        """Add frames [t, H, W, D] (after the ones already stored)."""
        if feats.dim() != 4 or 0 in feats.shape:
            raise CompressionError(f"a chunk of video features must be [frames, H, W, D], got {tuple(feats.shape)}")
        t, h, w, d = feats.shape
        if self.grid is None:
            self.grid, self.dim, self.dtype = (h, w), d, feats.dtype
            self._pin = feats.is_cuda and self.device.type == "cpu" and self.spill_dir is None
            if self.spill_dir is not None and self.dtype not in _SPILL_VIEW:
                raise CompressionError(f"features of dtype {self.dtype} cannot be spilled to disk")
        elif (h, w, d) != (*self.grid, self.dim):
            was = f"{self.grid[0]}x{self.grid[1]}x{self.dim}"
            raise CompressionError(f"a chunk of grid {h}x{w}x{d} after chunks of {was}")
        x = feats.detach().reshape(t, h * w, d)
        while x.shape[0]:
            if not self._raw or self._fill == self.chunk_frames:
                self._raw.append(torch.empty(self.chunk_frames, h * w, d, dtype=self.dtype, device=self.device,
                                             pin_memory=self._pin))
                self._fill = 0
            take = min(self.chunk_frames - self._fill, x.shape[0])
            last = self._raw[-1]
            assert isinstance(last, torch.Tensor)
            last[self._fill : self._fill + take].copy_(x[:take])
            self._fill += take
            x = x[take:]
            if self._fill == self.chunk_frames and self.spill_dir is not None:
                path = self.spill_dir / f"block{len(self._raw) - 1:07d}.bin"
                last.view(_SPILL_VIEW[self.dtype][0]).numpy().tofile(path)
                self._raw[-1] = path
        self.frames += t

    @property
    def cells(self) -> int:
        assert self.grid is not None
        return self.grid[0] * self.grid[1]

    @property
    def tokens(self) -> int:
        return self.frames * self.cells if self.grid else 0

    def chunks(self, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        """(first token index, tokens [f*H*W, D] on ``device``) per block, in order."""
        start = 0
        for i in range(self.num_blocks):
            block = self.block(i)
            x = block.to(device, non_blocking=True).reshape(-1, block.shape[-1])
            yield start, x
            start += x.shape[0]

    def gather(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Tokens at global indices ``index`` [M] -> [M, D] on ``device`` (in the order given)."""
        index = index.to("cpu")
        per_block = self.chunk_frames * self.cells
        out = torch.empty(index.shape[0], self.dim or 0, dtype=self.dtype)
        which = index // per_block
        for b in which.unique().tolist():
            sel = (which == b).nonzero().squeeze(1)
            rows = self.block(b).reshape(-1, self.dim or 0)
            out[sel] = rows.index_select(0, (index[sel] - b * per_block).to(rows.device)).to("cpu")
        return out.to(device)


@dataclass
class StreamPass:
    """What one assignment pass over the store gives (all on the compute device)."""

    labels: torch.Tensor  # [N] int64
    inertia: torch.Tensor  # [] fp32: sum of 1 - cos to the nearest centroid
    counts: torch.Tensor  # [K] fp32
    unit_sums: torch.Tensor  # [K, D] fp32: sums of the unit tokens (what Lloyd and the Ward merge read)
    total_sq: torch.Tensor  # [] fp32: sum of squared unit-token norms


class _Worst:
    """The worst-fitted token of each of K contiguous segments of n // K tokens (``kmeans._worst_fitted``,
    kept across blocks): ties go to the first token, as in memory."""

    def __init__(self, n: int, k: int, device: torch.device) -> None:
        self.k, self.step = k, n // k
        self.val = torch.full((k,), NO_TOKEN, device=device)
        self.idx = torch.zeros(k, dtype=torch.long, device=device)

    def update(self, start: int, best: torch.Tensor) -> None:
        gidx = torch.arange(start, start + best.shape[0], device=best.device)
        seg = gidx // self.step
        keep = seg < self.k
        if not bool(keep.any()):
            return
        seg, gidx, bad = seg[keep], gidx[keep], 1.0 - best[keep]
        top = torch.full((self.k,), NO_TOKEN, device=best.device).scatter_reduce(0, seg, bad, "amax")
        hit = bad == top[seg]
        first = torch.full((self.k,), torch.iinfo(torch.long).max, device=best.device)
        first = first.scatter_reduce(0, seg[hit], gidx[hit], "amin")
        better = top > self.val
        self.val = torch.where(better, top, self.val)
        self.idx = torch.where(better, first, self.idx)

    def order(self) -> torch.Tensor:
        """Segment winners, worst first."""
        return self.idx.gather(0, self.val.argsort(descending=True, stable=True))


class StreamingFit:
    """Cosine k-means over a :class:`FeatureStore`, one block on ``device`` at a time."""

    def __init__(self, store: FeatureStore, device: torch.device, tol: float) -> None:
        if not store.num_blocks:
            raise CompressionError("video features are empty: no frames were streamed")
        self.store, self.device, self.tol = store, device, tol
        self.n = store.tokens

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_tokens(x[None])[0]

    def seeds(self, k: int, noise: SeedNoise, m: int) -> torch.Tensor:
        """k-means++ seeds [K, D] from the pool the in-memory fit would use (same noise, same tokens)."""
        if noise.pool_keys is not None:
            pool = self.store.gather(noise.pool_keys[0].topk(m).indices, self.device)
        else:
            pool = self.store.gather(torch.arange(self.n), self.device)
        return seed_centres(self._unit(pool)[None], k, SeedNoise(None, noise.first, noise.race), m)[0]

    def step(self, centroids: torch.Tensor, active: torch.Tensor | None, reseed: bool) -> torch.Tensor:
        """One Lloyd step over every block -> new centroids [K, D]."""
        k = centroids.shape[0]
        sums = torch.zeros(k, self.store.dim or 0, device=self.device)
        worst = _Worst(self.n, k, self.device) if reseed else None
        for start, x in self.store.chunks(self.device):
            xn = self._unit(x)
            labels, best = assign(xn[None], centroids[None], None if active is None else active[None])
            sums += member_sums(one_hot(labels, k, xn.dtype), xn[None])[0]
            if worst is not None:
                worst.update(start, best[0])
        new = F.normalize(sums, dim=-1, eps=1e-12)
        on = torch.ones(k, dtype=torch.bool, device=self.device) if active is None else active
        empty = new.abs().sum(dim=-1) == 0
        if worst is not None:
            far = self._unit(self.store.gather(worst.order(), self.device)).float()
            rank = ((empty & on).long().cumsum(0) - 1).clamp_min(0)
            new = torch.where((empty & on)[:, None], far[rank], new)
        else:
            new = torch.where(empty[:, None], centroids, new)
        return torch.where(on[:, None], new, centroids)

    def lloyd(self, centroids: torch.Tensor, iters: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """``iters`` steps (fewer once the centroids shift by less than ``tol``, after which the
        in-memory fit is frozen too); returns the centroids."""
        for i in range(iters):
            new = self.step(centroids, active, i % RESEED_EVERY == 1 or iters == 1)
            shift = float((new - centroids).norm())
            centroids = new
            if shift < self.tol:
                break
        return centroids

    def final(self, centroids: torch.Tensor, active: torch.Tensor | None = None) -> StreamPass:
        """Assign every token; per-code counts and unit sums, inertia."""
        k, d = centroids.shape[0], self.store.dim or 0
        # one allocation up front: per-block label tensors kept between the blocks' large temporaries
        # fragment the CPU heap, whose peak then grows with the video (measured: +88 MB at 1,200 frames)
        labels = torch.empty(self.n, dtype=torch.long, device=self.device)
        inertia = torch.zeros((), device=self.device)
        counts = torch.zeros(k, device=self.device)
        sums = torch.zeros(k, d, device=self.device)
        total_sq = torch.zeros((), device=self.device)
        for start, x in self.store.chunks(self.device):
            xn = self._unit(x)
            lab, best = assign(xn[None], centroids[None], None if active is None else active[None])
            labels[start : start + lab.shape[1]] = lab[0]
            inertia += (1.0 - best).sum()
            counts += torch.bincount(lab[0], minlength=k).float()
            sums += member_sums(one_hot(lab, k, xn.dtype), xn[None])[0]
            total_sq += xn.float().square().sum()
        return StreamPass(labels, inertia, counts, sums, total_sq)


def streaming_kmeans(
    store: FeatureStore, k: int, iters: int, tol: float, seed: int, seed_sample: int | None,
    device: torch.device, video_id: int | None = None, oversample: int = OVERSAMPLE,
) -> tuple[torch.Tensor, StreamPass]:
    """Fixed-K fit over a store: (centroids [K, D], final pass); ``oversample`` as in ``cosine_kmeans``.

    This mirrors ``kmeans.cosine_kmeans``'s recipe step for step (pool, seeds, over-seeding trials,
    Lloyd budget split, Ward merge, refinement); tests/test_streaming.py pins the two key maps equal,
    so a change to one recipe that is not made to the other fails there."""
    fit = StreamingFit(store, device, tol)
    if not 1 <= k <= fit.n:
        raise CompressionError(f"num_tokens={k} must be within 1..{fit.n} (the video's tokens)")
    streams = VideoStreams(1, device, seed, None if video_id is None else [video_id])
    k0 = min(oversample * k, fit.n)
    noise, m = draw_seed_noise(fit.n, k0, streams, seed_sample, OVERSEED_TRIALS if k0 > k else None, device)
    k0 = max(min(k0, m), k)
    if k0 == k:
        centroids = fit.lloyd(fit.seeds(k, noise, m), iters)
        return centroids, fit.final(centroids)
    # over-seeding, as the in-memory fit: K0 clusters, Ward merge down to K, Lloyd refinement
    fit_iters, refine_iters = oversampled_iters(iters)
    seeds = fit.seeds(k0, noise, m)
    wide = fit.final(fit.lloyd(seeds, fit_iters))
    _, merged = ward_merge_down(wide.unit_sums[None], wide.counts[None], k)
    # a group of empty clusters (degenerate input, e.g. identical tokens) has no direction: keep a seed's
    init = torch.where(merged[0].abs().sum(dim=-1, keepdim=True) == 0, seeds[:k], merged[0])
    centroids = fit.lloyd(F.normalize(init, dim=-1, eps=1e-12), refine_iters)
    return centroids, fit.final(centroids)


def gap_shares_streamed(
    fit: StreamingFit, labels: torch.Tensor, k0: int, side_i: np.ndarray, side_j: np.ndarray
) -> torch.Tensor:
    """``adaptive.gap_shares`` over a store, in three passes (each half's per-cluster sums, which give
    the sides' directions and the clusters that lie in one half only; the projected tokens' means per
    side; the share of the sides' projected tokens in the middle band)."""
    dev, d = fit.device, fit.store.dim or 0
    a = torch.as_tensor(np.ascontiguousarray(side_i), dtype=torch.float32, device=dev)
    b = torch.as_tensor(np.ascontiguousarray(side_j), dtype=torch.float32, device=dev)

    def halves() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start, x in fit.store.chunks(dev):
            xn = fit._unit(x)
            yield xn, labels[start : start + xn.shape[0]], value_halves(xn)

    sums = {h: torch.zeros(k0, d, device=dev) for h in (True, False)}
    counts = {h: torch.zeros(k0, device=dev) for h in (True, False)}
    for xn, lab, even in halves():
        for h, mask in ((True, even), (False, ~even)):
            oh = one_hot(lab[mask], k0)
            sums[h] += oh.transpose(0, 1) @ xn[mask].float()
            counts[h] += oh.sum(dim=0)
    no_even, no_odd = counts[True] == 0, counts[False] == 0  # as adaptive.cross_fit_roles
    sums_d = sums[True] + sums[False] * no_even.unsqueeze(-1)
    counts_d = counts[True] + counts[False] * no_even
    mean_a = (a @ sums_d) / (a @ counts_d).clamp_min(1.0).unsqueeze(-1)
    mean_b = (b @ sums_d) / (b @ counts_d).clamp_min(1.0).unsqueeze(-1)
    direction = (mean_a - mean_b).transpose(0, 1)

    def odd_sides() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for xn, lab, even in halves():
            use = ~even | no_odd[lab]
            lo = lab[use]
            yield xn[use].float() @ direction, a.transpose(0, 1)[lo], b.transpose(0, 1)[lo]

    m = side_i.shape[0]
    ca, cb, pa, pb = (torch.zeros(m, device=dev) for _ in range(4))
    for proj, in_a, in_b in odd_sides():
        ca, cb = ca + in_a.sum(dim=0), cb + in_b.sum(dim=0)
        pa, pb = pa + (proj * in_a).sum(dim=0), pb + (proj * in_b).sum(dim=0)
    ma, mb = pa / ca.clamp_min(1.0), pb / cb.clamp_min(1.0)
    half = (ma - mb) / 2.0
    mid = torch.zeros(m, device=dev)
    for proj, in_a, in_b in odd_sides():
        t = (proj - (ma + mb) / 2.0) / half.clamp_min(1e-12)
        mid += ((t.abs() < GAP_BAND).float() * (in_a + in_b)).sum(dim=0)
    share = mid / (ca + cb).clamp_min(1.0)
    return torch.where(half > 0, share, torch.ones_like(share))


def choose_k(
    fit: StreamingFit, top: StreamPass, cfg: Any, k_top: int, k0: int,
    silhouette: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[AdaptiveChoice, np.ndarray]:
    """The in-memory selection (``adaptive.adaptive_kmeans``) on one video's streamed statistics:
    (choice, map from the K0 codes of the top fit to the chosen k groups)."""
    method, k_min, k_max, n = cfg.adaptive, cfg.min_codes, cfg.max_codes, fit.n
    gram = (top.unit_sums @ top.unit_sums.T).double().cpu().numpy()
    counts, total_sq = top.counts.double().cpu().numpy(), float(top.total_sq)
    merges, distortion = ward_merge_tree(gram, counts, total_sq)
    curve = {k: float(distortion[k]) for k in range(1, k_top + 1)}
    if is_static(distortion[1], total_sq):
        scores, pick = curve, 1
    elif method == "separation":
        side_a, side_b = merge_sides(merges, k0)
        last = len(merges[::-1][:k_top])
        side_a, side_b = side_a[::-1][:last], side_b[::-1][:last]
        share = gap_shares_streamed(fit, top.labels, k0, side_a, side_b).cpu().numpy()
        pick = separation_k(share, side_a @ counts, side_b @ counts, n / (MIN_MASS_DIVISOR * k0))
        scores = {j + 2: float(v) for j, v in enumerate(share)}
    elif method == "elbow":
        scores, pick = curve, elbow_k(curve)
        pick = min(k_max + 1, n) if pick is None else pick
    elif method == "elbow_released":
        scores = {k: float(distortion[k]) for k in range(k_min, k_max + 1)}
        pick = released_elbow_k(scores, k_min)
    else:
        assert silhouette is not None
        levels = partition_levels(merges, k0, list(range(2, min(k_max + 1, k_top) + 1)))
        scores = silhouette_scores(silhouette[0], silhouette[1], top.counts, levels)
        pick = max(scores, key=lambda k: (scores[k], -k)) if scores else k_min
    k = min(max(pick, k_min), k_max)
    clamped = "low" if pick < k_min else ("high" if pick > k_max else None)
    choice = AdaptiveChoice(k=k, k_unclamped=pick, clamped=clamped, scores=scores)
    return choice, partition_levels(merges, k0, [k])[k]


def streaming_adaptive(
    store: FeatureStore, cfg: Any, device: torch.device, video_id: int | None = None
) -> tuple[torch.Tensor, StreamPass, AdaptiveChoice, torch.Tensor]:
    """Adaptive K over a store: (centroids [max_codes, D], final pass, choice, active [max_codes]).
    Mirrors ``adaptive.adaptive_kmeans`` (over-seeded top fit, Ward tree, rule, refinement)."""
    fit = StreamingFit(store, device, cfg.tol)
    if cfg.max_codes > fit.n:
        raise CompressionError(f"max_codes={cfg.max_codes} exceeds the video's {fit.n} tokens")
    k_top = min(cfg.max_codes + 2, fit.n)
    k0 = min(cfg.oversample * k_top, fit.n)
    streams = VideoStreams(1, device, cfg.seed, None if video_id is None else [video_id])
    noise, m = draw_seed_noise(fit.n, k0, streams, cfg.seed_sample, OVERSEED_TRIALS if k0 > k_top else None, device)
    k0 = max(min(k0, m), k_top)
    top = fit.final(fit.lloyd(fit.seeds(k0, noise, m), cfg.iters))
    sil = None
    if cfg.adaptive == "silhouette":
        s = min(cfg.silhouette_sample, fit.n)
        keys = streams.draw(lambda g: torch.rand(1, fit.n, device=device, generator=g))
        idx = keys[0].topk(s).indices
        xs = fit._unit(store.gather(idx, device)).float()
        sil = (xs @ top.unit_sums.T, top.labels[idx])
    choice, merge_map = choose_k(fit, top, cfg, k_top, k0, sil)
    width = cfg.max_codes
    maps = torch.as_tensor(merge_map, device=device)
    init = F.normalize(one_hot(maps, width).T @ top.unit_sums, dim=-1, eps=1e-12)
    active = torch.arange(width, device=device) < choice.k
    centroids = fit.lloyd(init, cfg.refine_iters, active)
    return centroids, fit.final(centroids, active), choice, active


def codebook_sums(
    store: FeatureStore, labels: torch.Tensor, k: int, device: torch.device, normalized: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code sums [K, D] (fp32) of the raw (or L2-normalised) tokens and the summed token norms."""
    sums = torch.zeros(k, store.dim or 0, device=device)
    norms = torch.zeros((), device=device)
    for start, x in store.chunks(device):
        src = F.normalize(x.float(), dim=-1, eps=1e-12).to(x.dtype) if normalized else x
        lab = labels[start : start + x.shape[0]]
        sums += member_sums(one_hot(lab[None], k, x.dtype), src[None])[0]
        norms += src.float().norm(dim=-1).sum()
    return sums, norms


def footprint_streamed(key_map: torch.Tensor, k: int, freqs: int, motion: bool, chunk_frames: int) -> torch.Tensor:
    """``vq_attention.footprint_stats`` of one key map [T, H, W] -> [1, K, F], summed over blocks of
    ``chunk_frames`` frames (the same statistics; the one-hot and the Fourier features of one block at a time)."""
    t, h, w = key_map.shape
    dev = key_map.device

    def lin(n: int) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, n, device=dev) if n > 1 else torch.zeros(1, device=dev)

    lt, lh, lw = lin(t), lin(h), lin(w)
    hw = torch.stack(torch.meshgrid(lh, lw, indexing="ij"), dim=-1).reshape(h * w, 2)
    counts = torch.zeros(k, device=dev)
    feat_sum = None
    frame_counts = []
    centroid_sums = []
    for s in range(0, t, chunk_frames):
        block = key_map[s : s + chunk_frames]
        f = block.shape[0]
        coords = torch.cat([lt[s : s + f, None, None].expand(f, h * w, 1), hw[None].expand(f, -1, -1)], dim=-1)
        coords = coords.reshape(-1, 3)
        feats = torch.cat([fourier_features(coords, freqs), coords, coords**2], dim=-1)
        oh = one_hot(block.reshape(-1), k)  # [f*H*W, K]
        part = oh.T @ feats
        feat_sum = part if feat_sum is None else feat_sum + part
        counts += oh.sum(dim=0)
        per_frame = oh.reshape(f, h * w, k)
        frame_counts.append(per_frame.sum(dim=1))
        if motion:
            centroid_sums.append(torch.einsum("thk,hc->tkc", per_frame, hw))
    assert feat_sum is not None
    mean = feat_sum / counts.clamp_min(1.0)[:, None]
    m1, m2 = mean[:, -6:-3], mean[:, -3:]
    spread = (m2 - m1**2).clamp_min(0.0).sqrt()
    fc = torch.cat(frame_counts)  # [T, K]
    presence = (fc > 0).float().mean(dim=0)
    parts = [mean[:, :-3], spread, (counts / key_map.numel())[:, None], presence[:, None]]
    if motion:
        centroid = torch.cat(centroid_sums) / fc.clamp_min(1.0)[..., None]  # [T, K, 2]
        present = fc > 0
        idx = torch.arange(t, device=dev)[:, None]
        first = torch.where(present, idx, t).amin(dim=0).clamp_max(t - 1)
        last = torch.where(present, idx, -1).amax(dim=0).clamp_min(0)
        occurs = (counts > 0).float()[:, None]
        cols = torch.arange(k, device=dev)
        c_first, c_last = centroid[first, cols] * occurs, centroid[last, cols] * occurs
        times = torch.stack([first, last], dim=-1).float() / max(t - 1, 1) * occurs
        parts += [times, c_first, c_last, c_last - c_first]
    return torch.cat(parts, dim=-1)[None]


def check_streamable(compressor: Any) -> VQTokenCompressor:
    """The compressor, if it can stream; one-line CompressionError otherwise."""
    cfg = compressor.config
    if not isinstance(compressor, VQTokenCompressor):
        raise CompressionError(
            f"chunk_frames streams VQToken only; compressor {cfg.name!r} needs the whole video at once "
            "(set chunk_frames=0)"
        )
    if compressor.training:
        raise CompressionError("chunk_frames streams at inference only (eval mode, no gradients); set chunk_frames=0 "
                               "to train")
    return compressor


@torch.no_grad()
def compress_streamed(
    compressor: VQTokenCompressor, store: FeatureStore, device: torch.device | str, video_id: int | None = None
) -> CompressedVideo:
    """One video's features from a store -> the same CompressedVideo the in-memory forward gives."""
    cfg = check_streamable(compressor).config
    device = torch.device(device)
    t = store.frames
    h, w = store.grid or (0, 0)
    n = store.tokens
    if store.dim != compressor.hidden_size:
        raise CompressionError(
            f"features have width {store.dim} but the compressor was built for {compressor.hidden_size}"
        )
    choice = None
    if cfg.adaptive is None:
        if cfg.num_tokens > n:
            raise CompressionError(f"num_tokens={cfg.num_tokens} exceeds the video's {n} tokens")
        centroids, fin = streaming_kmeans(store, cfg.num_tokens, cfg.iters, cfg.tol, cfg.seed, cfg.seed_sample,
                                          device, video_id, cfg.oversample)
        k = ks = cfg.num_tokens
        active = torch.ones(k, dtype=torch.bool, device=device)
    else:
        centroids, fin, choice, active = streaming_adaptive(store, cfg, device, video_id)
        k, ks = centroids.shape[0], choice.k
    labels, perm = canonical_order(fin.labels[None], k)
    sums, norms = codebook_sums(store, fin.labels, k, device, cfg.codebook == "normalized")
    counts = fin.counts
    means = sums / counts.clamp_min(1.0)[:, None]
    fallback = centroids.float() * (norms / n)
    codebook = torch.where((counts == 0)[:, None], fallback, means)[perm[0]].to(store.dtype).to(device)
    key_map = key_map_grid(labels, t, h, w)[0]
    finite = torch.isfinite(fin.inertia)  # the input's check, as in memory; the codebook is an output
    tokens = _attend(compressor, codebook, key_map, active, ks, video_id, store.chunk_frames)
    stats: dict[str, Any] = {
        "num_codes": ks, "inertia": fin.inertia, "finite": finite,
        "finite_output": torch.isfinite(tokens).all() & torch.isfinite(codebook).all(),
        "streamed_chunk_frames": store.chunk_frames,
    }
    if choice is not None:
        stats.update(clamped=choice.clamped, k_unclamped=choice.k_unclamped)
    return CompressedVideo(tokens=tokens, tokens_in=n, key_map=key_map, codebook=codebook[:ks], num_codes=ks,
                           stats=stats).verify()


def _attend(
    comp: VQTokenCompressor, codebook: torch.Tensor, key_map: torch.Tensor, active: torch.Tensor, ks: int,
    video_id: int | None, chunk_frames: int,
) -> torch.Tensor:
    """The compressor's attention on the streamed codebook and key map (as its ``_post`` does)."""
    cfg = comp.config
    att = comp.attention
    if isinstance(att, ReleasedVQAttention) and cfg.apply_attention:
        return att(codebook[:ks], key_map)
    if not (isinstance(att, VQAttention) and cfg.apply_attention):
        return codebook[:ks]
    ids = None if video_id is None else [video_id]
    attn_map = key_map
    t, h, w = key_map.shape
    if cfg.hash == "random":
        r = VideoStreams(1, key_map.device, cfg.seed + 1, ids).draw(
            lambda g: torch.rand(1, key_map.numel(), device=key_map.device, generator=g))
        attn_map = key_map_grid((r * ks).long(), t, h, w)[0]
    draw = VideoStreams(1, key_map.device, cfg.seed + 2, ids).draw if cfg.attention == "random" else None
    fp = footprint_streamed(attn_map, codebook.shape[0], att.freqs, att.motion, chunk_frames)
    return att.from_footprint(codebook[None], fp, active=active[None], draw=draw)[0, :ks]
