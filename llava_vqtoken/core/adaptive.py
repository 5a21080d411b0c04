"""Adaptive codebook size: pick K per video by elbow or silhouette, with one k-means fit.

The paper selects K per video (adaptive k-means); the authors' code fits k-means once per candidate
K (21 fits for 12..32). Here one batched fit at the top of the range is followed by Ward-style
agglomeration of its centroids, which yields a nested partition for *every* K below it. The
distortion of each partition follows exactly from per-cluster sums (a K_top x K_top Gram matrix),
and the cosine silhouette of a token sample follows from its similarities to the cluster sums, so
model selection costs almost nothing. The chosen partition is then refined by a few Lloyd steps.
Selection runs over the whole curve (K = 1 .. K_top) and is clamped to [k_min, k_max]; the result
says when it was clamped. ``elbow_released`` applies the authors' release's rule to the same curve
(see :func:`released_elbow_k`), for checkpoints trained and evaluated with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .graphs import CodeCache, compile_scope, maybe_graphed
from .kmeans import (
    OVERSAMPLE,
    OVERSEED_TRIALS,
    KMeansResult,
    SeedNoise,
    VideoStreams,
    check_seed_sample,
    cluster_sums,
    draw_seed_noise,
    lloyd,
    normalize_tokens,
    one_hot,
    seed_centres,
)

#: the selection rules of ``adaptive_kmeans`` (``elbow_released``: the authors' release, see ``released_elbow_k``)
METHODS = ("separation", "elbow", "silhouette", "elbow_released")
#: separation rule: two groups are distinct when fewer than this share of their tokens lies in the middle
#: quarter between their means, along the line joining the means (a gap; a continuum or one blob cut in
#: two puts 12-16% there, two blobs 4 standard deviations apart about 6%)
GAP_SHARE = 0.03
#: the middle band, in units of half the distance between the two means (|t| < GAP_BAND: the middle quarter)
GAP_BAND = 0.25
#: a side of a split needs at least N / (MIN_MASS_DIVISOR * K0) tokens to count as an object
MIN_MASS_DIVISOR = 4
#: the release returns the argmax of the second differences plus 2, then adds 2 more (its index is never
#: mapped back to a K): K = max(argmax + RELEASED_ELBOW_OFFSET, k_min)
RELEASED_ELBOW_OFFSET = 4


@dataclass
class AdaptiveChoice:
    """Per-video outcome of the K search."""

    k: int  # chosen number of codes, within [k_min, k_max]
    k_unclamped: int  # what the criterion picked before clamping
    clamped: str | None  # None, "low" or "high"
    scores: dict[int, float]  # criterion value per candidate K (distortion for elbow)


#: a video whose one-code distortion is at most this share of its tokens' energy is one colour or a
#: static clip: its tokens are (nearly) identical and K takes the range's lower end. 1e-4, not smaller:
#: the distortion comes from an fp32 Gram matrix, whose rounding alone reached 1.01e-6 of the energy on
#: 60 copies of one 8-D token (tests/test_mutation_adaptive.py::test_identical_tokens_whatever_their_value)
STATIC_SHARE = 1e-4


def is_static(one_code_distortion: float, total_sq: float) -> bool:
    """Whether one code fits every token (see :data:`STATIC_SHARE`)."""
    return one_code_distortion <= STATIC_SHARE * max(total_sq, 1e-12)


def ward_merge_tree(gram: np.ndarray, counts: np.ndarray, total_sq: float) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Ward agglomeration of K0 clusters described by their sum Gram matrix and sizes.

    Returns ``(merges, distortion)``: the merges in order (cluster j joins cluster i), and
    ``distortion[k]`` (k = 1..K0), the sum of squared distances of the tokens to their group means
    for the k-group partition (``total_sq`` = sum of squared token norms). Merging i and j raises
    that sum by exactly n_i n_j / (n_i + n_j) ||mu_i - mu_j||^2, so the curve comes for free.
    Empty clusters (degenerate inputs only) are merged first, at no cost.
    """
    k0 = counts.shape[0]
    g = gram.astype(np.float64).copy()
    n = counts.astype(np.float64).copy()
    alive = n > 0
    if not alive.any():
        alive[0] = True
    first = int(np.flatnonzero(alive)[0])
    merges = [(first, j) for j in np.flatnonzero(~alive)]
    distortion = np.full(k0 + 1, np.nan)
    n_safe = np.maximum(n, 1.0)
    diag = np.diag(g).copy()

    def cost_row(i: int) -> np.ndarray:
        d = diag[i] / n_safe[i] ** 2 + diag / n_safe**2 - 2.0 * g[i] / (n_safe[i] * n_safe)
        c = n[i] * n / (n[i] + n) * np.maximum(d, 0.0)
        c[~alive] = np.inf
        c[i] = np.inf
        return c

    mu_sq = diag / n_safe**2
    d_all = mu_sq[:, None] + mu_sq[None, :] - 2.0 * g / (n_safe[:, None] * n_safe[None, :])
    cost = n[:, None] * n[None, :] / np.maximum(n[:, None] + n[None, :], 1.0) * np.maximum(d_all, 0.0)
    cost[~alive, :] = np.inf
    cost[:, ~alive] = np.inf
    np.fill_diagonal(cost, np.inf)
    live = int(alive.sum())
    sse = total_sq - float(np.sum(diag[alive] / n_safe[alive]))
    distortion[live:] = max(sse, 0.0)
    while live > 1:
        flat = int(np.argmin(cost))
        i, j = divmod(flat, k0)
        sse += float(cost[i, j])
        g[i, :] += g[j, :]
        g[:, i] += g[:, j]
        diag[i] = g[i, i]
        n[i] += n[j]
        n_safe[i] = n[i]
        alive[j] = False
        merges.append((i, j))
        cost[j, :] = np.inf
        cost[:, j] = np.inf
        row = cost_row(i)
        cost[i, :] = row
        cost[:, i] = row
        live -= 1
        distortion[live] = max(sse, 0.0)
    return merges, distortion


