"""Fixed-K fit cost of this tree beside an older ``core/kmeans.py``, side by side in one process (CUDA).

    git show 41eec79:llava_vqtoken/core/kmeans.py > /tmp/kmeans_old.py
    PYTHONPATH=. python scripts/bench_fit_versions.py /tmp/kmeans_old.py [--out FILE]

Milliseconds per video (median of 20 graph replays after 2 warm-ups; CUDA graphs as in the compressor)
on structured features at the real shape (32 frames x 27 x 27 tokens x 896, bf16): K=32 on one video
and on a batch of 8, oversample 1 and 2, and the seeding alone (K0 = 64, 16 candidates) with the Triton
kernel and with the torch loop. Results for docs/BENCHMARKS.md section 8.3.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import torch

from llava_vqtoken.benchmarks.bench import structured_features, timeit
from llava_vqtoken.core import kmeans as new
from llava_vqtoken.core.graphs import CodeCache, maybe_graphed
from llava_vqtoken.shapes import FRAME_TOKENS, GRID, QWEN2, VIDEO_FRAMES

K, K0, TRIALS, REPS = 32, 64, 16, 20
REAL_DIM = QWEN2["0.5b"]["hidden_size"]


def load_old(path: str):
    spec = importlib.util.spec_from_file_location("llava_vqtoken.core.kmeans_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="an older llava_vqtoken/core/kmeans.py (git show REV:llava_vqtoken/core/kmeans.py)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    dev = torch.device("cuda")
    n = VIDEO_FRAMES * FRAME_TOKENS
    x1 = structured_features(1, VIDEO_FRAMES, GRID, GRID, REAL_DIM, 48, dev, torch.bfloat16).reshape(1, n, REAL_DIM)
    x8 = structured_features(8, VIDEO_FRAMES, GRID, GRID, REAL_DIM, 48, dev, torch.bfloat16, seed=1)
    x8 = x8.reshape(8, n, REAL_DIM)
    rows: dict[str, float] = {}

    def time(name: str, fn, per_video: int = 1) -> None:
        rows[name] = timeit(fn, dev, reps=REPS, warmup=2) / per_video
        print(f"{name}: {rows[name]:.3f} ms per video", file=sys.stderr, flush=True)

    for tag, mod in [("old", load_old(a.old)), ("this tree", new)]:
        cache = CodeCache()
        for os_ in (1, 2):
            time(f"{tag}, oversample={os_}, 1 video",
                 lambda m=mod, o=os_, c=cache: m.cosine_kmeans(x1, K, 10, oversample=o, cache=c))
            time(f"{tag}, oversample={os_}, batch of 8",
                 lambda m=mod, o=os_, c=cache: m.cosine_kmeans(x8, K, 10, oversample=o, cache=c), 8)
    for name, x in [("1 video", x1), ("batch of 8", x8)]:
        xn = new.normalize_tokens(x)
        noise, m = new.draw_seed_noise(n, K0, new.VideoStreams(x.shape[0], dev, 0), 2048, TRIALS, dev)
        for fused in (False, True):
            cache = CodeCache()

            def seeds(xn_, keys, race, first, fused=fused, m=m):
                return new.seed_centres(xn_, K0, new.SeedNoise(keys, first, race), m, fused=fused)

            args = (xn, noise.pool_keys, noise.race, noise.first)
            time(f"seeding K0={K0}, {TRIALS} candidates, {'Triton kernel' if fused else 'torch loop'}, {name}",
                 lambda c=cache, f=seeds, a_=args: maybe_graphed(c, ("seed",), f, a_, {}), x.shape[0])
    print(json.dumps(rows, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
