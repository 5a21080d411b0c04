"""Batched cosine k-means over [B, N, D] token sets.

Everything stays on the device and free of host synchronisation: all random numbers are drawn up
front (so the fit itself is a pure function of tokens and noise), k-means++ seeding samples with the
exponential-race trick (argmin of E / w), the assignment is one batched matmul + max, the update is
one one-hot matmul (every token scattered into its mean at once), empty clusters are re-seeded from
the worst-fitted tokens, and the tolerance test freezes converged videos with ``torch.where``.
Being sync-free, a fit on CUDA is captured once per shape into a CUDA graph and replayed
(:mod:`.graphs`), which removes the kernel-launch overhead that dominates at these sizes.

A video's random numbers come from the seed alone (or the seed and an index the caller gives the
video, e.g. its index in the dataset), never from its position in the batch or its batch mates: every
video of a batch draws from its own stream, so a video compresses the same alone and in any batch.
Deterministic for a given seed on a given device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .graphs import CodeCache, compile_scope, maybe_graphed


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


#: odd 64-bit constant (golden ratio) that spreads (seed, video id) pairs over the generator's seed space
_ID_MIX = 0x9E3779B97F4A7C15


def video_seed(seed: int, video_id: int | None) -> int:
    """Seed of one video's stream: the seed itself, or mixed with the caller's id for the video."""
    if video_id is None:
        return seed
    return (seed + (int(video_id) + 1) * _ID_MIX) % 2**64


class VideoStreams:
    """One random stream per video, so a video's numbers do not depend on its batch mates.

    Without ``video_ids`` every video gets the same stream (the seed's): each draw is made once for
    one video and broadcast to the batch, so a batch costs no more than one video. With ``video_ids``
    (one int per video, e.g. its index in the dataset; never its place in the batch) each video
    draws from ``video_seed(seed, id)``. ``draw(fn)`` calls ``fn(generator)`` (which returns a
    tensor with a leading dimension of 1) once per stream; successive draws continue each stream.
    """

    def __init__(self, batch: int, device: torch.device, seed: int, video_ids: Sequence[int] | None = None):
        if video_ids is not None and len(video_ids) != batch:
            raise ValueError(f"video_ids has {len(video_ids)} entries for a batch of {batch} videos")
        self.batch = batch
        ids: Sequence[int | None] = [None] if video_ids is None else video_ids
        self.generators = [_generator(device, video_seed(seed, i)) for i in ids]

    def draw(self, fn: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
        if len(self.generators) == 1:
            one = fn(self.generators[0])
            return one.expand(self.batch, *one.shape[1:])
        return torch.cat([fn(g) for g in self.generators])


def normalize_tokens(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim (norms in fp32 at least, safe for zero vectors), returned in the matmul
    dtype: bf16 on CUDA (tensor cores, fp32 accumulation), fp32 on the CPU."""
    wide = x.dtype if x.dtype == torch.float64 else torch.float32  # vector_norm refuses to narrow fp64
    inv = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=wide).clamp_min_(1e-12).reciprocal_()
    return (x * inv).to(torch.bfloat16 if x.is_cuda else torch.float32)


