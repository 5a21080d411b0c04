"""Known answers for core/graphs.py that the mutation run (scripts/mutation.sh) found unpinned.

The CPU cases pin the cache's bookkeeping and the recompile-limit scope; the CUDA cases (skipped
without a GPU) pin capture, replay, keys and the copies of inputs and outputs."""

import copy
import pickle

import pytest
import torch
import torch._dynamo

from llava_vqtoken.core.graphs import MAX_GRAPHS, RECOMPILE_LIMIT, CodeCache, _signature, compile_scope, maybe_graphed

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def affine(x: torch.Tensor, y: torch.Tensor | None, *, scale: float = 2.0) -> torch.Tensor:
    return x * scale + (0 if y is None else y)


def pair(x: torch.Tensor, y: torch.Tensor | None, *, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    return x + 1, x * scale


def test_signature():
    x = torch.zeros(2, 3, dtype=torch.float16)
    assert _signature([x, None, torch.ones(4, dtype=torch.long)]) == (
        ((2, 3), torch.float16, "cpu"), None, ((4,), torch.long, "cpu"),
    )
    assert _signature([]) == ()


def test_cpu_runs_the_function_and_captures_nothing():
    cache = CodeCache()
    x = torch.tensor([1.0, 2.0])
    assert cache.run(("k",), affine, [x, None], {"scale": 3.0}).tolist() == [3.0, 6.0]
    assert maybe_graphed(cache, ("k",), affine, [x, x], {}).tolist() == [3.0, 6.0]
    assert maybe_graphed(cache, ("k",), affine, [x, None], {}, enabled=False).tolist() == [2.0, 4.0]
    assert maybe_graphed(cache, ("k",), affine, [x, None], {"scale": 5.0}, enabled=False).tolist() == [5.0, 10.0]
    assert len(cache) == 0 and cache.keys() == []
    assert cache.run(("k",), lambda: 5, [], {}) == 5  # no tensors at all


def test_copies_and_pickles_start_empty():
    cache = CodeCache()
    cache._graphs[("a",)] = ("graph", [], None)
    cache._compiled[affine] = affine
    assert len(cache) == 1 and cache.keys() == [("a",)]
    clone = copy.deepcopy(cache)
    assert isinstance(clone, CodeCache) and clone is not cache and len(clone) == 0 and clone._compiled == {}
    assert cache.__getstate__() == {"max_graphs": MAX_GRAPHS, "_graphs": {}, "_compiled": {}}
    restored = pickle.loads(pickle.dumps(CodeCache()))
    assert len(restored) == 0 and restored._compiled == {}
    holder = {"c": cache}
    assert len(copy.deepcopy(holder)["c"]) == 0


def test_compiled_is_built_once_per_function():
    cache = CodeCache()
    first = cache.compiled(affine)
    assert first is cache.compiled(affine)
    assert first is not affine and cache.compiled(pair) is not first
    assert list(cache._compiled) == [affine, pair]
    assert CodeCache().compiled(affine) is not first  # per owner


def test_compile_scope_raises_the_limit_inside_only():
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    before = getattr(cfg, name)
    assert RECOMPILE_LIMIT == 64
    with compile_scope(True):
        assert getattr(cfg, name) == max(before, 64)
    assert getattr(cfg, name) == before
    with compile_scope(False):
        assert getattr(cfg, name) == before
    with cfg.patch(**{name: 100}):
        with compile_scope(True):
            assert getattr(cfg, name) == 100  # never lowered
    entered = []
    with compile_scope(False):
        entered.append(1)
    with compile_scope(True):
        entered.append(2)
    assert entered == [1, 2]


@CUDA
def test_cuda_capture_replay_and_copies():
    cache = CodeCache()
    x = torch.tensor([1.0, 2.0], device="cuda")
    y = torch.tensor([10.0, 20.0], device="cuda")
    out = cache.run(("k",), affine, [x, y], {"scale": 3.0})
    assert out.tolist() == [13.0, 26.0] and len(cache) == 1
    (key,) = cache.keys()
    assert key == ("affine", ("k",), _signature([x, y]), (("scale", 3.0),))
    # replay with new values: same graph, new answer, the caller's earlier output untouched
    out2 = cache.run(("k",), affine, [x + 1, y], {"scale": 3.0})
    assert out2.tolist() == [16.0, 29.0] and out.tolist() == [13.0, 26.0] and len(cache) == 1
    graph, static, held = cache._graphs[key]
    assert out2.data_ptr() != held.data_ptr() and static[0].data_ptr() != x.data_ptr()
    # every part of the key makes a new graph: the caller's key, the kwargs, the shapes, a None
    cache.run(("other",), affine, [x, y], {"scale": 3.0})
    cache.run(("k",), affine, [x, y], {"scale": 4.0})
    cache.run(("k",), affine, [torch.ones(3, device="cuda"), torch.ones(3, device="cuda")], {"scale": 3.0})
    assert cache.run(("k",), affine, [x, None], {"scale": 3.0}).tolist() == [3.0, 6.0]
    assert cache.run(("k",), affine, [x + 2, None], {"scale": 3.0}).tolist() == [9.0, 12.0]
    assert len(cache) == 5


@CUDA
def test_cuda_tuple_outputs_are_cloned():
    cache = CodeCache()
    x = torch.tensor([1.0, 2.0], device="cuda")
    a, b = cache.run(("k",), pair, [x, None], {})
    c, d = cache.run(("k",), pair, [x * 10, None], {})
    assert a.tolist() == [2.0, 3.0] and b.tolist() == [2.0, 4.0]
    assert c.tolist() == [11.0, 21.0] and d.tolist() == [20.0, 40.0]


@CUDA
def test_cuda_with_gradients_runs_plainly():
    cache = CodeCache()
    x = torch.tensor([1.0, 2.0], device="cuda", requires_grad=True)
    out = cache.run(("k",), affine, [x, None], {})
    out.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0] and len(cache) == 0
    with torch.no_grad():
        cache.run(("k",), affine, [x, None], {})
    assert len(cache) == 1