def partition_levels(merges: list[tuple[int, int]], k0: int, ks: list[int]) -> dict[int, np.ndarray]:
    """Replay the merges: for each k in ``ks`` the map [K0] from original cluster to one of k groups."""
    label = np.arange(k0)
    out: dict[int, np.ndarray] = {}
    want = set(ks)
    live = k0
    if live in want:
        out[live] = np.unique(label, return_inverse=True)[1]
    for i, j in merges:
        label[label == j] = i
        live -= 1
        if live in want:
            out[live] = np.unique(label, return_inverse=True)[1]
    return out


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


def released_elbow_k(distortion: dict[int, float], k_min: int) -> int:
    """The authors' released rule, reproduced for checkpoints trained with it (not a correct elbow).

    Over the candidates K = k_min..k_max (in order), take the second differences of the distortion,
    D[j] - 2 D[j+1] + D[j+2], and their argmax j (the first on ties); the release returns j + 4 as K,
    without mapping the index back to a K, and raises it to k_min: K = max(j + 4, k_min). With its
    candidates 12..32 this gives K in [12, 22], and K = 12 whenever the true elbow is at K <= 21.
    """
    ks = sorted(distortion)
    values = np.array([distortion[k] for k in ks], dtype=np.float64)
    if len(values) < 3:
        return k_min
    second = values[:-2] - 2.0 * values[1:-1] + values[2:]
    return max(int(np.argmax(second)) + RELEASED_ELBOW_OFFSET, k_min)


