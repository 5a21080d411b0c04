import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return Path(os.environ.get("LLAVA_VQTOKEN_TEST_CACHE", tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_model(cache_dir) -> Path:
    from llava_vqtoken.hosts.hf.tiny import build_tiny_llava_onevision

    return build_tiny_llava_onevision(cache_dir=cache_dir)


@pytest.fixture(scope="session")
def video_file(cache_dir) -> Path:
    from llava_vqtoken.video import make_video

    return make_video(cache_dir / "clip.mp4", frames=24)