def _counts(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Exact member counts [B, K] in fp32 (one scatter; bf16 could not count past 256)."""
    ones = torch.ones(labels.shape, device=labels.device, dtype=torch.float32)
    return torch.zeros(labels.shape[0], k, device=labels.device, dtype=torch.float32).scatter_add_(1, labels, ones)


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
    n: int, k: int, streams: VideoStreams, sample: int | None, trials: int | None, device: torch.device
) -> tuple[SeedNoise, int]:
    """Seeding noise for a batch, each video's from its own stream (in this order: pool keys, first
    centre, race variates)."""
    m = n if sample is None or n <= sample else sample
    trials = trials or (2 + int(math.log(k)))
    keys = streams.draw(lambda g: torch.rand(1, n, device=device, generator=g)) if m < n else None
    first = streams.draw(lambda g: torch.rand(1, device=device, generator=g))
    race = streams.draw(
        lambda g: torch.empty(1, max(k - 1, 0), trials, m, device=device).exponential_(generator=g)
    )
    return SeedNoise(keys, first, race), m


#: added to every squared seeding distance: keeps the race's division finite at a chosen token (the
#: same offset for every candidate, so it changes nothing else)
SEED_EPS = 1e-12


def chord2(sims: torch.Tensor) -> torch.Tensor:
    """Squared chord distance between unit vectors from their cosine, plus :data:`SEED_EPS` (fp32)."""
    return (2.0 - 2.0 * sims.float()).clamp_min_(0.0).add_(SEED_EPS)


def gram_seed_step(min_d2: torch.Tensor, race: torch.Tensor, d2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One greedy k-means++ step from the pool's distance matrix ``d2`` [B, M, M] (:func:`chord2`):
    (new min distances [B, M], pick [B]). Nine kernels: it runs K times in a row."""
    m = min_d2.shape[1]
    cand = (race / min_d2[:, None, :]).argmin(dim=2)  # [B, L]: the race's winners, P ~ D^2
    new_min = torch.minimum(min_d2[:, None, :], d2.gather(1, cand.unsqueeze(-1).expand(-1, -1, m)))  # [B, L, M]
    best = new_min.sum(dim=2).argmin(dim=1, keepdim=True)  # [B, 1]: the candidate that lowers the potential most
    return new_min.gather(1, best.unsqueeze(-1).expand(-1, 1, m))[:, 0], cand.gather(1, best)[:, 0]


#: oldest GPU generation (compute capability) the Triton programs are used on (Volta; Triton's floor)
TRITON_MIN_CAPABILITY = (7, 0)


def _use_triton(x: torch.Tensor) -> bool:
    """Whether the one-program-per-video Triton kernels (:mod:`.triton_kmeans`) serve ``x``: on CUDA
    where triton is installed (it comes with CUDA builds of torch) and the GPU is Volta or newer;
    elsewhere the torch loops give the same answers."""
    if not x.is_cuda or torch.cuda.get_device_capability(x.device) < TRITON_MIN_CAPABILITY:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _fused_seeding(d2: torch.Tensor, fused: bool | None) -> bool:
    """Whether seeding runs as one Triton kernel (:mod:`.triton_kmeans`): by default where
    :func:`_use_triton` says so; ``fused=True`` insists (an error where it cannot)."""
    if fused is None:
        return _use_triton(d2)
    if fused and not d2.is_cuda:
        raise ValueError("fused seeding runs on CUDA only")
    if fused and not _use_triton(d2):
        raise ValueError("fused seeding needs triton (it comes with CUDA builds of torch)")
    return fused


def seed_centres(
    xn: torch.Tensor, k: int, noise: SeedNoise, m: int, steps: CodeCache | None = None,
    use_gram: bool | None = None, fused: bool | None = None,
) -> torch.Tensor:
    """Greedy k-means++ on unit vectors ``xn`` [B, N, D] -> [B, K, D] (fp32).

    Seeds come from a random subset of m tokens (all when N <= m), which keeps the K sequential
    steps cheap. Each step draws L candidates (2 + ln K, as scikit-learn does) with probability
    proportional to the squared chord distance to the nearest chosen seed and keeps the one that
    lowers the total potential most. On CUDA the pool's distance matrix is computed once (one
    tensor-core matmul), so each step only gathers L rows of it instead of running a matmul, and
    all K steps run as one Triton kernel (``fused``, default on CUDA: :mod:`.triton_kmeans`, same
    rule and noise, picks equal up to fp32 rounding of the potentials).
    ``steps``: run each step through that cache's ``torch.compile`` (None: eager).
    """
    b, n, d = xn.shape
    if noise.pool_keys is not None:
        idx = noise.pool_keys.topk(m, dim=1).indices
        pool = xn.gather(1, idx.unsqueeze(-1).expand(b, m, d))
    else:
        pool = xn
    use_gram = xn.is_cuda if use_gram is None else use_gram
    d2 = chord2(torch.bmm(pool, pool.transpose(1, 2))) if use_gram else None  # [B, M, M]

    def rows(index: torch.Tensor) -> torch.Tensor:
        """Squared chord distances from pool tokens ``index`` [B, L] to the pool -> [B, L, M]."""
        if d2 is not None:
            return d2.gather(1, index.unsqueeze(-1).expand(-1, -1, m))
        return chord2(torch.bmm(pool.gather(1, index.unsqueeze(-1).expand(-1, -1, d)), pool.transpose(1, 2)))

    picked = torch.empty(b, k, dtype=torch.long, device=xn.device)
    picked[:, 0] = (noise.first * m).long().clamp_max(m - 1)
    if d2 is not None and steps is None and k > 1 and _fused_seeding(d2, fused):
        from .triton_kmeans import greedy_seed

        picked = greedy_seed(d2, noise.race, picked[:, 0], k)
        return pool.gather(1, picked.unsqueeze(-1).expand(-1, -1, d)).float()
    min_d2 = rows(picked[:, :1])[:, 0]
    if d2 is not None:
        step = gram_seed_step if steps is None else steps.compiled(gram_seed_step)
        for j in range(1, k):
            min_d2, picked[:, j] = step(min_d2, noise.race[:, j - 1], d2)
    else:
        for j in range(1, k):
            cand = (noise.race[:, j - 1] / min_d2[:, None, :]).argmin(dim=2)  # [B, L]
            new_min = torch.minimum(min_d2[:, None, :], rows(cand))  # [B, L, M]
            best = new_min.sum(dim=2).argmin(dim=1, keepdim=True)  # [B, 1]
            picked[:, j] = cand.gather(1, best)[:, 0]
            min_d2 = new_min.gather(1, best.unsqueeze(-1).expand(-1, 1, m))[:, 0]
    return pool.gather(1, picked.unsqueeze(-1).expand(-1, -1, d)).float()


