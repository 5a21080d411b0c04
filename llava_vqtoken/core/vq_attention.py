"""VQ-Attention (cross-dynamics attention) and the released checkpoint's decoder layout.

Paper form: B' = MHA(Q = B W_Q, K = B W_K, V = M~ W_V) with M~ = MLP(footprint of each code in the
key map), so each of the K output tokens is its code vector enriched with *where and when* codes
occur. The footprint of code k is the mean, over its member tokens, of Fourier features of the
normalised (t, h, w) coordinates plus occupancy statistics (share of tokens, share of frames,
temporal and spatial extent); ``footprint="motion"`` adds where the code is in its first and last
frame, which says which way it moves, and adds each code's own embedded footprint to its output (in
the paper form a code sees footprints only through the attention's weighted mix over all codes).
Sizes come from the hidden width and the config only; any grid works.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import FOOTPRINT
from .kmeans import one_hot


def grid_coordinates(frames: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Normalised (t, h, w) in [0, 1] for every token in time-major raster order -> [T*H*W, 3]."""

    def lin(n: int) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device)

    t, h, w = torch.meshgrid(lin(frames), lin(height), lin(width), indexing="ij")
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3)


def fourier_features(coords: torch.Tensor, freqs: int) -> torch.Tensor:
    """[N, 3] -> [N, 3 * 2 * freqs] sin/cos features at octave frequencies."""
    scales = (2.0 ** torch.arange(freqs, device=coords.device)) * math.pi
    ang = coords[..., None] * scales  # [N, 3, F]
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)


def footprint_stats(key_map: torch.Tensor, k: int, freqs: int, motion: bool = False) -> torch.Tensor:
    """Per-code footprint of a key map [B, T, H, W] -> [B, K, footprint_dim(freqs, motion)] (no
    parameters, no gradient needed, no host sync).

    Marginal part: mean Fourier features of the members' (t, h, w), their spread, the code's share of
    tokens and of frames. With ``motion``: first and last frame where the code occurs, its (h, w)
    centroid in each and the displacement between them (zeros for a code that does not occur)."""
    b, t, h, w = key_map.shape
    labels = key_map.reshape(b, -1)
    coords = grid_coordinates(t, h, w, key_map.device)  # [N, 3]
    feats = torch.cat([fourier_features(coords, freqs), coords, coords**2], dim=-1)  # [N, F0]
    oh = one_hot(labels, k)  # [B, N, K]
    counts = oh.sum(dim=1)  # [B, K]
    mean = torch.einsum("bnk,nf->bkf", oh, feats) / counts.clamp_min(1.0)[..., None]
    # spread of (t, h, w): E[c^2] - E[c]^2
    m1, m2 = mean[..., -6:-3], mean[..., -3:]
    spread = (m2 - m1**2).clamp_min(0.0).sqrt()
    per_frame = oh.reshape(b, t, h * w, k)
    frame_counts = per_frame.sum(dim=2)  # [B, T, K]
    frame_presence = (frame_counts > 0).to(oh.dtype).mean(dim=1)  # share of frames where the code occurs
    share = counts / labels.shape[1]
    parts = [mean[..., :-3], spread, share[..., None], frame_presence[..., None]]
    if motion:
        hw = coords.reshape(t, h * w, 3)[..., 1:]  # [T, HW, 2]
        centroid = torch.einsum("bthk,thc->btkc", per_frame, hw) / frame_counts.clamp_min(1.0)[..., None]
        present = frame_counts > 0
        idx = torch.arange(t, device=key_map.device)[None, :, None]
        first = torch.where(present, idx, t).amin(dim=1).clamp_max(t - 1)  # [B, K]
        last = torch.where(present, idx, -1).amax(dim=1).clamp_min(0)
        occurs = (counts > 0).to(oh.dtype)[..., None]

        def at(frame: torch.Tensor) -> torch.Tensor:  # centroid of each code in the given frame -> [B, K, 2]
            return centroid.gather(1, frame[:, None, :, None].expand(-1, 1, -1, 2)).squeeze(1) * occurs

        c_first, c_last = at(first), at(last)
        scale = max(t - 1, 1)
        times = torch.stack([first, last], dim=-1).to(oh.dtype) / scale * occurs
        parts += [times, c_first, c_last, c_last - c_first]
    return torch.cat(parts, dim=-1)


def footprint_dim(freqs: int, motion: bool = False) -> int:
    return 3 * 2 * freqs + 3 + 3 + 2 + (8 if motion else 0)


