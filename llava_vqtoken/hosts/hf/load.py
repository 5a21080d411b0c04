"""The one load-or-convert path of the transformers host, used by every command (``compress``,
``export-remote``, ``train.sh``, ``eval.sh``): a checkpoint directory plus the compressor fields the
user set -> model, matching processor, and the spec that actually runs (rule: :mod:`llava_vqtoken.spec_rule`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...config import CONFIG_KEY, CheckpointError
from ...spec_rule import PARAMETER_FIELDS, SpecDecision, resolve_spec

STOCK_TYPE = "llava_onevision"
#: how to give a checkpoint folder the processor it lacks (README "transformers host")
PROCESSOR_HINT = (
    "save the one of the model it came from next to its config.json, e.g. "
    "AutoProcessor.from_pretrained(HUB_ID).save_pretrained(FOLDER) (export-remote then writes it into --out)"
)


@dataclass
class LoadedModel:
    model: Any  # VQTokenLlavaOnevisionForConditionalGeneration
    processor: Any  # VQTokenLlavaOnevisionProcessor, always matching the model's spec
    decision: SpecDecision
    path: str


def _stderr(line: str) -> None:
    print(f"[llava-vqtoken] {line}", file=sys.stderr)


def checkpoint_config(path: str) -> dict[str, Any]:
    """config.json of a local checkpoint directory (or of a hub id, through transformers)."""
    local = Path(path)
    if local.exists():
        if not (local / "config.json").is_file():
            raise CheckpointError(f"{path} is not a model directory: it has no config.json")
        import json

        return json.loads((local / "config.json").read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).to_dict()


def saved_spec(path: str) -> dict[str, Any] | None:
    """The compressor spec a checkpoint was saved with; None for a stock LLaVA-OneVision."""
    from .modeling import MODEL_TYPE

    cfg = checkpoint_config(path)
    kind = cfg.get("model_type")
    if kind not in (STOCK_TYPE, MODEL_TYPE):
        raise CheckpointError(f"{path} is a {kind!r} checkpoint, not LLaVA-OneVision")
    return cfg.get(CONFIG_KEY) if kind == MODEL_TYPE else None


def load_processor(path: str):
    """The checkpoint's own processor (image processor + tokenizer), or CheckpointError in one line
    when the folder has none (e.g. a model saved with ``save_pretrained`` alone)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except (OSError, ValueError):
        raise CheckpointError(
            f"{path} has no processor (processor_config.json or preprocessor_config.json, and tokenizer files) "
            f"and a checkpoint needs one: {PROCESSOR_HINT}"
        ) from None


def load_model(
    path: str,
    overrides: Mapping[str, Any] | None = None,
    allow_override: bool = False,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    note: Callable[[str], None] = _stderr,
) -> LoadedModel:
    """Load a VQToken checkpoint or convert a stock one, obeying the spec rule.

    ``overrides``: the compressor fields the user set (flags, model_args); ``allow_override``: the
    user asked to change trained-with or parameter fields of a VQToken checkpoint (--override-spec).
    A change of the saved spec is reported through ``note`` in one line; a refused one raises
    CheckpointError.
    """
    from .modeling import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor

    path = str(path)
    decision = resolve_spec(saved_spec(path), overrides, allow_override, where=path)
    stock_processor = load_processor(path)  # before the weights: a folder without one fails at once
    keep = decision.from_checkpoint and not decision.changes
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    reshaped = bool(PARAMETER_FIELDS & set(decision.overridden))  # trained tensors may no longer fit
    model, info = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        path, video_compressor=None if keep else decision.spec.to_dict(), output_loading_info=True,
        ignore_mismatched_sizes=reshaped, **kwargs
    )
    _report_reinitialised(path, model, info.get("mismatched_keys") or (), note)
    processor = VQTokenLlavaOnevisionProcessor.from_stock(stock_processor, model.config)
    line = decision.line()
    if line:
        note(f"{path}: {line}")
    return LoadedModel(model, processor, decision, path)


def _report_reinitialised(path: str, model, mismatched, note: Callable[[str], None]) -> None:
    """One line naming the trained compressor tensors whose shape no longer fits an overridden spec
    (dropped, new ones seeded from the spec's seed); a stock tensor that does not fit is refused."""
    from .modeling import COMPRESSOR_PREFIX

    names = sorted(k for k, *_ in mismatched)
    stock = [k for k in names if not k.startswith(COMPRESSOR_PREFIX)]
    if stock:
        raise CheckpointError(f"{path}: stock weight(s) {', '.join(stock[:3])} do not fit this model's shapes")
    if names:
        shown = ", ".join(k[len(COMPRESSOR_PREFIX):] for k in names[:4]) + (", ..." if len(names) > 4 else "")
        note(f"{path}: {len(names)} trained compressor tensor(s) no longer fit the overridden spec and were "
             f"re-initialised (seed {model.config.compressor.seed}): {shown}")
