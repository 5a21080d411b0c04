"""Distributed-training helpers shared by both hosts' trainers: the data-parallel sanity check (after
updates, the compressor's parameters must be identical on every rank), a step timer, and a quiet
DeepSpeed accelerator detection."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
from typing import Any

import torch

DS_ACCELERATOR_NOTE = "Setting accelerator to"


class _DropAcceleratorNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(DS_ACCELERATOR_NOTE)


def quiet_deepspeed_accelerator() -> None:
    """Detect DeepSpeed's accelerator once without its "Setting accelerator to CPU ..." warning.

    transformers imports DeepSpeed (when installed) on its first model import, and DeepSpeed logs that
    line the first time anything asks for the accelerator; the answer is then cached for the process.
    Asking first, with a filter for that one message on DeepSpeed's logger for the duration, keeps every
    other DeepSpeed message (the filter is removed afterwards)."""
    if importlib.util.find_spec("deepspeed") is None:
        return
    ds_logger = logging.getLogger("DeepSpeed")
    note = _DropAcceleratorNote()
    ds_logger.addFilter(note)
    try:
        from deepspeed.accelerator import get_accelerator

        get_accelerator()
    finally:
        ds_logger.removeFilter(note)


def params_digest(params: list[torch.nn.Parameter]) -> str:
    """SHA-256 of the parameters' values in order (exact: two lists get the same digest only if every
    value is equal; a sum would miss swapped or cancelling changes)."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().to(torch.float64).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _summary(params: list[torch.nn.Parameter]) -> dict[str, Any]:
    return {"checksum": float(sum(p.detach().double().sum() for p in params)), "digest": params_digest(params)}


def rank_report(params: list[torch.nn.Parameter]) -> dict[str, Any]:
    """Checksum and exact digest of ``params`` (gathered first under ZeRO-3) and peak GPU memory, from
    every rank; ``compressor_identical`` compares the digests."""
    import torch.distributed as dist

    ctx = None
    try:
        import deepspeed

        if any(hasattr(p, "ds_id") for p in params):
            ctx = deepspeed.zero.GatheredParameters(params)
    except ImportError:  # pragma: no cover
        pass
    with ctx if ctx is not None else contextlib.nullcontext():
        mine = _summary(params)
    mine["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    everyone: list[Any] = [mine]
    if dist.is_available() and dist.is_initialized():
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
    identical = len({e["digest"] for e in everyone}) == 1
    return {"per_rank": everyone, "compressor_identical": identical}


def step_timer(skip: int = 5):
    """A ``TrainerCallback`` that times every optimizer step, so throughput can leave out the first
    ``skip`` steps (compilation, allocator and NCCL warm-up). ``.steady(args)`` gives samples/s."""
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

        def steady(self, args) -> float | None:
            t = self.times[skip:]
            if len(t) < 2:
                return None
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            return (len(t) - 1) * per_step / (t[-1] - t[0])

    return StepTimer()
