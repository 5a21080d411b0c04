"""VQ-Attention's motion footprint: known answers on hand-made key maps."""

import pytest
import torch

from llava_vqtoken.config import CompressorConfig, ConfigError
from llava_vqtoken.core.compressor import build_compressor
from llava_vqtoken.core.vq_attention import footprint_dim, footprint_stats


def _moving_key_map(direction: int) -> torch.Tensor:
    """4 frames of a 4x4 grid, background code 0; code 1 enters at frame 1 in column 1 (or 2) and moves
    one column per frame to the right (direction=1) or left (-1); code 2 never occurs."""
    km = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    for t in range(1, 4):
        km[0, t, 2, 1 + (t - 1) if direction > 0 else 3 - (t - 1)] = 1
    return km


def test_motion_footprint_says_when_and_which_way():
    right, left = (footprint_stats(_moving_key_map(d), 3, freqs=2, motion=True) for d in (1, -1))
    assert right.shape == (1, 3, footprint_dim(2, motion=True))
    code = right[0, 1]
    first, last, c_first, c_last, disp = code[-8], code[-7], code[-6:-4], code[-4:-2], code[-2:]
    assert first == pytest.approx(1 / 3) and last == pytest.approx(1.0)  # frames 1 and 3 of 0..3
    assert c_first.tolist() == pytest.approx([2 / 3, 1 / 3]) and c_last.tolist() == pytest.approx([2 / 3, 1.0])
    assert disp.tolist() == pytest.approx([0.0, 2 / 3])
    assert left[0, 1, -2:].tolist() == pytest.approx([0.0, -2 / 3])
    # the marginal statistics cannot tell the two apart; the motion ones can
    marg = footprint_dim(2)
    assert torch.allclose(right[..., :marg], left[..., :marg])
    assert torch.equal(right[0, 2], torch.zeros_like(right[0, 2]))  # an absent code has an all-zero footprint
    assert torch.equal(footprint_stats(_moving_key_map(1), 3, 2), right[..., :marg])  # marginal part unchanged


def test_motion_footprint_config_builds_and_runs():
    feats = torch.randn(2, 4, 3, 3, 16)
    comp = build_compressor(CompressorConfig(num_tokens=6, footprint="motion", heads=2, cuda_graphs=False), 16)
    (out,) = comp.compress(feats[:1])
    assert out.tokens.shape == (6, 16)
    assert comp.attention.footprint_mlp[0].in_features == footprint_dim(8, motion=True)
    with pytest.raises(ConfigError, match="footprint"):
        CompressorConfig(footprint="velocity")


def test_attention_built_but_not_applied_feeds_the_codebook():
    feats = torch.randn(1, 4, 3, 3, 16)
    cfg = CompressorConfig(num_tokens=6, heads=2, cuda_graphs=False)
    on = build_compressor(cfg, 16)
    off = build_compressor(cfg.replace(apply_attention=False), 16)
    off.load_state_dict(on.state_dict())  # same keys: the module is built either way
    a, b = on.compress(feats)[0], off.compress(feats)[0]
    assert torch.equal(b.tokens, b.codebook) and not torch.equal(a.tokens, a.codebook)