def kmeans_plus_plus(
    xn: torch.Tensor, k: int, seed: int = 0, sample: int | None = 4096, trials: int | None = None
) -> torch.Tensor:
    """Greedy k-means++ seeding, every video from the seed's stream."""
    b, n, _ = xn.shape
    noise, m = draw_seed_noise(n, k, VideoStreams(b, xn.device, seed), sample, trials, xn.device)
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
    return idx.gather(1, worst.argsort(dim=1, descending=True, stable=True))  # ties: the earlier segment first


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


def lloyd(
    xn: torch.Tensor,
    centroids: torch.Tensor,
    iters: int,
    tol: float = 1e-4,
    active: torch.Tensor | None = None,
    reseed_every: int = 3,
    steps: CodeCache | None = None,
) -> KMeansResult:
    """Run ``iters`` Lloyd steps of spherical k-means from ``centroids`` (unit norm) on ``xn``.

    ``active`` [B, K] masks codes that a video does not use (adaptive K batched to a common width).
    A video stops moving once its centroids shift by less than ``tol`` (Frobenius norm). Empty
    clusters are re-seeded on every ``reseed_every``-th step (from the second), which is enough in
    practice and keeps the other steps lean. ``steps`` runs each step through that cache's ``torch.compile``.
    """
    b, k = xn.shape[0], centroids.shape[1]
    done = torch.zeros(b, dtype=torch.bool, device=xn.device)
    masked = active is not None
    if active is None:
        active = torch.ones(b, k, dtype=torch.bool, device=xn.device)
    step = lloyd_step if steps is None else steps.compiled(lloyd_step)
    for i in range(iters):
        centroids, done = step(xn, centroids, done, active, masked, tol, i % reseed_every == 1 or iters == 1)
    labels, best = assign(xn, centroids, active if masked else None)
    counts = _counts(labels, k)
    inertia = (1.0 - best).sum(dim=1)
    return KMeansResult(centroids=centroids, labels=labels, inertia=inertia, counts=counts)


#: default over-seeding factor of a fixed-K fit: fit K0 = OVERSAMPLE * K clusters, merge down to K
OVERSAMPLE = 2
#: k-means++ candidates per seed when over-seeding (plain seeding: 2 + ln K): a small cluster holds
#: ~1% of the seeding potential, so more candidates per step keep it from being missed
OVERSEED_TRIALS = 16


