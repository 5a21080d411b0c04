"""Known answers for core/compressor.py (the registry, VQTokenCompressor, CompressedVideo) for the
mutation run (scripts/mutation.sh).

Every answer is computed here from the input: clusterings are unambiguous (a few groups of tokens with
one direction each, so any k-means finds them whatever its seeding), codebooks are member means taken
by hand, attention outputs come from the compressor's own attention module fed the hand-made codebook
and key map, random streams from ``video_seed`` generators, parameter values from PyTorch's layer rules.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from torch import nn

from llava_vqtoken.config import CompressorConfig
from llava_vqtoken.core import baselines as bl
from llava_vqtoken.core import compressor as cmod
from llava_vqtoken.core.compressor import (
    BASELINES,
    COMPRESSORS,
    OUT_PROJ_STD,
    BaselineCompressor,
    CompressedVideo,
    CompressionError,
    VQTokenCompressor,
    build_compressor,
    check_features,
    expected_tokens,
    initial_value,
    pad_tokens,
)
from llava_vqtoken.core.kmeans import video_seed
from llava_vqtoken.core.vq_attention import ReleasedVQAttention, VQAttention

D = 8
T, H, W = 2, 2, 3
N = T * H * W
#: group (direction) of each token of video 0 and video 1, time-major raster
GROUPS = ([2, 2, 0, 1, 0, 2, 1, 1, 0, 2, 2, 0], [1, 0, 0, 2, 1, 1, 0, 2, 2, 2, 1, 0])
#: the key maps: codes numbered by first appearance
KEYS = ([0, 0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1], [0, 1, 1, 2, 0, 0, 1, 2, 2, 2, 0, 1])
IN_MSG = "video features contain NaN or Inf; check the vision tower's dtype and input frames"
OUT_MSG = "the compressor's output contains NaN or Inf although its input is finite; check its weights and dtype"
SMALL = dict(heads=2, footprint_freqs=1, ffn_dim=16)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def grouped_video(groups: list[int], scale: float = 1.0) -> torch.Tensor:
    """[T, H, W, D]: token i of group g is (1 + (i+1)/4) * scale * (e_g + 0.1 e_{g+3}) (one direction a group)."""
    x = torch.zeros(len(groups), D)
    for i, g in enumerate(groups):
        norm = scale * (1 + (i + 1) / 4)
        x[i, g] = norm
        x[i, g + 3] = 0.1 * norm
    return x.reshape(T, H, W, D)


def batch() -> torch.Tensor:
    return torch.stack([grouped_video(GROUPS[0]), grouped_video(GROUPS[1], 2.0)])


def hand_codebook(video: torch.Tensor, key: list[int], k: int = 3, normalized: bool = False) -> torch.Tensor:
    flat = video.reshape(-1, video.shape[-1]).double()
    if normalized:
        flat = flat / flat.norm(dim=-1, keepdim=True)
    labels = torch.tensor(key)
    return torch.stack([flat[labels == c].mean(0) for c in range(k)]).to(video.dtype)


def key_grid(key: list[int]) -> torch.Tensor:
    return torch.tensor(key).reshape(T, H, W)


def cfg(**kw) -> CompressorConfig:
    base = dict(num_tokens=3, **SMALL)
    base.update(kw)
    return CompressorConfig(**base)


def message(exc_type, fn, *args, **kw) -> str:
    with pytest.raises(exc_type) as e:
        fn(*args, **kw)
    return str(e.value)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- registry


def test_registry_names_builders_and_baseline_flags():
    assert set(COMPRESSORS) == {"vqtoken", "none", "pool", "uniform", "prune", "tome", "temporal_merge", "random"}
    for name in COMPRESSORS:
        config = CompressorConfig(name=name, num_tokens=4, **SMALL)
        comp = build_compressor(config, D)
        assert type(comp) is (VQTokenCompressor if name == "vqtoken" else BaselineCompressor)
        assert comp.config is config and comp.hidden_size == D
    flags = {n: (b.batched, b.seeded, b.bounded) for n, b in BASELINES.items()}
    assert flags == {
        "none": (False, False, False), "pool": (False, False, True), "uniform": (False, False, True),
        "prune": (False, False, True), "tome": (True, False, True), "temporal_merge": (True, False, True),
        "random": (False, True, True),
    }
    assert cmod.Baseline(print) == cmod.Baseline(print, batched=False, seeded=False, bounded=True)
    from_dict = build_compressor({"name": "pool", "num_tokens": 4}, D)
    assert from_dict.config == CompressorConfig(name="pool", num_tokens=4)
    assert build_compressor(None, D).config == CompressorConfig()


def test_expected_tokens_of_every_name_by_hand():
    def exp(t=4, h=4, w=6, **kw):
        c = CompressorConfig(**kw)
        assert build_compressor(c, D, grid=(h, w)).expected_tokens(t, h, w) == expected_tokens(c, t, h, w)
        return expected_tokens(c, t, h, w)

    assert exp(name="none", num_tokens=5) == 96
    assert exp(name="pool", num_tokens=None) == 4 * 2 * 3
    assert exp(name="pool", num_tokens=None, t=1, h=5, w=3) == 3 * 2
    assert exp(name="pool", num_tokens=16) == bl.pool_tokens(torch.zeros(4, 4, 6, 1), 16).shape[0] == 16
    assert exp(name="uniform", num_tokens=10) == bl.uniform_tokens(torch.zeros(4, 4, 6, 1), 10).shape[0] == 9
    for name in ("prune", "tome", "temporal_merge", "random"):
        assert exp(name=name, num_tokens=7) == 7
    assert exp(num_tokens=7) == 7
    assert exp(num_tokens=7, attention="none") == 7
    assert exp(num_tokens=None, adaptive="elbow", max_codes=9) is None
    assert exp(num_tokens=7, adaptive="elbow", max_codes=9) is None
    # the count functions themselves (the registry holds what they returned at import)
    assert cmod._shape_tokens("pool")(CompressorConfig(name="pool", num_tokens=None), 3, 5, 4) == 3 * 3 * 2
    assert cmod._shape_tokens("pool")(CompressorConfig(name="pool", num_tokens=16), 4, 4, 6) == 16
    assert cmod._shape_tokens("uniform")(CompressorConfig(name="uniform", num_tokens=10), 4, 4, 6) == 9
    adaptive = CompressorConfig(num_tokens=7, adaptive="elbow", max_codes=9)
    for name in ("prune", "tome", "temporal_merge", "random"):  # content-dependent: None
        assert COMPRESSORS[name].expected_tokens(adaptive, 4, 4, 6) is None
    released = dict(num_tokens=12, attention="released", heads=2, ffn_dim=16)
    assert exp(t=20, **released) == 20  # max(T, K), as released
    assert exp(t=5, **released) == 12
    assert exp(t=20, apply_attention=False, **released) == 12


# ----------------------------------------------------------------------------- baselines


def baseline_reference(name: str, v: torch.Tensor, budget: int | None, g: torch.Generator) -> torch.Tensor:
    if name == "none":
        return v.reshape(-1, v.shape[-1])
    if name == "random":
        return bl.random_tokens(v, budget, g)
    fn = {"pool": bl.pool_tokens, "uniform": bl.uniform_tokens, "prune": bl.prune_tokens, "tome": bl.tome_tokens,
          "temporal_merge": bl.temporal_merge_tokens}[name]
    return fn(v, budget)


def test_baselines_give_their_functions_output_video_by_video():
    x = torch.randn(2, 4, 4, 4, 3, generator=torch.Generator().manual_seed(0))
    n = 64
    for name, budget in [("none", 7), ("pool", None), ("pool", 8), ("uniform", 9), ("prune", 5), ("tome", 6),
                         ("temporal_merge", 6), ("random", 5)]:
        comp = build_compressor(CompressorConfig(name=name, num_tokens=budget, seed=3), 3)
        out = comp(x)
        assert len(out) == 2
        for i, o in enumerate(out):
            want = baseline_reference(name, x[i], budget, torch.Generator().manual_seed(3))
            close(o.tokens, want)
            assert o.tokens_in == n and o.num_tokens == want.shape[0] == comp.expected_tokens(4, 4, 4)
            assert o.key_map is None and o.codebook is None and o.num_codes is None and o.stats == {}
            alone = comp(x[i : i + 1])[0]
            close(alone.tokens, o.tokens)
    assert build_compressor(CompressorConfig(name="none", num_tokens=1000), 3)(x)[0].num_tokens == n


def test_baseline_modules_and_parameters():
    comp = build_compressor(CompressorConfig(name="tome", num_tokens=4), D)
    assert comp.compute_modules() == {"": comp} and list(comp.parameters()) == []
    comp.reset_parameters()  # nothing to initialise
    assert len(comp.code_cache) == 0 and comp.expected_tokens(2, 3, 3) == 4


def test_random_baseline_draws_from_each_videos_id():
    x = torch.randn(2, 2, 3, 3, 2, generator=torch.Generator().manual_seed(1))
    comp = build_compressor(CompressorConfig(name="random", num_tokens=4, seed=5), 2)
    out = comp(x, video_ids=[7, 2])
    for i, vid in enumerate([7, 2]):
        g = torch.Generator().manual_seed(video_seed(5, vid))
        close(out[i].tokens, bl.random_tokens(x[i], 4, g))
        close(comp(x[i : i + 1], video_ids=[vid])[0].tokens, out[i].tokens)
    # without ids both videos take the seed's own stream: the same positions
    same = comp(torch.stack([x[0], x[0]]))
    close(same[0].tokens, same[1].tokens)
    close(same[0].tokens, bl.random_tokens(x[0], 4, torch.Generator().manual_seed(5)))
    g = comp._video_generator(torch.device("cpu"), None, 0)
    assert g.device == torch.device("cpu") and g.initial_seed() == 5
    assert comp._video_generator(torch.device("cpu"), [4, 9], 1).initial_seed() == video_seed(5, 9)


def test_baseline_refusals_word_for_word():
    x = torch.zeros(1, 2, 2, 2, 3)
    for name in ("pool", "uniform", "prune", "tome", "temporal_merge", "random"):
        comp = build_compressor(CompressorConfig(name=name, num_tokens=9), 3)
        assert message(CompressionError, comp, x) == "num_tokens=9 exceeds the video's 8 tokens"
        ok = build_compressor(CompressorConfig(name=name, num_tokens=8), 3)(x + 1.0)[0]
        assert ok.num_tokens <= 8
    bad = x.clone()
    bad[0, 1, 1, 1, 2] = float("inf")
    pool = build_compressor(CompressorConfig(name="pool", num_tokens=4), 3)
    assert not pool.folds_finite_check
    assert message(CompressionError, pool, bad, defer_checks=True) == IN_MSG


# ----------------------------------------------------------------------------- input checks


def test_check_features_messages_word_for_word():
    assert message(CompressionError, check_features, torch.zeros(1, 2, 3, 4)) == (
        "video features must be [B, T, H, W, D], got shape (1, 2, 3, 4)")
    assert message(CompressionError, check_features, torch.zeros(1, 0, 2, 2, 8)) == (
        "video features are empty: shape (1, 0, 2, 2, 8) (zero frames?)")
    assert message(CompressionError, check_features, torch.zeros(1, 1, 2, 2, 0)) == (
        "video features are empty: shape (1, 1, 2, 2, 0) (zero frames?)")
    nan = torch.zeros(1, 1, 2, 2, 3)
    nan[0, 0, 1, 1, 2] = float("nan")
    assert message(CompressionError, check_features, nan) == IN_MSG
    check_features(nan, finite=False)
    check_features(torch.zeros(1, 1, 1, 1, 1))
    assert issubclass(CompressionError, ValueError)


def test_forward_refusals_word_for_word():
    comp = build_compressor(cfg(), D)
    assert message(CompressionError, comp, torch.zeros(1, T, H, W, 4)) == (
        "features have width 4 but the compressor was built for 8")
    assert message(ValueError, comp, batch(), video_ids=[1]) == "video_ids has 1 entries for a batch of 2 videos"
    # the batch is dim 0 (B != T here)
    three = torch.zeros(3, T, H, W, D)
    assert message(ValueError, comp, three, video_ids=[1]) == "video_ids has 1 entries for a batch of 3 videos"
    prune = build_compressor(CompressorConfig(name="prune", num_tokens=2), D)
    assert message(ValueError, prune, batch()[:1], video_ids=[1, 2]) == (
        "video_ids has 2 entries for a batch of 1 videos")
    assert len(prune(three, video_ids=[1, 2, 3])) == 3
    big = build_compressor(cfg(num_tokens=13), D)
    assert message(CompressionError, big, batch()) == "num_tokens=13 exceeds the video's 12 tokens"
    assert build_compressor(cfg(num_tokens=12, attention="none"), D)(batch())[0].num_tokens == 12
    adaptive = build_compressor(cfg(num_tokens=None, adaptive="elbow", min_codes=2, max_codes=13), D)
    assert message(CompressionError, adaptive, batch()) == "max_codes=13 exceeds the video's 12 tokens"
    every = build_compressor(cfg(num_tokens=None, adaptive="separation", min_codes=2, max_codes=12), D)
    assert [o.num_codes for o in every(batch())] == [3, 3]  # max_codes = N is allowed
    assert message(CompressionError, VQTokenCompressor, cfg(attention="released"), D) == (
        "attention='released' needs grid_cells (tokens per frame, e.g. 27*27)")


# ----------------------------------------------------------------------------- CompressedVideo, pad_tokens


def test_verify_and_num_tokens():
    tok = torch.zeros(3, 2)
    assert CompressedVideo(tok, 5).num_tokens == 3 and isinstance(CompressedVideo(tok, 5).num_tokens, int)
    v = CompressedVideo(tok, 5)
    assert v.verify() is v and v.key_map is None and v.codebook is None and v.num_codes is None and v.stats == {}
    yes, no = torch.tensor(True), torch.tensor(False)
    for stats in ({"finite": yes, "finite_output": yes}, {"finite": yes}, {"finite": True, "finite_output": True},
                  {"finite": True, "finite_output": yes}, {"finite": yes, "finite_output": None}):
        v = CompressedVideo(tok, 5, stats=stats)
        assert v.verify() is v
    for stats in ({"finite": no, "finite_output": yes}, {"finite": no, "finite_output": no}, {"finite": False},
                  {"finite": no}):
        assert message(CompressionError, CompressedVideo(tok, 5, stats=stats).verify) == IN_MSG
    for stats in ({"finite": yes, "finite_output": no}, {"finite": True, "finite_output": False}):
        assert message(CompressionError, CompressedVideo(tok, 5, stats=stats).verify) == OUT_MSG


def test_pad_tokens_by_hand():
    a = CompressedVideo(torch.tensor([[7.0, 8.0]], dtype=torch.float64), 4)
    b = CompressedVideo(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64), 4)
    padded, lengths = pad_tokens([a, b])
    assert padded.dtype == torch.float64
    assert padded.tolist() == [[[7, 8], [0, 0], [0, 0]], [[1, 2], [3, 4], [5, 6]]]
    assert lengths.dtype == torch.long and lengths.tolist() == [1, 3]
    padded, lengths = pad_tokens([b, a, b])
    assert padded.shape == (3, 3, 2) and lengths.tolist() == [3, 1, 3] and padded[1, 1:].abs().sum() == 0
    padded, lengths = pad_tokens([a])
    assert padded.tolist() == [[[7, 8]]] and lengths.tolist() == [1]


@CUDA
def test_verify_and_pad_tokens_on_cuda():
    # a deferred flag on the GPU beside a plain bool: both go to the first flag's device
    yes = torch.tensor(True, device="cuda")
    v = CompressedVideo(torch.zeros(2, 3, device="cuda"), 4, stats={"finite": yes, "finite_output": True})
    assert v.verify() is v
    bad = CompressedVideo(v.tokens, 4, stats={"finite": yes, "finite_output": False})
    assert message(CompressionError, bad.verify) == OUT_MSG
    padded, lengths = pad_tokens([v, CompressedVideo(torch.ones(1, 3, device="cuda"), 4)])
    assert padded.device.type == "cuda" and lengths.device.type == "cuda" and lengths.tolist() == [2, 1]


# ----------------------------------------------------------------------------- parameter initialisation


def _uniform(shape, bound, g):
    return ((torch.rand(shape, generator=g, dtype=torch.float64) * 2.0 - 1.0) * bound).float()


def _rules_paper(d: int, fdim: int) -> dict[str, tuple[str, float]]:
    u = ("u", 1 / math.sqrt(d))
    rules = {"attention.footprint_mlp.0.weight": ("u", 1 / math.sqrt(fdim)),
             "attention.footprint_mlp.0.bias": ("u", 1 / math.sqrt(fdim)),
             "attention.footprint_mlp.2.weight": u, "attention.footprint_mlp.2.bias": u,
             "attention.out_proj.weight": ("n", OUT_PROJ_STD / math.sqrt(d / 64)),
             "attention.out_proj.bias": ("0", 0)}
    for p in ("q", "k", "v"):
        rules.update({f"attention.{p}_proj.weight": u, f"attention.{p}_proj.bias": u})
    return rules


def _rules_released(d: int, cells: int, ffn: int) -> dict[str, tuple[str, float]]:
    rules = {"attention.to_q_proj.weight": ("u", 1 / math.sqrt(cells)),
             "attention.to_q_proj.bias": ("u", 1 / math.sqrt(cells))}
    layer = "attention.transformer_decoder.layers.0."
    for att in ("self_attn", "multihead_attn"):
        rules.update({f"{layer}{att}.in_proj_weight": ("u", math.sqrt(6.0 / (4 * d))),
                      f"{layer}{att}.in_proj_bias": ("0", 0),
                      f"{layer}{att}.out_proj.weight": ("u", 1 / math.sqrt(d)),
                      f"{layer}{att}.out_proj.bias": ("0", 0)})
    rules.update({f"{layer}linear1.weight": ("u", 1 / math.sqrt(d)), f"{layer}linear1.bias": ("u", 1 / math.sqrt(d)),
                  f"{layer}linear2.weight": ("u", 1 / math.sqrt(ffn)),
                  f"{layer}linear2.bias": ("u", 1 / math.sqrt(ffn))})
    for i in (1, 2, 3):
        rules.update({f"{layer}norm{i}.weight": ("1", 0), f"{layer}norm{i}.bias": ("0", 0)})
    return rules


def _expected(name: str, shape, rule: tuple[str, float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(video_seed(seed, zlib.crc32(name.encode())))
    kind, scale = rule
    if kind == "u":
        return _uniform(shape, scale, g)
    if kind == "n":
        return torch.randn(shape, generator=g) * scale
    return torch.ones(shape) if kind == "1" else torch.zeros(shape)


def _check_params(named: dict[str, torch.Tensor], rules: dict[str, tuple[str, float]], seed: int) -> None:
    assert set(named) == set(rules)
    for name, p in named.items():
        assert torch.equal(p.detach(), _expected(name, p.shape, rules[name], seed)), name


@pytest.mark.parametrize("seed", [0, 3])
def test_reset_parameters_by_each_layer_rule(seed):
    torch.manual_seed(1234)  # the global RNG plays no part
    paper = build_compressor(cfg(seed=seed), D)
    fdim = paper.attention.footprint_mlp[0].in_features
    assert fdim == 3 * 2 * 1 + 8
    _check_params(dict(paper.named_parameters()), _rules_paper(D, fdim), seed)
    released = build_compressor(cfg(seed=seed, attention="released"), D, grid=(H, W))
    _check_params(dict(released.named_parameters()), _rules_released(D, H * W, 16), seed)


def test_detached_attention_is_still_initialised_and_used():
    comp = build_compressor(cfg(), D)
    att = comp.attention
    x = batch()
    want = comp(x)
    assert comp.detach_attention() is att and comp.attention is att
    assert list(comp.parameters()) == [] and list(comp.state_dict()) == []
    assert set(comp.compute_modules()) == {"", "attention"} | {f"attention.{n}" for n, _ in att.named_modules() if n}
    assert comp.compute_modules()["attention.q_proj"] is att.q_proj
    with torch.no_grad():
        for p in att.parameters():
            p.zero_()
    comp.reset_parameters()
    _check_params({f"attention.{n}": p for n, p in att.named_parameters()}, _rules_paper(D, 14), 0)
    for a, b in zip(comp(x), want):
        close(a.tokens, b.tokens)
    key = comp._graph_key(T, H, W)
    assert len(key[-1]) == len(list(att.parameters())) == 12
    none = build_compressor(cfg(attention="none"), D)
    assert none.attention is None and none.detach_attention() is None and none.attention is None
    assert set(none.compute_modules()) == {""} and list(none.parameters()) == []


def test_zero3_partitioned_parameters_are_left_to_the_host():
    comp = build_compressor(cfg(), D)
    q = comp.attention.q_proj
    empty = nn.Parameter(torch.empty(0))
    empty.ds_shape = (D, D)
    q.weight = empty
    with torch.no_grad():
        q.bias.zero_()
    comp.reset_parameters()  # skips the partitioned weight, still sets the bias after it
    assert q.weight.numel() == 0
    assert torch.equal(q.bias.detach(), _expected("attention.q_proj.bias", (D,), ("u", 1 / math.sqrt(D)), 0))
    root = build_compressor(cfg(), D)
    root.register_parameter("zero3", nn.Parameter(torch.empty(0)))
    assert message(TypeError, root.reset_parameters) == (
        "no initialisation rule for parameter 'zero3' of VQTokenCompressor")
    root.zero3.ds_shape = (3,)
    root.reset_parameters()
    assert message(TypeError, initial_value, nn.Conv1d(1, 1, 1), "weight", torch.Size([1, 1, 1]),
                   torch.Generator(), None, "") == "no initialisation rule for parameter 'weight' of Conv1d"


def test_attention_modules_built_from_the_config():
    paper = build_compressor(cfg(heads=4, footprint_freqs=2), D).attention
    assert type(paper) is VQAttention
    assert (paper.heads, paper.freqs, paper.mode, paper.motion) == (4, 2, "paper", False)
    rnd = build_compressor(cfg(attention="random", footprint="motion"), D).attention
    assert (rnd.heads, rnd.freqs, rnd.mode, rnd.motion) == (2, 1, "random", True)
    rel = build_compressor(cfg(attention="released", heads=4, ffn_dim=24), D, grid=(2, 3)).attention
    assert type(rel) is ReleasedVQAttention and rel.grid_cells == 6
    assert rel.to_q_proj.in_features == 6 and rel.to_q_proj.out_features == D
    layer = rel.transformer_decoder.layers[0]
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 24
    assert build_compressor(cfg(attention="released"), D, grid=(3, 3)).attention.grid_cells == 9


# ----------------------------------------------------------------------------- VQToken known answers


@pytest.mark.parametrize("normalized", [False, True])
def test_codebook_key_map_and_tokens_by_hand(normalized):
    x = batch()
    comp = build_compressor(cfg(codebook="normalized" if normalized else "raw"), D)
    out = comp(x)
    assert len(out) == 2
    for i, o in enumerate(out):
        assert o.key_map.tolist() == key_grid(KEYS[i]).tolist()
        book = hand_codebook(x[i], KEYS[i], normalized=normalized)
        close(o.codebook, book)
        with torch.no_grad():
            want = comp.attention(book[None], key_grid(KEYS[i])[None], active=torch.ones(1, 3, dtype=torch.bool))[0]
        close(o.tokens, want)
        assert o.tokens_in == N and o.num_codes == 3 and o.num_tokens == 3 and o.tokens.dtype == torch.float32
        assert set(o.stats) == {"num_codes", "inertia", "finite", "finite_output"}
        assert o.stats["num_codes"] == 3 and o.stats["finite"].item() and o.stats["finite_output"].item()
        alone = comp(x[i : i + 1])[0]
        assert torch.equal(alone.key_map, o.key_map)
        close(alone.tokens, o.tokens)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_codebook_only_keeps_the_features_dtype(dtype):
    x = batch().to(dtype)
    comp = build_compressor(cfg(attention="none"), D)
    for i, o in enumerate(comp(x)):
        assert o.tokens.dtype == dtype and o.codebook.dtype == dtype
        want = hand_codebook(x[i].float(), KEYS[i]).to(dtype)
        torch.testing.assert_close(o.tokens, want, rtol=1e-2, atol=1e-3)
        assert torch.equal(o.codebook, o.tokens)


def test_float64_features_compress():
    # regression: kmeans.normalize_tokens' vector_norm(dtype=float32) refused float64 input (fixed in 2061d6c)
    x = batch().double()
    out = build_compressor(cfg(attention="none"), D)(x)
    assert out[0].tokens.dtype == torch.float64
    close(out[0].tokens, hand_codebook(x[0], KEYS[0]))


def test_inertia_is_the_clusterings():
    x = batch()
    x[1] += 0.05 * torch.randn(T, H, W, D, generator=torch.Generator().manual_seed(0))
    config = cfg(attention="none")
    out = build_compressor(config, D)(x)
    res = cmod.cosine_kmeans(x.reshape(2, N, D), 3, config.iters, config.tol, config.seed, config.seed_sample,
                             oversample=config.oversample)
    assert out[1].stats["inertia"].item() > 1e-3
    for i in range(2):
        close(out[i].stats["inertia"], res.inertia[i])


def test_post_with_an_unused_code_takes_its_reordered_centroid():
    # old codes: 2 holds tokens 0, 1, 3; 0 holds token 2; 1 is unused -> new order 2, 0, 1
    x = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [1.0, 1.0], [0.0, 2.0]]])
    labels = torch.tensor([[2, 2, 0, 2]])
    centroids = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    active = torch.ones(1, 3, dtype=torch.bool)
    for codebook, scale in (("raw", (3 + 4 + 2**0.5 + 2) / 4), ("normalized", 1.0)):
        comp = build_compressor(CompressorConfig(num_tokens=3, attention="none", codebook=codebook), 2)
        tokens, key_map, book, finite, finite_out = comp._post(x, labels, centroids, active, frames=1, height=2,
                                                               width=2)
        assert key_map.tolist() == [[[[0, 0], [1, 0]]]]
        if codebook == "raw":
            first = [1.0, 2.0]
        else:
            first = [(1 + 0 + 0) / 3, (0 + 1 + 1) / 3]
        second = [1.0, 1.0] if codebook == "raw" else [2**-0.5, 2**-0.5]
        close(book, torch.tensor([[first, second, [0.6 * scale, 0.8 * scale]]]))
        assert tokens is book or torch.equal(tokens, book)
        assert finite.item() and finite_out.item()


def test_released_layout_applied_and_not():
    x = batch()
    comp = build_compressor(cfg(attention="released", codebook="normalized"), D, grid=(H, W)).eval()
    out = comp(x)
    for i, o in enumerate(out):
        book = hand_codebook(x[i], KEYS[i], normalized=True)
        close(o.codebook, book)
        with torch.no_grad():
            want = comp.attention(book, key_grid(KEYS[i]))
        assert o.tokens.shape == (3, D) and o.num_codes == 3
        close(o.tokens, want)
        assert o.stats["finite_output"].item()
    plain = build_compressor(cfg(attention="released", apply_attention=False), D, grid=(H, W))
    for i, o in enumerate(plain(x)):
        close(o.tokens, hand_codebook(x[i], KEYS[i]))
    # more frames than codes: max(T, K) tokens
    long = torch.stack([grouped_video(GROUPS[0])] * 2, dim=0).reshape(1, 4, H, W, D)
    comp2 = build_compressor(cfg(attention="released", num_tokens=2), D, grid=(H, W)).eval()
    assert comp2(long)[0].num_tokens == 4


def test_released_output_nan_is_refused():
    comp = build_compressor(cfg(attention="released"), D, grid=(H, W)).eval()
    with torch.no_grad():
        comp.attention.transformer_decoder.layers[0].norm3.bias.fill_(float("nan"))
    assert message(CompressionError, comp, batch()) == OUT_MSG
    out = comp(batch(), defer_checks=True)
    assert message(CompressionError, out[1].verify) == OUT_MSG


def _draw(seed: int, ids, b: int):
    def draw(fn):
        if ids is None:
            one = fn(torch.Generator().manual_seed(seed))
            return one.expand(b, *one.shape[1:])
        return torch.cat([fn(torch.Generator().manual_seed(video_seed(seed, i))) for i in ids])

    return draw


@pytest.mark.parametrize("ids", [None, (4, 11)])
@pytest.mark.parametrize(
    "change", [{"hash": "random"}, {"attention": "random"}, {"hash": "random", "attention": "random"}]
)
def test_random_ablations_draw_from_their_own_streams(ids, change):
    x = batch()
    config = cfg(seed=7, **change)
    comp = build_compressor(config, D)
    out = comp(x, video_ids=None if ids is None else torch.tensor(ids))
    books = torch.stack([hand_codebook(x[i], KEYS[i]) for i in range(2)])
    keys = torch.stack([key_grid(KEYS[i]) for i in range(2)])
    attn_map = keys
    if change.get("hash") == "random":
        r = _draw(8, ids, 2)(lambda g: torch.rand(1, N, generator=g))
        attn_map = (r * 3).long().reshape(2, T, H, W)
    draw = _draw(9, ids, 2) if change.get("attention") == "random" else None
    with torch.no_grad():
        want = comp.attention(books, attn_map, active=torch.ones(2, 3, dtype=torch.bool), draw=draw)
    for i, o in enumerate(out):
        assert o.key_map.tolist() == keys[i].tolist()  # the key map handed on is the clustering's
        close(o.codebook, books[i])
        close(o.tokens, want[i])
    if ids is not None:
        for i in range(2):
            close(comp(x[i : i + 1], video_ids=[ids[i]])[0].tokens, out[i].tokens)


def test_adaptive_k_matches_the_selection_and_masks_inactive_codes():
    x = batch()
    config = cfg(num_tokens=None, adaptive="separation", min_codes=2, max_codes=5)
    comp = build_compressor(config, D)
    assert not comp.folds_finite_check and build_compressor(cfg(), D).folds_finite_check
    out = comp(x)
    res, choices = cmod.adaptive_kmeans(
        x.reshape(2, N, D), 2, 5, "separation", config.iters, config.refine_iters, config.tol, config.seed,
        config.seed_sample, config.silhouette_sample, oversample=config.oversample)
    assert [o.num_codes for o in out] == [c.k for c in choices] == [3, 3]
    for i, o in enumerate(out):
        assert o.key_map.tolist() == key_grid(KEYS[i]).tolist()
        book = hand_codebook(x[i], KEYS[i])
        close(o.codebook, book)
        padded = torch.cat([book, torch.zeros(2, D)])[None]
        active = torch.tensor([[True] * 3 + [False] * 2])
        with torch.no_grad():
            want = comp.attention(padded, key_grid(KEYS[i])[None], active=active)[0, :3]
        close(o.tokens, want)
        assert o.stats["clamped"] == choices[i].clamped and o.stats["k_unclamped"] == choices[i].k_unclamped
        assert set(o.stats) == {"num_codes", "inertia", "finite", "finite_output", "clamped", "k_unclamped"}
        assert o.stats["num_codes"] == 3


@pytest.mark.parametrize(("low", "high", "k", "clamped"), [(4, 5, 4, "low"), (1, 2, 2, "high")])
def test_adaptive_clamping_is_reported(low, high, k, clamped):
    config = cfg(num_tokens=None, adaptive="separation", min_codes=low, max_codes=high, attention="none")
    out = build_compressor(config, D)(batch())
    _, choices = cmod.adaptive_kmeans(batch().reshape(2, N, D), low, high, "separation", oversample=config.oversample)
    for o, c in zip(out, choices):
        assert (o.num_codes, o.stats["clamped"], o.stats["k_unclamped"]) == (c.k, c.clamped, c.k_unclamped)
        assert (o.num_codes, o.stats["clamped"], o.stats["k_unclamped"]) == (k, clamped, 3)


def test_adaptive_k_differs_per_video_and_pads_each_to_its_own_k():
    two = [0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1]
    x = torch.stack([grouped_video(GROUPS[0]), grouped_video(two)])
    config = cfg(num_tokens=None, adaptive="separation", min_codes=1, max_codes=4, attention="none")
    out = build_compressor(config, D)(x)
    res, choices = cmod.adaptive_kmeans(x.reshape(2, N, D), 1, 4, "separation", oversample=config.oversample)
    ks = [c.k for c in choices]
    assert [o.num_codes for o in out] == ks
    for i, o in enumerate(out):
        assert o.num_tokens == ks[i] and o.codebook.shape == (ks[i], D)
    assert ks == [3, 2]  # three and two directions
    close(out[0].tokens, hand_codebook(x[0], KEYS[0]))
    close(out[1].tokens, hand_codebook(x[1], two, k=2))


# ----------------------------------------------------------------------------- non-finite input and output


def test_nan_input_fixed_k_is_refused_now_or_at_verify():
    x = batch()
    x[1, 1, 0, 2, 5] = float("nan")  # in the second video: the check covers the batch
    comp = build_compressor(cfg(), D)
    assert message(CompressionError, comp, x) == IN_MSG
    out = comp(x, defer_checks=True)
    assert len(out) == 2 and not out[0].stats["finite"].item()
    assert message(CompressionError, out[0].verify) == IN_MSG
    assert message(CompressionError, out[1].verify) == IN_MSG
    adaptive = build_compressor(cfg(num_tokens=None, adaptive="elbow", min_codes=2, max_codes=4), D)
    assert message(CompressionError, adaptive, x, defer_checks=True) == IN_MSG
    inf = batch()
    inf[0, 0, 0, 0, 0] = float("-inf")
    assert message(CompressionError, comp, inf) == IN_MSG


def test_nan_output_is_refused_now_or_at_verify():
    comp = build_compressor(cfg(), D)
    with torch.no_grad():
        comp.attention.out_proj.bias[3] = float("inf")
    assert message(CompressionError, comp, batch()) == OUT_MSG
    out = comp(batch(), defer_checks=True)
    assert out[0].stats["finite"].item() and not out[0].stats["finite_output"].item()
    assert message(CompressionError, out[1].verify) == OUT_MSG
    # the codebook is checked too (an input overflowing in the mean): attention none, fp16 members
    big = torch.full((1, 1, 2, 2, 4), 6e4, dtype=torch.float16)
    plain = build_compressor(CompressorConfig(num_tokens=1, attention="none", codebook="raw"), 4)
    o = plain(big)[0]
    assert o.tokens.dtype == torch.float16 and torch.isfinite(o.tokens).all()


# ----------------------------------------------------------------------------- what reaches clustering and graph


def _spy(monkeypatch, name, **override):
    """Record the calls of ``cmod.name``; the real function runs with ``override`` (e.g. no compile)."""
    calls = []
    real = getattr(cmod, name)

    def spy(*args, **kwargs):
        calls.append((args, dict(kwargs)))
        return real(*args, **{**kwargs, **override})

    monkeypatch.setattr(cmod, name, spy)
    return calls


def test_fixed_k_clustering_arguments(monkeypatch):
    calls = _spy(monkeypatch, "cosine_kmeans", compiled=False)
    config = cfg(iters=3, tol=0.5, seed=6, seed_sample=5, oversample=3, cuda_graphs=False, compile=False)
    comp = build_compressor(config, D)
    x = batch()
    comp(x, video_ids=torch.tensor([5, 1]))
    (args, kwargs), = calls
    assert torch.equal(args[0], x.reshape(2, N, D)) and args[1:] == (3, 3, 0.5, 6, 5)
    assert kwargs.pop("cache") is comp.code_cache
    ids = kwargs.pop("video_ids")
    assert ids == (5, 1) and all(type(i) is int for i in ids)
    assert kwargs == {"cuda_graphs": False, "compiled": False, "oversample": 3}
    calls.clear()
    build_compressor(cfg(cuda_graphs=True, compile=True, iters=0), D)(x)
    assert calls[0][1]["cuda_graphs"] is True and calls[0][1]["compiled"] is True
    assert calls[0][1]["video_ids"] is None


def test_adaptive_clustering_arguments(monkeypatch):
    calls = _spy(monkeypatch, "adaptive_kmeans")
    config = cfg(num_tokens=None, adaptive="silhouette", min_codes=2, max_codes=4, iters=3, refine_iters=2,
                 tol=0.5, seed=6, seed_sample=5, silhouette_sample=7, oversample=3, cuda_graphs=False)
    comp = build_compressor(config, D)
    x = batch()
    comp(x, video_ids=[5, 1])
    (args, kwargs), = calls
    assert torch.equal(args[0], x.reshape(2, N, D))
    assert args[1:] == (2, 4, "silhouette", 3, 2, 0.5, 6, 5, 7, False, False)
    assert kwargs.pop("cache") is comp.code_cache
    assert kwargs == {"video_ids": (5, 1), "oversample": 3}


@pytest.mark.parametrize(
    ("change", "grad", "enabled"),
    [
        ({}, False, True), ({}, True, False), ({"cuda_graphs": False}, False, False),
        ({"attention": "none"}, True, True), ({"attention": "none"}, "input", False),
        ({"hash": "random"}, False, False), ({"attention": "random"}, False, False),
        ({"attention": "released"}, False, False), ({"attention": "released", "apply_attention": False}, False, True),
        ({"attention": "random", "apply_attention": False}, False, False),
    ],
)
def test_post_graph_is_enabled_only_where_it_can_be(monkeypatch, change, grad, enabled):
    calls = _spy(monkeypatch, "maybe_graphed")
    comp = build_compressor(cfg(**change), D, grid=(H, W)).eval()
    x = batch().requires_grad_(grad == "input")
    with torch.set_grad_enabled(bool(grad)):
        comp(x, video_ids=[3, 4])
    (args, kwargs), = calls
    assert kwargs == {"enabled": enabled}
    assert args[0] is comp.code_cache and args[1] == comp._graph_key(T, H, W)
    assert args[2] == comp._post and torch.equal(args[3][0], x.reshape(2, N, D)) and len(args[3]) == 4
    assert args[4] == {"frames": T, "height": H, "width": W, "video_ids": (3, 4)}


def test_graph_key_by_hand():
    comp = build_compressor(cfg(), D)
    params = list(comp.parameters())
    assert comp._graph_key(T, H, W) == (
        "vqtoken-post", comp.config.to_json(), T, H, W,
        tuple((p.data_ptr(), tuple(p.shape), p.dtype, "cpu") for p in params),
    )
    assert comp._streams(2, torch.device("cpu"), 1, None).generators[0].initial_seed() == comp.config.seed + 1


@CUDA
@pytest.mark.parametrize(
    "change",
    [{}, {"hash": "random", "attention": "random"},
     {"num_tokens": None, "adaptive": "separation", "min_codes": 2, "max_codes": 5}, {"attention": "released"}],
)
def test_cuda_compressor_keeps_every_helper_on_the_device(change):
    # CPU-made generators, masks or index tensors fail against CUDA features. A group of exact copies
    # (equal in bf16 on CUDA) falls in one half of the separation rule's cross-fit and cannot be told
    # apart: the groups get a little noise here.
    x = (batch() + 1e-2 * torch.randn(batch().shape, generator=torch.Generator().manual_seed(0))).cuda()
    comp = build_compressor(cfg(**change), D, grid=(H, W)).cuda().eval()
    with torch.no_grad():
        for ids in (None, [3, 4]):
            out = comp(x, video_ids=ids)
            for i, o in enumerate(out):
                assert o.key_map.device.type == "cuda" and o.tokens.device.type == "cuda"
                assert o.key_map.cpu().tolist() == key_grid(KEYS[i]).tolist()
                torch.testing.assert_close(o.codebook.cpu(), hand_codebook(x[i].cpu(), KEYS[i]), rtol=1e-3, atol=1e-3)
    rnd = build_compressor(CompressorConfig(name="random", num_tokens=4), D)
    out = rnd(x, video_ids=[3, 4])
    assert out[1].tokens.device.type == "cuda" and out[1].num_tokens == 4
