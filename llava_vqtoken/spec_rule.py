"""Which compressor spec runs: the one rule every command and host obeys (README "Which spec runs").

- A stock checkpoint (no saved spec) takes its spec from the flags (defaults where none is given).
- A VQToken checkpoint's saved spec is the truth. A flag may change a *runtime* field (no trained
  parameters, no effect on what the weights were trained with: iters, seed, tol, compile, ...), and
  each change is reported in one line.
- Any other change is refused with one line (:class:`CheckpointError`) unless the caller asks for it
  explicitly (``--override-spec``, model_arg ``override_spec=true``): a *parameter* field (name,
  attention, heads, footprint, ...) would drop trained weights or create untrained ones; a
  *trained-with* field (num_tokens, adaptive, codebook, newline, ...) has no parameters but changes
  what the trained weights see. Fields not named here count as trained-with.

This module is host-free: it decides, the hosts load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import CheckpointError, CompressorConfig

#: no trained parameters, and the weights do not depend on them: a flag may change them (reported)
RUNTIME_FIELDS = frozenset(
    {"iters", "refine_iters", "tol", "seed", "seed_sample", "silhouette_sample", "cuda_graphs", "compile",
     "chunk_frames"}
)
#: they change the compressor's parameter set (names or shapes)
PARAMETER_FIELDS = frozenset({"name", "attention", "heads", "footprint_freqs", "footprint", "ffn_dim"})
OVERRIDE_HINT = (
    "pass --override-spec (compress, export-remote, train.sh) or override_spec=true (eval.sh --model-args, "
    "lmms-eval model_args) to run it anyway"
)


@dataclass(frozen=True)
class SpecDecision:
    """The spec that runs, where it came from, and what the flags changed (``field: old -> new``)."""

    spec: CompressorConfig
    from_checkpoint: bool
    changes: tuple[str, ...] = ()
    overridden: tuple[str, ...] = ()  # non-runtime fields changed because the caller asked for it

    def untrained(self, has_parameters: bool) -> bool:
        """True when a compressor with parameters runs weights that were never trained: a stock
        checkpoint converted, or a parameter field overridden (trained weights dropped or new ones made)."""
        return has_parameters and (not self.from_checkpoint or bool(PARAMETER_FIELDS & set(self.overridden)))

    def line(self) -> str | None:
        """One line for stderr when the flags changed a saved spec, else None."""
        if not self.changes:
            return None
        head = "checkpoint spec changed by the flags"
        if self.overridden:
            head += f" (--override-spec, not as trained: {', '.join(self.overridden)})"
        return f"{head}: {'; '.join(self.changes)}"


def implied_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A budget-free ``pool`` is the stock 2x pooling and adaptive K has no fixed budget: both mean
    ``num_tokens=None`` unless the caller gave one."""
    out = dict(overrides)
    if "num_tokens" not in out and (out.get("name") == "pool" or out.get("adaptive")):
        out["num_tokens"] = None
    return out


def resolve_spec(
    saved: CompressorConfig | Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
    allow_override: bool = False,
    where: str = "the checkpoint",
) -> SpecDecision:
    """The spec to run from a checkpoint's saved spec (None: stock) and the fields the caller set.

    Raises CheckpointError (one line) when an override of a saved spec is not a runtime field and
    ``allow_override`` is False; ConfigError when a field or the resulting spec is invalid.
    """
    given = implied_overrides(overrides or {})
    if saved is None:
        base = CompressorConfig().to_dict()
        return SpecDecision(CompressorConfig.from_dict({**base, **given}), from_checkpoint=False)
    old = CompressorConfig.from_dict(saved)
    new = CompressorConfig.from_dict({**old.to_dict(), **given})  # validates names, types and values
    diff = [k for k in given if getattr(new, k) != getattr(old, k)]
    guarded = [k for k in diff if k not in RUNTIME_FIELDS]
    if guarded and not allow_override:
        raise CheckpointError(_refusal(where, old, new, guarded))
    changes = tuple(f"{k} {getattr(old, k)!r} -> {getattr(new, k)!r}" for k in diff)
    return SpecDecision(new, from_checkpoint=True, changes=changes, overridden=tuple(guarded))


def _refusal(where: str, old: CompressorConfig, new: CompressorConfig, fields: list[str]) -> str:
    trained = ", ".join(f"{k}={getattr(old, k)!r}" for k in fields)
    asked = ", ".join(f"{k}={getattr(new, k)!r}" for k in fields)
    params = [k for k in fields if k in PARAMETER_FIELDS]
    why = (
        "would drop its trained compressor weights and create untrained ones"
        if params
        else "has no parameters of its own but is not what its weights were trained with"
    )
    return f"{where} holds a compressor trained with {trained}; {asked} {why}; {OVERRIDE_HINT}"
