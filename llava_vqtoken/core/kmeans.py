"""Batched cosine k-means over [B, N, D] token sets.

Everything stays on the device and free of host synchronisation: all random numbers are drawn up
front (so the fit itself is a pure function of tokens and noise), k-means++ seeding samples with the
exponential-race trick (argmin of E / w), the assignment is one batched matmul + max, the update is
one one-hot matmul (every token scattered into its mean at once), empty clusters are re-seeded from
the worst-fitted tokens, and the tolerance test freezes converged videos with ``torch.where``.
Being sync-free, a fit on CUDA is captured once per shape into a CUDA graph and replayed
(:mod:`.graphs`), which removes the kernel-launch overhead that dominates at these sizes.
Deterministic for a given seed on a given device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .graphs import maybe_graphed


@dataclass
class KMeansResult:
    """Outcome of :func:`cosine_kmeans` for a batch of B token sets."""

    centroids: torch.Tensor  # [B, K, D] unit-norm centroid directions (fp32)
    labels: torch.Tensor  # [B, N] code index per token (int64)
    inertia: torch.Tensor  # [B] summed cosine distance 1 - <x^, c> (fp32)
    counts: torch.Tensor  # [B, K] members per code (fp32)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def normalize_tokens(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim (norms in fp32, safe for zero vectors), returned in the matmul dtype:
    bf16 on CUDA (tensor cores, fp32 accumulation), fp32 on the CPU."""
    inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).clamp_min_(1e-12).reciprocal_()
    return (x * inv).to(torch.bfloat16 if x.is_cuda else torch.float32)


