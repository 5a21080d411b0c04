"""Captured CUDA graphs and compiled steps, owned by the object that uses them (a compressor module).

At the sizes VQToken works on (a few hundred kernels of a few microseconds each), launch overhead
dominates a k-means fit; replaying a captured graph removes it. Inputs are copied into static
buffers, the graph is replayed, and outputs are cloned so callers may keep them. On the CPU, or
without a cache, the function simply runs.

There is no process-wide cache: a :class:`CodeCache` belongs to one compressor and dies with it, so
a graph captured for one compressor can never be replayed for another (addresses of freed modules
and parameters are reused by the allocator). Entries are keyed on everything that changes the
computation: the caller's key (which includes the full config), the function, the input shapes,
dtypes and devices, and the keyword settings.

A graph holds its inputs' static copies, its outputs and its memory pool, sized by the clip: a cache
keeps the :data:`MAX_GRAPHS` most recently used and frees the rest, so compressing clips of many
lengths in memory (``--fps`` sampling gives every video its own length) does not grow without bound.
A fixed-K clip shape uses two graphs and an adaptive one three.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

#: torch.compile specialisations allowed per function while our compiled steps run (one per shape,
#: re-seed and mask combination; dynamo's default of 8 would silently fall back to eager)
RECOMPILE_LIMIT = 64

#: captured graphs a cache keeps (least recently used freed first): a few clip and batch shapes
MAX_GRAPHS = 16


def _signature(args: Sequence[torch.Tensor | None]) -> tuple:
    return tuple(None if a is None else (tuple(a.shape), a.dtype, str(a.device)) for a in args)


class CodeCache:
    """CUDA graphs and ``torch.compile``d functions of one owner (never shared between owners)."""

    def __init__(self, max_graphs: int = MAX_GRAPHS) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple[Any, list, Any]] = OrderedDict()
        self._compiled: dict[Callable[..., Any], Callable[..., Any]] = {}

    def __deepcopy__(self, memo: dict) -> CodeCache:
        # a copy of the owner captures its own graphs (these read the original's memory)
        return CodeCache(self.max_graphs)

    def __getstate__(self) -> dict:
        return {"max_graphs": self.max_graphs, "_graphs": OrderedDict(), "_compiled": {}}

    def _recall(self, key: tuple) -> Any:
        """The entry under ``key`` (now the most recently used), or None."""
        entry = self._graphs.get(key)
        if entry is not None:
            self._graphs.move_to_end(key)
        return entry

    def _remember(self, key: tuple, entry: Any) -> None:
        """Keep ``entry``; free the least recently used beyond ``max_graphs``."""
        self._graphs[key] = entry
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._graphs)

    def keys(self) -> list[tuple]:
        return list(self._graphs)

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` through ``torch.compile`` (built once per function for this owner)."""
        if fn not in self._compiled:
            self._compiled[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
        return self._compiled[fn]

    def run(self, key: tuple, fn: Callable[..., Any], args: Sequence[torch.Tensor | None], kwargs: dict) -> Any:
        """``fn(*args, **kwargs)``, replayed from a captured graph where that is possible (CUDA, no grad)."""
        tensors = [a for a in args if a is not None]
        on_cuda = bool(tensors) and tensors[0].is_cuda
        needs_grad = torch.is_grad_enabled() and any(a.requires_grad for a in tensors)
        if not on_cuda or needs_grad or torch.cuda.is_current_stream_capturing():
            return fn(*args, **kwargs)
        # streams and graphs belong to the current device, which need not be the tensors' one (a model spread
        # over GPUs by device_map="auto"): capture and replay on the tensors' device
        with torch.cuda.device(tensors[0].device):
            return self._graphed(key, fn, args, kwargs)

    def _graphed(self, key: tuple, fn: Callable[..., Any], args: Sequence[torch.Tensor | None], kwargs: dict) -> Any:
        full_key = (fn.__qualname__, key, _signature(args), tuple(sorted(kwargs.items())))
        entry = self._recall(full_key)
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
            self._remember(full_key, entry)
        graph, static, out = entry
        for s, a in zip(static, args):
            if s is not None:
                s.copy_(a)
        graph.replay()
        return tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()


def maybe_graphed(
    cache: CodeCache, key: tuple, fn: Callable[..., Any], args: Sequence[torch.Tensor | None], kwargs: dict,
    enabled: bool = True,
) -> Any:
    """``fn(*args, **kwargs)``, through ``cache``'s captured graphs when ``enabled``."""
    if not enabled:
        return fn(*args, **kwargs)
    return cache.run(key, fn, args, kwargs)


@contextlib.contextmanager
def compile_scope(enabled: bool) -> Iterator[None]:
    """Raise dynamo's recompile limit to :data:`RECOMPILE_LIMIT` for the calls inside only."""
    if not enabled:
        yield
        return
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    with cfg.patch(**{name: max(getattr(cfg, name), RECOMPILE_LIMIT)}):
        yield
