"""Token hash: key map, canonical code order and the codebook of cluster means."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kmeans import _counts, one_hot


def canonical_order(labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Relabel codes by first appearance (tokens are in time-major raster order).

    labels [B, N] -> (new_labels [B, N], perm [B, K]) with ``perm[b, new] = old``. Unused codes go last.
    """
    b, n = labels.shape
    pos = torch.arange(n, device=labels.device).expand(b, n)
    first = torch.full((b, k), n, device=labels.device, dtype=torch.long)
    first = first.scatter_reduce(1, labels, pos, reduce="amin", include_self=True)
    # stable tie-break on the old index keeps unused codes in their old relative order
    perm = (first * k + torch.arange(k, device=labels.device)).argsort(dim=1)
    inv = torch.empty_like(perm).scatter_(1, perm, torch.arange(k, device=labels.device).expand(b, k))
    return inv.gather(1, labels), perm


HALF = (torch.float16, torch.bfloat16)


def member_sums(oh: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Per-code sums [B, K, D] in fp32 of ``src`` [B, N, D] under the one-hot ``oh`` [B, N, K].

    Never in half precision: a code's sum over thousands of members overflows fp16 (65,504) long before
    its mean does (21,280 background tokens of norm 17.7 sum to 376,600). On CUDA, half inputs go
    through the matmul with an fp32 output (no fp32 copy of the tokens; that op has no backward, so
    not when gradients flow); elsewhere in fp32."""
    needs_grad = torch.is_grad_enabled() and (src.requires_grad or oh.requires_grad)
    if src.is_cuda and src.dtype in HALF and not needs_grad:
        return torch.bmm(oh.transpose(1, 2), src, out_dtype=torch.float32)
    return torch.bmm(oh.transpose(1, 2).float(), src.float())


def codebook_means(
    x: torch.Tensor, labels: torch.Tensor, k: int, centroids: torch.Tensor, normalized: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Code vectors = mean of the member tokens (differentiable in ``x``); returns (codebook, counts).

    x [B, N, D], labels [B, N], centroids [B, K, D] (unit directions). ``normalized`` averages
    L2-normalised tokens (the released code). A code with no member (only possible for degenerate
    input, e.g. identical tokens) takes its centroid direction scaled to the mean token norm, so no
    code is ever all-zero. Sums and divides in fp32, returns ``x.dtype``.
    """
    src = F.normalize(x.float(), dim=-1, eps=1e-12).to(x.dtype) if normalized else x
    counts = _counts(labels, k)
    sums = member_sums(one_hot(labels, k, x.dtype), src)
    means = sums / counts.clamp_min(1.0).unsqueeze(-1)
    scale = src.float().norm(dim=-1).mean(dim=1, keepdim=True).unsqueeze(-1)  # [B, 1, 1]
    fallback = centroids.float() * scale
    means = torch.where((counts == 0).unsqueeze(-1), fallback, means)
    return means.to(x.dtype), counts


def key_map_grid(labels: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """[B, T*H*W] labels -> key map [B, T, H, W]."""
    return labels.reshape(labels.shape[0], frames, height, width)