def _counts(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Exact member counts [B, K] in fp32 (one scatter; bf16 could not count past 256)."""
    ones = torch.ones(labels.shape, device=labels.device, dtype=torch.float32)
    return torch.zeros(labels.shape[0], k, device=labels.device).scatter_add_(1, labels, ones)


def one_hot(labels: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[..., N] -> [..., N, K]; unlike ``F.one_hot`` it never synchronises with the host."""
    return (labels.unsqueeze(-1) == torch.arange(k, device=labels.device)).to(dtype)


@dataclass
class SeedNoise:
    """Random numbers for k-means++ seeding, drawn before the (deterministic) fit."""

    pool_keys: torch.Tensor | None  # [B, N] uniform keys; the `sample` largest pick the seeding pool
    first: torch.Tensor  # [B] uniform in [0, 1): the first centre
    race: torch.Tensor  # [B, K-1, L, M] Exp(1) variates for the candidates of each later centre


def draw_seed_noise(
    b: int, n: int, k: int, device: torch.device, generator: torch.Generator, sample: int | None, trials: int | None
) -> tuple[SeedNoise, int]:
    m = n if sample is None or n <= sample else sample
    trials = trials or (2 + int(math.log(k)))
    keys = torch.rand(b, n, device=device, generator=generator) if m < n else None
    first = torch.rand(b, device=device, generator=generator)
    race = torch.empty(b, max(k - 1, 0), trials, m, device=device).exponential_(generator=generator)
    return SeedNoise(keys, first, race), m


def gram_seed_step(min_d2: torch.Tensor, race: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One greedy k-means++ step from the pool's Gram matrix: (new min distances [B, M], pick [B])."""
    b, m = min_d2.shape
    cand = (race / (min_d2[:, None, :] + 1e-12)).argmin(dim=2)  # [B, L]
    sims = gram.gather(1, cand.unsqueeze(-1).expand(-1, -1, m))
    new_min = torch.minimum(min_d2[:, None, :], (2.0 - 2.0 * sims.float()).clamp_min(0.0))  # [B, L, M]
    best = new_min.sum(dim=2).argmin(dim=1)
    rows = torch.arange(b, device=min_d2.device)
    return new_min[rows, best], cand[rows, best]


def seed_centres(
    xn: torch.Tensor, k: int, noise: SeedNoise, m: int, compiled: bool = False, use_gram: bool | None = None
) -> torch.Tensor:
    """Greedy k-means++ on unit vectors ``xn`` [B, N, D] -> [B, K, D] (fp32).

    Seeds come from a random subset of m tokens (all when N <= m), which keeps the K sequential
    steps cheap. Each step draws L candidates (2 + ln K, as scikit-learn does) with probability
    proportional to the squared chord distance to the nearest chosen seed and keeps the one that
    lowers the total potential most. On CUDA the pool's Gram matrix is computed once (one
    tensor-core matmul), so each step only gathers L rows of it instead of running a matmul.
    """
    b, n, d = xn.shape
    rows = torch.arange(b, device=xn.device)
    if noise.pool_keys is not None:
        idx = noise.pool_keys.topk(m, dim=1).indices
        pool = xn.gather(1, idx.unsqueeze(-1).expand(b, m, d))
    else:
        pool = xn
    use_gram = xn.is_cuda if use_gram is None else use_gram
    gram = torch.bmm(pool, pool.transpose(1, 2)) if use_gram else None  # [B, M, M]

    def dist2(index: torch.Tensor) -> torch.Tensor:
        """Squared chord distance (2 - 2 cos) from pool tokens ``index`` [B, L] to the pool -> [B, L, M]."""
        if gram is not None:
            sims = gram.gather(1, index.unsqueeze(-1).expand(-1, -1, m))
        else:
            sims = torch.bmm(pool.gather(1, index.unsqueeze(-1).expand(-1, -1, d)), pool.transpose(1, 2))
        return (2.0 - 2.0 * sims.float()).clamp_min_(0.0)

    picked = torch.empty(b, k, dtype=torch.long, device=xn.device)
    picked[:, 0] = (noise.first * m).long().clamp_max(m - 1)
    min_d2 = dist2(picked[:, :1])[:, 0]
    if gram is not None:
        step = compiled_fn(gram_seed_step, compiled)
        for j in range(1, k):
            min_d2, picked[:, j] = step(min_d2, noise.race[:, j - 1], gram)
        return pool.gather(1, picked.unsqueeze(-1).expand(-1, -1, d)).float()
    for j in range(1, k):
        cand = (noise.race[:, j - 1] / (min_d2[:, None, :] + 1e-12)).argmin(dim=2)  # [B, L]
        new_min = torch.minimum(min_d2[:, None, :], dist2(cand))  # [B, L, M]
        best = new_min.sum(dim=2).argmin(dim=1)  # [B]
        picked[:, j] = cand[rows, best]
        min_d2 = new_min[rows, best]
    return pool.gather(1, picked.unsqueeze(-1).expand(-1, -1, d)).float()


def kmeans_plus_plus(
    xn: torch.Tensor, k: int, generator: torch.Generator, sample: int | None = 4096, trials: int | None = None
) -> torch.Tensor:
    """Greedy k-means++ seeding (draws its noise from ``generator``)."""
    b, n, _ = xn.shape
    noise, m = draw_seed_noise(b, n, k, xn.device, generator, sample, trials)
    return seed_centres(xn, k, noise, m)


def assign(xn: torch.Tensor, centroids: torch.Tensor, active: torch.Tensor | None = None):
    """Nearest centroid by cosine similarity. Returns (labels [B,N], best similarity [B,N])."""
    sims = torch.bmm(xn, centroids.to(xn.dtype).transpose(1, 2))  # [B, N, K], fp32 accumulation
    if active is not None:
        sims = sims.masked_fill_(~active[:, None, :], float("-inf"))
    best, labels = sims.max(dim=2)
    return labels, best.float()


def _worst_fitted(best: torch.Tensor, k: int) -> torch.Tensor:
    """K distinct tokens fitted worst, cheaply: split the tokens into K chunks, take each chunk's
    worst token, order the K candidates worst first. [B, N] -> [B, K] token indices."""
    b, n = best.shape
    step = n // k
    chunks = (1.0 - best[:, : step * k]).view(b, k, step)
    worst, arg = chunks.max(dim=2)
    idx = arg + torch.arange(k, device=best.device) * step
    return idx.gather(1, worst.argsort(dim=1, descending=True))


def lloyd_step(
    xn: torch.Tensor,
    centroids: torch.Tensor,
    done: torch.Tensor,
    active: torch.Tensor,
    masked: bool,
    tol: float,
    reseed: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One spherical k-means step: assign, take the means (one matmul), optionally re-seed empty
    clusters, freeze videos whose centroids moved less than ``tol``. Returns (centroids, done)."""
    k, d = centroids.shape[1], xn.shape[2]
    labels, best = assign(xn, centroids, active if masked else None)
    oh = one_hot(labels, k, xn.dtype)  # [B, N, K]
    sums = torch.bmm(oh.transpose(1, 2), xn).float()  # [B, K, D]: all means in one matmul
    new = F.normalize(sums, dim=-1, eps=1e-12)
    if reseed:
        # Re-seed empty (but active) clusters with badly fitted tokens, one distinct token each.
        # (an empty cluster's sum is zero, so its normalised mean is exactly zero)
        empty = (new.abs().sum(dim=-1) == 0) & active
        far = _worst_fitted(best, k)  # [B, K] worst first
        rank = (empty.long().cumsum(dim=1) - 1).clamp_min(0)
        cand = xn.gather(1, far.gather(1, rank).unsqueeze(-1).expand(-1, -1, d)).float()
        new = torch.where(empty.unsqueeze(-1), cand, new)
    else:
        new = torch.where(new.abs().sum(dim=-1, keepdim=True) == 0, centroids, new)  # empty: stay put
    new = torch.where(active.unsqueeze(-1), new, centroids)
    shift = (new - centroids).flatten(1).norm(dim=1)
    centroids = torch.where(done[:, None, None], centroids, new)
    return centroids, done | (shift < tol)


_COMPILED: dict = {}


def compiled_fn(fn, compiled: bool):
    """``fn`` itself, or its ``torch.compile``d version (built once per function)."""
    if not compiled:
        return fn
    if fn not in _COMPILED:
        import torch._dynamo

        # one specialisation per (shape, re-seed, mask) combination: allow more than dynamo's default 8
        cfg = torch._dynamo.config
        name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        setattr(cfg, name, max(getattr(cfg, name), 64))
        _COMPILED[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[fn]


def lloyd(
    xn: torch.Tensor,
    centroids: torch.Tensor,
    iters: int,
    tol: float = 1e-4,
    active: torch.Tensor | None = None,
    reseed_every: int = 3,
    compiled: bool = False,
) -> KMeansResult:
    """Run ``iters`` Lloyd steps of spherical k-means from ``centroids`` (unit norm) on ``xn``.

    ``active`` [B, K] masks codes that a video does not use (adaptive K batched to a common width).
    A video stops moving once its centroids shift by less than ``tol`` (Frobenius norm). Empty
    clusters are re-seeded on every ``reseed_every``-th step (from the second), which is enough in
    practice and keeps the other steps lean. ``compiled`` runs each step through ``torch.compile``.
    """
    b, k = xn.shape[0], centroids.shape[1]
    done = torch.zeros(b, dtype=torch.bool, device=xn.device)
    masked = active is not None
    if active is None:
        active = torch.ones(b, k, dtype=torch.bool, device=xn.device)
    step = compiled_fn(lloyd_step, compiled)
    for i in range(iters):
        centroids, done = step(xn, centroids, done, active, masked, tol, i % reseed_every == 1 or iters == 1)
    labels, best = assign(xn, centroids, active if masked else None)
    counts = _counts(labels, k)
    inertia = (1.0 - best).sum(dim=1)
    return KMeansResult(centroids=centroids, labels=labels, inertia=inertia, counts=counts)


def _fit(x: torch.Tensor, keys, first, race, *, k: int, m: int, iters: int, tol: float, compiled: bool = False):
    """Pure, sync-free fixed-K fit from pre-drawn noise (what gets captured as a CUDA graph)."""
    xn = normalize_tokens(x)
    centres = seed_centres(xn, k, SeedNoise(keys, first, race), m, compiled=compiled)
    r = lloyd(xn, centres, iters=iters, tol=tol, compiled=compiled)
    return r.centroids, r.labels, r.inertia, r.counts


def cosine_kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 10,
    tol: float = 1e-4,
    seed: int = 0,
    seed_sample: int | None = 2048,
    init: torch.Tensor | None = None,
    cuda_graphs: bool = True,
    compiled: bool = False,
) -> KMeansResult:
    """Cosine k-means on a batch of token sets ``x`` [B, N, D] (any float dtype; computed in fp32).

    ``init`` [B, K, D] replaces k-means++ seeding (warm start). ``cuda_graphs`` replays a captured
    graph on CUDA (same numbers, fewer launches). Raises ValueError on bad K.
    """
    if x.dim() != 3:
        raise ValueError(f"tokens must be [B, N, D], got shape {tuple(x.shape)}")
    b, n, _ = x.shape
    if k < 1:
        raise ValueError(f"number of codes must be >= 1, got K={k}")
    if k > n:
        raise ValueError(f"number of codes K={k} exceeds the number of tokens N={n}")
    if init is not None:
        return lloyd(normalize_tokens(x), F.normalize(init.float(), dim=-1, eps=1e-12), iters=iters, tol=tol)
    noise, m = draw_seed_noise(b, n, k, x.device, _generator(x.device, seed), seed_sample, None)
    out = maybe_graphed(
        ("fixed", k, m, iters, tol), _fit, (x, noise.pool_keys, noise.first, noise.race),
        dict(k=k, m=m, iters=iters, tol=tol, compiled=compiled), enabled=cuda_graphs,
    )
    return KMeansResult(*out)
