import pytest

from llava_vqtoken.core.metrics import LLM_SHAPES, REFERENCE_TOKENS, prefill_flops, tokdense, token_ratio


def test_paper_numbers():
    assert REFERENCE_TOKENS == 32 * 27 * 27
    assert tokdense(57.72, 13.08) == pytest.approx(4.413, abs=1e-3)
    assert tokdense(57.46, 32) == pytest.approx(1.796, abs=1e-3)
    assert tokdense(29.12, 1152) == pytest.approx(0.0253, abs=1e-4)
    assert token_ratio(32) == pytest.approx(0.00137, abs=1e-5)
    with pytest.raises(ValueError):
        tokdense(50, 0)


def test_prefill_flops_formula():
    # one layer, d=4, MHA, d_ff=8, n=2: proj 2*2*(16+32+16)=256, mlp 2*2*3*4*8=384, attn 2*4*4=32
    assert prefill_flops(2, 4, 1, 8, heads=2) == 256 + 384 + 32
    h, layer, inter, heads, kv, _ = LLM_SHAPES["qwen2-7b"]
    full = prefill_flops(6273 + 64, h, layer, inter, heads, kv)
    vq = prefill_flops(33 + 64, h, layer, inter, heads, kv)
    assert 50 < full / vq < 100  # linear terms dominate; the quadratic term adds on top
