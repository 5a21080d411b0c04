"""Known answers for core/vq_attention.py that the mutation run (scripts/mutation.sh) found unpinned:
coordinates and Fourier features by hand, the footprint against a plain-loop reference, and both
attention modules against a step-by-step computation from their own parameters."""

import math

import pytest
import torch
import torch.nn.functional as F

from llava_vqtoken.core.vq_attention import (
    ReleasedVQAttention,
    VQAttention,
    footprint_dim,
    footprint_stats,
    fourier_features,
    grid_coordinates,
)


def test_grid_coordinates_by_hand():
    c = grid_coordinates(2, 3, 1, torch.device("cpu"))
    assert c.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 1.0, 0.0],
                          [1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [1.0, 1.0, 0.0]]
    assert grid_coordinates(1, 1, 2, torch.device("cpu")).tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_fourier_features_by_hand():
    coords = torch.tensor([[0.5, 0.25, 1.0]])
    f = fourier_features(coords, 2)
    assert f.shape == (1, 12)
    # per coordinate: sin(pi c), sin(2 pi c), cos(pi c), cos(2 pi c)
    want = []
    for c in (0.5, 0.25, 1.0):
        want += [math.sin(math.pi * c), math.sin(2 * math.pi * c), math.cos(math.pi * c), math.cos(2 * math.pi * c)]
    torch.testing.assert_close(f[0], torch.tensor(want), atol=1e-6, rtol=0)


def ref_footprint(key_map: torch.Tensor, k: int, freqs: int, motion: bool) -> torch.Tensor:
    """One video [T, H, W], plain loops over the tokens."""
    t, h, w = key_map.shape
    lin = lambda n: [i / (n - 1) if n > 1 else 0.0 for i in range(n)]  # noqa: E731
    tt, hh, ww = lin(t), lin(h), lin(w)
    rows = []
    for code in range(k):
        members = [(i, j, m) for i in range(t) for j in range(h) for m in range(w) if key_map[i, j, m] == code]
        n = max(len(members), 1)
        coords = [(tt[i], hh[j], ww[m]) for i, j, m in members]
        four = []
        for axis in range(3):
            sins = [sum(math.sin(2**f * math.pi * c[axis]) for c in coords) / n for f in range(freqs)]
            coss = [sum(math.cos(2**f * math.pi * c[axis]) for c in coords) / n for f in range(freqs)]
            four += sins + coss
        mean = [sum(c[a] for c in coords) / n for a in range(3)]
        sq = [sum(c[a] ** 2 for c in coords) / n for a in range(3)]
        spread = [math.sqrt(max(s - m * m, 0.0)) for s, m in zip(sq, mean)]
        frames = sorted({i for i, _, _ in members})
        row = four + mean + spread + [len(members) / (t * h * w), len(frames) / t]
        if motion:
            if members:
                first, last = frames[0], frames[-1]

                def centroid(fr, members=members):
                    pts = [(hh[j], ww[m]) for i, j, m in members if i == fr]
                    return [sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)]

                cf, cl = centroid(first), centroid(last)
                scale = max(t - 1, 1)
                row += [first / scale, last / scale] + cf + cl + [cl[0] - cf[0], cl[1] - cf[1]]
            else:
                row += [0.0] * 8
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.parametrize("motion", [False, True])
@pytest.mark.parametrize(("shape", "k"), [((3, 2, 4), 6), ((4, 3, 3), 5), ((1, 2, 3), 4), ((2, 1, 1), 3)])
def test_footprint_matches_the_loop_reference(shape, k, motion):
    g = torch.Generator().manual_seed(sum(shape) * 7 + k)
    key_map = torch.randint(0, k - 1, (2, *shape), generator=g)  # code k-1 never occurs
    fp = footprint_stats(key_map, k, freqs=2, motion=motion)
    assert fp.shape == (2, k, footprint_dim(2, motion))
    for b in range(2):
        torch.testing.assert_close(fp[b], ref_footprint(key_map[b], k, 2, motion), atol=2e-5, rtol=1e-4)


def test_footprint_dim():
    assert footprint_dim(1) == 14 and footprint_dim(1, True) == 22
    assert footprint_dim(8) == 56 and footprint_dim(8, motion=True) == 64


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError) as e:
        VQAttention(10, heads=4)
    assert str(e.value) == "hidden size 10 is not divisible by heads=4"


