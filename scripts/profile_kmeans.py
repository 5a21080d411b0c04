"""Kernel-level profile of one fixed-K fit and one adaptive fit (run on a GPU)."""

import torch
from torch.profiler import ProfilerActivity, profile

from llava_vqtoken.benchmarks.bench import structured_features
from llava_vqtoken.core import cosine_kmeans
from llava_vqtoken.core.adaptive import adaptive_kmeans
from llava_vqtoken.shapes import GRID, QWEN2, VIDEO_FRAMES

dev = torch.device("cuda")
width = QWEN2["0.5b"]["hidden_size"]
x = structured_features(1, VIDEO_FRAMES, GRID, GRID, width, 48, dev, torch.bfloat16).reshape(1, -1, width)
for _ in range(3):
    cosine_kmeans(x, 32, cuda_graphs=False)
    adaptive_kmeans(x, 8, 64, cuda_graphs=False)
torch.cuda.synchronize()
for name, fn in [("fixed", lambda: cosine_kmeans(x, 32, cuda_graphs=False)),
                 ("adaptive", lambda: adaptive_kmeans(x, 8, 64, cuda_graphs=False))]:
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        fn()
        torch.cuda.synchronize()
    print(f"==== {name}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
