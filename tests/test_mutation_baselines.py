"""Known answers for core/baselines.py that the mutation run (scripts/mutation.sh) found unpinned.

Hand-worked cases for the budget split, pooling and sampling, and a plain-loop reference of ToMe's
bipartite matching that the batched tensor code must equal on random inputs.
"""

import math

import pytest
import torch

from llava_vqtoken.core.baselines import (
    _split_budget,
    _tome_rounds,
    bipartite_merge,
    pool_tokens,
    prune_tokens,
    random_tokens,
    temporal_merge_tokens,
    tome_tokens,
    uniform_tokens,
)


def ramp(t: int, h: int, w: int, d: int = 1) -> torch.Tensor:
    """Video whose token (t, h, w) has value 100 t + 10 h + w in every channel (channel c adds 1000 c)."""
    base = torch.tensor([[[100.0 * i + 10 * j + k for k in range(w)] for j in range(h)] for i in range(t)])
    return torch.stack([base + 1000 * c for c in range(d)], dim=-1)


@pytest.mark.parametrize(
    ("per_frame", "height", "width", "grid"),
    [
        (4, 4, 4, (2, 2)),  # square: the square grid
        (6, 3, 6, (2, 3)),  # 1:2 frame, 6 cells: 2x3 beats 1x6 (same count, closer ratio)
        (2, 6, 3, (2, 1)),  # 2:1 frame
        (12, 3, 4, (3, 4)),  # the whole frame
        (0, 2, 2, (1, 1)),  # at least one cell
        (5, 2, 8, (1, 5)),  # height 2 allows 2x2 = 4 < 5 cells: 1x5 has more cells
        (8, 4, 2, (4, 2)),
        (3, 1, 5, (1, 3)),  # capped by the height
        (7, 7, 1, (7, 1)),  # capped by the width
        (2, 4, 4, (1, 2)),  # a tie on count and ratio keeps the first (smaller h)
        (9, 9, 9, (3, 3)),
        (10, 2, 20, (1, 10)),  # 2x5 has the same count, 1x10 is nearer 1:10
    ],
)
def test_split_budget_by_hand(per_frame, height, width, grid):
    assert _split_budget(per_frame, height, width) == grid


def test_pool_without_budget_is_the_stock_2x_resize():
    # bilinear 4x4 -> 2x2 (align_corners=False) is the mean of each 2x2 block; 3x3 -> 2x2 samples at 0.25, 1.75
    v = ramp(2, 4, 4, 2)
    out = pool_tokens(v, None)
    want = [[100 * t + 10 * (2 * i + 0.5) + 2 * j + 0.5 for i in range(2) for j in range(2)] for t in range(2)]
    want = torch.tensor(want).reshape(-1, 1)
    torch.testing.assert_close(out, torch.cat([want, want + 1000], dim=1))
    odd = pool_tokens(ramp(1, 3, 3), None)
    assert odd.shape == (4, 1)
    torch.testing.assert_close(odd[:, 0], torch.tensor([2.75, 4.25, 17.75, 19.25]))


def test_pool_with_a_budget_is_trilinear_to_frames_times_grid():
    v = ramp(2, 4, 4)
    # budget 8: 2 frames of 2x2 block means
    out = pool_tokens(v, 8)
    torch.testing.assert_close(out[:, 0], torch.tensor([5.5, 7.5, 25.5, 27.5, 105.5, 107.5, 125.5, 127.5]))
    # budget 4: 2 frames of 1x2 (the tie of 1x2 and 2x1 keeps 1x2); bilinear 4 -> 1 samples at 1.5, 4 -> 2 at 0.5, 2.5
    torch.testing.assert_close(pool_tokens(v, 4)[:, 0], torch.tensor([15.5, 17.5, 115.5, 117.5]))
    # budget 1 < T: one frame, the mean of the clip
    torch.testing.assert_close(pool_tokens(v, 1)[:, 0], torch.tensor([66.5]))
    # budget 3 with 2 frames: 3 // 2 = 1 cell a frame
    torch.testing.assert_close(pool_tokens(v, 3)[:, 0], torch.tensor([16.5, 116.5]))


