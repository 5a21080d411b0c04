"""The two sequential parts of a fit as one GPU program per video (Triton), their CUDA path.

Greedy k-means++ seeding (:func:`greedy_seed`, for :func:`.kmeans.seed_centres`) and Ward's merge down
to K (:func:`ward_groups`, for :func:`.kmeans.ward_merge_down`).

The torch loop launches about nine small kernels per seed; at K0 = 64 seeds that chain, not any
arithmetic, is most of a fixed-K fit on an H200 (docs/BENCHMARKS.md section 8.3). Here one program per
video runs every step in registers: draw the L candidates by the exponential race against the current
minimum distances, score each candidate by the potential it would leave, keep the best, update the
minima. Same noise, same rule, same tie-breaking (first index) as the torch loop; the only difference
is the order in which a candidate's potential is summed, so a pick can differ from the torch loop's
only where two candidates' potentials agree to within fp32 rounding (``tests/test_triton_kmeans.py``).

The Ward program keeps the K0 x K0 cost matrix in registers and runs the K0 - K merges of
:func:`.kmeans.ward_step` (the torch loop does ~25 small kernels per merge): the same argmin (first in
row-major order), the same Lance-Williams update, up to the fused multiply-adds the compiler may form.

Imported only on CUDA (``kmeans._use_triton``); it needs ``triton``, which comes with CUDA builds of torch.
"""

from __future__ import annotations

import torch

try:  # imported only where kmeans._use_triton found triton; a try block, which transformers' check of a
    # trust_remote_code export's imports skips (the export ships this file beside the bundle)
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("llava_vqtoken.core.triton_kmeans needs triton (it comes with CUDA builds of torch)") from err

#: warps per seeding program: a [L, M] tile of 16 x 2048 fp32 spread over 512 threads
NUM_WARPS = 16
#: warps per Ward program: a K0 x K0 cost tile (64 x 64 at K = 32, up to 256 x 256 for adaptive K)
WARD_WARPS = 8


@triton.jit
def _greedy_seed_kernel(
    d2_ptr, race_ptr, race_batch_stride, first_ptr, picked_ptr, M, K, L, L_PAD: tl.constexpr, BLOCK_M: tl.constexpr
):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_M)
    lanes = tl.arange(0, L_PAD)
    in_pool = cols < M
    tile = (lanes[:, None] < L) & in_pool[None, :]
    d2_b = d2_ptr + b * M * M
    first = tl.load(first_ptr + b)
    tl.store(picked_ptr + b * K, first)
    mins = tl.load(d2_b + first * M + cols, mask=in_pool, other=float("inf"))
    for j in range(1, K):
        race_j = race_ptr + b * race_batch_stride + ((j - 1) * L) * M
        race = tl.load(race_j + lanes[:, None] * M + cols[None, :], mask=tile, other=1.0)
        ratio = tl.where(tile, race / mins[None, :], float("inf"))
        cand = tl.argmin(ratio, axis=1).to(tl.int64)  # [L_PAD]: each candidate's token
        rows = tl.load(d2_b + cand[:, None] * M + cols[None, :], mask=tile, other=0.0)
        new = tl.minimum(mins[None, :], rows)
        pot = tl.where(lanes < L, tl.sum(tl.where(tile, new, 0.0), axis=1), float("inf"))
        best = tl.argmin(pot, axis=0)
        pick = tl.sum(tl.where(lanes == best, cand, 0), axis=0)
        mins = tl.sum(tl.where((lanes == best)[:, None], new, 0.0), axis=0)
        mins = tl.where(in_pool, mins, float("inf"))
        tl.store(picked_ptr + b * K + j, pick)


def greedy_seed(d2: torch.Tensor, race: torch.Tensor, first: torch.Tensor, k: int) -> torch.Tensor:
    """Pool indices [B, K] of the greedy k-means++ seeds: ``d2`` [B, M, M] fp32 squared distances (with
    the seeding epsilon), ``race`` [B, K-1, L, M] Exp(1) variates (a batch
    stride of 0, one video's noise broadcast, is read as is), ``first`` [B] the first pick; K >= 2."""
    b, m, _ = d2.shape
    trials = race.shape[2]
    if race.dtype != torch.float32 or not race[0].is_contiguous():
        race = race.float().contiguous()
    picked = torch.empty(b, k, dtype=torch.long, device=d2.device)
    _greedy_seed_kernel[(b,)](
        d2.contiguous(), race, race.stride(0), first.long().contiguous(), picked, m, k, trials,
        L_PAD=triton.next_power_of_2(trials), BLOCK_M=triton.next_power_of_2(m), num_warps=NUM_WARPS,
    )
    return picked


@triton.jit
def _ward_kernel(cost_ptr, n_ptr, group_ptr, alive_ptr, K0, STEPS, KP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, KP)
    rows, cols = lanes[:, None], lanes[None, :]
    inf = float("inf")
    cost = tl.load(cost_ptr + b * K0 * K0 + rows * K0 + cols, mask=(rows < K0) & (cols < K0), other=inf)
    n = tl.load(n_ptr + b * K0 + lanes, mask=lanes < K0, other=0.0)
    group = lanes
    alive = lanes < K0
    for _ in range(STEPS):
        low = tl.min(tl.min(cost, axis=1), axis=0)
        flat = tl.min(tl.min(tl.where(cost == low, rows * KP + cols, KP * KP), axis=1), axis=0)
        i = flat // KP
        j = flat % KP
        ci = tl.sum(tl.where(rows == i, cost, 0.0), axis=0)
        cj = tl.sum(tl.where(rows == j, cost, 0.0), axis=0)
        cij = tl.sum(tl.where(lanes == j, ci, 0.0), axis=0)
        ni = tl.sum(tl.where(lanes == i, n, 0.0), axis=0)
        nj = tl.sum(tl.where(lanes == j, n, 0.0), axis=0)
        new = ((ni + n) * ci + (nj + n) * cj - n * cij) / tl.maximum(ni + nj + n, 1.0)
        alive = alive & (lanes != j)
        new = tl.where(alive & (lanes != i), new, inf)
        cost = tl.where(rows == i, new[None, :], cost)
        cost = tl.where(cols == i, new[:, None], cost)
        cost = tl.where((rows == j) | (cols == j), inf, cost)
        n = tl.where(lanes == i, ni + nj, n)
        n = tl.where(lanes == j, 0.0, n)
        group = tl.where(group == j, i, group)
    tl.store(group_ptr + b * K0 + lanes, group.to(tl.int64), mask=lanes < K0)
    tl.store(alive_ptr + b * K0 + lanes, alive.to(tl.int8), mask=lanes < K0)


def ward_groups(cost: torch.Tensor, n: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ward's K0 - k merges: ``cost`` [B, K0, K0] (``kmeans.ward_costs``), ``n`` [B, K0] member counts ->
    (each cluster's surviving cluster [B, K0] int64, alive [B, K0] bool), as the loop of ``kmeans.ward_step``."""
    b, k0, _ = cost.shape
    group = torch.empty(b, k0, dtype=torch.long, device=cost.device)
    alive = torch.empty(b, k0, dtype=torch.int8, device=cost.device)
    _ward_kernel[(b,)](
        cost.float().contiguous(), n.float().contiguous(), group, alive, k0, k0 - k,
        KP=triton.next_power_of_2(k0), num_warps=WARD_WARPS,
    )
    return group, alive.bool()
