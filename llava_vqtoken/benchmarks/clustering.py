"""Known-answer suite for the clustering (docs/CLUSTERING.md says what each case checks).

Generated token sets whose partition is known: N blobs on the unit sphere with equal or Zipf sizes,
nested blobs (groups of nearby sub-blobs), input without cluster structure (one direction plus
noise), a single colour, and static clips (one structured frame repeated). The fixed-K cases score a
fit by the adjusted Rand index (ARI) against the truth and by its inertia against a multi-restart
fit; the adaptive cases record the chosen K against the number of objects.

``python -m llava_vqtoken.benchmarks.clustering --help``; results go to a JSON file and a Markdown
table (docs/BENCHMARKS.md, section 8).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.adaptive import adaptive_kmeans
from ..core.kmeans import cosine_kmeans
from ..shapes import FRAME_TOKENS, GRID, QWEN2, VIDEO_FRAMES

#: the real shape: 32 frames of a 27 x 27 grid, LLaVA-OneVision-0.5B's width (llava_vqtoken/shapes.py)
REAL_TOKENS, REAL_DIM = VIDEO_FRAMES * FRAME_TOKENS, QWEN2["0.5b"]["hidden_size"]
#: per-coordinate noise of the blobs (the issue's audit used 0.03)
NOISE = 0.03
#: a run counts as recovered when its ARI reaches this
ARI_OK = 0.99


@dataclass
class Case:
    """One generated token set with its true partition."""

    name: str
    x: torch.Tensor  # [1, N, D] fp32
    truth: torch.Tensor  # [N] int64
    objects: int  # number of true clusters


def zipf_sizes(k: int, n: int, exponent: float = 1.0) -> list[int]:
    """Cluster sizes proportional to 1 / rank ** exponent, summing to n, each at least 1."""
    w = np.array([1.0 / (r + 1) ** exponent for r in range(k)])
    sizes = np.maximum(np.floor(w / w.sum() * n).astype(int), 1)
    sizes[0] += n - sizes.sum()
    return sizes.tolist()


def _place(
    centres: torch.Tensor, sizes: list[int], noise: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    x = centres[labels] + noise * torch.randn(labels.numel(), centres.shape[1], generator=g)
    return x[None], labels


def blobs(
    k: int, n: int = REAL_TOKENS, d: int = REAL_DIM, noise: float = NOISE, sizes: str = "equal", seed: int = 0
) -> Case:
    """k blobs around random unit directions, equal or Zipf sizes, tokens in random order."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, d, generator=g), dim=-1)
    counts = zipf_sizes(k, n) if sizes == "zipf" else [n // k + (i < n % k) for i in range(k)]
    x, labels = _place(centres, counts, noise, g)
    return Case(f"{sizes} N={k} noise={noise}", x, labels, k)


def nested(groups: int, per_group: int, n: int = REAL_TOKENS, d: int = REAL_DIM, seed: int = 0,
           spread: float = 0.5, noise: float = NOISE) -> Case:
    """groups x per_group sub-blobs: each group's sub-blobs sit around the group's direction (offsets of
    norm ``spread``), so the sub-blobs of a group are closer to each other than to other groups."""
    g = torch.Generator().manual_seed(seed)
    tops = F.normalize(torch.randn(groups, d, generator=g), dim=-1)
    offsets = spread * F.normalize(torch.randn(groups, per_group, d, generator=g), dim=-1)
    centres = F.normalize((tops[:, None] + offsets).reshape(groups * per_group, d), dim=-1)
    k = groups * per_group
    x, labels = _place(centres, [n // k + (i < n % k) for i in range(k)], noise, g)
    return Case(f"nested {groups}x{per_group}", x, labels, k)


def no_structure(n: int = REAL_TOKENS, d: int = REAL_DIM, noise: float = 0.2, seed: int = 0) -> Case:
    """One direction plus isotropic noise: no cluster structure at all."""
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(1, d, generator=g), dim=-1)
    x = c + noise * torch.randn(n, d, generator=g)
    return Case(f"no structure noise={noise}", x[None], torch.zeros(n, dtype=torch.long), 1)


def single_colour(n: int = REAL_TOKENS, d: int = REAL_DIM, seed: int = 0) -> Case:
    """Every token the same vector (a blank clip)."""
    g = torch.Generator().manual_seed(seed)
    return Case("single colour", torch.randn(1, 1, d, generator=g).expand(1, n, d).clone(),
                torch.zeros(n, dtype=torch.long), 1)


def static_clip(objects: int, frames: int, d: int = REAL_DIM, seed: int = 0) -> Case:
    """One frame of ``objects`` regions (27 x 27 tokens, Zipf sizes) repeated ``frames`` times."""
    one = blobs(objects, n=FRAME_TOKENS, d=d, sizes="zipf", seed=seed)
    x = one.x.repeat(1, frames, 1)
    return Case(f"static clip {objects} objects x {frames} frames", x, one.truth.repeat(frames), objects)


def adjusted_rand_index(a: torch.Tensor, b: torch.Tensor) -> float:
    """Adjusted Rand index of two labelings (1.0: the same partition; about 0: chance)."""
    a = torch.unique(a, return_inverse=True)[1]
    b = torch.unique(b, return_inverse=True)[1]
    table = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    table.index_put_((a, b), torch.ones_like(a, dtype=torch.float64), accumulate=True)

    def pairs(t: torch.Tensor) -> float:
        return float((t * (t - 1) / 2).sum())

    n = float(a.numel())
    total = n * (n - 1) / 2
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / total
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def _fixed_cases(ks: list[int], seeds: list[int], n: int, d: int) -> list[tuple[Case, int]]:
    sizes = ("equal", "zipf")
    return [(blobs(k, n, d, sizes=s, seed=1000 * k + seed), seed) for s in sizes for k in ks for seed in seeds]


def run_fixed(ks: list[int], seeds: list[int], n: int, d: int, device: torch.device,
              fits: dict[str, Callable[[torch.Tensor, int, int], Any]]) -> list[dict]:
    """ARI and inertia of each fit on every blob case (K = the number of blobs)."""
    rows = []
    for case, seed in tqdm(_fixed_cases(ks, seeds, n, d), desc="fixed K", file=sys.stderr):
        x = case.x.to(device)
        row: dict[str, Any] = {"case": case.name, "seed": seed, "k": case.objects}
        for name, fit in fits.items():
            res = fit(x, case.objects, seed)
            row[name] = {"ari": adjusted_rand_index(res.labels[0].cpu(), case.truth),
                         "inertia": float(res.inertia[0])}
        rows.append(row)
    return rows


def default_fits(iters: int, restarts: int, sklearn: bool) -> dict[str, Callable[[torch.Tensor, int, int], Any]]:
    """The fits compared: the new default (over-seeded 2K, Ward merge, refine), plain k-means++ + Lloyd,
    optionally the best of ``restarts`` plain fits of 20 steps and scikit-learn's KMeans (4 restarts)."""
    fits: dict[str, Callable[[torch.Tensor, int, int], Any]] = {
        "oversample=2": lambda x, k, s: cosine_kmeans(x, k, iters=iters, seed=s, oversample=2),
        "oversample=1 (old)": lambda x, k, s: cosine_kmeans(x, k, iters=iters, seed=s, oversample=1),
    }
    if restarts:
        fits[f"best of {restarts} restarts, oversample=1"] = lambda x, k, s: min(
            (cosine_kmeans(x, k, iters=20, seed=100 + r, oversample=1) for r in range(restarts)),
            key=lambda r: float(r.inertia[0]),
        )
    if sklearn:
        fits["sklearn KMeans n_init=4"] = sklearn_fit
    return fits


def sklearn_fit(x: torch.Tensor, k: int, seed: int) -> Any:
    """scikit-learn's KMeans (k-means++, 4 restarts) on the unit tokens, scored by our cosine inertia
    (the sum of 1 - <x^, c> with c the normalised mean of each cluster: the best centres for its labels)."""
    from sklearn.cluster import KMeans  # optional: only for this comparison

    xn = F.normalize(x[0].float().cpu(), dim=-1)
    labels = torch.as_tensor(KMeans(k, n_init=4, random_state=seed).fit_predict(xn.numpy())).long()
    centres = F.normalize(torch.zeros(k, xn.shape[1]).index_add_(0, labels, xn), dim=-1)
    inertia = (1.0 - (xn * centres[labels]).sum(dim=1)).sum()
    return _Fit(labels[None], inertia[None])


@dataclass
class _Fit:
    labels: torch.Tensor
    inertia: torch.Tensor


def adaptive_cases(n: int, d: int, seeds: list[int], objects: list[int]) -> list[Case]:
    """Equal, Zipf and nested structures of growing size, plus the no-structure cases."""
    out = []
    for seed in seeds:
        for k in objects:
            out.append(blobs(k, n, d, sizes="equal", seed=seed * 97 + k))
            out.append(blobs(k, n, d, sizes="zipf", seed=seed * 97 + k))
        for groups, per in ((2, 2), (3, 3), (4, 4), (4, 8), (6, 6)):
            out.append(nested(groups, per, n, d, seed=seed))
        out.append(no_structure(n, d, seed=seed))
        out.append(no_structure(n, d, noise=0.03, seed=seed))
        out.append(single_colour(n, d, seed=seed))
        for objs in (1, 5, 12):
            out.append(static_clip(objs, 1, d, seed=seed))
            out.append(static_clip(objs, max(n // FRAME_TOKENS, 1), d, seed=seed))
    return out


def run_adaptive(cases: list[Case], methods: list[str], k_min: int, k_max: int, device: torch.device) -> list[dict]:
    rows = []
    for case in tqdm(cases, desc="adaptive K", file=sys.stderr):
        row: dict[str, Any] = {"case": case.name, "objects": case.objects, "tokens": case.x.shape[1]}
        for method in methods:
            res, ch = adaptive_kmeans(case.x.to(device), k_min, k_max, method)
            row[method] = {"k": ch[0].k, "k_unclamped": ch[0].k_unclamped,
                           "ari": adjusted_rand_index(res.labels[0].cpu(), case.truth)}
        rows.append(row)
    return rows


def summarise_fixed(rows: list[dict]) -> dict[str, dict[str, float]]:
    names = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    out = {}
    for name in names:
        aris = [r[name]["ari"] for r in rows]
        out[name] = {"runs": len(aris), "recovered": sum(a >= ARI_OK for a in aris), "min_ari": min(aris),
                     "mean_ari": float(np.mean(aris))}
    return out


def run_cost(device: torch.device, reps: int, iters: int) -> dict[str, float]:
    """Milliseconds per call (CUDA graphs, one process): the old fit (oversample=1) beside the new one,
    K=32 on one 32-frame video and on a batch of 8 (23,328 x 896 bf16, structured features), and the
    adaptive rules over 8..64 on one video."""
    from ..core.graphs import CodeCache
    from .bench import structured_features, timeit

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x1 = structured_features(1, VIDEO_FRAMES, GRID, GRID, REAL_DIM, 48, device, dtype).reshape(1, REAL_TOKENS, REAL_DIM)
    x8 = structured_features(8, VIDEO_FRAMES, GRID, GRID, REAL_DIM, 48, device, dtype, seed=1).reshape(
        8, REAL_TOKENS, REAL_DIM)
    cache = CodeCache()
    rows = {}
    for name, fn in [
        ("fixed K=32, oversample=1 (old default)", lambda: cosine_kmeans(x1, 32, iters, oversample=1, cache=cache)),
        ("fixed K=32, oversample=2 (new default)", lambda: cosine_kmeans(x1, 32, iters, oversample=2, cache=cache)),
        ("fixed K=32, oversample=2, 8 steps", lambda: cosine_kmeans(x1, 32, 8, oversample=2, cache=cache)),
        ("fixed K=32, oversample=2, 6 steps", lambda: cosine_kmeans(x1, 32, 6, oversample=2, cache=cache)),
        ("batch 8, oversample=1 (old default)", lambda: cosine_kmeans(x8, 32, iters, oversample=1, cache=cache)),
        ("batch 8, oversample=2 (new default)", lambda: cosine_kmeans(x8, 32, iters, oversample=2, cache=cache)),
        ("batch 8, oversample=2, 6 steps", lambda: cosine_kmeans(x8, 32, 6, oversample=2, cache=cache)),
        ("adaptive elbow 8..64, oversample=1 (old)",
         lambda: adaptive_kmeans(x1, 8, 64, "elbow", oversample=1, cache=cache)),
        ("adaptive elbow 8..64, oversample=2", lambda: adaptive_kmeans(x1, 8, 64, "elbow", cache=cache)),
        ("adaptive separation 8..64, oversample=2", lambda: adaptive_kmeans(x1, 8, 64, "separation", cache=cache)),
    ]:
        per_video = 8 if name.startswith("batch") else 1
        try:
            rows[name] = timeit(fn, device, reps=reps, warmup=2) / per_video
        except RuntimeError as e:  # report and go on: one failed row should not lose the others
            print(f"{name}: failed: {e}", file=sys.stderr, flush=True)
            continue
        print(f"{name}: {rows[name]:.3f} ms per video", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m llava_vqtoken.benchmarks.clustering", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--tokens", type=int, default=REAL_TOKENS, help="tokens per video (default: the real 23,328)")
    p.add_argument("--dim", type=int, default=REAL_DIM)
    p.add_argument("--ks", type=int, nargs="+", default=[4, 12, 24, 48, 64], help="blob counts of the fixed-K cases")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=10, help="Lloyd budget of the fits compared")
    p.add_argument("--objects", type=int, nargs="+", default=[2, 4, 8, 12, 16, 24, 32, 48],
                   help="object counts of the adaptive curves")
    p.add_argument("--methods", nargs="+", default=["separation", "elbow", "silhouette"])
    p.add_argument("--min-codes", type=int, default=4)
    p.add_argument("--max-codes", type=int, default=64)
    p.add_argument("--skip", choices=["fixed", "adaptive", "cost"], action="append", default=[])
    p.add_argument("--restarts", type=int, default=4, help="best of R plain fits (0: skip)")
    p.add_argument("--sklearn", action="store_true", help="also scikit-learn's KMeans, 4 restarts (CPU; optional)")
    p.add_argument("--reps", type=int, default=20, help="repetitions of each timed call (cost part)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON file for the rows and the summary")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    result: dict[str, Any] = {"argv": sys.argv if argv is None else argv, "device": str(device),
                              "date": time.strftime("%Y-%m-%d"), "tokens": a.tokens, "dim": a.dim}
    if "cost" not in a.skip:
        result["cost_ms_per_video"] = run_cost(device, a.reps, a.iters)
    if "fixed" not in a.skip:
        rows = run_fixed(a.ks, a.seeds, a.tokens, a.dim, device, default_fits(a.iters, a.restarts, a.sklearn))
        result["fixed"] = rows
        result["fixed_summary"] = summarise_fixed(rows)
        print(json.dumps(result["fixed_summary"], indent=1))
    if "adaptive" not in a.skip:
        cases = adaptive_cases(a.tokens, a.dim, a.seeds, a.objects)
        result["adaptive"] = run_adaptive(cases, a.methods, a.min_codes, a.max_codes, device)
        for r in result["adaptive"]:
            print(r["case"], r["objects"], {m: r[m]["k"] for m in a.methods})
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["adjusted_rand_index", "blobs", "nested", "no_structure", "single_colour", "static_clip", "zipf_sizes"]