def test_uniform_samples_frames_and_pools_each():
    v = ramp(5, 4, 4)
    # budget 8: ceil(8/4) = 2 frames (0 and 4), 4 cells each = 2x2 block means
    out = uniform_tokens(v, 8)[:, 0]
    torch.testing.assert_close(out, torch.tensor([5.5, 7.5, 25.5, 27.5, 405.5, 407.5, 425.5, 427.5]))
    # budget 12: 3 frames (0, 2, 4), 4 cells each
    out = uniform_tokens(v, 12)[:, 0]
    assert out.tolist() == [5.5, 7.5, 25.5, 27.5, 205.5, 207.5, 225.5, 227.5, 405.5, 407.5, 425.5, 427.5]
    # budget 1: one frame (frame 0), one cell: the frame mean
    assert uniform_tokens(v, 1)[:, 0].tolist() == [16.5]
    # 4 frames of 3 wanted from a 4-frame clip: linspace(0, 3, 3) = 0, 1.5, 3 rounds to 0, 2, 3
    out = uniform_tokens(ramp(4, 2, 2), 12)[:, 0]
    assert out.tolist() == [0.0, 1.0, 10.0, 11.0, 200.0, 201.0, 210.0, 211.0, 300.0, 301.0, 310.0, 311.0]
    # budget over 4 T: every frame
    assert uniform_tokens(ramp(2, 1, 1), 40)[:, 0].tolist() == [0.0, 100.0]


def test_prune_budget_over_the_token_count_keeps_all():
    v = torch.tensor([[[[1.0], [-3.0], [2.0]]]])
    assert prune_tokens(v, 10).tolist() == [[1.0], [-3.0], [2.0]]
    assert prune_tokens(v, 1).tolist() == [[-3.0]]


def test_prune_ranks_half_tokens_by_their_float_norm():
    # in fp16 both squared norms overflow (inf = inf); in fp32 the second token is larger
    v = torch.tensor([[[[50000.0, 50000.0], [60000.0, 60000.0], [1.0, 1.0]]]], dtype=torch.float16)
    assert prune_tokens(v, 1).tolist() == [[60000.0, 60000.0]]


def test_random_tokens_seeded_in_order():
    v = ramp(1, 2, 5)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    want = perm[:4].sort().values
    out = random_tokens(v, 4, g)
    assert out[:, 0].tolist() == v.reshape(-1)[want].tolist()
    assert out[:, 0].tolist() == sorted(out[:, 0].tolist())
    assert random_tokens(v, 99, torch.Generator().manual_seed(0))[:, 0].tolist() == v.reshape(-1).tolist()


# ---------------------------------------------------------------- ToMe against a plain-loop reference


def ref_bipartite(a, b, sa, sb, r):
    """One group: a [Na, D], b [Nb, D], sizes; plain Python."""
    na = len(a)
    r = min(r, na)
    if r <= 0:
        return a + b, sa + sb

    def cos(u, v):
        return sum(x * y for x, y in zip(u, v)) / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    best, match = [], []
    for u in a:
        sims = [cos(u, v) for v in b]
        j = max(range(len(b)), key=lambda i: sims[i])
        best.append(sims[j])
        match.append(j)
    order = sorted(range(na), key=lambda i: -best[i])
    src, keep = order[:r], sorted(order[r:])
    sums = [[x * s for x in v] for v, s in zip(b, sb)]
    sizes = list(sb)
    for i in src:
        j = match[i]
        sums[j] = [x + y * sa[i] for x, y in zip(sums[j], a[i])]
        sizes[j] += sa[i]
    b_new = [[x / s for x in v] for v, s in zip(sums, sizes)]
    return [a[i] for i in keep] + b_new, [sa[i] for i in keep] + sizes


@pytest.mark.parametrize(("na", "nb", "r"), [(5, 4, 2), (4, 4, 4), (3, 5, 7), (4, 3, 0), (4, 3, -1), (6, 2, 5)])
def test_bipartite_merge_matches_the_loop_reference(na, nb, r):
    g = torch.Generator().manual_seed(na * 10 + nb)
    a, b = torch.randn(2, na, 3, generator=g), torch.randn(2, nb, 3, generator=g)
    sa, sb = torch.rand(2, na, generator=g) + 0.5, torch.rand(2, nb, generator=g) + 0.5
    tokens, sizes = bipartite_merge(a, b, sa, sb, r)
    for grp in range(2):
        want_t, want_s = ref_bipartite(a[grp].tolist(), b[grp].tolist(), sa[grp].tolist(), sb[grp].tolist(), r)
        torch.testing.assert_close(tokens[grp], torch.tensor(want_t))
        torch.testing.assert_close(sizes[grp], torch.tensor(want_s))