@CUDA
def test_cuda_maybe_graphed_captures_by_default_under_the_key():
    cache = CodeCache()
    x = torch.tensor([1.0, 2.0], device="cuda")
    assert maybe_graphed(cache, ("k",), affine, [x, None], {}).tolist() == [2.0, 4.0]
    assert cache.keys() == [("affine", ("k",), _signature([x, None]), ())]
    assert maybe_graphed(cache, ("k",), affine, [x, None], {}, enabled=False).tolist() == [2.0, 4.0]
    assert len(cache) == 1


def test_compiled_fullgraph_refuses_a_graph_break():
    def breaks(x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.graph_break()
        return x + 1

    cache = CodeCache()
    with pytest.raises(torch._dynamo.exc.Unsupported):  # raised while tracing, before any code generation
        cache.compiled(breaks)(torch.ones(2))


def test_a_code_cache_keeps_only_its_most_recently_used_graphs():
    """Clips of many lengths (--fps sampling) each captured their own graphs, with clip-sized static
    copies, for the compressor's life: the cache now frees the least recently used beyond max_graphs."""
    cache = CodeCache(max_graphs=3)
    for key in "abcd":
        cache._remember(key, key.upper())
    assert cache.keys() == ["b", "c", "d"]  # a, the oldest, freed
    assert cache._recall("b") == "B" and cache._recall("a") is None
    cache._remember("e", "E")
    assert cache.keys() == ["d", "b", "e"]  # b was used again, so c went
    assert copy.deepcopy(cache).max_graphs == 3 and len(copy.deepcopy(cache)) == 0
    assert pickle.loads(pickle.dumps(cache)).max_graphs == 3
    assert CodeCache().max_graphs == MAX_GRAPHS >= 6  # three adaptive clip shapes at least
    with pytest.raises(ValueError, match="max_graphs must be >= 1, got 0"):
        CodeCache(max_graphs=0)
    one = CodeCache(max_graphs=1)  # the smallest bound: the newest entry only
    one._remember("a", 1)
    one._remember("b", 2)
    assert one.keys() == ["b"]
