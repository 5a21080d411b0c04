"""Capture sync-free tensor functions as CUDA graphs, once per (function, shapes, settings).

At the sizes VQToken works on (a few hundred kernels of a few microseconds each), launch overhead
dominates a k-means fit; replaying a captured graph removes it. Inputs are copied into static
buffers, the graph is replayed, and outputs are cloned so callers may keep them. On the CPU, or
with ``enabled=False``, the function simply runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

_CACHE: dict[tuple, tuple[torch.cuda.CUDAGraph, list, Any]] = {}
_DISABLED = False


def set_cuda_graphs(enabled: bool) -> None:
    """Globally allow or forbid graph capture (e.g. while debugging)."""
    global _DISABLED
    _DISABLED = not enabled


def clear_cache() -> None:
    _CACHE.clear()


def _signature(args: Sequence[torch.Tensor | None]) -> tuple:
    return tuple(None if a is None else (tuple(a.shape), a.dtype, str(a.device)) for a in args)


def maybe_graphed(
    key: tuple, fn: Callable[..., Any], args: Sequence[torch.Tensor | None], kwargs: dict, enabled: bool = True
) -> Any:
    tensors = [a for a in args if a is not None]
    on_cuda = bool(tensors) and tensors[0].is_cuda
    if not (enabled and on_cuda and not _DISABLED) or torch.is_grad_enabled() and any(
        a.requires_grad for a in tensors
    ):
        return fn(*args, **kwargs)
    if torch.cuda.is_current_stream_capturing():
        return fn(*args, **kwargs)
    # streams and graphs belong to the current device, which need not be the tensors' one (a model spread
    # over GPUs by device_map="auto"): capture and replay on the tensors' device
    with torch.cuda.device(tensors[0].device):
        return _graphed(key, fn, args, kwargs)


def _graphed(key: tuple, fn: Callable[..., Any], args: Sequence[torch.Tensor | None], kwargs: dict) -> Any:
    full_key = (fn.__qualname__, key, _signature(args), tuple(sorted(kwargs.items())))
    entry = _CACHE.get(full_key)
    if entry is None:
        static = [None if a is None else a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # warm-up outside capture (allocations, cuBLAS handles)
                fn(*static, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = fn(*static, **kwargs)
        entry = (graph, static, out)
        _CACHE[full_key] = entry
    graph, static, out = entry
    for s, a in zip(static, args):
        if s is not None:
            s.copy_(a)
    graph.replay()
    return tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()
