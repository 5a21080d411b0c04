"""Shared by the vLLM tests: the reference they compare with, the engine's arguments, and the functions
run inside the engine's worker (``LLM.apply_model`` pickles them by reference, so they live in a module
the worker can import)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

#: small and exact: fp32, no compilation, a 256 MB KV cache (the CPU backend otherwise reserves 92% of RAM),
#: no prefix caching (a cached prefix would skip the very path under test)
ENGINE_ARGS = dict(
    enforce_eager=True, dtype="float32", max_model_len=4096, seed=0, kv_cache_memory_bytes=256 << 20,
    enable_prefix_caching=False,
)


@dataclass
class Reference:
    dir: Path
    data: dict[str, Any]

    def video(self, i: int):
        import numpy as np

        return np.load(self.dir / f"video_{i}.npy")


def batch_vs_solo(model):
    """Run in the engine's worker: the video path on a batch of videos of different lengths, and on each
    video alone."""
    import torch

    g = torch.Generator().manual_seed(0)
    size = model.config.vision_config.image_size
    videos = [torch.randn(t, 3, size, size, generator=g) for t in (1, 3, 2)]
    with torch.no_grad():
        batch = model._process_video_pixels({"pixel_values_videos": videos})
        solo = [model._process_video_pixels({"pixel_values_videos": [v]})[0] for v in videos]
    return [tuple(b.shape) for b in batch], [bool(torch.equal(b, s)) for b, s in zip(batch, solo)], [
        bool(torch.equal(batch[0], b)) for b in batch[1:]
    ]


def main_python() -> Path:
    py = Path(os.environ.get("LLAVA_VQTOKEN_MAIN_PYTHON", ROOT / ".venv" / "bin" / "python"))
    if not py.exists():
        raise RuntimeError(f"the vLLM tests need the main environment for their reference ({py}): scripts/bootstrap.sh")
    return py
