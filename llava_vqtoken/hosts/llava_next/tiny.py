"""A tiny random llava_qwen (LLaVA-NeXT) model, built offline, for tests and demos.

LLaVA-NeXT loads its SigLIP tower by hub id (a local path would be routed to its CLIP branch), so
the tiny tower is written into the hub cache layout under ``HF_HOME`` and loaded with
``HF_HUB_OFFLINE=1``. Call :func:`use_offline_cache` before transformers is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...shapes import QWEN2, SIGLIP, without

SIGLIP_ID = "tiny-org/tiny-siglip-patch14-384"
#: the width LLaVA-NeXT's SigLIP wrapper assumes (so400m's), kept by the tiny tower too
SIGLIP_WIDTH = SIGLIP["so400m"]["hidden_size"]
#: the tiny tower: so400m's width, 2 thin layers (its own shape: LLaVA-NeXT needs the real width)
TINY_TOWER = dict(num_hidden_layers=2, intermediate_size=64, num_attention_heads=4)
RANDOM_MARKER = "RANDOM_WEIGHTS"


def use_offline_cache(home: str | os.PathLike[str]) -> Path:
    """Point the hub cache at ``home`` and forbid network access (must precede importing transformers)."""
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    return Path(home)


def _write_siglip(home: Path, layers: int = 2, intermediate: int = 64, heads: int = 4) -> None:
    import torch
    from llava.model.multimodal_encoder.siglip_encoder import SigLipVisionConfig, SigLipVisionModel

    snap = home / "hub" / f"models--{_siglip_id(layers).replace('/', '--')}" / "snapshots" / ("0" * 40)
    if (snap / "config.json").exists():
        return
    torch.manual_seed(0)
    # hidden 1152, 384 px, patch 14: the sizes LLaVA-NeXT's SigLIP wrapper assumes
    cfg = SigLipVisionConfig(hidden_size=SIGLIP_WIDTH, intermediate_size=intermediate, num_hidden_layers=layers,
                             num_attention_heads=heads)
    SigLipVisionModel(cfg).save_pretrained(snap)
    refs = snap.parent.parent / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text("0" * 40)


def _siglip_id(layers: int) -> str:
    return SIGLIP_ID if layers == 2 else f"{SIGLIP_ID}-{layers}l"


def _tokenizer():
    """Byte-level like Qwen2's: no unknown token. (With one, LLaVA-NeXT's ``preprocess_qwen`` looks up
    ``<image>`` in a tokenizer that lacks it, gets the unknown id, and turns every unknown word of a
    text-only sample into an image placeholder.) Common words are whole tokens, the rest is bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("what which where does the a square red green moves move left right up down direction answer is "
             "video frame user assistant system you are helpful").split()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    symbols = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *sorted(alphabet)]
    nl = symbols.index("\u010a")  # byte-level "\n" gets Qwen2's id 198, which preprocess_qwen hard-codes
    symbols[198], symbols[nl] = symbols[nl], symbols[198]
    vocab = {w: i for i, w in enumerate(symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.add_tokens(words)
    return fast


def build_tiny_llava_qwen(
    out_dir: str | os.PathLike[str], video_compressor: dict | None = None, preset: str = "tiny"
) -> Path:
    """Write a random llava_qwen checkpoint (dir name must contain 'llava' and 'qwen', as the builder wants).
    ``preset="0.5b"``: SigLIP-so400m (26 layers) + Qwen2-0.5B shapes with the small tokenizer."""
    import torch
    from llava.model.language_model.llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM

    out = Path(out_dir)
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    big = preset == "0.5b"
    tower = SIGLIP["so400m"] if big else TINY_TOWER
    layers = tower["num_hidden_layers"]
    _write_siglip(home, layers=layers, intermediate=tower["intermediate_size"], heads=tower["num_attention_heads"])
    tok = _tokenizer()
    text = without(QWEN2["0.5b" if big else "tiny"], "vocab_size")  # the vocabulary is the tokenizer's
    cfg = LlavaQwenConfig(vocab_size=len(tok), max_position_embeddings=8192, tie_word_embeddings=False, **text)
    cfg.update(dict(
        mm_vision_tower=_siglip_id(layers), mm_hidden_size=SIGLIP_WIDTH, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", mm_patch_merge_type="spatial_unpad", mm_newline_position="one_token",
        mm_spatial_pool_mode="bilinear", image_aspect_ratio="anyres_max_9",
        image_grid_pinpoints=[[384, 384], [384, 768], [768, 384], [768, 768]], mm_use_im_start_end=False,
        mm_use_im_patch_token=False, tokenizer_padding_side="right", tokenizer_model_max_length=4096,
    ))
    if video_compressor is not None:
        cfg.video_compressor = video_compressor
    torch.manual_seed(0)
    model = LlavaQwenForCausalLM(cfg)
    with torch.no_grad():
        model.get_model().image_newline.normal_(0, 0.02)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / RANDOM_MARKER).write_text("random weights\n")
    return out


def is_random(model_dir: str | os.PathLike[str]) -> bool:
    """True for a checkpoint written by :func:`build_tiny_llava_qwen` (random weights)."""
    return (Path(model_dir) / RANDOM_MARKER).exists()
