import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llava_vqtoken.config import CompressorConfig, ConfigError
from llava_vqtoken.core import CompressionError, build_compressor, pad_tokens
from llava_vqtoken.core.keymap import canonical_order

BASELINES = ["pool", "uniform", "prune", "tome", "temporal_merge", "random"]


def feats(b=1, t=4, h=6, w=5, d=32, seed=0, dtype=torch.float32):
    return torch.randn(b, t, h, w, d, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("k", [12, 32, 64])
def test_fixed_k_exact_token_count(k):
    x = feats(b=2, t=8, h=9, w=9)
    comp = build_compressor(CompressorConfig(num_tokens=k), 32)
    out = comp(x)
    assert [o.num_tokens for o in out] == [k, k]
    assert comp.expected_tokens(8, 9, 9) == k
    for o in out:
        assert o.key_map.shape == (8, 9, 9)
        assert o.key_map.max() < k and o.codebook.shape == (k, 32)
        assert len(torch.unique(o.key_map)) == k  # every code used
        assert o.tokens.dtype == x.dtype


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("budget", [12, 32, 64])
def test_baselines_respect_total_budget(name, budget):
    x = feats(t=16, h=9, w=9)
    comp = build_compressor(CompressorConfig(name=name, num_tokens=budget), 32)
    out = comp(x)[0]
    assert out.num_tokens <= budget
    if name in ("prune", "tome", "temporal_merge", "random"):
        assert out.num_tokens == budget
    assert comp.expected_tokens(16, 9, 9) == out.num_tokens


def test_stock_pooling_and_identity_counts():
    x = feats(t=3, h=27, w=27, d=16)
    assert build_compressor(CompressorConfig(name="pool", num_tokens=None), 16)(x)[0].num_tokens == 3 * 14 * 14
    assert build_compressor(CompressorConfig(name="none"), 16)(x)[0].num_tokens == 3 * 729


@pytest.mark.parametrize("method", ["elbow", "silhouette"])
def test_adaptive_k_within_range(method):
    x = feats(b=3, t=4, h=8, w=8)
    comp = build_compressor(CompressorConfig(num_tokens=None, adaptive=method, min_codes=5, max_codes=20), 32)
    for o in comp(x):
        assert 5 <= o.num_codes <= 20 and o.num_tokens == o.num_codes
        assert o.stats["clamped"] in (None, "low", "high")
        assert o.key_map.max() < o.num_codes


def test_canonical_order_is_first_appearance():
    labels = torch.tensor([[3, 3, 1, 0, 1, 2, 0]])
    new, perm = canonical_order(labels, 5)
    assert new.tolist() == [[0, 0, 1, 2, 1, 3, 2]]
    assert perm[0, :4].tolist() == [3, 1, 0, 2] and perm[0, 4].item() == 4  # unused code last
    out = build_compressor(CompressorConfig(num_tokens=16), 32)(feats(t=6))[0]
    flat = out.key_map.flatten().tolist()
    firsts = [flat.index(c) for c in range(16)]
    assert firsts == sorted(firsts)


def test_deterministic_given_seed():
    x = feats(t=6)
    a = build_compressor(CompressorConfig(num_tokens=16, seed=3), 32)
    torch.manual_seed(123)
    b = build_compressor(CompressorConfig(num_tokens=16, seed=3), 32)
    b.load_state_dict(a.state_dict())
    oa, ob = a(x)[0], b(x)[0]
    assert torch.equal(oa.key_map, ob.key_map) and torch.equal(oa.tokens, ob.tokens)


def test_gradients_reach_attention_and_features():
    x = feats(t=4).requires_grad_(True)
    comp = build_compressor(CompressorConfig(num_tokens=12), 32)
    out = comp(x)[0]
    (out.tokens.square().sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in comp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_codebook_is_mean_of_members():
    x = feats(t=3)
    out = build_compressor(CompressorConfig(num_tokens=8, attention="none"), 32)(x)[0]
    flat, km = x[0].reshape(-1, 32), out.key_map.flatten()
    for c in range(8):
        assert torch.allclose(out.tokens[c], flat[km == c].mean(0), atol=1e-5)
    norm = build_compressor(CompressorConfig(num_tokens=8, attention="none", codebook="normalized"), 32)(x)[0]
    assert torch.allclose(norm.tokens[0], torch.nn.functional.normalize(flat[km == 0], dim=-1).mean(0), atol=1e-5)


def test_ablations_change_the_output():
    x = feats(t=4)
    base = build_compressor(CompressorConfig(num_tokens=12), 32)
    state = base.state_dict()
    ref = base(x)[0].tokens
    for change in ({"hash": "random"}, {"attention": "random"}, {"attention": "none"}):
        comp = build_compressor(CompressorConfig(num_tokens=12, **change), 32)
        if change.get("attention") != "none":
            comp.load_state_dict(state)
        out = comp(x)[0]
        assert out.num_tokens == 12 and not torch.allclose(out.tokens, ref)


@pytest.mark.parametrize("d", [896, 3584])
def test_real_widths(d):
    x = feats(t=2, h=5, w=5, d=d, dtype=torch.bfloat16)
    comp = build_compressor(CompressorConfig(num_tokens=12), d).to(torch.bfloat16)
    out = comp(x)[0]
    assert out.tokens.shape == (12, d) and out.tokens.dtype == torch.bfloat16
    assert torch.isfinite(out.tokens.float()).all()


@pytest.mark.parametrize("t", [1, 7, 64])
def test_frame_counts_and_non_square_grids(t):
    x = feats(t=t, h=3, w=7, d=16)
    out = build_compressor(CompressorConfig(num_tokens=min(12, 21 * t)), 16)(x)[0]
    assert out.key_map.shape == (t, 3, 7) and out.num_tokens == min(12, 21 * t)


def test_released_layout_names_and_lengths():
    cfg = CompressorConfig.released(num_tokens=12, adaptive=None, apply_attention=True)
    comp = build_compressor(cfg, 32, grid=(4, 4))
    names = set(comp.state_dict())
    assert "attention.to_q_proj.weight" in names
    assert "attention.transformer_decoder.layers.0.multihead_attn.in_proj_weight" in names
    assert sum(1 for n in names if n.startswith("attention.")) == 20
    assert comp.attention.to_q_proj.weight.shape == (32, 16)
    comp.eval()
    assert comp(feats(t=20, h=4, w=4))[0].num_tokens == 20  # max(T, K), as released
    assert comp(feats(t=5, h=4, w=4))[0].num_tokens == 12
    centroids_only = build_compressor(CompressorConfig.released(), 32, grid=(4, 4))
    out = centroids_only(feats(t=5, h=4, w=4))[0]
    assert 12 <= out.num_tokens <= 32 and out.num_tokens == out.num_codes


def test_identical_tokens_give_no_zero_codes():
    x = torch.ones(1, 2, 4, 4, 16)
    out = build_compressor(CompressorConfig(num_tokens=8, attention="none"), 16)(x)[0]
    assert out.num_tokens == 8
    assert (out.tokens.norm(dim=-1) > 0.5).all()


def test_bad_inputs_are_clear_errors():
    comp = build_compressor(CompressorConfig(num_tokens=8), 16)
    with pytest.raises(CompressionError, match="NaN"):
        x = feats(d=16)
        x[0, 0, 0, 0, 0] = float("nan")
        comp(x)
    with pytest.raises(CompressionError, match="exceeds"):
        build_compressor(CompressorConfig(num_tokens=500), 16)(feats(t=1, d=16))
    with pytest.raises(CompressionError, match="zero frames"):
        comp(torch.zeros(1, 0, 4, 4, 16))
    with pytest.raises(CompressionError, match="width"):
        comp(feats(d=8))
    with pytest.raises(ConfigError, match="num_tokens"):
        CompressorConfig(num_tokens=0)
    with pytest.raises(ConfigError, match="name"):
        CompressorConfig(name="magic")
    with pytest.raises(ConfigError, match="unknown field"):
        CompressorConfig.from_dict({"num_token": 3})


def test_config_round_trip_and_state_dict_round_trip(tmp_path):
    cfg = CompressorConfig(num_tokens=24, adaptive="silhouette", min_codes=4, max_codes=24, seed=9)
    assert CompressorConfig.from_dict(cfg.to_dict()) == cfg
    comp = build_compressor(cfg, 32)
    torch.save(comp.state_dict(), tmp_path / "c.pt")
    other = build_compressor(CompressorConfig.from_dict(cfg.to_dict()), 32)
    other.load_state_dict(torch.load(tmp_path / "c.pt"))
    x = feats(t=3)
    assert torch.equal(comp(x)[0].tokens, other(x)[0].tokens)


def test_pad_tokens():
    comp = build_compressor(CompressorConfig(num_tokens=None, adaptive="elbow", min_codes=2, max_codes=10), 32)
    out = comp(feats(b=2, t=2))
    padded, lengths = pad_tokens(out)
    assert padded.shape == (2, int(lengths.max()), 32)
    assert lengths.tolist() == [o.num_tokens for o in out]


@settings(max_examples=25, deadline=None)
@given(
    t=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6), d=st.sampled_from([8, 16, 24]),
    k=st.integers(1, 40), name=st.sampled_from(["vqtoken"] + BASELINES), seed=st.integers(0, 5),
)
def test_property_token_counts(t, h, w, d, k, name, seed):
    n = t * h * w
    cfg = CompressorConfig(name=name, num_tokens=k, heads=4 if d % 4 == 0 else 1, seed=seed)
    comp = build_compressor(cfg, d)
    x = feats(t=t, h=h, w=w, d=d, seed=seed)
    if k > n:
        with pytest.raises(CompressionError, match="exceeds"):
            comp(x)
        return
    out = comp(x)[0]
    assert out.num_tokens == comp.expected_tokens(t, h, w)
    assert 1 <= out.num_tokens <= k
    assert torch.isfinite(out.tokens).all()
    if name == "vqtoken":
        assert out.num_tokens == k and out.key_map.shape == (t, h, w) and out.key_map.max() < k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("adaptive", [None, "elbow"])
def test_cuda_graph_compressor_matches_eager(adaptive):
    x = feats(b=2, t=8, h=9, w=9, d=64).cuda().to(torch.bfloat16)
    cfg = CompressorConfig(num_tokens=16, adaptive=adaptive, min_codes=4, max_codes=24)
    fast = build_compressor(cfg, 64).cuda().to(torch.bfloat16).eval()
    slow = build_compressor(cfg.replace(cuda_graphs=False), 64).cuda().to(torch.bfloat16).eval()
    slow.load_state_dict(fast.state_dict())
    with torch.no_grad():
        for _ in range(2):
            a = fast(x)
        b = slow(x)
    for oa, ob in zip(a, b):
        assert oa.num_codes == ob.num_codes and torch.equal(oa.key_map, ob.key_map)
        assert torch.allclose(oa.tokens.float(), ob.tokens.float(), atol=1e-2)
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(CompressionError, match="NaN"), torch.no_grad():
        fast(bad)


def test_deferred_nan_check():
    comp = build_compressor(CompressorConfig(num_tokens=8), 16)
    x = feats(d=16)
    x[0, 1, 2, 3, 4] = float("inf")
    out = comp(x, defer_checks=True)  # returns; the check waits for verify()
    with pytest.raises(CompressionError, match="NaN or Inf"):
        out[0].verify()
    assert comp(feats(d=16), defer_checks=True)[0].verify().num_tokens == 8


@pytest.mark.parametrize("method", ["tome", "temporal_merge"])
@pytest.mark.parametrize("budget", [20, 7])
def test_batched_merges_are_exactly_video_by_video(method, budget):
    from llava_vqtoken.core import baselines

    merge = baselines.tome_tokens if method == "tome" else baselines.temporal_merge_tokens
    videos = torch.randn(3, 5, 6, 6, 16, generator=torch.Generator().manual_seed(0))
    batched = merge(videos, budget)
    assert batched.shape == (3, budget, 16)
    for i in range(3):
        torch.testing.assert_close(batched[i], merge(videos[i], budget))


def test_settings_parse_to_typed_fields_with_one_parser():
    parse = CompressorConfig.parse_setting
    assert parse("vqtoken:num_tokens=32,attention=none,compile=true,tol=0.01") == {
        "name": "vqtoken", "num_tokens": 32, "attention": "none", "compile": True, "tol": 0.01}
    assert parse("vqtoken:adaptive=elbow,num_tokens=null") == {
        "name": "vqtoken", "adaptive": "elbow", "num_tokens": None}
    assert parse("none") == {"name": "none"}
    for bad, why in [("vqtoken:num_tokens=many", "not an int"), ("vqtoken:colour=red", "unknown field"),
                     ("vqtoken:num_tokens", "not key=value"), ("vqtoken:compile=maybe", "not a boolean")]:
        with pytest.raises(ConfigError, match=why):
            parse(bad)


# ----------------------------------------------------------------------------- fp16 sums, output check (issue 14)

#: a 32-frame clip whose background code has 21,280 members of norm 17.7: the code's sum, 376,600, is far
#: beyond fp16's 65,504, its mean (17.7) is not
BACKGROUND, NORM = 21_280, 17.7


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _fp16_clip(d: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    n = 32 * 27 * 27
    x = torch.randn(n, d, generator=g)
    x = x / x.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g) * NORM
    x[:BACKGROUND] = NORM / d**0.5  # the background: one direction, norm 17.7
    return x.to(torch.float16).reshape(1, 32, 27, 27, d)




@pytest.mark.parametrize("device", DEVICES)
def test_codebook_sums_do_not_overflow_in_fp16(device):
    from llava_vqtoken.core.keymap import codebook_means

    x = _fp16_clip().reshape(1, -1, 4).to(device)
    labels = (torch.arange(x.shape[1], device=device) >= BACKGROUND).long()[None]
    centroids = torch.nn.functional.normalize(torch.ones(1, 2, 4, device=device), dim=-1)
    for normalized in (False, True):
        book, counts = codebook_means(x, labels, 2, centroids, normalized=normalized)
        assert book.dtype == torch.float16 and torch.isfinite(book).all()
        assert counts[0, 0] == BACKGROUND
        expected = 0.5 if normalized else NORM / 2
        torch.testing.assert_close(book[0, 0].float().cpu(), torch.full((4,), expected), atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_codebook_matches_fp32_and_carries_gradients(device, dtype):
    from llava_vqtoken.core.keymap import codebook_means

    g = torch.Generator().manual_seed(1)
    x32 = torch.randn(2, 3000, 16, generator=g) * 4
    labels = torch.randint(0, 5, (2, 3000), generator=g).to(device)
    x = x32.to(dtype).to(device).requires_grad_()
    centroids = torch.nn.functional.normalize(torch.randn(2, 5, 16, device=device), dim=-1)
    book, _ = codebook_means(x, labels, 5, centroids)
    want, _ = codebook_means(x.detach().float(), labels, 5, centroids)
    torch.testing.assert_close(book.float(), want, atol=2e-2, rtol=1e-2)
    book.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_clip_with_a_large_background_code_compresses_to_finite_tokens(device):
    vq = build_compressor(CompressorConfig(num_tokens=8, attention="none"), 4).to(device)
    with torch.no_grad():
        vq(_fp16_clip().to(device))  # on CUDA: capture, then replay
        out = vq(_fp16_clip().to(device))[0]
    assert torch.isfinite(out.codebook).all() and torch.isfinite(out.tokens).all()
    assert out.codebook.float().norm(dim=-1).max() <= NORM * 1.01


def test_non_finite_output_is_an_error_not_a_result():
    vq = build_compressor(CompressorConfig(num_tokens=4, heads=2), 16)
    with torch.no_grad():
        vq.attention.out_proj.bias.fill_(float("nan"))  # e.g. an attention left as uninitialised memory
    x = feats(d=16)
    with pytest.raises(CompressionError, match="output contains NaN or Inf"), torch.no_grad():
        vq(x)
    out = vq(x, defer_checks=True)  # deferred: the same error at verify()
    with pytest.raises(CompressionError, match="output contains NaN or Inf"):
        out[0].verify()


# ----------------------------------------------------------------------------- graph caches belong to one module


def test_graph_caches_are_per_module_and_keyed_on_the_full_config():
    import copy

    a = build_compressor(CompressorConfig(num_tokens=8, attention="none", codebook="raw"), 16)
    b = build_compressor(CompressorConfig(num_tokens=8, attention="none", codebook="normalized"), 16)
    assert a.code_cache is not b.code_cache
    assert copy.deepcopy(a).code_cache is not a.code_cache
    # the key of the post-processing graph names every config field and the parameters it reads
    assert a._graph_key(4, 6, 5) != b._graph_key(4, 6, 5)
    c = build_compressor(CompressorConfig(num_tokens=8), 16)
    key = c._graph_key(4, 6, 5)
    assert CompressorConfig(num_tokens=8).to_json() in key
    assert len(key[-1]) == len(list(c.parameters())) > 0
    import llava_vqtoken.core.graphs as graphs

    assert not hasattr(graphs, "_CACHE") and not hasattr(graphs, "set_cuda_graphs")
