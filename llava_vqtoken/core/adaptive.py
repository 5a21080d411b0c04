"""Adaptive codebook size: pick K per video by elbow or silhouette, with one k-means fit.

The paper selects K per video (adaptive k-means); the authors' code fits k-means once per candidate
K (21 fits for 12..32). Here one batched fit at the top of the range is followed by Ward-style
agglomeration of its centroids, which yields a nested partition for *every* K below it. The
distortion of each partition follows exactly from per-cluster sums (a K_top x K_top Gram matrix),
and the cosine silhouette of a token sample follows from its similarities to the cluster sums, so
model selection costs almost nothing. The chosen partition is then refined by a few Lloyd steps.
Selection runs over the whole curve (K = 1 .. K_top) and is clamped to [k_min, k_max]; the result
says when it was clamped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .graphs import maybe_graphed
from .kmeans import KMeansResult, SeedNoise, _generator, draw_seed_noise, lloyd, normalize_tokens, one_hot, seed_centres


@dataclass
class AdaptiveChoice:
    """Per-video outcome of the K search."""

    k: int  # chosen number of codes, within [k_min, k_max]
    k_unclamped: int  # what the criterion picked before clamping
    clamped: str | None  # None, "low" or "high"
    scores: dict[int, float]  # criterion value per candidate K (distortion for elbow)


def ward_merge_tree(gram: np.ndarray, counts: np.ndarray, total_sq: float) -> tuple[np.ndarray, np.ndarray]:
    """Ward agglomeration of K0 clusters described by their sum Gram matrix and sizes.

    Returns ``(groups, distortion)``: ``groups[k]`` [K0] maps each original cluster to one of k merged
    groups (rows k = 1..K0 are filled), and ``distortion[k]`` is the sum of squared distances of the
    tokens to their group means (``total_sq`` = sum of squared token norms). Merging i and j raises
    that sum by exactly n_i n_j / (n_i + n_j) ||mu_i - mu_j||^2, so the curve comes for free.
    """
    k0 = counts.shape[0]
    g = gram.astype(np.float64).copy()
    n = counts.astype(np.float64).copy()
    groups = np.zeros((k0 + 1, k0), dtype=np.int64)
    distortion = np.full(k0 + 1, np.nan)
    parent = np.arange(k0)
    alive = n > 0
    if not alive.any():
        alive[0] = True
    # empty clusters (degenerate inputs only) join the first live one at no cost
    first = int(np.flatnonzero(alive)[0])
    parent[~alive] = first
    n_safe = np.maximum(n, 1.0)

    def cost_row(i: int) -> np.ndarray:
        d = g[i, i] / n_safe[i] ** 2 + np.diag(g) / n_safe**2 - 2.0 * g[i] / (n_safe[i] * n_safe)
        c = n[i] * n / (n[i] + n + 1e-300) * np.maximum(d, 0.0)
        c[~alive] = np.inf
        c[i] = np.inf
        return c

    cost = np.stack([cost_row(i) for i in range(k0)])
    cost[~alive, :] = np.inf
    live = int(alive.sum())
    sse = total_sq - float(np.sum(np.diag(g)[alive] / n_safe[alive]))

    def record(k: int) -> None:
        roots = parent.copy()
        for _ in range(k0):  # path compression by repeated lookup (K0 is small)
            nxt = parent[roots]
            if np.array_equal(nxt, roots):
                break
            roots = nxt
        _, inv = np.unique(roots, return_inverse=True)
        groups[k] = inv
        distortion[k] = max(sse, 0.0)

    record(live)
    while live > 1:
        flat = int(np.argmin(cost))
        i, j = divmod(flat, k0)
        sse += float(cost[i, j])
        g[i, :] += g[j, :]
        g[:, i] += g[:, j]
        n[i] += n[j]
        n_safe[i] = n[i]
        alive[j] = False
        parent[parent == j] = i
        parent[j] = i
        cost[j, :] = np.inf
        cost[:, j] = np.inf
        row = cost_row(i)
        cost[i, :] = row
        cost[:, i] = row
        live -= 1
        record(live)
    for k in range(live - 1, 0, -1):  # fewer groups than live clusters cannot occur; keep rows defined
        groups[k] = groups[live]
        distortion[k] = distortion[live]
    return groups, distortion


def elbow_k(distortion: dict[int, float], min_strength: float = 1.0, keep: float = 0.25) -> int | None:
    """Elbow of a distortion curve by its second difference D(K-1) - 2 D(K) + D(K+1), mapped back to K.

    Raw second differences favour small K on any convex curve, so among the K whose second
    difference is at least ``keep`` times the largest, the elbow is the one where the drop before K
    most exceeds the drop after it. Returns None when no K has a drop before it at least
    ``1 + min_strength`` times the drop after (a straight or gently bending curve: more distinct
    content than the candidates resolve). A flat curve (all tokens alike) returns the smallest K.
    """
    ks = sorted(distortion)
    span = distortion[ks[0]] - distortion[ks[-1]]
    if span <= 0.0:
        return ks[0]
    second = {k: distortion[k - 1] - 2.0 * distortion[k] + distortion[k + 1] for k in ks[1:-1]}
    if not second:
        return None
    top = max(second.values())
    if top <= 0.0:
        return None
    floor = 1e-9 * span
    strength = {
        k: (distortion[k - 1] - distortion[k]) / max(distortion[k] - distortion[k + 1], floor) - 1.0
        for k, v in second.items()
        if v >= keep * top
    }
    best = max(strength, key=lambda k: (strength[k], -k))
    return best if strength[best] >= min_strength else None


def silhouette_scores(
    sims_to_sums: np.ndarray, labels0: np.ndarray, counts0: np.ndarray, groups: np.ndarray, ks: list[int]
) -> dict[int, float]:
    """Mean cosine silhouette of sampled tokens for each candidate partition (exact, no N x N matrix).

    ``sims_to_sums`` [S, K0]: <x^_s, sum of the unit tokens of original cluster j>. The mean cosine
    distance of s to a group C is 1 - sims/|C|; for its own group the token itself is excluded.
    Tokens in singleton groups score 0, as in the usual definition.
    """
    out: dict[int, float] = {}
    k0 = counts0.shape[0]
    for k in ks:
        if k < 2:
            continue
        m = np.zeros((k0, k))
        m[np.arange(k0), groups[k]] = 1.0
        sims = sims_to_sums @ m  # [S, k]
        sizes = counts0 @ m  # [k]
        own = groups[k][labels0]  # [S]
        own_size = sizes[own]
        own_sim = sims[np.arange(len(own)), own]
        a = 1.0 - (own_sim - 1.0) / np.maximum(own_size - 1.0, 1.0)
        other = 1.0 - sims / np.maximum(sizes, 1.0)[None, :]
        other[np.arange(len(own)), own] = np.inf
        other[:, sizes == 0] = np.inf
        b = other.min(axis=1)
        s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
        s = np.where(own_size <= 1, 0.0, s)
        out[k] = float(s.mean())
    return out


def adaptive_kmeans(
    x: torch.Tensor,
    k_min: int,
    k_max: int,
    method: str = "elbow",
    iters: int = 20,
    refine_iters: int = 10,
    tol: float = 1e-4,
    seed: int = 0,
    seed_sample: int | None = 2048,
    silhouette_sample: int = 2048,
    cuda_graphs: bool = True,
) -> tuple[KMeansResult, list[AdaptiveChoice]]:
    """Cosine k-means with K chosen per video in [k_min, k_max] (batched over B videos).

    Returns a result padded to the largest chosen K (codes >= K_b of video b are inactive: zero
    count, never assigned) and the per-video choices.
    """
    if method not in ("elbow", "silhouette"):
        raise ValueError(f"adaptive method must be 'elbow' or 'silhouette', got {method!r}")
    b, n, d = x.shape
    if not 1 <= k_min <= k_max:
        raise ValueError(f"need 1 <= min_codes <= max_codes, got min_codes={k_min}, max_codes={k_max}")
    if k_max > n:
        raise ValueError(f"max_codes={k_max} exceeds the number of tokens N={n}")
    # two above the range: the second difference then exists at k_max + 1, so "more than k_max" is visible
    k_top = min(k_max + 2, n)
    gen = _generator(x.device, seed)
    noise, m = draw_seed_noise(b, n, k_top, x.device, gen, seed_sample, None)
    centroids, labels, _, counts, sums, gram, total_sq = maybe_graphed(
        ("adaptive-top", k_top, m, iters, tol), _fit_top, (x, noise.pool_keys, noise.first, noise.race),
        dict(k=k_top, m=m, iters=iters, tol=tol), enabled=cuda_graphs,
    )
    to_host = [gram, counts, total_sq]
    if method == "silhouette":
        s = min(silhouette_sample, n)
        sample_idx = torch.rand(b, n, device=x.device, generator=gen).topk(s, dim=1).indices
        xs = normalize_tokens(x.gather(1, sample_idx.unsqueeze(-1).expand(-1, -1, d))).float()
        to_host += [torch.bmm(xs, sums.transpose(1, 2)), labels.gather(1, sample_idx)]
    host = [t.double().cpu().numpy() if t.is_floating_point() else t.cpu().numpy() for t in to_host]  # one sync

    choices: list[AdaptiveChoice] = []
    merge_maps = []
    for i in range(b):
        groups, distortion = ward_merge_tree(host[0][i], host[1][i], float(host[2][i]))
        if distortion[1] <= 1e-6 * max(float(host[2][i]), 1e-12):
            # all tokens (nearly) identical: one code would do, so the range's lower end
            scores = {k: float(distortion[k]) for k in range(1, k_top + 1)}
            pick = 1
        elif method == "elbow":
            scores = {k: float(distortion[k]) for k in range(1, k_top + 1)}
            pick = elbow_k(scores)
            if pick is None:  # no elbow up to k_max + 1: the content wants more codes than the range
                pick = k_max + 1
        else:
            ks = list(range(2, min(k_max + 1, k_top) + 1))
            scores = silhouette_scores(host[3][i], host[4][i], host[1][i], groups, ks)
            pick = max(scores, key=lambda k: (scores[k], -k)) if scores else k_min
        k = min(max(pick, k_min), k_max)
        clamped = "low" if pick < k_min else ("high" if pick > k_max else None)
        choices.append(AdaptiveChoice(k=k, k_unclamped=pick, clamped=clamped, scores=scores))
        merge_maps.append(groups[k])
    width = max(c.k for c in choices)
    # warm start from the merged centroids of each chosen partition, padded to a common width
    maps = torch.as_tensor(np.stack(merge_maps), device=x.device)  # [B, K0]
    ks_t = torch.tensor([c.k for c in choices], device=x.device)
    out = maybe_graphed(
        ("adaptive-refine", width, refine_iters, tol), _refine, (x, sums, maps, ks_t),
        dict(width=width, iters=refine_iters, tol=tol), enabled=cuda_graphs,
    )
    return KMeansResult(*out), choices


def _fit_top(x, keys, first, race, *, k: int, m: int, iters: int, tol: float):
    """Sync-free first stage: fit at the top of the range, then per-cluster sums and their Gram matrix."""
    xn = normalize_tokens(x)
    r = lloyd(xn, seed_centres(xn, k, SeedNoise(keys, first, race), m), iters=iters, tol=tol)
    sums = torch.bmm(one_hot(r.labels, k, xn.dtype).transpose(1, 2), xn).float()  # [B, K0, D]
    gram = torch.bmm(sums, sums.transpose(1, 2))
    total_sq = xn.float().square().sum(dim=(1, 2))
    return r.centroids, r.labels, r.inertia, r.counts, sums, gram, total_sq


def _refine(x, sums, maps, ks, *, width: int, iters: int, tol: float):
    """Sync-free last stage: Lloyd from the merged centroids, codes >= K_b masked per video."""
    xn = normalize_tokens(x)
    init = F.normalize(torch.bmm(one_hot(maps, width).transpose(1, 2), sums), dim=-1, eps=1e-12)
    active = torch.arange(width, device=x.device)[None, :] < ks[:, None]
    r = lloyd(xn, init, iters=iters, tol=tol, active=active)
    return r.centroids, r.labels, r.inertia, r.counts
