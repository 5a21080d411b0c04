"""Batched cosine k-means over [B, N, D] token sets.

Everything stays on the device: k-means++ seeding samples with the exponential-race trick (argmin of E/w),
the assignment is one batched matmul + argmax, the update is one one-hot matmul (the "scatter" of all
tokens into their means at once), empty clusters are re-seeded from the worst-fitted tokens, and the
tolerance test freezes converged videos with ``torch.where`` instead of a host sync. The result is
deterministic for a given seed on a given device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    """L2-normalise the last dim in fp32 (safe for zero vectors)."""
    return F.normalize(x.float(), dim=-1, eps=1e-12)


def kmeans_plus_plus(
    xn: torch.Tensor, k: int, generator: torch.Generator, sample: int | None = 4096, trials: int | None = None
) -> torch.Tensor:
    """Greedy k-means++ seeding on unit vectors ``xn`` [B, N, D] -> [B, K, D].

    Seeds come from a seeded random subset of ``sample`` tokens (all tokens when N is smaller), which
    keeps the K sequential steps cheap. Each step draws ``trials`` candidates (default 2 + ln K, as
    scikit-learn does) proportionally to the squared chord distance to the nearest chosen seed, via
    argmin(E / w) with E ~ Exp(1) (no host synchronisation), and keeps the one that lowers the total
    potential most.
    """
    b, n, d = xn.shape
    dev = xn.device
    if sample is not None and n > sample:
        idx = torch.rand(b, n, device=dev, generator=generator).topk(sample, dim=1).indices
        pool = xn.gather(1, idx.unsqueeze(-1).expand(b, sample, d))
    else:
        pool = xn
    m = pool.shape[1]
    trials = trials or (2 + int(math.log(k)))
    rows = torch.arange(b, device=dev)
    first = torch.randint(0, m, (b,), device=dev, generator=generator)
    centres = torch.empty(b, k, d, device=dev, dtype=pool.dtype)
    centres[:, 0] = pool[rows, first]
    # squared chord distance between unit vectors = 2 - 2 cos
    min_d2 = (2.0 - 2.0 * torch.einsum("bmd,bd->bm", pool, centres[:, 0])).clamp_min_(0.0)
    for j in range(1, k):
        exp = torch.empty(b, trials, m, device=dev).exponential_(generator=generator)
        picks = (exp / (min_d2[:, None, :] + 1e-12)).argmin(dim=2)  # [B, L]
        cand = pool.gather(1, picks.unsqueeze(-1).expand(b, trials, d))  # [B, L, D]
        d2 = (2.0 - 2.0 * torch.bmm(cand, pool.transpose(1, 2))).clamp_min_(0.0)  # [B, L, M]
        new_min = torch.minimum(min_d2[:, None, :], d2)
        best = new_min.sum(dim=2).argmin(dim=1)  # [B]
        centres[:, j] = cand[rows, best]
        min_d2 = new_min[rows, best]
    return centres


def assign(xn: torch.Tensor, centroids: torch.Tensor, active: torch.Tensor | None = None):
    """Nearest centroid by cosine similarity. Returns (labels [B,N], best similarity [B,N])."""
    sims = torch.bmm(xn, centroids.transpose(1, 2))  # [B, N, K]
    if active is not None:
        sims = sims.masked_fill(~active[:, None, :], float("-inf"))
    best, labels = sims.max(dim=2)
    return labels, best


def _one_hot(labels: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(labels, k).to(dtype)


def lloyd(
    xn: torch.Tensor,
    centroids: torch.Tensor,
    iters: int,
    tol: float = 1e-4,
    active: torch.Tensor | None = None,
) -> KMeansResult:
    """Run ``iters`` Lloyd steps of spherical k-means from ``centroids`` (unit norm) on ``xn``.

    ``active`` [B, K] masks codes that a video does not use (adaptive K batched to a common width).
    A video stops moving once its centroids shift by less than ``tol`` (Frobenius norm).
    """
    b, n, _ = xn.shape
    k = centroids.shape[1]
    done = torch.zeros(b, dtype=torch.bool, device=xn.device)
    if active is None:
        active = torch.ones(b, k, dtype=torch.bool, device=xn.device)
    for _ in range(iters):
        labels, best = assign(xn, centroids, active)
        oh = _one_hot(labels, k, xn.dtype)  # [B, N, K]
        sums = torch.bmm(oh.transpose(1, 2), xn)  # [B, K, D]
        counts = oh.sum(dim=1)  # [B, K]
        new = F.normalize(sums, dim=-1, eps=1e-12)
        # Re-seed empty (but active) clusters with the tokens fitted worst, one distinct token each.
        empty = (counts == 0) & active
        far = (1.0 - best).topk(k, dim=1).indices  # [B, K] worst tokens first
        rank = (empty.long().cumsum(dim=1) - 1).clamp_min(0)
        cand = xn.gather(1, far.gather(1, rank).unsqueeze(-1).expand(-1, -1, xn.shape[2]))
        new = torch.where(empty.unsqueeze(-1), cand, new)
        new = torch.where(active.unsqueeze(-1), new, centroids)
        shift = (new - centroids).flatten(1).norm(dim=1)
        centroids = torch.where(done[:, None, None], centroids, new)
        done = done | (shift < tol)
    labels, best = assign(xn, centroids, active)
    counts = _one_hot(labels, k, xn.dtype).sum(dim=1)
    inertia = (1.0 - best).sum(dim=1)
    return KMeansResult(centroids=centroids, labels=labels, inertia=inertia, counts=counts)


def cosine_kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 20,
    tol: float = 1e-4,
    seed: int = 0,
    seed_sample: int | None = 4096,
    init: torch.Tensor | None = None,
) -> KMeansResult:
    """Cosine k-means on a batch of token sets ``x`` [B, N, D] (any float dtype; computed in fp32).

    ``init`` [B, K, D] replaces k-means++ seeding (warm start). Raises ValueError on bad K or
    non-finite input.
    """
    if x.dim() != 3:
        raise ValueError(f"tokens must be [B, N, D], got shape {tuple(x.shape)}")
    n = x.shape[1]
    if k < 1:
        raise ValueError(f"number of codes must be >= 1, got K={k}")
    if k > n:
        raise ValueError(f"number of codes K={k} exceeds the number of tokens N={n}")
    xn = normalize_tokens(x)
    if init is None:
        centroids = kmeans_plus_plus(xn, k, _generator(x.device, seed), seed_sample)
    else:
        centroids = F.normalize(init.float(), dim=-1, eps=1e-12)
    return lloyd(xn, centroids, iters=iters, tol=tol)
