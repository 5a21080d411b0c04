"""lmms-eval model for the LLaVA-NeXT host (``--model vqtoken_llava_next``), registered through the
same entry point as ``vqtoken_hf``; it loads only where LLaVA-NeXT (``llava``) is importable.

It loads with LLaVA-NeXT's own ``load_pretrained_model`` (the compressor spec goes in as an
``overwrite_config`` entry, so a stock checkpoint is converted and a VQToken one keeps or overrides
its spec), decodes frames itself (decord, PyAV or OpenCV) and runs on CPU or GPU; lmms-eval's own
``llava_onevision`` wrapper hard-codes CUDA and fp16. model_args: the compressor's fields and the
``vqtoken_*`` aliases (as ``vqtoken_hf``), ``released=true`` for the authors' checkpoint
behaviour, ``frames``/``max_frames_num``, ``conv_template`` (qwen_1_5), ``model_name`` (llava_qwen).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import torch

from ...config import CONFIG_KEY, CompressorConfig
from ...spec_rule import resolve_spec
from ..llava_next.tiny import is_random
from .plugin import VideoLmms, parse_bool, spec_fields_from_model_args

#: overwrite_config key that allows a change of a saved spec (llava_vqtoken.hosts.llava_next.OVERRIDE_KEY)
OVERRIDE_KEY = "video_compressor_override_spec"


def overwrite_for(model_args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """model_args -> (overwrite_config entries for load_pretrained_model, the remaining args).

    ``video_compressor`` holds only the fields the user set (all of ``released()`` with
    ``released=true``), so a VQToken checkpoint keeps the rest of its saved spec and a stock one takes
    the defaults (README "Which spec runs"); ``override_spec=true`` lets them change a saved spec."""
    args = dict(model_args)
    released = parse_bool("released", args.pop("released", False))
    allow = parse_bool("override_spec", args.pop("override_spec", False))
    given, rest = spec_fields_from_model_args(args)
    if released:  # the authors' behaviour, with any field the user set on top
        given = CompressorConfig.released(**given).to_dict()
    resolve_spec(None, given)  # the values alone are valid (the checkpoint's spec is checked at load)
    if "frames" in rest:
        rest["max_frames_num"] = int(rest.pop("frames"))
    overwrite: dict[str, Any] = {CONFIG_KEY: given}
    if allow:
        overwrite[OVERRIDE_KEY] = True
    return overwrite, rest


class VQTokenLlavaNext(VideoLmms):
    plugin_name = "vqtoken_llava_next"

    def __init__(
        self,
        pretrained: str = "lmms-lab/llava-onevision-qwen2-0.5b-ov",
        device: str | None = None,
        dtype: str = "bfloat16",
        batch_size: int | str = 1,
        max_new_tokens: int | str = 32,
        stats_file: str | None = None,
        conv_template: str = "qwen_1_5",
        model_name: str = "llava_qwen",
        attn_implementation: str = "sdpa",
        **model_args: Any,
    ) -> None:
        super().__init__()
        if importlib.util.find_spec("llava") is None:
            raise ImportError(
                "vqtoken_llava_next needs LLaVA-NeXT (package 'llava'); see README 'LLaVA-NeXT plugin', "
                "or use --model vqtoken_hf"
            )
        from ..llava_next import install

        install()
        from llava.model.builder import load_pretrained_model

        overwrite, rest = overwrite_for(model_args)
        self.frames = int(rest.pop("max_frames_num", 32))
        if rest:
            raise ValueError(f"vqtoken_llava_next: unknown model_args: {', '.join(sorted(rest))}")
        self._device = self._setup_device(device)
        # device_map="auto" keeps the builder from forcing the vision tower to cuda fp16
        device_map = "auto" if self._device.type == "cpu" or self._world_size == 1 else str(self._device)
        self.tokenizer, self.model, self.image_processor, _ = load_pretrained_model(
            pretrained, None, model_name, device_map=device_map, torch_dtype=dtype,
            attn_implementation=attn_implementation, overwrite_config=overwrite,
        )
        self.model.eval()
        self.dtype = next(self.model.parameters()).dtype
        self.conv_template = conv_template
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.stats_file = stats_file
        self.spec = CompressorConfig.from_dict(self.model.config.video_compressor)  # what runs, after the rule
        self.random_weights = is_random(pretrained)

    def _grid_tokens(self) -> int:
        """Post-projector tokens per frame before any compression (27 x 27 = 729 at 384 px, patch 14)."""
        return int(self.model.get_vision_tower().num_patches_per_side) ** 2

    def _prompt(self, context: str) -> str:
        from llava.constants import DEFAULT_IMAGE_TOKEN
        from llava.conversation import conv_templates

        conv = conv_templates[self.conv_template].copy()
        conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{context}")
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def generate_until(self, requests) -> list[str]:
        from llava.constants import IMAGE_TOKEN_INDEX
        from llava.mm_utils import tokenizer_image_token
        from tqdm import tqdm

        from ...video import load_video

        out: list[str] = []
        for req in tqdm(requests, disable=self.rank != 0, desc="vqtoken_llava_next"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            t0 = time.perf_counter()
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            if not visuals:
                raise ValueError(f"vqtoken_llava_next: {task} doc {doc_id} has no video")
            frames = load_video(visuals[0], self.frames)
            pixels = self.image_processor.preprocess(list(frames), return_tensors="pt")["pixel_values"]
            pixels = pixels.to(self._device, self.dtype)
            ids = tokenizer_image_token(self._prompt(context), self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
            ids = ids.unsqueeze(0).to(self._device)
            with torch.no_grad():
                gen = self.model.generate(
                    ids, attention_mask=torch.ones_like(ids), images=[pixels], modalities=["video"],
                    max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)), do_sample=False,
                    num_beams=1, pad_token_id=self.tokenizer.pad_token_id,
                )
            text = self.tokenizer.batch_decode(gen, skip_special_tokens=True)[0]
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop:
                    text = text.split(stop)[0]
            out.append(text)
            (compressed,) = self.model.get_model().last_video_tokens  # one video per call
            tokens = compressed + 1  # + image_newline (one_token mode)
            self.log_stats(task, doc_id, tokens, time.perf_counter() - t0, self.frames, self.spec,
                           input_tokens=pixels.shape[0] * self._grid_tokens())
        return out