def ward_costs(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Ward's merge costs [B, K0, K0] (fp32): n_i n_j / (n_i + n_j) ||mu_i - mu_j||^2, the rise of the
    summed squared distance to the means if clusters i and j merged (0 with an empty cluster), +inf on
    the diagonal."""
    n = counts.float()
    mu = sums.float() / n.clamp_min(1.0).unsqueeze(-1)
    sq = mu.square().sum(dim=-1)
    d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * torch.bmm(mu, mu.transpose(1, 2))).clamp_min(0.0)
    cost = n[:, :, None] * n[:, None, :] / (n[:, :, None] + n[:, None, :]).clamp_min(1.0) * d2
    return cost.masked_fill(torch.eye(cost.shape[1], dtype=torch.bool, device=cost.device), float("inf"))


def ward_step(
    cost: torch.Tensor, n: torch.Tensor, alive: torch.Tensor, group: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Ward merge per video, on the device without host syncs: join the cheapest pair (i < j, the
    first in row-major order on ties) into i and update i's costs by the Lance-Williams formula
    ((n_i + n_l) c_il + (n_j + n_l) c_jl - n_l c_ij) / (n_i + n_j + n_l); j's row and column become +inf.
    (Its twin, one Triton program per video for all steps, is ``triton_kmeans.ward_groups``.)"""
    b, k0, _ = cost.shape
    flat = cost.flatten(1).argmin(dim=1)
    i, j = flat // k0, flat % k0
    ci = cost.gather(1, i[:, None, None].expand(b, 1, k0))[:, 0]
    cj = cost.gather(1, j[:, None, None].expand(b, 1, k0))[:, 0]
    cij, ni, nj = ci.gather(1, j[:, None]), n.gather(1, i[:, None]), n.gather(1, j[:, None])
    new = ((ni + n) * ci + (nj + n) * cj - n * cij) / (ni + nj + n).clamp_min(1.0)
    lanes = torch.arange(k0, device=cost.device)
    is_i, is_j = lanes == i[:, None], lanes == j[:, None]
    alive = alive & ~is_j
    new = new.masked_fill(~alive | is_i, float("inf"))  # also clears 0 x inf products of dead columns
    cost = torch.where(is_i[:, :, None], new[:, None, :], cost)
    cost = torch.where(is_i[:, None, :], new[:, :, None], cost)
    cost = cost.masked_fill(is_j[:, :, None] | is_j[:, None, :], float("inf"))
    n = torch.where(is_i, ni + nj, n).masked_fill(is_j, 0.0)
    group = torch.where(group == j[:, None], i[:, None], group)
    return cost, n, alive, group


def ward_merge_down(sums: torch.Tensor, counts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ward agglomeration on the device, batched and free of host syncs: K0 clusters -> k groups.

    ``sums`` [B, K0, D] per-cluster sums of the (unit) tokens, ``counts`` [B, K0]. Each of the K0 - k
    steps merges, per video, the pair whose merge raises the summed squared distance to the group means
    least (empty clusters first, at no cost): :func:`ward_step` on the cost matrix of :func:`ward_costs`;
    on CUDA all steps run as one Triton program per video. Returns (``groups`` [B, K0]: each cluster's
    group in 0..k-1, numbered in the order of the surviving clusters' indices; ``merged`` [B, k, D]: the
    groups' sums, fp32).
    """
    b, k0, _ = sums.shape
    cost, n = ward_costs(sums, counts), counts.float()
    if _use_triton(cost) and k0 > k:
        from .triton_kmeans import ward_groups

        group, alive = ward_groups(cost, n, k)
    else:
        alive = torch.ones(b, k0, dtype=torch.bool, device=sums.device)
        group = torch.arange(k0, device=sums.device).expand(b, k0).clone()
        for _ in range(k0 - k):
            cost, n, alive, group = ward_step(cost, n, alive, group)
    order = (~alive).to(torch.uint8).argsort(dim=1, stable=True)[:, :k]  # the k live clusters, in index order
    slot = torch.zeros(b, k0, dtype=torch.long, device=sums.device).scatter_(
        1, order, torch.arange(k, device=sums.device).expand(b, k)
    )
    groups = slot.gather(1, group)
    return groups, torch.bmm(one_hot(groups, k).transpose(1, 2), sums.float())


def cluster_sums(xn: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster sums [B, K, D] in fp32 of the unit tokens (one one-hot matmul)."""
    return torch.bmm(one_hot(labels, k, xn.dtype).transpose(1, 2), xn).float()


def oversampled_iters(iters: int) -> tuple[int, int]:
    """Split a fit's Lloyd budget: (steps at K0 = oversample * K, steps at K after the merge)."""
    first = max(1, (iters + 1) // 2)
    return first, max(iters - first, 1)


def _fit(
    x: torch.Tensor, keys, first, race, *, k: int, k0: int, m: int, iters: int, tol: float, steps: CodeCache | None
):
    """Pure, sync-free fixed-K fit from pre-drawn noise (what gets captured as a CUDA graph).

    With ``k0 > k`` (over-seeding): k-means++ seeds K0 centres, Lloyd fits them, Ward merges the K0
    clusters down to K on the device (:func:`ward_merge_down`), and Lloyd refines the K merged
    centroids. With ``k0 == k``: plain k-means++ + Lloyd."""
    xn = normalize_tokens(x)
    centres = seed_centres(xn, k0, SeedNoise(keys, first, race), m, steps=steps)
    if k0 == k:
        r = lloyd(xn, centres, iters=iters, tol=tol, steps=steps)
        return r.centroids, r.labels, r.inertia, r.counts
    fit_iters, refine_iters = oversampled_iters(iters)
    r = lloyd(xn, centres, iters=fit_iters, tol=tol, steps=steps)
    _, merged = ward_merge_down(cluster_sums(xn, r.labels, k0), r.counts, k)
    # a group of empty clusters (degenerate input, e.g. identical tokens) has no direction: keep a seed's
    init = torch.where((merged.abs().sum(dim=-1, keepdim=True) == 0), centres[:, :k], merged)
    r = lloyd(xn, F.normalize(init, dim=-1, eps=1e-12), iters=refine_iters, tol=tol, steps=steps)
    return r.centroids, r.labels, r.inertia, r.counts


def check_seed_sample(seed_sample: int | None) -> None:
    """A seeding pool needs at least one token (None: all tokens)."""
    if seed_sample is not None and seed_sample < 1:
        raise ValueError(f"seed_sample must be >= 1 (tokens in the k-means++ seeding pool), got {seed_sample}")


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
    cache: CodeCache | None = None,
    video_ids: Sequence[int] | None = None,
    oversample: int = OVERSAMPLE,
) -> KMeansResult:
    """Cosine k-means on a batch of token sets ``x`` [B, N, D] (any float dtype; computed in fp32).

    ``oversample`` > 1 seeds min(oversample * K, N) centres, fits them (half of ``iters``), merges the
    clusters down to K by Ward's criterion (:func:`ward_merge_down`) and refines (the other half):
    single-start k-means++ misses small or nearby clusters that the over-seeded fit finds
    (docs/CLUSTERING.md). ``oversample=1`` is plain greedy k-means++ + ``iters`` Lloyd steps.
    ``init`` [B, K, D] replaces seeding (warm start: Lloyd only). ``cuda_graphs`` replays a captured
    graph on CUDA (same numbers, fewer launches); ``compiled`` runs the steps through ``torch.compile``.
    Both are kept in ``cache`` (its owner's; without one a throwaway cache serves this call only, so
    repeated calls should pass one). ``video_ids``: see :class:`VideoStreams`. Raises ValueError on bad K.
    """
    if x.dim() != 3:
        raise ValueError(f"tokens must be [B, N, D], got shape {tuple(x.shape)}")
    b, n, _ = x.shape
    if k < 1:
        raise ValueError(f"number of codes must be >= 1, got K={k}")
    if k > n:
        raise ValueError(f"number of codes K={k} exceeds the number of tokens N={n}")
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    check_seed_sample(seed_sample)
    if init is not None:
        return lloyd(normalize_tokens(x), F.normalize(init.float(), dim=-1, eps=1e-12), iters=iters, tol=tol)
    cache = CodeCache() if cache is None else cache
    k0 = min(oversample * k, n)
    streams = VideoStreams(b, x.device, seed, video_ids)
    noise, m = draw_seed_noise(n, k0, streams, seed_sample, OVERSEED_TRIALS if k0 > k else None, x.device)
    k0 = min(k0, m)  # never more seeds than the pool holds
    with compile_scope(compiled):
        out = maybe_graphed(
            cache, ("fixed", k, k0, m, iters, tol, compiled), _fit, (x, noise.pool_keys, noise.first, noise.race),
            dict(k=k, k0=max(k0, k), m=m, iters=iters, tol=tol, steps=cache if compiled else None),
            enabled=cuda_graphs,
        )
    return KMeansResult(*out)
