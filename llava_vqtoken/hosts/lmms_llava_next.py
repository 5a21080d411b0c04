"""lmms-eval model for the LLaVA-NeXT host: lmms-eval's own ``llava_onevision`` wrapper with the
plugin installed and the compressor spec passed as an ``overwrite_config`` entry (its
``_get_model_overwrite_config`` hook). Loads only where LLaVA-NeXT (``llava``) is importable.

``--model vqtoken_llava_next --model_args pretrained=DIR,num_tokens=32`` (same compressor model_args
and the same ``vqtoken_*`` aliases as ``vqtoken_hf``; ``released=true`` selects the authors'
checkpoint behaviour, ``CompressorConfig.released()``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..config import CompressorConfig


def _base():
    if importlib.util.find_spec("llava") is None:
        raise ImportError(
            "vqtoken_llava_next needs LLaVA-NeXT (package 'llava'); see README 'LLaVA-NeXT plugin', "
            "or use --model vqtoken_hf"
        )
    from lmms_eval.models.simple.llava_onevision import Llava_OneVision

    return Llava_OneVision


def overwrite_for(model_args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """model_args -> (overwrite_config entries, the args left for lmms-eval's llava_onevision)."""
    from .lmms_plugin import compressor_from_model_args

    args = dict(model_args)
    released = str(args.pop("released", "false")).lower() in ("1", "true", "yes")
    frames = args.pop("frames", None)
    spec, rest = compressor_from_model_args(args)
    if released:  # the authors' behaviour, with any field the user set on top
        default = CompressorConfig().to_dict()
        given = {} if spec is None else {k: v for k, v in spec.to_dict().items() if v != default[k]}
        spec = CompressorConfig.released(**given)
    if spec is None:
        spec = CompressorConfig(num_tokens=32)
    if frames is not None:
        rest["max_frames_num"] = int(frames)
    elif "frames" in rest:
        rest["max_frames_num"] = int(rest.pop("frames"))
    return {"video_compressor": spec.to_dict()}, rest


class VQTokenLlavaNext(_base() if importlib.util.find_spec("llava") else object):  # type: ignore[misc]
    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        _base()  # clear error when LLaVA-NeXT is missing
        from ..llava_next import install

        install()
        self._vq_overwrite, rest = overwrite_for(model_args)
        super().__init__(**rest)

    def _get_model_overwrite_config(self) -> dict[str, object]:
        return dict(self._vq_overwrite)