def test_bipartite_merge_keeps_the_input_dtype_and_inputs():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 0.5]]], dtype=torch.float64)
    sa, sb = torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    tokens, sizes = bipartite_merge(a, b, sa, sb, 1)
    assert tokens.dtype == torch.float64
    assert tokens.tolist() == [[[0.0, 1.0], [1.0, 0.25]]]
    assert sizes.tolist() == [[1.0, 2.0]]
    assert sb.tolist() == [[1.0]] and b.tolist() == [[[1.0, 0.5]]]  # inputs untouched


def ref_tome_rounds(x, size, target):
    while len(x) > target:
        a, b, sa, sb = x[0::2], x[1::2], size[0::2], size[1::2]
        x, size = ref_bipartite(a, b, sa, sb, len(x) - target)
    return x, size


def test_tome_rounds_match_the_loop_reference():
    g = torch.Generator().manual_seed(3)
    x, size = torch.randn(2, 11, 4, generator=g), torch.rand(2, 11, generator=g) + 0.5
    for target in (10, 6, 3, 1):
        out, out_size = _tome_rounds(x, size, target)
        for grp in range(2):
            want_x, want_s = ref_tome_rounds(x[grp].tolist(), size[grp].tolist(), target)
            torch.testing.assert_close(out[grp], torch.tensor(want_x))
            torch.testing.assert_close(out_size[grp], torch.tensor(want_s))


@pytest.mark.parametrize(("t", "budget"), [(3, 7), (2, 3), (3, 2), (2, 100), (4, 5)])
def test_tome_tokens_is_per_frame_then_across_the_clip(t, budget):
    g = torch.Generator().manual_seed(t * 100 + budget)
    v = torch.randn(t, 2, 3, 4, generator=g)
    out = tome_tokens(v, budget)
    per_frame = min(6, max(1, math.ceil(budget / t)))
    frames, sizes = [], []
    for i in range(t):
        x, s = ref_tome_rounds(v[i].reshape(6, 4).tolist(), [1.0] * 6, per_frame)
        frames += x
        sizes += s
    want, _ = ref_tome_rounds(frames, sizes, min(budget, len(frames)))
    torch.testing.assert_close(out, torch.tensor(want))
    batch = tome_tokens(torch.stack([v, -v]), budget)
    torch.testing.assert_close(batch[0], out)
    torch.testing.assert_close(batch[1], tome_tokens(-v, budget))


