"""Known answers for core/metrics.py that the mutation run (scripts/mutation.sh) found unpinned."""

import pytest

from llava_vqtoken.core.metrics import LLM_SHAPES, prefill_flops, tokdense, token_ratio


def test_ratio_and_tokdense_refuse_non_positive_counts_with_their_message():
    with pytest.raises(ValueError, match=r"^tokens_in must be positive$"):
        token_ratio(1, 0)
    with pytest.raises(ValueError, match=r"^tokens_in must be positive$"):
        token_ratio(1, -5)
    with pytest.raises(ValueError, match=r"^token count must be positive$"):
        tokdense(50, 0)
    with pytest.raises(ValueError, match=r"^token count must be positive$"):
        tokdense(50, -1)


def test_ratio_and_tokdense_exact_at_the_boundary():
    assert token_ratio(3, 1) == 3.0
    assert token_ratio(1, 4) == 0.25
    assert tokdense(50.0, 1) == 50.0
    assert tokdense(60.0, 0.5) == 120.0


def test_prefill_flops_gqa_layers_and_lm_head_by_hand():
    # n=3, d=8, heads=4 (head dim 2), kv_heads=2 -> d_kv=4, d_ff=5, 2 layers, vocab 7
    # proj 2*3*(64 + 2*8*4 + 64) = 1152; mlp 2*3*3*8*5 = 720; attn 2*3*3*8 = 144 -> 2016 a layer
    # LM head 2*3*8*7 = 336
    assert prefill_flops(3, 8, 2, 5, heads=4, kv_heads=2, vocab=7) == 2 * 2016 + 336
    assert prefill_flops(3, 8, 2, 5, heads=4, kv_heads=2) == 2 * 2016
    # kv_heads omitted = multi-head attention: d_kv = d = 8 -> proj 2*3*(64+128+64) = 1536
    assert prefill_flops(3, 8, 1, 5, heads=4) == 1536 + 720 + 144
    assert prefill_flops(3, 8, 1, 5, heads=4, kv_heads=None) == 1536 + 720 + 144
    # head dim is an integer: d=6, heads=4 -> head dim 1, d_kv = 2 -> proj 2*1*(36+24+36) = 192
    assert prefill_flops(1, 6, 1, 1, heads=4, kv_heads=2) == 192 + 36 + 12
    assert isinstance(prefill_flops(1, 6, 1, 1, heads=4), float)


def test_llm_shapes_are_the_published_configs():
    assert LLM_SHAPES == {
        "qwen2-0.5b": (896, 24, 4864, 14, 2, 151_936),
        "qwen2-7b": (3584, 28, 18_944, 28, 4, 152_064),
    }
