"""Metrics used by the paper and the benchmarks: token counts, ratio, TokDense, prefill FLOPs."""

from __future__ import annotations

from ..shapes import QWEN2

#: 32 frames x 27 x 27 SigLIP-384/14 tokens: the paper's 100%
REFERENCE_TOKENS = 23_328


def token_ratio(tokens_out: float, tokens_in: float = REFERENCE_TOKENS) -> float:
    """Fraction of tokens kept (0.00137 for 32 of 23,328)."""
    if tokens_in <= 0:
        raise ValueError("tokens_in must be positive")
    return tokens_out / tokens_in


def tokdense(accuracy: float, tokens: float) -> float:
    """Paper Eq. 2: accuracy (percent, 0-100) per visual token fed to the LLM (57.72 / 13.08 = 4.413)."""
    if tokens <= 0:
        raise ValueError("token count must be positive")
    return accuracy / tokens


def prefill_flops(
    tokens: int,
    hidden: int,
    layers: int,
    intermediate: int,
    heads: int,
    kv_heads: int | None = None,
    vocab: int = 0,
) -> float:
    """Theoretical forward FLOPs of a decoder-only LLM (Qwen2/Llama shape) prefilling ``tokens``.

    Per layer: 2*n*(d*d_q + 2*d*d_kv + d_q*d) for the attention projections, 2*n*3*d*d_ff for the
    gated MLP, and 2*n^2*d for QK^T and AV under a causal mask (half of the full 4*n^2*d).
    ``vocab`` adds the LM head for every position (0 to count only the last token's head).
    """
    kv_heads = kv_heads or heads
    d_kv = hidden // heads * kv_heads
    n = tokens
    proj = 2 * n * (hidden * hidden + 2 * hidden * d_kv + hidden * hidden)
    mlp = 2 * n * 3 * hidden * intermediate
    attn = 2 * n * n * hidden
    return float(layers * (proj + mlp + attn) + 2 * n * hidden * vocab)


#: (hidden, layers, intermediate, heads, kv_heads, vocab) of the LLMs LLaVA-OneVision ships (from shapes.QWEN2)
LLM_SHAPES = {
    f"qwen2-{name}": (s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"], s["num_attention_heads"],
                      s["num_key_value_heads"], s["vocab_size"])
    for name, s in QWEN2.items() if name != "tiny"
}
