"""Greedy k-means++ seeding in one GPU kernel (Triton), the CUDA path of :func:`.kmeans.seed_centres`.

The torch loop launches about nine small kernels per seed; at K0 = 64 seeds that chain, not any
arithmetic, is most of a fixed-K fit on an H200 (docs/BENCHMARKS.md section 8.3). Here one program per
video runs every step in registers: draw the L candidates by the exponential race against the current
minimum distances, score each candidate by the potential it would leave, keep the best, update the
minima. Same noise, same rule, same tie-breaking (first index) as the torch loop; the only difference
is the order in which a candidate's potential is summed, so a pick can differ from the torch loop's
only where two candidates' potentials agree to within fp32 rounding (``tests/test_triton_seeding.py``).

Imported only when the gram path runs on CUDA (``kmeans.seed_centres``); it needs ``triton``, which
comes with CUDA builds of torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: warps per program: a [L, M] tile of 16 x 2048 fp32 spread over 512 threads
NUM_WARPS = 16


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
