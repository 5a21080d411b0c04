"""Parts of the LLaVA-NeXT launcher (llava_vqtoken.train.llava_next) and host hooks that run without
LLaVA-NeXT itself; the rest is in tests/llava_next (skipped where ``llava`` is absent)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llava_vqtoken.config import CompressorConfig
from llava_vqtoken.core import build_compressor
from llava_vqtoken.hosts.llava_next import _compress_batch, pool_video
from llava_vqtoken.train.llava_next import cuda_sync_skipped


def test_cuda_sync_is_skipped_inside_the_block_only_and_restored_after_an_error():
    real = torch.cuda.synchronize
    with cuda_sync_skipped():
        assert torch.cuda.synchronize is not real
        assert torch.cuda.synchronize() is None  # no CUDA needed
    assert torch.cuda.synchronize is real
    with pytest.raises(KeyError), cuda_sync_skipped():
        raise KeyError("the save failed")
    assert torch.cuda.synchronize is real


def fake_llava_model(num_tokens: int, side: int = 3, width: int = 8) -> SimpleNamespace:
    """What LLaVA-NeXT's hooks read from a model: its inner model (compressor), vision tower and step."""
    inner = SimpleNamespace(video_compressor=build_compressor(CompressorConfig(num_tokens=num_tokens), width),
                            last_video_tokens=None)
    tower = SimpleNamespace(num_patches_per_side=side)
    return SimpleNamespace(get_model=lambda: inner, get_vision_tower=lambda: tower, _vq_step=None)


def test_llava_next_hooks_record_tokens_per_video_as_a_list_like_the_transformers_host():
    model = fake_llava_model(num_tokens=4)
    tokens = pool_video(model, torch.randn(2, 9, 8))  # one video: 2 frames of 3 x 3, width 8
    assert tokens.shape == (1, 4, 8)
    assert model.get_model().last_video_tokens == [4]
    step = {"sizes": [2, 1, 2], "videos": [0, 2], "done": [], "zero": None}  # video, image, video
    _compress_batch(model, torch.randn(5, 9, 8), step)
    assert model.get_model().last_video_tokens == [4, 4]
    assert [t.shape for t in step["done"]] == [(1, 4, 8), (1, 4, 8)]
