"""Parts of the LLaVA-NeXT launcher (llava_vqtoken.train.llava_next) and host hooks that run without
LLaVA-NeXT itself; the rest is in tests/llava_next (skipped where ``llava`` is absent)."""

from __future__ import annotations

import pytest
import torch

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