def silhouette_scores(
    sims_to_sums: torch.Tensor, labels0: torch.Tensor, counts0: torch.Tensor, levels: dict[int, np.ndarray]
) -> dict[int, float]:
    """Mean cosine silhouette of sampled tokens for every candidate partition at once (exact, no N x N).

    ``sims_to_sums`` [S, K0]: <x^_s, sum of the unit tokens of original cluster j>; ``labels0`` [S]
    the sampled tokens' original clusters; ``levels[k]`` [K0] maps original clusters to k groups.
    The mean cosine distance of s to a group C is 1 - sims/|C|; for its own group the token itself
    is excluded. Tokens in singleton groups score 0, as in the usual definition.
    """
    ks = [k for k in sorted(levels) if k >= 2]
    if not ks:
        return {}
    dev = sims_to_sums.device
    k0 = counts0.shape[0]
    maps = torch.as_tensor(np.stack([levels[k] for k in ks]), device=dev)  # [L, K0]
    m = one_hot(maps, k0)  # [L, K0, K0] (groups padded to K0)
    sims = torch.matmul(sims_to_sums.float(), m)  # [L, S, K0]
    sizes = torch.matmul(counts0.float(), m)  # [L, K0]
    own = maps[:, labels0]  # [L, S]
    own_size = sizes.gather(1, own)
    own_sim = sims.gather(2, own.unsqueeze(-1)).squeeze(-1)
    a = 1.0 - (own_sim - 1.0) / (own_size - 1.0).clamp_min(1.0)
    other = 1.0 - sims / sizes.clamp_min(1.0).unsqueeze(1)
    other = other.scatter(2, own.unsqueeze(-1), float("inf"))
    other = other.masked_fill((sizes == 0).unsqueeze(1), float("inf"))
    b = other.min(dim=2).values
    sil = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    sil = torch.where(own_size <= 1, torch.zeros_like(sil), sil)
    return dict(zip(ks, sil.mean(dim=1).tolist()))


def merge_sides(merges: list[tuple[int, int]], k0: int) -> tuple[np.ndarray, np.ndarray]:
    """For each merge (i joins j) of the tree, the original clusters on either side as 0/1 rows [M, K0]."""
    members = {c: [c] for c in range(k0)}
    side_i = np.zeros((len(merges), k0), dtype=np.float64)
    side_j = np.zeros((len(merges), k0), dtype=np.float64)
    for m, (i, j) in enumerate(merges):
        side_i[m, members[i]] = 1.0
        side_j[m, members[j]] = 1.0
        members[i] = members[i] + members.pop(j)
    return side_i, side_j


#: coordinates hashed by :func:`value_halves`, and the hash's odd multipliers
HASH_COORDS = 16
HASH_MULT = 0x9E3779B1
#: integer view of a token's bits, by its bytes per value (bf16/fp16, fp32, fp64)
HASH_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def value_halves(xn: torch.Tensor) -> torch.Tensor:
    """[N] bool: a split of the tokens into two halves by a hash of their values, so that copies of a
    token (a static clip's repeated frames) fall in the same half and cross-fitting stays honest.

    The hash reads the bit patterns of the first HASH_COORDS coordinates in the tokens' own width
    (:data:`HASH_BITS`): bf16 on CUDA (what :func:`normalize_tokens` gives there), fp32 on the CPU.
    Widening bf16 to fp32 first, as before, left the low 16 bits zero: every CUDA token fell in one
    half, every gap share was 1.0 and the separation rule chose min_codes for every video on the GPU."""
    as_int = HASH_BITS.get(xn.element_size())
    if as_int is None:
        raise ValueError(f"value_halves hashes 2-, 4- or 8-byte floats, got {xn.dtype}")
    bits = xn[:, :HASH_COORDS].contiguous().view(as_int).long()
    mult = HASH_MULT * (2 * torch.arange(bits.shape[1], device=xn.device) + 1)
    h = (bits * mult).sum(dim=1)  # int64, wrapping around for 8-byte tokens
    return (h >> 11) % 2 == 0


