"""Peak GPU memory of each phase of a streamed compression, at several clip lengths (issue 18).

    PYTHONPATH=. python scripts/probe_stream_memory.py 512 1024 2048 3072

Real sizes, random weights (benchmarks/streaming.py's model), K=64, chunks of 32 frames, nothing but
streamed runs in the process. Each phase (the streaming fit's seeding, Lloyd passes, final pass,
codebook sums, canonical order, attention) is wrapped to report [GiB allocated at its start, its
peak]; "before X" is the peak since the previous phase ended (feature extraction, before the fit).
The wrappers synchronise, so the seconds printed are not the benchmark's.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

import llava_vqtoken.core.streaming as streaming
from llava_vqtoken.benchmarks.streaming import build_model, pixel_chunks

CHUNK, CODES = 32, 64
PHASES = ["draw_seed_noise", "streaming_kmeans", "canonical_order", "codebook_sums", "_attend", "footprint_streamed"]
FIT_PHASES = ["seeds", "lloyd", "final"]


def gib(x: float) -> float:
    return round(x / 2**30, 3)


def wrap(owner: Any, name: str, label: str, phases: dict) -> None:
    """Replace ``owner.name`` (in this process only) by a version that records its memory."""
    fn = getattr(owner, name)

    def probed(*args: Any, **kwargs: Any) -> Any:
        torch.cuda.synchronize()
        phases.setdefault("before " + label, gib(torch.cuda.max_memory_allocated()))
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        phases[label] = [gib(start), max(phases.get(label, [0, 0])[1], gib(torch.cuda.max_memory_allocated()))]
        return out

    setattr(owner, name, probed)


def main() -> None:
    dev = torch.device("cuda")
    phases: dict[str, Any] = {}
    for name in PHASES:
        wrap(streaming, name, name, phases)
    for name in FIT_PHASES:
        wrap(streaming.StreamingFit, name, "fit." + name, phases)
    inner = build_model(CODES, CHUNK, dev).model
    size = inner.config.vision_config.image_size
    with torch.no_grad():
        inner.compress_video_stream(pixel_chunks(CHUNK, CHUNK, size, dev))  # warm-up
        for frames in [int(f) for f in sys.argv[1:]]:
            phases.clear()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base, t0 = gib(torch.cuda.memory_allocated()), time.time()
            inner.compress_video_stream(pixel_chunks(frames, CHUNK, size, dev))
            torch.cuda.synchronize()
            row = {"frames": frames, "allocated_before": base, "s": round(time.time() - t0, 2), "phases": phases}
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