def test_module_layout():
    torch.manual_seed(0)
    att = VQAttention(128, heads=4, freqs=3, footprint="motion")
    assert (att.dim, att.heads, att.freqs, att.mode, att.motion) == (128, 4, 3, "paper", True)
    assert att.footprint_mlp[0].in_features == footprint_dim(3, True) and att.footprint_mlp[0].out_features == 128
    assert isinstance(att.footprint_mlp[1], torch.nn.GELU)
    assert (att.footprint_mlp[2].in_features, att.footprint_mlp[2].out_features) == (128, 128)
    assert att.norm.elementwise_affine is False and list(att.norm.parameters()) == []
    assert att.norm.normalized_shape == (128,)
    for proj in (att.q_proj, att.k_proj, att.v_proj, att.out_proj):
        assert (proj.in_features, proj.out_features) == (128, 128)
    assert att.out_proj.bias.abs().max().item() == 0.0
    # std 0.02 / sqrt(128 / 64): about 0.0141 over 16k weights
    assert abs(att.out_proj.weight.std().item() - 0.02 / math.sqrt(2)) < 0.0005
    assert VQAttention(8, heads=2).motion is False
    default = VQAttention(16)
    assert (default.heads, default.freqs, default.mode, default.motion) == (8, 8, "paper", False)


def manual_forward(att: VQAttention, codebook, key_map, active, rand=None):
    b, k, d = codebook.shape
    fp = footprint_stats(key_map, k, att.freqs, att.motion)
    v_in = att.footprint_mlp(fp)
    x = F.layer_norm(codebook, (d,))
    hd = d // att.heads
    q, kk, v = att.q_proj(x), att.k_proj(x), att.v_proj(v_in)
    out = torch.zeros(b, k, d)
    for bi in range(b):
        for hi in range(att.heads):
            sl = slice(hi * hd, (hi + 1) * hd)
            if rand is None:
                scores = q[bi, :, sl] @ kk[bi, :, sl].T / math.sqrt(hd)
                if active is not None:
                    scores = scores.masked_fill(~active[bi][None, :], float("-inf"))
                w = scores.softmax(-1)
            else:
                r = rand[bi, hi]
                if active is not None:
                    r = r * active[bi][None, :]
                w = r / r.sum(-1, keepdim=True).clamp_min(1e-6)
            out[bi, :, sl] = w @ v[bi, :, sl]
    if att.motion:
        out = out + v_in
    return codebook + att.out_proj(out)


@pytest.mark.parametrize("footprint", ["marginal", "motion"])
@pytest.mark.parametrize("masked", [False, True])
def test_paper_attention_step_by_step(footprint, masked):
    torch.manual_seed(1)
    att = VQAttention(16, heads=2, freqs=2, footprint=footprint)
    torch.nn.init.normal_(att.out_proj.weight)  # a fresh module barely moves the codebook
    codebook = torch.randn(2, 4, 16)
    key_map = torch.tensor([[[[0, 1], [2, 0]]], [[[3, 3], [1, 0]]]])
    active = torch.tensor([[True, True, True, False], [True, True, False, True]]) if masked else None
    with torch.no_grad():
        out = att(codebook, key_map, active=active)
        want = manual_forward(att, codebook, key_map, active)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_random_attention_step_by_step(masked):
    torch.manual_seed(2)
    att = VQAttention(16, heads=2, freqs=2, mode="random")
    torch.nn.init.normal_(att.out_proj.weight)
    codebook = torch.randn(2, 3, 16)
    key_map = torch.tensor([[[[0, 1, 2]]], [[[2, 2, 0]]]])
    active = torch.tensor([[True, False, True], [True, True, False]]) if masked else None
    gens = [torch.Generator().manual_seed(s) for s in (11, 12)]

    def draw(fn):
        return torch.cat([fn(g) for g in gens])

    with torch.no_grad():
        out = att(codebook, key_map, active=active, draw=draw)
        rand = torch.cat([torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(s)) for s in (11, 12)])
        want = manual_forward(att, codebook, key_map, active, rand)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    # without draw: the global stream, one [1, heads, K, K] draw per video
    torch.manual_seed(7)
    with torch.no_grad():
        out = att(codebook, key_map, active=active)
    torch.manual_seed(7)
    rand = torch.cat([torch.rand(1, 2, 3, 3) for _ in range(2)])
    with torch.no_grad():
        torch.testing.assert_close(out, manual_forward(att, codebook, key_map, active, rand), atol=1e-5, rtol=1e-4)


def test_half_codebook_through_a_float_module():
    torch.manual_seed(3)
    att = VQAttention(16, heads=2, freqs=2)
    torch.nn.init.normal_(att.out_proj.weight)
    codebook = torch.randn(1, 3, 16).to(torch.bfloat16)
    key_map = torch.tensor([[[[0, 1, 2]]]])
    with torch.no_grad():
        out = att(codebook, key_map)
        want = manual_forward(att, codebook.float(), key_map, None)
    assert out.dtype == torch.bfloat16
    # the residual is added in bf16 to the bf16 codebook
    torch.testing.assert_close(out, (codebook + (want - codebook.float()).to(torch.bfloat16)), atol=0, rtol=0)


