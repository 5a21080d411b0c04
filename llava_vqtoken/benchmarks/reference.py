"""A sync-heavy reference k-means, written from the published description of the authors' 2026
runtime (lmms-eval 0.7.3's ``vqtoken``): fp32, one video at a time, k-means++ with a host sync per
centre, ``index_add_`` + ``bincount`` updates, a convergence test with a host sync every iteration,
and adaptive K by one full fit per candidate K followed by a refit. Used only as the side-by-side
baseline in benchmarks; it is not the project's implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_kmeans(x: torch.Tensor, k: int, iters: int = 100, tol: float = 1e-4, seed: int = 0):
    """x [N, D] -> (labels [N], centroids [K, D], distortion float)."""
    g = torch.Generator(device=x.device)
    g.manual_seed(seed)
    xn = F.normalize(x.float(), dim=-1)
    n = xn.shape[0]
    first = int(torch.randint(0, n, (1,), device=x.device, generator=g).item())
    centres = [xn[first]]
    d2 = (2 - 2 * xn @ centres[0]).clamp_min(0)
    for _ in range(1, k):
        probs = d2 / d2.sum()
        idx = int(torch.multinomial(probs, 1, generator=g).item())  # host sync per centre
        centres.append(xn[idx])
        d2 = torch.minimum(d2, (2 - 2 * xn @ xn[idx]).clamp_min(0))
    c = torch.stack(centres)
    for _ in range(iters):
        labels = (xn @ F.normalize(c, dim=-1).T).argmax(dim=1)
        sums = torch.zeros_like(c).index_add_(0, labels, xn)
        counts = torch.bincount(labels, minlength=k).float()
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        shift = float((new - c).norm())  # host sync per iteration
        c = new
        if shift < tol:
            break
    sims = xn @ F.normalize(c, dim=-1).T
    best, labels = sims.max(dim=1)
    return labels, c, float((1 - best).sum())


def reference_adaptive(x: torch.Tensor, k_min: int = 12, k_max: int = 32, seed: int = 0):
    """One full fit per candidate K, elbow by distance to the chord, then a refit at the chosen K."""
    ks = list(range(k_min, k_max + 1))
    dist = torch.tensor([reference_kmeans(x, k, seed=seed)[2] for k in ks])
    kk = torch.tensor(ks, dtype=torch.float64)
    dn = (dist - dist.min()) / (dist.max() - dist.min() + 1e-12)
    kn = (kk - kk.min()) / (kk.max() - kk.min())
    # distance from each (k, d) point to the straight line between the first and last candidates
    gap = (1 - kn) - dn
    k = ks[int(gap.argmax())]
    return reference_kmeans(x, k, seed=seed), k