class VQAttention(nn.Module):
    """Paper VQ-Attention: K codes in, K tokens out.

    ``mode="paper"``: softmax(B W_Q (B W_K)^T / sqrt(d)) (M~ W_V), per head, added to the codebook
    (pre-norm residual, so a freshly initialised module keeps the codebook's scale).
    ``mode="random"``: the attention weights are replaced by a fixed random row-stochastic matrix
    (the paper's "random attention" ablation); V still carries the footprint.
    """

    def __init__(
        self, dim: int, heads: int = 8, freqs: int = 8, mode: str = "paper", footprint: str = "marginal"
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by heads={heads}")
        if footprint not in FOOTPRINT:
            raise ValueError(f"footprint {footprint!r} is not one of {', '.join(FOOTPRINT)}")
        self.dim, self.heads, self.freqs, self.mode = dim, heads, freqs, mode
        self.motion = footprint == "motion"
        fdim = footprint_dim(freqs, self.motion)
        self.footprint_mlp = nn.Sequential(nn.Linear(fdim, dim), nn.GELU(), nn.Linear(dim, dim))
        # no affine parameters: q/k projections absorb them, and hosts that build this module on the
        # meta device and then initialise only the layer types they know (LLaVA-NeXT's Qwen2) would
        # otherwise leave a LayerNorm's gain as uninitialised memory
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.normal_(self.out_proj.weight, std=0.02 / math.sqrt(dim / 64))
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        codebook: torch.Tensor,
        key_map: torch.Tensor,
        active: torch.Tensor | None = None,
        draw: Callable[[Callable[[torch.Generator], torch.Tensor]], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """codebook [B, K, D], key_map [B, T, H, W] (values < K), active [B, K] -> [B, K, D].

        ``draw`` (``mode="random"``): ``draw(fn)`` returns ``fn(generator)`` for each video's own random
        stream, stacked ([B, ...]); see ``kmeans.VideoStreams``. Without it the global RNG is used."""
        fp = footprint_stats(key_map, codebook.shape[1], self.freqs, self.motion)
        return self.from_footprint(codebook, fp, active, draw)

    def from_footprint(
        self,
        codebook: torch.Tensor,
        footprint: torch.Tensor,
        active: torch.Tensor | None = None,
        draw: Callable[[Callable[[torch.Generator], torch.Tensor]], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` from the footprint statistics [B, K, F] (``footprint_stats`` of the key map,
        or the same sums taken in chunks by ``core.streaming``)."""
        b, k, d = codebook.shape
        dtype = self.q_proj.weight.dtype
        v_in = self.footprint_mlp(footprint.to(dtype))  # M~ [B, K, D]
        x = self.norm(codebook.to(dtype))
        hd = d // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, k, self.heads, hd).transpose(1, 2)

        v = split(self.v_proj(v_in))
        mask = None if active is None else active[:, None, None, :]
        if self.mode == "random":
            def one(g: torch.Generator | None) -> torch.Tensor:
                return torch.rand(1, self.heads, k, k, device=codebook.device, generator=g)

            r = (draw(one) if draw is not None else torch.cat([one(None) for _ in range(b)])).to(dtype)
            if mask is not None:
                r = r.masked_fill(~mask, 0.0)
            attn = r / r.sum(-1, keepdim=True).clamp_min(1e-6)
            out = attn @ v
        else:
            q, kk = split(self.q_proj(x)), split(self.k_proj(x))
            out = F.scaled_dot_product_attention(q, kk, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, k, d)
        if self.motion:  # each code also keeps its own footprint, not only the attention's mix of all codes'
            out = out + v_in
        return codebook + self.out_proj(out).to(codebook.dtype)


class ReleasedVQAttention(nn.Module):
    """The authors' released ``cross_attention`` layout, sizes from config.

    Parameters: ``to_q_proj`` (Linear grid_cells -> D) and ``transformer_decoder`` (one
    ``nn.TransformerDecoderLayer``: self-attention, cross-attention, FFN, post-norm). Queries are the
    key map's rows (one per frame, raw code ids as floats), memory is the codebook; the shorter of
    the two is tiled cyclically, so the output has max(T, K) tokens, as released.
    """

    def __init__(self, dim: int, grid_cells: int, heads: int = 8, ffn_dim: int = 2048) -> None:
        super().__init__()
        self.to_q_proj = nn.Linear(grid_cells, dim)
        layer = nn.TransformerDecoderLayer(d_model=dim, nhead=heads, dim_feedforward=ffn_dim)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=1)
        self.grid_cells = grid_cells

    def forward(self, codebook: torch.Tensor, key_map: torch.Tensor) -> torch.Tensor:
        """codebook [K, D], key_map [T, H, W] -> [max(T, K), D] (one video)."""
        t = key_map.shape[0]
        rows = key_map.reshape(t, -1)
        if rows.shape[1] != self.grid_cells:
            raise ValueError(f"released attention expects {self.grid_cells} tokens per frame, got {rows.shape[1]}")
        k = codebook.shape[0]
        n = max(t, k)
        dtype = self.to_q_proj.weight.dtype
        q = self.to_q_proj(rows.to(dtype))[torch.arange(n, device=rows.device) % t]
        mem = codebook.to(dtype)[torch.arange(n, device=rows.device) % k]
        out = self.transformer_decoder(q.unsqueeze(1), mem.unsqueeze(1)).squeeze(1)
        return out.to(codebook.dtype)