def gap_shares(xn: torch.Tensor, labels: torch.Tensor, k0: int, side_i: np.ndarray, side_j: np.ndarray) -> torch.Tensor:
    """For each merge, the share of the two sides' tokens that lie in the middle band between them.

    Cross-fitted so that a group of noise cannot look separated from its own fit: the direction joining
    the two sides' means comes from one half of the tokens (split by a hash of their values,
    :func:`value_halves`), the projections (and the means along that line) from the other. A cluster
    whose tokens all fall in one half (copies of one value: a flat region, equal in bf16 on CUDA) has no
    spread to overfit and serves both roles (:func:`cross_fit_roles`). Along the line, t = -1 and
    t = +1 are the two sides' means; the share is that of the sides' projected tokens with
    |t| < GAP_BAND. ``xn`` [N, D] unit tokens, ``labels`` [N] their original clusters. Returns [M]
    (1.0 where the sides' means do not separate at all).
    """
    dev = xn.device
    even = value_halves(xn)
    to_dir, to_proj = cross_fit_roles(labels, even, k0)
    oh = one_hot(labels[to_dir], k0)  # [Nd, K0]
    sums_d = oh.transpose(0, 1) @ xn[to_dir].float()
    counts_d = oh.sum(dim=0)
    a = torch.as_tensor(np.ascontiguousarray(side_i), dtype=torch.float32, device=dev)
    b = torch.as_tensor(np.ascontiguousarray(side_j), dtype=torch.float32, device=dev)
    mean_a = (a @ sums_d) / (a @ counts_d).clamp_min(1.0).unsqueeze(-1)
    mean_b = (b @ sums_d) / (b @ counts_d).clamp_min(1.0).unsqueeze(-1)
    xo, lo = xn[to_proj].float(), labels[to_proj]
    proj = xo @ (mean_a - mean_b).transpose(0, 1)  # [Np, M]
    in_a, in_b = a.transpose(0, 1)[lo], b.transpose(0, 1)[lo]  # [Np, M] 0/1
    ca, cb = in_a.sum(dim=0), in_b.sum(dim=0)
    ma = (proj * in_a).sum(dim=0) / ca.clamp_min(1.0)
    mb = (proj * in_b).sum(dim=0) / cb.clamp_min(1.0)
    half = (ma - mb) / 2.0
    t = (proj - (ma + mb) / 2.0) / half.clamp_min(1e-12)
    mid = ((t.abs() < GAP_BAND).float() * (in_a + in_b)).sum(dim=0)
    share = mid / (ca + cb).clamp_min(1.0)
    return torch.where(half > 0, share, torch.ones_like(share))


