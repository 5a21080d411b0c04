"""Build a tiny, random-weight LLaVA-OneVision (transformers) offline, with tokenizer and processor.

Real geometry where it matters for token counts (384 px frames, patch 14: a 27 x 27 grid, 729
tokens per frame, 23,328 for 32 frames), tiny widths everywhere else, so it runs on a CPU.
The directory carries a ``RANDOM_WEIGHTS`` marker so every command can say so plainly.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...shapes import QWEN2, SIGLIP, without

RANDOM_MARKER = "RANDOM_WEIGHTS"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<video>\n{% elif part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


def default_cache() -> Path:
    """Where the built-in random models (and the CLI's demo clip) go unless a ``cache_dir`` is given."""
    return Path.home() / ".cache" / "llava_vqtoken"


def build_tokenizer():
    """A byte-level BPE trained in well under a second on synthetic question/answer text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = (
        "what which where when how many does the a an object square circle red green blue yellow move "
        "moves moving left right up down first second third before after count video frame answer question "
        "option options letter is are in of to and or A B C D yes no shape color colour direction order"
    ).split()
    corpus = [" ".join(words[i : i + 7]) for i in range(len(words))] * 4 + [" ".join(words)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


#: vision / text shapes: "tiny" for CPUs; "0.5b" = SigLIP-so400m/14@384 + Qwen2-0.5B widths and depths
#: (from the one table, llava_vqtoken/shapes.py; the grid and the vocabulary are set by the builder)
PRESETS = {
    preset: dict(vision=without(SIGLIP[vision], "image_size", "patch_size"), text=without(QWEN2[text], "vocab_size"))
    for preset, vision, text in (("tiny", "tiny", "tiny"), ("0.5b", "so400m", "0.5b"))
}


def build_tiny_llava_onevision(
    out_dir: str | os.PathLike[str] | None = None,
    image_size: int = SIGLIP["tiny"]["image_size"],
    patch_size: int = SIGLIP["tiny"]["patch_size"],
    vision_hidden: int = 32,
    text_hidden: int = 64,
    seed: int = 0,
    preset: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Create (once) and return the directory of a random LLaVA-OneVision checkpoint (tiny by default;
    ``preset="0.5b"`` gives the real 0.5B shapes with the small tokenizer): ``out_dir``, else a folder
    named after the shapes and the seed in ``cache_dir`` (default: :func:`default_cache`)."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    shapes = PRESETS[preset] if preset else {
        "vision": dict(PRESETS["tiny"]["vision"], hidden_size=vision_hidden, intermediate_size=2 * vision_hidden),
        "text": dict(PRESETS["tiny"]["text"], hidden_size=text_hidden, intermediate_size=2 * text_hidden),
    }
    tag = preset or f"v{vision_hidden}-t{text_hidden}"
    name = f"tiny-llava-ov-{image_size}px-{tag}-s{seed}"
    out = Path(out_dir) if out_dir is not None else Path(default_cache() if cache_dir is None else cache_dir) / name
    if (out / RANDOM_MARKER).exists() and (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vision = SiglipVisionConfig(
        image_size=image_size, patch_size=patch_size, vision_use_head=False, **shapes["vision"]
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer), max_position_embeddings=32768, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shapes["text"],
    )
    g = image_size
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[g, g], [g, 2 * g], [2 * g, g], [2 * g, 2 * g]],
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    _save_processor(out, tokenizer, config.image_grid_pinpoints, image_size, patch_size)
    (out / RANDOM_MARKER).write_text("This checkpoint has random weights; it exists to exercise the code.\n")
    return out


def _save_processor(out: Path, tokenizer, pinpoints: list[list[int]], image_size: int, patch_size: int) -> None:
    """The processor of the random checkpoint: frames resized to ``image_size``, the small tokenizer."""
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

    size = {"height": image_size, "width": image_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


def is_random(model_dir: str | os.PathLike[str]) -> bool:
    return (Path(model_dir) / RANDOM_MARKER).exists()
