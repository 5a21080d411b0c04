import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


def blobs(k: int, n: int = 2000, d: int = 32, noise: float = 0.05, seed: int = 0):
    """n tokens drawn around k random unit directions; returns (x [1, n, d], true labels [n])."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=-1)
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=g)]
    x = centres[labels] + noise * torch.randn(n, d, generator=g)
    return x[None], labels


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when labelings a and b define the same partition (up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    d = Path(os.environ.get("LLAVA_VQTOKEN_TEST_CACHE", tmp_path_factory.mktemp("cache")))
    os.environ["LLAVA_VQTOKEN_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def tiny_model(cache_dir) -> Path:
    from llava_vqtoken.hosts.hf.tiny import build_tiny_llava_onevision

    return build_tiny_llava_onevision()


@pytest.fixture(scope="session")
def video_file(cache_dir) -> Path:
    from llava_vqtoken.video import make_video

    return make_video(cache_dir / "clip.mp4", frames=24)