def ref_temporal(frames, budget):
    groups = [[list(tok) for tok in f] for f in frames]
    sizes = [[1.0] * len(f) for f in frames]
    while len(groups) > 1 and sum(map(len, groups)) > budget:
        excess = sum(map(len, groups)) - budget
        pairs = len(groups) // 2
        per_pair = -(-excess // pairs)
        new_g, new_s = [], []
        for j in range(pairs):
            r = min(per_pair, excess, len(groups[2 * j + 1]))
            gg, ss = ref_bipartite(groups[2 * j + 1], groups[2 * j], sizes[2 * j + 1], sizes[2 * j], r)
            excess -= r
            new_g.append(gg)
            new_s.append(ss)
        if len(groups) % 2:
            new_g.append(groups[-1])
            new_s.append(sizes[-1])
        groups, sizes = new_g, new_s
    x = [tok for gg in groups for tok in gg]
    s = [v for ss in sizes for v in ss]
    out, _ = ref_tome_rounds(x, s, min(budget, len(x)))
    return out


@pytest.mark.parametrize(("t", "budget"), [(3, 7), (4, 5), (5, 9), (2, 1), (3, 100), (4, 14), (1, 3)])
def test_temporal_merge_matches_the_loop_reference(t, budget):
    g = torch.Generator().manual_seed(t * 100 + budget)
    v = torch.randn(t, 2, 2, 3, generator=g)
    out = temporal_merge_tokens(v, budget)
    want = ref_temporal([v[i].reshape(4, 3).tolist() for i in range(t)], budget)
    torch.testing.assert_close(out, torch.tensor(want))


def test_temporal_merge_by_hand_three_frames():
    # frames (1,0),(0,1) | (2,0),(0,3) | (5,5),(0,-1); budget 5: excess 1, one pair -> frame 1's token
    # (2,0) (best cosine 1, first of the tie) merges into frame 0's (1,0); frame 2 stays
    v = torch.tensor([[1.0, 0], [0, 1], [2, 0], [0, 3], [5, 5], [0, -1]]).reshape(3, 1, 2, 2)
    out = temporal_merge_tokens(v, 5)
    assert out.tolist() == [[0.0, 3.0], [1.5, 0.0], [0.0, 1.0], [5.0, 5.0], [0.0, -1.0]]


def test_uniform_frame_count_is_a_quarter_of_the_budget():
    # budget 5: ceil(5 / 4) = 2 frames (0 and 4) of 5 // 2 = 2 cells (1x2 on a 4x4 frame)
    out = uniform_tokens(ramp(5, 4, 4), 5)[:, 0]
    assert out.tolist() == [15.5, 17.5, 415.5, 417.5]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@CUDA
def test_baselines_stay_on_the_video_device():
    v = ramp(5, 4, 4, 2).cuda()
    assert uniform_tokens(v, 8).device == v.device
    torch.testing.assert_close(uniform_tokens(v, 8).cpu(), uniform_tokens(v.cpu(), 8))
    g = torch.Generator(device="cuda").manual_seed(0)
    out = random_tokens(v, 4, g)
    assert out.device == v.device and out.shape == (4, 2)
    torch.testing.assert_close(temporal_merge_tokens(v, 7).cpu(), temporal_merge_tokens(v.cpu(), 7))
    torch.testing.assert_close(tome_tokens(v, 7).cpu(), tome_tokens(v.cpu(), 7))


@pytest.mark.parametrize(
    ("t", "h", "w", "budget"),
    [
        (4, 2, 2, 13),  # excess 3 over 2 pairs: 2 + 1 merges (the last pair is capped by what is left)
        (7, 1, 2, 3),  # second round: frame 2 (sizes 2) pairs with frame 3, the odd one out (sizes 1)
        (8, 1, 2, 3),
        (6, 1, 3, 4),
        (5, 1, 2, 2),  # the odd frame out of round 2 (sizes 1) pairs, weighted, with the merged one in round 3
    ],
)
def test_temporal_merge_schedule_matches_the_loop_reference(t, h, w, budget):
    g = torch.Generator().manual_seed(t * 1000 + budget)
    v = torch.randn(t, h, w, 3, generator=g)
    out = temporal_merge_tokens(v, budget)
    assert out.shape == (budget, 3)
    want = ref_temporal([v[i].reshape(h * w, 3).tolist() for i in range(t)], budget)
    torch.testing.assert_close(out, torch.tensor(want))


def test_pool_with_a_budget_keeps_channels_apart():
    v = ramp(2, 4, 4, 3)
    out = pool_tokens(v, 8)
    assert out.shape == (8, 3)
    base = torch.tensor([5.5, 7.5, 25.5, 27.5, 105.5, 107.5, 125.5, 127.5])
    torch.testing.assert_close(out, torch.stack([base, base + 1000, base + 2000], dim=1))


def test_bipartite_merge_without_merges_returns_the_inputs_exactly():
    # r = 0: no round trip through fp32 (1/3 in fp64 is not an fp32 number)
    a = torch.full((1, 2, 2), 1 / 3, dtype=torch.float64)
    b = torch.full((1, 1, 2), 2 / 3, dtype=torch.float64)
    sa, sb = torch.full((1, 2), 3.0, dtype=torch.float64), torch.full((1, 1), 7.0, dtype=torch.float64)
    tokens, sizes = bipartite_merge(a, b, sa, sb, 0)
    assert torch.equal(tokens, torch.cat([a, b], 1)) and torch.equal(sizes, torch.cat([sa, sb], 1))


def test_bipartite_merge_of_half_tokens_stays_half():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float16)
    b = torch.tensor([[[1.0, 0.5]]], dtype=torch.float16)
    tokens, sizes = bipartite_merge(a, b, torch.ones(1, 2), torch.ones(1, 1), 1)
    assert tokens.dtype == torch.float16 and tokens.tolist() == [[[0.0, 1.0], [1.0, 0.25]]]
    assert sizes.tolist() == [[1.0, 2.0]]