def test_released_attention_step_by_step():
    torch.manual_seed(4)
    rel = ReleasedVQAttention(8, grid_cells=4, heads=2, ffn_dim=16).eval()
    assert rel.grid_cells == 4 and rel.to_q_proj.in_features == 4 and rel.to_q_proj.out_features == 8
    layer = rel.transformer_decoder.layers[0]
    assert len(rel.transformer_decoder.layers) == 1
    assert layer.self_attn.num_heads == 2 and layer.linear1.out_features == 16 and layer.norm_first is False
    codebook = torch.randn(5, 8)
    key_map = torch.tensor([[[0, 1], [2, 3]], [[4, 4], [1, 0]]])  # T=2, grid 2x2
    with torch.no_grad():
        out = rel(codebook, key_map)
        rows = key_map.reshape(2, 4).float()
        q = rel.to_q_proj(rows)[torch.tensor([0, 1, 0, 1, 0])]
        want = rel.transformer_decoder(q.unsqueeze(1), codebook.unsqueeze(1)).squeeze(1)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out, want)
    # more frames than codes: the codebook is tiled
    km = torch.randint(0, 2, (3, 2, 2), generator=torch.Generator().manual_seed(0))
    cb = torch.randn(2, 8)
    with torch.no_grad():
        out = rel(cb, km)
        want = rel.transformer_decoder(
            rel.to_q_proj(km.reshape(3, 4).float()).unsqueeze(1), cb[torch.tensor([0, 1, 0])].unsqueeze(1)
        ).squeeze(1)
    torch.testing.assert_close(out, want)
    with torch.no_grad():
        half = rel(cb.half(), km)
    assert half.dtype == torch.float16


def test_released_attention_refuses_another_grid():
    rel = ReleasedVQAttention(8, grid_cells=4, heads=2, ffn_dim=16)
    with pytest.raises(ValueError) as e:
        rel(torch.randn(3, 8), torch.zeros(2, 3, 3, dtype=torch.long))
    assert str(e.value) == "released attention expects 4 tokens per frame, got 9"


def test_released_defaults():
    rel = ReleasedVQAttention(16, grid_cells=2)
    layer = rel.transformer_decoder.layers[0]
    assert layer.self_attn.num_heads == 8 and layer.linear1.out_features == 2048


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_everything_stays_on_the_inputs_device():
    cuda = torch.device("cuda")
    assert grid_coordinates(2, 2, 2, cuda).device.type == "cuda"
    assert grid_coordinates(1, 2, 1, cuda).device.type == "cuda"  # a length-1 axis is zeros(1)
    assert fourier_features(torch.zeros(2, 3, device=cuda), 2).device.type == "cuda"
    key_map = torch.randint(0, 3, (2, 3, 2, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        footprint_stats(key_map.cuda(), 4, 2, motion=True).cpu(), footprint_stats(key_map, 4, 2, motion=True)
    )
    torch.manual_seed(0)
    for mode in ("paper", "random"):
        att = VQAttention(16, heads=2, freqs=2, mode=mode)
        codebook = torch.randn(2, 4, 16)
        draw = lambda fn: torch.cat([fn(torch.Generator(device="cuda").manual_seed(i)) for i in range(2)])  # noqa: E731
        with torch.no_grad():
            out = att.cuda()(codebook.cuda(), key_map.cuda(), draw=draw if mode == "random" else None)
        assert out.device.type == "cuda" and out.shape == (2, 4, 16)
        if mode == "random":
            with torch.no_grad():
                out2 = att(codebook.cuda(), key_map.cuda())  # the global CUDA stream
            assert out2.device.type == "cuda"
    rel = ReleasedVQAttention(8, grid_cells=4, heads=2, ffn_dim=16).eval()
    cb, km = torch.randn(3, 8), torch.randint(0, 3, (2, 2, 2))
    with torch.no_grad():
        want = rel(cb, km)
        got = rel.cuda()(cb.cuda(), km.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["paper", "random"])
def test_a_bf16_module_takes_an_fp32_codebook_and_footprint(mode):
    # the footprint statistics and the random weights are fp32; the module's dtype decides
    torch.manual_seed(5)
    att = VQAttention(16, heads=2, freqs=2, mode=mode)
    torch.nn.init.normal_(att.out_proj.weight)
    codebook = torch.randn(1, 3, 16)
    key_map = torch.tensor([[[[0, 1, 2]]]])
    draw = lambda fn: fn(torch.Generator().manual_seed(9))  # noqa: E731
    with torch.no_grad():
        want = att(codebook, key_map, draw=draw)
        out = att.to(torch.bfloat16)(codebook, key_map, draw=draw)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=0.1, rtol=0.05)


def test_out_proj_init_scale_follows_the_width():
    # std 0.02 / sqrt(dim / 64): 0.005 at dim 1024 (1M weights: the sample std is within ~1e-5)
    torch.manual_seed(0)
    att = VQAttention(1024, heads=8, freqs=1)
    assert abs(att.out_proj.weight.std().item() - 0.005) < 1.5e-5