def one_half_clusters(labels: torch.Tensor, even: torch.Tensor, k0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[K0] bool each: clusters with no token in the even half, and clusters with none in the odd half."""
    n_even = torch.zeros(k0, device=labels.device).index_add_(0, labels, even.float())
    n_all = torch.zeros(k0, device=labels.device).index_add_(0, labels, torch.ones_like(even, dtype=torch.float32))
    return n_even == 0, n_even == n_all


def cross_fit_roles(labels: torch.Tensor, even: torch.Tensor, k0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] bool each: the tokens that give the sides' directions (the even half) and those projected on
    them (the odd half); a cluster with no token in one half uses its tokens for both roles."""
    no_even, no_odd = one_half_clusters(labels, even, k0)
    return even | no_even[labels], ~even | no_odd[labels]


def separation_k(top_share: np.ndarray, mass_a: np.ndarray, mass_b: np.ndarray, min_mass: float) -> int:
    """K by the separation rule, from the last merges of the tree, last first (``top_share[0]`` is the
    merge into one group): walk down the tree while each merge joins two distinct groups (a gap: share
    in the middle band below GAP_SHARE) and count them; stop at the first merge of one group's parts
    (no gap). A merge with a side under ``min_mass`` tokens neither counts nor stops the walk (a few
    outlier tokens are not an object). Returns 1 + the number of distinct-group merges."""
    k = 1
    for share, a, b in zip(top_share, mass_a, mass_b):
        if min(a, b) < min_mass:
            continue
        if share >= GAP_SHARE:
            break
        k += 1
    return k


def adaptive_kmeans(
    x: torch.Tensor,
    k_min: int,
    k_max: int,
    method: str = "elbow",
    iters: int = 10,
    refine_iters: int = 5,
    tol: float = 1e-4,
    seed: int = 0,
    seed_sample: int | None = 2048,
    silhouette_sample: int = 2048,
    cuda_graphs: bool = True,
    compiled: bool = False,
    cache: CodeCache | None = None,
    video_ids: Sequence[int] | None = None,
    oversample: int = OVERSAMPLE,
) -> tuple[KMeansResult, list[AdaptiveChoice]]:
    """Cosine k-means with K chosen per video in [k_min, k_max] (batched over B videos).

    One fit of K0 = min(oversample * (k_max + 2), N) clusters (over-seeded, as in ``cosine_kmeans``),
    Ward's tree over them, the selection rule ``method`` on the tree, a refinement of the chosen
    partition. Returns a result padded to ``k_max`` codes (codes >= K_b of video b are inactive: zero
    count, never assigned; the width does not depend on the batch mates' K) and the per-video choices.
    ``cuda_graphs``, ``compiled``, ``cache`` and ``video_ids`` are as in ``cosine_kmeans``.
    """
    b, n, d = x.shape
    _check_arguments(method, k_min, k_max, n, oversample, silhouette_sample, seed_sample)
    cache = CodeCache() if cache is None else cache
    # two above the range: the second difference then exists at k_max + 1, so "more than k_max" is visible
    k_top = min(k_max + 2, n)
    k0 = min(oversample * k_top, n)
    streams = VideoStreams(b, x.device, seed, video_ids)
    noise, m = draw_seed_noise(n, k0, streams, seed_sample, OVERSEED_TRIALS if k0 > k_top else None, x.device)
    k0 = max(min(k0, m), k_top)
    steps = cache if compiled else None
    with compile_scope(compiled):
        centroids, labels, _, counts, sums, gram, total_sq = maybe_graphed(
            cache, ("adaptive-top", k0, m, iters, tol, compiled), _fit_top,
            (x, noise.pool_keys, noise.first, noise.race),
            dict(k=k0, m=m, iters=iters, tol=tol, steps=steps), enabled=cuda_graphs,
        )
    sil = None
    if method == "silhouette":
        sample_idx = streams.draw(lambda g: torch.rand(1, n, device=x.device, generator=g)).topk(
            min(silhouette_sample, n), dim=1).indices
        xs = normalize_tokens(x.gather(1, sample_idx.unsqueeze(-1).expand(-1, -1, d))).float()
        sil = (torch.bmm(xs, sums.transpose(1, 2)), labels.gather(1, sample_idx))
    host = [t.double().cpu().numpy() for t in (gram, counts, total_sq)]  # the host sync

    choices: list[AdaptiveChoice] = []
    merge_maps = []
    rule = _Rule(method, k_min, k_max, k_top, k0, n)
    for i in range(b):
        merges, distortion = ward_merge_tree(host[0][i], host[1][i], float(host[2][i]))
        if is_static(distortion[1], float(host[2][i])):
            # all tokens (nearly) identical: one code would do, so the range's lower end
            pick, scores = 1, {k: float(distortion[k]) for k in range(1, k_top + 1)}
        elif method == "separation":
            pick, scores = rule.separation(merges, normalize_tokens(x[i]), labels[i], host[1][i])
        elif method == "silhouette":
            pick, scores = rule.silhouette(merges, sil[0][i], sil[1][i], counts[i])
        else:
            pick, scores = rule.curve(distortion)
        k = min(max(pick, k_min), k_max)
        clamped = "low" if pick < k_min else ("high" if pick > k_max else None)
        choices.append(AdaptiveChoice(k=k, k_unclamped=pick, clamped=clamped, scores=scores))
        merge_maps.append(partition_levels(merges, k0, [k])[k])
    # warm start from the merged centroids of each chosen partition, padded to k_max codes: a common width
    # that does not depend on the batch mates (the re-seeding of empty codes and every shape see k_max)
    width = k_max
    maps = torch.as_tensor(np.stack(merge_maps), device=x.device)  # [B, K0]
    ks_t = torch.tensor([c.k for c in choices], device=x.device)
    with compile_scope(compiled):
        out = maybe_graphed(
            cache, ("adaptive-refine", width, k0, refine_iters, tol, compiled), _refine, (x, sums, maps, ks_t),
            dict(width=width, iters=refine_iters, tol=tol, steps=steps), enabled=cuda_graphs,
        )
    return KMeansResult(*out), choices


def _check_arguments(method: str, k_min: int, k_max: int, n: int, oversample: int, silhouette_sample: int,
                     seed_sample: int | None) -> None:
    if method not in METHODS:
        raise ValueError(f"adaptive method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 1 <= k_min <= k_max:
        raise ValueError(f"need 1 <= min_codes <= max_codes, got min_codes={k_min}, max_codes={k_max}")
    if k_max > n:
        raise ValueError(f"max_codes={k_max} exceeds the number of tokens N={n}")
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    if silhouette_sample < 1:
        raise ValueError(f"silhouette_sample must be >= 1, got {silhouette_sample}")
    check_seed_sample(seed_sample)


@dataclass
class _Rule:
    """The selection rules of :func:`adaptive_kmeans` for one call: each gives (K before the clamp, the
    scores it read) for one video."""

    method: str
    k_min: int
    k_max: int
    k_top: int  # the tree's top levels read: k_max + 2, at most N
    k0: int  # clusters of the over-seeded fit
    n: int  # tokens per video

    def separation(self, merges, xn: torch.Tensor, labels: torch.Tensor, counts: np.ndarray) -> tuple[int, dict]:
        top = min(len(merges), self.k_top)  # the last merges: into 1, 2, ..., k_top groups
        side_a, side_b = merge_sides(merges, self.k0)
        side_a, side_b = side_a[::-1][:top], side_b[::-1][:top]
        share = gap_shares(xn, labels, self.k0, side_a, side_b).cpu().numpy()
        pick = separation_k(share, side_a @ counts, side_b @ counts, self.n / (MIN_MASS_DIVISOR * self.k0))
        return pick, {j + 2: float(v) for j, v in enumerate(share)}  # gap share of the merge from K to K-1

    def silhouette(self, merges, sims: torch.Tensor, labels_s: torch.Tensor, counts: torch.Tensor) -> tuple[int, dict]:
        levels = partition_levels(merges, self.k0, list(range(2, min(self.k_max + 1, self.k_top) + 1)))
        scores = silhouette_scores(sims, labels_s, counts, levels)
        # never empty: K = 2 is always a level (k_max >= 1, and N >= 2 once a clip is not static)
        return max(scores, key=lambda k: (scores[k], -k)), scores

    def curve(self, distortion) -> tuple[int, dict]:
        """``elbow`` (no elbow up to k_max + 1: the content wants more codes than the range) or
        ``elbow_released`` on the distortion curve."""
        if self.method == "elbow_released":
            scores = {k: float(distortion[k]) for k in range(self.k_min, self.k_max + 1)}
            return released_elbow_k(scores, self.k_min), scores
        scores = {k: float(distortion[k]) for k in range(1, self.k_top + 1)}
        pick = elbow_k(scores)
        return (min(self.k_max + 1, self.n) if pick is None else pick), scores


def _fit_top(x, keys, first, race, *, k: int, m: int, iters: int, tol: float, steps: CodeCache | None):
    """Sync-free first stage: fit at the top of the range, then per-cluster sums and their Gram matrix."""
    xn = normalize_tokens(x)
    centres = seed_centres(xn, k, SeedNoise(keys, first, race), m, steps=steps)
    r = lloyd(xn, centres, iters=iters, tol=tol, steps=steps)
    sums = cluster_sums(xn, r.labels, k)  # [B, K0, D]
    gram = torch.bmm(sums, sums.transpose(1, 2))
    total_sq = xn.float().square().sum(dim=(1, 2))
    return r.centroids, r.labels, r.inertia, r.counts, sums, gram, total_sq


def _refine(x, sums, maps, ks, *, width: int, iters: int, tol: float, steps: CodeCache | None):
    """Sync-free last stage: Lloyd from the merged centroids, codes >= K_b masked per video."""
    xn = normalize_tokens(x)
    init = F.normalize(torch.bmm(one_hot(maps, width).transpose(1, 2), sums), dim=-1, eps=1e-12)
    active = torch.arange(width, device=x.device)[None, :] < ks[:, None]
    r = lloyd(xn, init, iters=iters, tol=tol, active=active, steps=steps)
    return r.centroids, r.labels, r.inertia, r.counts
