"""Baseline token reducers, each for one video [T, H, W, D] -> [M, D] under a *total* budget M.

pool            LLaVA-OneVision's bilinear pooling (budget None: the stock 2x per-frame resize)
uniform         uniform frame sampling, then per-frame pooling
prune           keep the M tokens of largest L2 norm (in their original order)
tome            ToMe bipartite soft matching (size-weighted means), per frame, then across the clip
temporal_merge  VidToMe-style: merge tokens of adjacent frames (pairs, then pairs of pairs), then ToMe
random          M random tokens (seeded), in their original order
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _split_budget(per_frame: int, height: int, width: int) -> tuple[int, int]:
    """Largest (h, w) grid with h*w <= per_frame that follows the frame's aspect ratio."""
    per_frame = max(1, per_frame)
    best = (1, 1)
    for h in range(1, min(height, per_frame) + 1):
        w = min(width, per_frame // h)
        score = (h * w, -abs(math.log((h / w) / (height / width))))
        if score > (best[0] * best[1], -abs(math.log((best[0] / best[1]) / (height / width)))):
            best = (h, w)
    return best


def pool_tokens(video: torch.Tensor, budget: int | None) -> torch.Tensor:
    """Bilinear pooling. ``budget=None``: stock LLaVA-OneVision (ceil(H/2) x ceil(W/2) per frame)."""
    t, h, w, d = video.shape
    if budget is None:
        x = video.permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(math.ceil(h / 2), math.ceil(w / 2)), mode="bilinear")
        return x.permute(0, 2, 3, 1).reshape(-1, d)
    frames = min(t, budget)
    gh, gw = _split_budget(budget // frames, h, w)
    x = video.permute(3, 0, 1, 2).unsqueeze(0)  # [1, D, T, H, W]
    x = F.interpolate(x, size=(frames, gh, gw), mode="trilinear")
    return x[0].permute(1, 2, 3, 0).reshape(-1, d)


def uniform_tokens(video: torch.Tensor, budget: int) -> torch.Tensor:
    """Sample ceil(budget/4) frames uniformly (at most T), pool each to its share of the budget."""
    t, h, w, d = video.shape
    frames = min(t, max(1, math.ceil(budget / 4)))
    idx = torch.linspace(0, t - 1, frames, device=video.device).round().long()
    gh, gw = _split_budget(budget // frames, h, w)
    x = video[idx].permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(gh, gw), mode="bilinear")
    return x.permute(0, 2, 3, 1).reshape(-1, d)


def prune_tokens(video: torch.Tensor, budget: int) -> torch.Tensor:
    x = video.reshape(-1, video.shape[-1])
    keep = x.float().norm(dim=-1).topk(min(budget, x.shape[0])).indices.sort().values
    return x[keep]


def random_tokens(video: torch.Tensor, budget: int, generator: torch.Generator) -> torch.Tensor:
    x = video.reshape(-1, video.shape[-1])
    perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
    return x[perm[: min(budget, x.shape[0])].sort().values]


def bipartite_merge(
    a: torch.Tensor, b: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the r tokens of ``a`` most similar to ``b`` into their match (size-weighted means).

    a [G, Na, D], b [G, Nb, D], sizes [G, N*]. Returns (tokens [G, Na - r + Nb, D], sizes).
    """
    r = min(r, a.shape[1])
    if r <= 0:
        return torch.cat([a, b], 1), torch.cat([size_a, size_b], 1)
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(1, 2)
    best, match = sim.max(dim=-1)  # [G, Na]
    order = best.argsort(dim=-1, descending=True)
    src, keep = order[:, :r], order[:, r:].sort(dim=-1).values
    dst = match.gather(1, src)
    d = a.shape[-1]
    wa = (a.float() * size_a[..., None]).gather(1, src[..., None].expand(-1, -1, d))
    sb = size_b.clone().scatter_add_(1, dst, size_a.gather(1, src))
    bsum = (b.float() * size_b[..., None]).scatter_add(1, dst[..., None].expand(-1, -1, d), wa)
    b_new = (bsum / sb[..., None]).to(a.dtype)
    a_keep = a.gather(1, keep[..., None].expand(-1, -1, d))
    return torch.cat([a_keep, b_new], 1), torch.cat([size_a.gather(1, keep), sb], 1)


def _tome_rounds(x: torch.Tensor, size: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating-split ToMe rounds on [G, N, D] until N == target."""
    while x.shape[1] > target:
        a, b = x[:, 0::2], x[:, 1::2]
        sa, sb = size[:, 0::2], size[:, 1::2]
        x, size = bipartite_merge(a, b, sa, sb, x.shape[1] - target)
    return x, size


def tome_tokens(video: torch.Tensor, budget: int) -> torch.Tensor:
    """ToMe within each frame down to ceil(budget / T) tokens, then across the clip down to the budget.
    ``video`` [T, H, W, D] -> [M, D], or a batch [B, T, H, W, D] -> [B, M, D] in one pass (the same
    merges as video by video: every step acts on each group independently)."""
    single = video.dim() == 4
    v = video.unsqueeze(0) if single else video
    b, t, h, w, d = v.shape
    x = v.reshape(b * t, h * w, d)
    size = torch.ones(b * t, h * w, device=video.device)
    per_frame = min(h * w, max(1, math.ceil(budget / t)))
    x, size = _tome_rounds(x, size, per_frame)
    x, size = _tome_rounds(x.reshape(b, -1, d), size.reshape(b, -1), min(budget, t * x.shape[1]))
    return x[0] if single else x


def temporal_merge_tokens(video: torch.Tensor, budget: int) -> torch.Tensor:
    """Merge frame 2j+1 into frame 2j, then pairs of pairs, ... while over budget; then ToMe.
    ``video`` [T, H, W, D] -> [M, D], or a batch [B, T, H, W, D] -> [B, M, D] in one pass (every
    video of a batch has the same merge schedule, so the merges are the same as video by video)."""
    single = video.dim() == 4
    v = video.unsqueeze(0) if single else video
    b, t, h, w, d = v.shape
    groups = [v[:, i].reshape(b, h * w, d) for i in range(t)]
    sizes = [torch.ones(b, h * w, device=video.device) for _ in range(t)]
    while len(groups) > 1 and sum(g.shape[1] for g in groups) > budget:
        excess = sum(g.shape[1] for g in groups) - budget
        pairs = len(groups) // 2
        per_pair = math.ceil(excess / pairs)
        new_g, new_s = [], []
        for j in range(pairs):
            r = min(per_pair, excess, groups[2 * j + 1].shape[1])
            g, s = bipartite_merge(groups[2 * j + 1], groups[2 * j], sizes[2 * j + 1], sizes[2 * j], r)
            excess -= r
            new_g.append(g)
            new_s.append(s)
        if len(groups) % 2:
            new_g.append(groups[-1])
            new_s.append(sizes[-1])
        groups, sizes = new_g, new_s
    x, size = torch.cat(groups, 1), torch.cat(sizes, 1)
    x, _ = _tome_rounds(x, size, min(budget, x.shape[1]))
    return x[0] if single else x
