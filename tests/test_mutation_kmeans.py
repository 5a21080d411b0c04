"""Known answers for core/kmeans.py, small enough to check by hand (mutation testing, issue 15).

Every case is tiny (a few 2-D tokens) so that the whole file runs in seconds: stream seeds, the
normalisation, counts and one-hots, the seeding distance, greedy k-means++ picks from hand-made race
noise, assignment with masked codes, the worst-fitted tokens, a Lloyd step (means, re-seeding, frozen
videos), the re-seed schedule, the count-weighted merge, and ``cosine_kmeans``'s refusals and wiring.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import same_partition
from llava_vqtoken.core import kmeans as km

CPU = torch.device("cpu")
MIX = 0x9E3779B97F4A7C15


def unit(*angles_deg: float) -> torch.Tensor:
    """Unit vectors [N, 2] at the given angles (degrees)."""
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=-1).float()


def t2(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- streams --------------------------------------------------------------------------------------


def test_video_seed_by_hand():
    assert km._ID_MIX == MIX
    assert km.video_seed(5, None) == 5
    assert km.video_seed(0, 0) == 11400714819323198485 == MIX
    assert km.video_seed(7, 1) == 4354685564936845361 == (7 + 2 * MIX) % 2**64
    assert km.video_seed(5, 3) == 8709371129873690713
    assert km.video_seed(2**64 - 1, 0) == 11400714819323198484  # wraps modulo 2**64
    assert isinstance(km.video_seed(7, 1), int)


def test_streams_without_ids_broadcast_one_draw_of_the_seed():
    s = km.VideoStreams(3, CPU, 11)
    assert s.batch == 3 and len(s.generators) == 1
    a = s.draw(lambda g: torch.rand(1, 4, generator=g))
    b = s.draw(lambda g: torch.rand(1, 4, generator=g))
    g = torch.Generator().manual_seed(11)
    want_a, want_b = torch.rand(1, 4, generator=g), torch.rand(1, 4, generator=g)
    assert a.shape == (3, 4) and torch.equal(a, want_a.expand(3, 4))
    assert torch.equal(b, want_b.expand(3, 4))  # the stream continues


def test_streams_with_ids_draw_alone_as_in_a_batch():
    batch = km.VideoStreams(2, CPU, 4, [3, 9])
    assert batch.batch == 2 and len(batch.generators) == 2
    got = [batch.draw(lambda g: torch.rand(1, 5, generator=g)) for _ in range(2)]
    for row, vid in enumerate([3, 9]):
        alone = km.VideoStreams(1, CPU, 4, [vid])
        g = torch.Generator().manual_seed(km.video_seed(4, vid))
        for draw in got:
            assert torch.equal(draw[row : row + 1], alone.draw(lambda g: torch.rand(1, 5, generator=g)))
        g = torch.Generator().manual_seed(km.video_seed(4, vid))
        assert torch.equal(got[0][row], torch.rand(1, 5, generator=g)[0])
        assert torch.equal(got[1][row], torch.rand(1, 5, generator=g)[0])
    assert not torch.equal(got[0][0], got[0][1])


def test_streams_refuse_a_wrong_number_of_ids():
    with pytest.raises(ValueError, match=r"^video_ids has 1 entries for a batch of 2 videos$"):
        km.VideoStreams(2, CPU, 0, [7])
    assert len(km.VideoStreams(1, CPU, 0, [7]).generators) == 1


# --- small pieces ---------------------------------------------------------------------------------


def test_normalize_tokens_by_hand():
    x = t2([[0.3, 0.4, 0.0], [0.0, 0.0, 0.0]], [[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    out = km.normalize_tokens(x)
    assert out.dtype == torch.float32
    want = t2([[0.6, 0.8, 0.0], [0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(out, want, atol=1e-7, rtol=0)
    assert torch.equal(out[0, 1], torch.zeros(3))  # a zero vector stays zero (no NaN)


def test_normalize_tokens_takes_norms_in_fp32_and_returns_fp32_on_cpu():
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        x = torch.ones(1, 1, 3, dtype=dt)
        out = km.normalize_tokens(x)
        assert out.dtype == torch.float32
        inv = torch.tensor(3.0).sqrt().reciprocal()  # fp32 norm
        assert torch.equal(out, (torch.ones(1, 1, 3) * inv)), dt


def test_fp64_tokens_are_accepted():
    # normalize_tokens asked vector_norm for fp32 norms, which refuses a float64 input (narrowing), so
    # cosine_kmeans ('any float dtype') raised on fp64 tokens
    x = torch.tensor([[[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]]], dtype=torch.float64)
    assert torch.allclose(km.normalize_tokens(x), t2([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]))
    assert km.cosine_kmeans(x, 2, iters=2).labels.shape == (1, 3)


def test_counts_and_one_hot_by_hand():
    labels = torch.tensor([[0, 2, 2, 1, 2], [3, 3, 0, 0, 0]])
    c = km._counts(labels, 4)
    assert c.dtype == torch.float32
    assert torch.equal(c, t2([1, 1, 3, 0], [3, 0, 0, 2]))
    oh = km.one_hot(torch.tensor([[1, 0], [2, 2]]), 3)
    assert oh.dtype == torch.float32
    assert torch.equal(oh, torch.tensor([[[0, 1, 0], [1, 0, 0]], [[0, 0, 1], [0, 0, 1]]], dtype=torch.float32))
    assert km.one_hot(torch.tensor([1]), 2, torch.bool).tolist() == [[False, True]]


def test_chord2_by_hand_with_its_epsilon():
    assert km.SEED_EPS == 1e-12
    out = km.chord2(torch.tensor([1.0, 0.0, -1.0, 1.5, 0.5], dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    eps = torch.tensor(1e-12)
    assert torch.equal(out, torch.stack([eps, 2 + eps, 4 + eps, eps, 1 + eps]))
    assert out[0].item() == pytest.approx(1e-12, rel=1e-6) and out[3].item() > 0


def test_cluster_sums_by_hand():
    xn = t2([1.0, 0.0], [0.0, 1.0], [0.5, 0.5])
    got = km.cluster_sums(xn[None].expand(2, 3, 2), torch.tensor([[0, 2, 0], [1, 1, 1]]), 3)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([[[1.5, 0.5], [0, 0], [0, 1]], [[0, 0], [1.5, 1.5], [0, 0]]]))


def test_cluster_sums_of_bf16_tokens_in_fp32():
    """The matmul dtype of CUDA (bf16): the one-hot takes the tokens' dtype, the sums come back in fp32."""
    xn = t2([1.0, 0.0], [0.0, 1.0], [0.5, 0.5])[None].bfloat16()
    got = km.cluster_sums(xn, torch.tensor([[0, 2, 0]]), 3)
    assert got.dtype == torch.float32 and torch.equal(got, torch.tensor([[[1.5, 0.5], [0, 0], [0, 1]]]))


def test_oversampled_iters_values():
    got = [km.oversampled_iters(i) for i in range(0, 8)]
    assert got == [(1, 1), (1, 1), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3)]
    assert km.oversampled_iters(10) == (5, 5) and km.oversampled_iters(11) == (6, 5)


def test_constants():
    assert km.OVERSAMPLE == 2 and km.OVERSEED_TRIALS == 16


# --- seeding --------------------------------------------------------------------------------------

#: the pool: p0 (0 deg), p1 (90), p2 (180), p3 (0.6, 0.8); squared chords from p0: 0, 2, 4, 0.8
POOL = torch.cat([unit(0, 90, 180), t2([0.6, 0.8])])
#: race variates [K-1 = 2 steps, L = 2 lanes, M = 4]: lane 0 always picks the farthest token (ratio 1/D^2);
#: lane 1 favours p1 in the first step and p3 in the second
RACE = torch.tensor([[[1.0, 1, 1, 1], [1, 0.1, 1, 1]], [[1.0, 1, 1, 1], [1, 1, 1, 0.1]]])


def hand_noise(first, keys=None):
    b = len(first)
    return km.SeedNoise(keys, torch.tensor(first), RACE[None].expand(b, -1, -1, -1).contiguous())


def test_greedy_picks_by_hand():
    """Video 0 starts at p0: step 1's lanes offer p2 (potential 2.8) and p1 (2.4) -> p1; step 2 offers
    p2 (0.4) and p3 (2.0) -> p2. Video 1 starts at p3 (first 0.99 * 4 -> 3): p2 (1.2) beats p1 (2.8),
    then both lanes offer p0."""
    xn = POOL[None].expand(2, 4, 2).contiguous()
    noise = hand_noise([0.0, 0.99])
    for use_gram in (False, True):
        got = km.seed_centres(xn, 3, noise, 4, use_gram=use_gram)
        assert got.dtype == torch.float32 and got.shape == (2, 3, 2)
        assert torch.equal(got[0], POOL[[0, 1, 2]]), use_gram
        assert torch.equal(got[1], POOL[[3, 2, 0]]), use_gram


def test_gram_seed_step_by_hand():
    d2 = km.chord2(POOL @ POOL.T)[None]
    min_d2 = d2[:, 0]
    new_min, pick = km.gram_seed_step(min_d2, RACE[None, 0], d2)
    assert pick.tolist() == [1]
    assert torch.allclose(new_min, torch.tensor([[0.0, 0.0, 2.0, 0.4]]), atol=1e-6)
    new_min, pick = km.gram_seed_step(new_min, RACE[None, 1], d2)
    assert pick.tolist() == [2]
    assert torch.allclose(new_min, torch.tensor([[0.0, 0.0, 0.0, 0.4]]), atol=1e-6)


def test_first_pick_is_clamped_and_k1_returns_it():
    xn = POOL[None].expand(2, 4, 2).contiguous()
    noise = km.SeedNoise(None, torch.tensor([1.0, 0.5]), torch.empty(2, 0, 2, 4))
    for use_gram in (False, True):
        got = km.seed_centres(xn, 1, noise, 4, use_gram=use_gram)
        assert torch.equal(got, torch.stack([POOL[[3]], POOL[[2]]]))


def test_pool_is_the_tokens_with_the_largest_keys():
    """Six tokens, the pool is the four with the largest keys in descending key order: p0, p1, p2, p3."""
    q0, q1 = unit(45)[0], unit(-100)[0]
    x = torch.stack([q0, POOL[1], q1, POOL[0], POOL[3], POOL[2]])[None]
    keys = torch.tensor([[0.1, 0.8, 0.2, 0.9, 0.6, 0.7]])
    noise = hand_noise([0.0], keys)
    for use_gram in (False, True):
        got = km.seed_centres(x, 3, noise, 4, use_gram=use_gram)
        assert torch.equal(got[0], POOL[[0, 1, 2]])


def test_seeding_through_a_step_cache_calls_compiled_once():
    calls = []

    class Steps:
        def compiled(self, fn):
            calls.append(fn.__name__)
            return fn

    xn = POOL[None].expand(2, 4, 2).contiguous()
    got = km.seed_centres(xn, 3, hand_noise([0.0, 0.99]), 4, steps=Steps(), use_gram=True)
    assert calls == ["gram_seed_step"]
    assert torch.equal(got[0], POOL[[0, 1, 2]]) and torch.equal(got[1], POOL[[3, 2, 0]])


def _loop_seed(pool: torch.Tensor, first: int, race: torch.Tensor, k: int) -> list[int]:
    """Plain-Python greedy k-means++ over one pool [M, D] (race [K-1, L, M])."""
    p = pool.double().tolist()
    m = len(p)
    d2 = [[max(2.0 - 2.0 * sum(a * b for a, b in zip(p[i], p[j])), 0.0) + 1e-12 for j in range(m)] for i in range(m)]
    picked, mins = [first], list(d2[first])
    for j in range(1, k):
        best = None
        for lane in race[j - 1].double().tolist():
            cand = min(range(m), key=lambda t: (lane[t] / mins[t], t))
            new = [min(a, b) for a, b in zip(mins, d2[cand])]
            if best is None or sum(new) < best[0]:
                best = (sum(new), cand, new)
        picked.append(best[1])
        mins = best[2]
    return picked


def test_seeding_equals_a_plain_loop_with_drawn_noise():
    g = torch.Generator().manual_seed(3)
    xn = km.normalize_tokens(torch.randn(2, 30, 3, generator=g))
    noise, m = km.draw_seed_noise(30, 6, km.VideoStreams(2, CPU, 5, [0, 1]), 20, 3, CPU)
    assert m == 20 and noise.race.shape == (2, 5, 3, 20) and noise.pool_keys.shape == (2, 30)
    for use_gram in (False, True):
        got = km.seed_centres(xn, 6, noise, m, use_gram=use_gram)
        for v in range(2):
            pool = xn[v, noise.pool_keys[v].topk(m).indices]
            first = min(int(noise.first[v] * m), m - 1)
            want = _loop_seed(pool, first, noise.race[v], 6)
            assert torch.equal(got[v], pool[want]), (use_gram, v)


def test_kmeans_plus_plus_uses_the_seeds_stream():
    g = torch.Generator().manual_seed(8)
    xn = km.normalize_tokens(torch.randn(2, 12, 3, generator=g))
    got = km.kmeans_plus_plus(xn, 3, seed=4, sample=8, trials=2)
    noise, m = km.draw_seed_noise(12, 3, km.VideoStreams(2, CPU, 4), 8, 2, CPU)
    assert torch.equal(got, km.seed_centres(xn, 3, noise, m))
    default = km.kmeans_plus_plus(xn, 3)
    noise, m = km.draw_seed_noise(12, 3, km.VideoStreams(2, CPU, 0), 4096, None, CPU)
    assert torch.equal(default, km.seed_centres(xn, 3, noise, m))


def test_kmeans_plus_plus_default_pool_is_4096_tokens():
    xn = km.normalize_tokens(torch.randn(1, 4097, 2, generator=torch.Generator().manual_seed(0)))
    got = km.kmeans_plus_plus(xn, 1)
    g = torch.Generator().manual_seed(0)  # the seed's stream: pool keys first, then the first pick
    keys, first = torch.rand(1, 4097, generator=g), torch.rand(1, generator=g)
    pool = xn[0, keys[0].topk(4096).indices]
    assert torch.equal(got[0, 0], pool[int(first * 4096)])


def test_draw_seed_noise_order_shapes_and_defaults():
    s = km.VideoStreams(2, CPU, 9, [1, 2])
    noise, m = km.draw_seed_noise(10, 4, s, 6, None, CPU)
    assert m == 6
    trials = 2 + int(math.log(4))  # 3
    assert noise.race.shape == (2, 3, trials, 6) and noise.first.shape == (2,)
    for row, vid in enumerate([1, 2]):
        g = torch.Generator().manual_seed(km.video_seed(9, vid))
        assert torch.equal(noise.pool_keys[row], torch.rand(1, 10, generator=g)[0])
        assert torch.equal(noise.first[row], torch.rand(1, generator=g)[0])
        assert torch.equal(noise.race[row], torch.empty(1, 3, trials, 6).exponential_(generator=g)[0])
    # a pool as large as the tokens (or no cap) draws no keys
    for sample in (10, 11, None):
        noise, m = km.draw_seed_noise(10, 1, km.VideoStreams(1, CPU, 0), sample, 5, CPU)
        assert m == 10 and noise.pool_keys is None and noise.race.shape == (1, 0, 5, 10)
    noise, m = km.draw_seed_noise(10, 2, km.VideoStreams(1, CPU, 0), 9, None, CPU)
    assert m == 9 and noise.pool_keys.shape == (1, 10) and noise.race.shape == (1, 1, 2, 9)
    noise, _ = km.draw_seed_noise(30, 20, km.VideoStreams(1, CPU, 0), None, None, CPU)
    assert noise.race.shape == (1, 19, 2 + 2, 30)


def test_fused_seeding_rule(monkeypatch):
    cpu = torch.zeros(1, 2, 2)
    assert km._fused_seeding(cpu, None) is False and km._fused_seeding(cpu, False) is False
    with pytest.raises(ValueError, match=r"^fused seeding runs on CUDA only$"):
        km._fused_seeding(cpu, True)
    cuda = SimpleNamespace(is_cuda=True, device="cuda:3")  # the rule reads only .is_cuda and .device
    asked = []

    def capability(device=None):
        asked.append(device)
        return cap[0]

    cap = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert km._fused_seeding(cuda, False) is False
    if "triton" in sys.modules or _has_triton():
        assert km._fused_seeding(cuda, None) is True and km._fused_seeding(cuda, True) is True
    asked.clear()
    assert km._use_triton(cpu) is False and asked == []  # the CPU never asks for a capability
    assert km.TRITON_MIN_CAPABILITY == (7, 0)
    if _has_triton():
        assert km._use_triton(cuda) is True and asked[-1] == "cuda:3"
        cap[0] = (7, 0)
        assert km._use_triton(cuda) is True
        cap[0] = (6, 1)  # older than Volta: the torch loops
        assert km._use_triton(cuda) is False and km._fused_seeding(cuda, None) is False
        cap[0] = (9, 0)
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    assert km._use_triton(cuda) is False
    assert km._fused_seeding(cuda, None) is False and km._fused_seeding(cuda, False) is False
    with pytest.raises(ValueError, match=r"^fused seeding needs triton \(it comes with CUDA builds of torch\)$"):
        km._fused_seeding(cuda, True)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def test_cpu_gram_seeding_refuses_fused_but_default_runs_the_loop():
    xn = POOL[None].contiguous()
    with pytest.raises(ValueError, match="CUDA only"):
        km.seed_centres(xn, 3, hand_noise([0.0]), 4, use_gram=True, fused=True)
    # the default (use_gram None) on the CPU is the direct loop: no distance matrix, so no refusal
    got = km.seed_centres(xn, 3, hand_noise([0.0]), 4, fused=True)
    assert torch.equal(got[0], POOL[[0, 1, 2]])


# --- assignment and Lloyd -------------------------------------------------------------------------


def test_assign_with_and_without_an_active_mask():
    xn = torch.stack([unit(0, 80, 170), unit(10, 100, 190)])  # [2, 3, 2]
    cents = torch.stack([unit(0, 90, 180), unit(0, 90, 180)]).double()  # any dtype: cast to the tokens'
    labels, best = km.assign(xn, cents)
    assert labels.tolist() == [[0, 1, 2], [0, 1, 2]] and best.dtype == torch.float32
    want = torch.tensor([[0, 10, 10], [10, 10, 10]], dtype=torch.float64).mul(math.pi / 180).cos().float()
    assert torch.allclose(best, want, atol=1e-6)
    active = torch.tensor([[True, False, True], [False, True, True]])
    labels, best = km.assign(xn, cents, active)
    assert labels.tolist() == [[0, 0, 2], [1, 1, 2]]
    assert torch.allclose(best[0, 1], torch.tensor(math.cos(math.radians(80))).float(), atol=1e-6)
    assert torch.allclose(best[1, 0], torch.tensor(math.cos(math.radians(80))).float(), atol=1e-6)


def test_worst_fitted_by_hand():
    """n = 7, k = 3: chunks of 2 over the first 6 tokens; each chunk's worst, worst first; token 6 never."""
    best = t2([0.9, 0.1, 0.5, 0.7, 0.2, 0.95, -1.0], [0.0, 0.5, 0.3, 0.9, 1.0, 0.99, -1.0])
    got = km._worst_fitted(best, 3)
    assert got.tolist() == [[1, 4, 2], [0, 2, 5]]
    assert km._worst_fitted(t2([0.5, 0.2, 0.9, 0.1]), 2).tolist() == [[3, 1]]


#: video 0 of the Lloyd cases: a (0 deg), b (0.6, 0.8), c (90 deg), d (-0.6, 0.8)
TOK0 = t2([1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8])
CEN0 = t2([1.0, 0.0], [0.0, 1.0], [0.0, -1.0])  # c2 attracts no token


def _step(xn, cents, done=None, active=None, masked=False, tol=1e-4, reseed=True):
    b, k = cents.shape[:2]
    done = torch.zeros(b, dtype=torch.bool) if done is None else torch.tensor(done)
    active = torch.ones(b, k, dtype=torch.bool) if active is None else torch.tensor(active)
    return km.lloyd_step(xn, cents, done, active, masked, tol, reseed)


def test_lloyd_step_means_and_a_reseeded_empty_cluster():
    """a -> c0; b, c, d -> c1 (sum (0, 2.6)); c2 is empty and takes the worst fitted of a, b, c: b."""
    cents, done = _step(TOK0[None], CEN0[None])
    assert torch.allclose(cents[0], t2([1.0, 0.0], [0.0, 1.0], [0.6, 0.8]), atol=1e-6)
    assert done.tolist() == [False]
    cents, done = _step(TOK0[None], CEN0[None], reseed=False)  # the empty centre stays put
    assert torch.allclose(cents[0], CEN0, atol=1e-6) and torch.equal(cents[0, 2], CEN0[2])
    assert done.tolist() == [True]  # nothing moved more than tol


def test_lloyd_step_mean_of_a_short_sum_is_normalised():
    """(1, 0) + (-0.8, 0.6) = (0.2, 0.6), of norm 0.63 < 1: the new centre is its direction."""
    xn = t2([1.0, 0.0], [-0.8, 0.6])[None]
    cents, _ = _step(xn, t2([0.0, 1.0])[None])
    assert torch.allclose(cents[0, 0], F.normalize(t2(0.2, 0.6), dim=0), atol=1e-6)


def test_lloyd_step_on_bf16_tokens():
    cents, done = _step(TOK0[None].bfloat16(), CEN0[None])
    assert cents.dtype == torch.float32
    assert torch.allclose(cents[0], t2([1.0, 0.0], [0.0, 1.0], [0.6, 0.8]), atol=1e-2)


def test_lloyd_step_two_empty_clusters_take_distinct_tokens():
    """All four tokens join c0; best fits a 1, b 0.6, c 0: the worst of (a, b, c) first: c, then b."""
    cents0 = t2([1.0, 0.0], [0.0, -1.0], [0.0, -1.0])
    cents, _ = _step(TOK0[None], cents0[None])
    mean = F.normalize(TOK0.sum(0), dim=0)
    assert torch.allclose(cents[0], torch.stack([mean, TOK0[2], TOK0[1]]), atol=1e-6)


def test_lloyd_step_masked_codes_and_frozen_videos():
    """Video 1: c1 is inactive; masked, b joins c0 and c joins c2, and c1 stays where it was."""
    tok1 = t2([1.0, 0.0], [0.6, 0.8], [-0.8, 0.6], [-1.0, 0.0])
    cen1 = t2([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    xn, cents = torch.stack([TOK0, tok1]), torch.stack([CEN0, cen1])
    active = [[True, True, True], [True, False, True]]
    got, done = _step(xn, cents, active=active, masked=True)
    want1 = torch.stack([F.normalize(t2(1.6, 0.8), dim=0), cen1[1], F.normalize(t2(-1.8, 0.6), dim=0)])
    assert torch.allclose(got[1], want1, atol=1e-6) and torch.equal(got[1, 1], cen1[1])
    assert torch.allclose(got[0], t2([1.0, 0.0], [0.0, 1.0], [0.6, 0.8]), atol=1e-6)
    assert done.tolist() == [False, False]
    # unmasked, c1 still pulls b and c (but, inactive, does not move): c0 keeps only a
    got, _ = _step(xn, cents, active=active, masked=False)
    assert torch.allclose(got[1, 0], t2(1.0, 0.0), atol=1e-6) and torch.equal(got[1, 1], cen1[1])
    assert torch.allclose(got[1, 2], F.normalize(t2(-1.8, 0.6), dim=0), atol=1e-6)
    # a video already done keeps its centroids; tol decides per video
    got, done = _step(xn, cents, done=[True, False], active=active, masked=True)
    assert torch.equal(got[0], CEN0) and torch.allclose(got[1], want1, atol=1e-6)
    assert done.tolist() == [True, False]
    # shifts: video 0 does not move, video 1 moves by 0.56 (c0 by 0.46, c2 by 0.32)
    got, done = _step(xn, cents, active=active, masked=True, reseed=False, tol=0.5)
    assert done.tolist() == [True, False]
    got, done = _step(xn, cents, active=active, masked=True, reseed=False, tol=0.6)
    assert done.tolist() == [True, True]
    got, done = _step(xn, cents, active=active, masked=True, reseed=False, tol=0.0)
    assert done.tolist() == [False, False]  # no shift is below 0


class SpySteps:
    """A step cache whose ``compiled`` records every call's arguments."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.names: list[str] = []
        self.keys: list[tuple] = []

    def run(self, key, fn, args, kwargs):
        """The graph cache's entry point (``maybe_graphed`` with ``cuda_graphs``): record, then call."""
        self.keys.append(key)
        return fn(*args, **kwargs)

    def compiled(self, fn):
        self.names.append(fn.__name__)

        def spy(*args):
            self.calls.append(args)
            return fn(*args)

        return spy


@pytest.mark.parametrize(
    "iters, every, want",
    [(7, 3, [False, True, False, False, True, False, False]), (1, 3, [True]), (4, 2, [False, True, False, True]),
     (3, 5, [False, True, False]), (2, 1, [False, False]), (0, 3, [])],
)
def test_lloyd_reseed_schedule(iters, every, want):
    spy = SpySteps()
    km.lloyd(TOK0[None], CEN0[None], iters, tol=0.25, reseed_every=every, steps=spy)
    assert [c[6] for c in spy.calls] == want
    assert all(c[5] == 0.25 and c[4] is False for c in spy.calls)
    assert spy.names == ["lloyd_step"]


def test_lloyd_defaults_and_done_flags_passed_on():
    spy = SpySteps()
    km.lloyd(TOK0[None], CEN0[None], 5, steps=spy)
    assert [c[6] for c in spy.calls] == [False, True, False, False, True]
    assert all(c[5] == 1e-4 for c in spy.calls)
    assert spy.calls[0][2].tolist() == [False] and spy.calls[0][3].tolist() == [[True, True, True]]
    # the first step moves nothing (c2 is empty, no re-seed at i = 0): done from then on
    assert [c[2].tolist() for c in spy.calls] == [[False], [True], [True], [True], [True]]
    spy = SpySteps()
    km.lloyd(TOK0[None], CEN0[None], 2, active=torch.tensor([[True, True, False]]), steps=spy)
    assert all(c[4] is True for c in spy.calls) and spy.calls[0][3].tolist() == [[True, True, False]]


def test_lloyd_result_by_hand():
    r = km.lloyd(TOK0[None], CEN0[None], 1)  # one step re-seeds (iters == 1)
    assert torch.allclose(r.centroids[0], t2([1.0, 0.0], [0.0, 1.0], [0.6, 0.8]), atol=1e-6)
    assert r.labels.tolist() == [[0, 2, 1, 1]]
    assert r.counts.tolist() == [[1.0, 2.0, 1.0]] and r.counts.dtype == torch.float32
    assert r.inertia.shape == (1,) and r.inertia.item() == pytest.approx(0.2, abs=1e-6)  # d: 1 - 0.8
    r = km.lloyd(TOK0[None], CEN0[None], 2)  # i = 0 moves nothing: frozen before i = 1 could re-seed
    assert r.labels.tolist() == [[0, 1, 1, 1]] and torch.equal(r.centroids[0, 2], CEN0[2])
    r = km.lloyd(TOK0[None], CEN0[None], 2, tol=0.0)  # not frozen: i = 1 re-seeds
    assert r.labels.tolist() == [[0, 2, 1, 1]]
    r = km.lloyd(TOK0[None], CEN0[None], 3, tol=0.0, reseed_every=5)  # i = 1 re-seeds
    assert r.counts.tolist() == [[1.0, 2.0, 1.0]]
    r = km.lloyd(TOK0[None], CEN0[None], 3, tol=0.0, reseed_every=1)  # i % 1 is never 1: no re-seed
    assert r.counts.tolist() == [[1.0, 3.0, 0.0]]
    r = km.lloyd(TOK0[None], CEN0[None], 0)
    assert torch.equal(r.centroids, CEN0[None]) and r.labels.tolist() == [[0, 1, 1, 1]]
    assert r.inertia.item() == pytest.approx(0.4, abs=1e-6)
    # masked: the inactive code never takes a token
    r = km.lloyd(TOK0[None], CEN0[None], 2, active=torch.tensor([[True, False, True]]))
    assert 1 not in r.labels[0].tolist() and torch.equal(r.centroids[0, 1], CEN0[1])


def test_lloyd_early_stop_freezes_one_video_not_the_other():
    tok1 = t2([1.0, 0.0], [0.6, 0.8], [-0.8, 0.6], [-1.0, 0.0])
    cen1 = t2([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
    xn, cents = torch.stack([TOK0, tok1]), torch.stack([CEN0, cen1])
    # video 0 moves nothing in step 0 and freezes (its empty c2 is never re-seeded); video 1 goes on
    r = km.lloyd(xn, cents, 2)
    assert r.labels.tolist() == [[0, 1, 1, 1], [0, 1, 2, 2]]
    for v in range(2):
        alone = km.lloyd(xn[v : v + 1], cents[v : v + 1], 2)
        assert torch.equal(alone.centroids[0], r.centroids[v]) and torch.equal(alone.labels[0], r.labels[v])
    assert r.inertia.shape == (2,) and r.counts.shape == (2, 3)


# --- merge down (Ward) ----------------------------------------------------------------------------

#: K0 = 4 clusters: A (2 members at 0 deg), B (1 at (0.8, 0.6)), C (1 at 180 deg), D (empty)
WSUMS = t2([2.0, 0.0], [0.8, 0.6], [-1.0, 0.0], [0.0, 0.0])
WCOUNTS = torch.tensor([2.0, 1.0, 1.0, 0.0])


def test_ward_costs_by_hand():
    """n_i n_j / (n_i + n_j) |mu_i - mu_j|^2: A-B 2/3 x 0.4, A-C 2/3 x 4, B-C 1/2 x 3.6; 0 with D."""
    cost = km.ward_costs(WSUMS[None], WCOUNTS[None].long())
    assert cost.dtype == torch.float32 and cost.shape == (1, 4, 4)
    inf = float("inf")
    want = torch.tensor([[inf, 0.4 * 2 / 3, 4 * 2 / 3, 0], [0.4 * 2 / 3, inf, 1.8, 0], [4 * 2 / 3, 1.8, inf, 0],
                         [0, 0, 0, inf]])
    assert torch.allclose(cost[0], want, atol=1e-6)
    assert torch.equal(torch.isinf(cost[0]), torch.eye(4, dtype=torch.bool))
    # two empty clusters: still 0 between them (no 0 / 0), and a batch of two videos
    two = km.ward_costs(torch.zeros(2, 2, 3), torch.zeros(2, 2))
    assert torch.equal(two, torch.tensor([[inf, 0.0], [0.0, inf]]).expand(2, 2, 2))


def _ward_state(k0=4):
    cost = km.ward_costs(WSUMS[None], WCOUNTS[None])
    return cost, WCOUNTS[None].clone(), torch.ones(1, k0, dtype=torch.bool), torch.arange(k0)[None]


def test_ward_step_by_hand():
    """First the free merge of empty D into A (the first zero in row-major order: (0, 3)); A's costs stay
    (Lance-Williams with n_D = 0). Then A + B (0.267): A's cost to C becomes
    (3 x 2.667 + 2 x 1.8 - 1 x 0.267) / 4 = 2.833, Ward's cost of {A, B} against C."""
    cost, n, alive, group = km.ward_step(*_ward_state())
    inf = float("inf")
    assert alive.tolist() == [[True, True, True, False]] and group.tolist() == [[0, 1, 2, 0]]
    assert n.tolist() == [[2.0, 1.0, 1.0, 0.0]]
    want = torch.tensor([[inf, 0.4 * 2 / 3, 4 * 2 / 3, inf], [0.4 * 2 / 3, inf, 1.8, inf],
                         [4 * 2 / 3, 1.8, inf, inf], [inf, inf, inf, inf]])
    assert torch.allclose(cost[0], want, atol=1e-6)
    cost, n, alive, group = km.ward_step(cost, n, alive, group)
    assert alive.tolist() == [[True, False, True, False]] and group.tolist() == [[0, 0, 2, 0]]
    assert n.tolist() == [[3.0, 0.0, 1.0, 0.0]]
    ab = torch.tensor([2.8, 0.6]) / 3  # the mean of A + B
    c_ab = 3 * 1 / 4 * ((ab - torch.tensor([-1.0, 0.0])) ** 2).sum()
    assert torch.allclose(cost[0, 0, 2], c_ab, atol=1e-6) and cost[0, 0, 2].item() == pytest.approx(2.8333, abs=1e-4)
    assert torch.allclose(cost[0, 2, 0], c_ab, atol=1e-6)
    assert torch.isinf(cost[0, 1]).all() and torch.isinf(cost[0, :, 1]).all() and torch.isinf(cost[0, 0, 0])


def test_ward_merge_down_by_hand():
    sums, counts = WSUMS[None], WCOUNTS[None]
    groups, merged = km.ward_merge_down(sums, counts, 4)
    assert groups.tolist() == [[0, 1, 2, 3]] and torch.equal(merged[0], WSUMS)
    groups, merged = km.ward_merge_down(sums, counts, 3)
    assert groups.tolist() == [[0, 1, 2, 0]] and torch.equal(merged[0], WSUMS[:3])
    groups, merged = km.ward_merge_down(sums, counts.long(), 2)
    assert groups.tolist() == [[0, 0, 1, 0]]  # the live clusters A and C, numbered in index order
    assert merged.dtype == torch.float32
    assert torch.allclose(merged[0], torch.stack([WSUMS[0] + WSUMS[1], WSUMS[2]]), atol=1e-6)
    groups, merged = km.ward_merge_down(sums, counts, 1)
    assert groups.tolist() == [[0, 0, 0, 0]] and torch.allclose(merged[0, 0], WSUMS.sum(0), atol=1e-6)


def test_ward_merge_down_numbers_the_live_clusters_in_index_order():
    """B and C merge first (into B); the live clusters are A (0) and B (1); D (empty) went into A."""
    sums = t2([1.0, 0.0], [0.0, 3.0], [0.0, 1.0], [0.0, 0.0])
    counts = torch.tensor([[1.0, 3.0, 1.0, 0.0]])
    groups, merged = km.ward_merge_down(sums[None], counts, 2)
    assert groups.tolist() == [[0, 1, 1, 0]]
    assert torch.allclose(merged[0], t2([1.0, 0.0], [0.0, 4.0]), atol=1e-6)
    groups, _ = km.ward_merge_down(sums[None], counts, 3)
    assert groups.tolist() == [[0, 1, 2, 0]]


def _loop_ward(sums: torch.Tensor, counts: torch.Tensor, k: int) -> list[int]:
    """Plain-Python Ward over one video, costs recomputed from the merged sums: each cluster's group."""
    s = sums.double().tolist()
    n = counts.double().tolist()
    members = {i: [i] for i in range(len(n))}

    def cost(i, j):
        mi = [v / max(n[i], 1.0) for v in s[i]]
        mj = [v / max(n[j], 1.0) for v in s[j]]
        return n[i] * n[j] / max(n[i] + n[j], 1.0) * sum((a - b) ** 2 for a, b in zip(mi, mj))

    while len(members) > k:
        live = sorted(members)
        _, i, j = min((cost(i, j), i, j) for i in live for j in live if i < j)
        s[i] = [a + b for a, b in zip(s[i], s[j])]
        n[i] += n[j]
        members[i] += members.pop(j)
    groups = [0] * len(n)
    for slot, i in enumerate(sorted(members)):
        for c in members[i]:
            groups[c] = slot
    return groups


def test_ward_merge_down_of_forty_clusters_keeps_the_live_ones_in_index_order():
    """K0 = 40 > 32: the live clusters' order comes from a stable sort (an unstable one reorders here)."""
    g = torch.Generator().manual_seed(9)
    counts = torch.randint(0, 4, (1, 40), generator=g).float()
    sums = torch.randn(1, 40, 3, generator=g) * counts[..., None]
    groups, _ = km.ward_merge_down(sums, counts, 20)
    assert groups[0].tolist() == _loop_ward(sums[0], counts[0], 20)


def test_ward_merge_down_equals_a_plain_loop():
    g = torch.Generator().manual_seed(2)
    b, k0, k = 3, 8, 3
    counts = torch.randint(0, 6, (b, k0), generator=g).float()
    counts[:, 2] = 0.0
    sums = torch.randn(b, k0, 3, generator=g) * counts[..., None]
    groups, merged = km.ward_merge_down(sums, counts, k)
    for v in range(b):
        want = _loop_ward(sums[v], counts[v], k)
        assert groups[v].tolist() == want, v
        for slot in range(k):
            assert torch.allclose(merged[v, slot], sums[v][torch.tensor(want) == slot].sum(0), atol=1e-5)


# --- cosine_kmeans ------------------------------------------------------------------------------------


def test_cosine_kmeans_refusals_word_for_word():
    x = torch.randn(1, 5, 2)
    with pytest.raises(ValueError, match=r"^number of codes must be >= 1, got K=0$"):
        km.cosine_kmeans(x, 0)
    with pytest.raises(ValueError, match=r"^number of codes K=6 exceeds the number of tokens N=5$"):
        km.cosine_kmeans(x, 6)
    with pytest.raises(ValueError, match=r"^oversample must be >= 1, got 0$"):
        km.cosine_kmeans(x, 2, oversample=0)
    msg = r"^seed_sample must be >= 1 \(tokens in the k-means\+\+ seeding pool\), got 0$"
    with pytest.raises(ValueError, match=msg):
        km.cosine_kmeans(x, 2, seed_sample=0)
    with pytest.raises(ValueError, match=r"^tokens must be \[B, N, D\], got shape \(5, 2\)$"):
        km.cosine_kmeans(x[0], 2)
    km.check_seed_sample(None)
    km.check_seed_sample(1)
    assert km.cosine_kmeans(x, 5, oversample=1, iters=1).labels.shape == (1, 5)  # K = N is allowed
    assert km.cosine_kmeans(x, 1, seed_sample=1, iters=1).labels.tolist() == [[0] * 5]


def test_warm_start_is_lloyd_from_init():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 3, generator=g) * 3
    init = torch.randn(2, 3, 3, generator=g).double()
    for iters, tol in ((1, 1e-4), (3, 0.5), (10, 0.0)):
        got = km.cosine_kmeans(x, 3, iters=iters, tol=tol, init=init)
        want = km.lloyd(km.normalize_tokens(x), F.normalize(init.float(), dim=-1), iters=iters, tol=tol)
        assert torch.equal(got.centroids, want.centroids) and torch.equal(got.labels, want.labels)
    small = 0.1 * init  # norms below 1: normalised all the same
    got = km.cosine_kmeans(x, 3, iters=0, init=small)
    assert torch.allclose(got.centroids, F.normalize(init.float(), dim=-1), atol=1e-6)
    got = km.cosine_kmeans(x, 3, init=init)
    want = km.lloyd(km.normalize_tokens(x), F.normalize(init.float(), dim=-1), iters=10, tol=1e-4)
    assert torch.equal(got.centroids, want.centroids)


def _pipeline(x, k, k0, iters, tol, seed, sample, ids):
    """The fit written out: seeding, Lloyd (then merge and refine when over-seeding)."""
    b, n, _ = x.shape
    noise, m = km.draw_seed_noise(n, k0, km.VideoStreams(b, CPU, seed, ids), sample,
                                  km.OVERSEED_TRIALS if k0 > k else None, CPU)
    xn = km.normalize_tokens(x)
    k0 = max(min(k0, m), k)
    centres = km.seed_centres(xn, k0, noise, m)
    if k0 == k:
        return km.lloyd(xn, centres, iters=iters, tol=tol)
    first, refine = km.oversampled_iters(iters)
    r = km.lloyd(xn, centres, iters=first, tol=tol)
    _, merged = km.ward_merge_down(km.cluster_sums(xn, r.labels, k0), r.counts, k)
    return km.lloyd(xn, F.normalize(merged, dim=-1), iters=refine, tol=tol)


@pytest.mark.parametrize(
    "k, oversample, iters, tol, seed, sample, ids",
    [(3, 2, 4, 1e-4, 0, 2048, None), (3, 1, 3, 1e-4, 1, 2048, [4, 5]), (2, 3, 5, 0.3, 2, 9, [0, 1]),
     (4, 2, 1, 0.0, 3, None, None), (3, 2, 6, 1e-4, 4, 30, [2, 3])],
)
def test_cosine_kmeans_is_the_pipeline_written_out(k, oversample, iters, tol, seed, sample, ids):
    g = torch.Generator().manual_seed(k + iters)
    x = torch.randn(2, 30, 3, generator=g)
    got = km.cosine_kmeans(x, k, iters=iters, tol=tol, seed=seed, seed_sample=sample, video_ids=ids,
                           oversample=oversample)
    want = _pipeline(x, k, min(oversample * k, 30), iters, tol, seed, sample, ids)
    assert torch.equal(got.labels, want.labels)
    assert torch.equal(got.centroids, want.centroids)
    assert torch.equal(got.counts, want.counts) and torch.equal(got.inertia, want.inertia)


def test_cosine_kmeans_defaults():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 40, 3, generator=g)
    got = km.cosine_kmeans(x, 3)
    want = _pipeline(x, 3, 6, 10, 1e-4, 0, 2048, None)
    assert torch.equal(got.labels, want.labels) and torch.equal(got.centroids, want.centroids)
    # a different seed or video id changes the fit
    assert not torch.equal(km.cosine_kmeans(x, 3, seed=1).centroids, got.centroids)


def test_k0_edges_reach_the_fit(monkeypatch):
    seen = []
    real_fit, real_draw = km._fit, km.draw_seed_noise

    def fit(*args, **kw):
        seen.append((kw["k"], kw["k0"], kw["m"], kw["iters"], kw["tol"], kw["steps"]))
        return real_fit(*args, **kw)

    def draw(n, k, streams, sample, trials, device):
        seen.append(("draw", n, k, sample, trials))
        return real_draw(n, k, streams, sample, trials, device)

    monkeypatch.setattr(km, "_fit", fit)
    monkeypatch.setattr(km, "draw_seed_noise", draw)
    x = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(0))
    cases = [
        (dict(k=3), [("draw", 10, 6, 2048, 16), (3, 6, 10, 10, 1e-4, None)]),
        (dict(k=3, iters=2, tol=0.5), [("draw", 10, 6, 2048, 16), (3, 6, 10, 2, 0.5, None)]),
        (dict(k=4), [("draw", 10, 8, 2048, 16), (4, 8, 10, 10, 1e-4, None)]),
        (dict(k=6), [("draw", 10, 10, 2048, 16), (6, 10, 10, 10, 1e-4, None)]),  # min(2K, N)
        (dict(k=3, seed_sample=4), [("draw", 10, 6, 4, 16), (3, 4, 4, 10, 1e-4, None)]),  # min(., pool)
        (dict(k=3, seed_sample=2), [("draw", 10, 6, 2, 16), (3, 3, 2, 10, 1e-4, None)]),  # never below K
        (dict(k=3, oversample=1), [("draw", 10, 3, 2048, None), (3, 3, 10, 10, 1e-4, None)]),
        (dict(k=10), [("draw", 10, 10, 2048, None), (10, 10, 10, 10, 1e-4, None)]),  # K = N: plain
        (dict(k=1, oversample=3, seed_sample=None), [("draw", 10, 3, None, 16), (1, 3, 10, 10, 1e-4, None)]),
    ]
    for kw, want in cases:
        seen.clear()
        km.cosine_kmeans(x, **kw)
        assert seen == want, kw


def test_compiled_steps_come_from_the_cache():
    spy = SpySteps()
    x = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(0))
    got = km.cosine_kmeans(x, 2, iters=2, compiled=True, cache=spy, cuda_graphs=False)
    assert set(spy.names) == {"lloyd_step"} and len(spy.calls) == 2  # one step per half (1 + 1)
    plain = km.cosine_kmeans(x, 2, iters=2)
    assert torch.equal(got.centroids, plain.centroids)
    for oversample, steps in ((1, 3), (2, 1 + 2)):  # plain: 3 steps; over-seeded: oversampled_iters(3) = (2, 1)
        spy = SpySteps()
        got = km.cosine_kmeans(x, 2, iters=3, tol=0.25, oversample=oversample, compiled=True, cache=spy,
                               cuda_graphs=False)
        assert len(spy.calls) == steps and all(c[5] == 0.25 for c in spy.calls), oversample
        plain = km.cosine_kmeans(x, 2, iters=3, tol=0.25, oversample=oversample)
        assert torch.equal(got.centroids, plain.centroids)


def test_the_graph_cache_key_and_the_defaults_reach_the_cache():
    x = torch.randn(1, 10, 3, generator=torch.Generator().manual_seed(0))
    spy = SpySteps()
    got = km.cosine_kmeans(x, 3, cache=spy)  # cuda_graphs by default: through the cache, not compiled
    assert spy.keys == [("fixed", 3, 6, 10, 10, 1e-4, False)] and spy.names == [] and spy.calls == []
    assert torch.equal(got.centroids, km.cosine_kmeans(x, 3).centroids)
    km.cosine_kmeans(x, 3, iters=2, tol=0.5, seed_sample=4, cache=spy)
    km.cosine_kmeans(x, 2, iters=1, seed_sample=3, oversample=3, cache=spy)
    assert spy.keys[1:] == [("fixed", 3, 4, 4, 2, 0.5, False), ("fixed", 2, 3, 3, 1, 1e-4, False)]
    km.cosine_kmeans(x, 3, cache=spy, cuda_graphs=False)
    assert len(spy.keys) == 3


def test_recovers_blobs_up_to_relabelling_with_and_without_oversampling():
    g = torch.Generator().manual_seed(0)
    centres = unit(0, 120, 240)
    truth = torch.arange(30) % 3
    x = (centres[truth] + 0.05 * torch.randn(30, 2, generator=g))[None]
    x = torch.cat([x, 0.01 * torch.randn(1, 30, 1, generator=g)], dim=-1)
    for oversample in (1, 2):
        r = km.cosine_kmeans(x, 3, oversample=oversample)
        assert same_partition(r.labels[0], truth), oversample
        assert r.counts.tolist() == [[10.0, 10.0, 10.0]]
        assert torch.allclose(r.centroids.norm(dim=-1), torch.ones(1, 3), atol=1e-5)


def test_identical_tokens_keep_a_seed_direction():
    """Over-seeding on identical tokens: every merged group but one is empty; the fit still returns unit
    centroids at the token's direction."""
    x = torch.tensor([[[3.0, 4.0]] * 6])
    for iters in (2, 4):  # with 4, the refinement's first step does not re-seed: a zero centre would stay
        r = km.cosine_kmeans(x, 2, iters=iters)
        assert torch.allclose(r.centroids, t2([0.6, 0.8], [0.6, 0.8])[None], atol=1e-6), iters
        assert r.counts.sum().item() == 6


# --- the fused seeding's host side (core/triton_kmeans.py) ----------------------------------------


class FakeKernel:
    """Stands in for the Triton kernel: records the launch and runs the kernel's rule in torch, reading
    ``race`` and writing ``picked`` by the same flat offsets the kernel uses (so a wrong stride, a
    non-contiguous race or a wrongly shaped output shows)."""

    def __init__(self):
        self.launches: list[dict] = []

    def __getitem__(self, grid):
        def launch(d2, race, race_batch_stride, first, picked, m, k, trials, *, L_PAD, BLOCK_M, num_warps):
            self.launches.append(dict(grid=grid, m=m, k=k, trials=trials, L_PAD=L_PAD, BLOCK_M=BLOCK_M,
                                      num_warps=num_warps, stride=race_batch_stride, first=first.dtype))
            flat_d2, flat_out = d2.reshape(-1), picked.view(-1)
            for b in range(grid[0]):
                rows = flat_d2[b * m * m : (b + 1) * m * m].view(m, m)
                noise = torch.as_strided(race, (k - 1, trials, m), (trials * m, m, 1),
                                         race.storage_offset() + b * race_batch_stride)
                pick = int(first.view(-1)[b])
                flat_out[b * k] = pick
                mins = rows[pick][None]
                for j in range(1, k):
                    mins, p = km.gram_seed_step(mins, noise[j - 1][None], rows[None])
                    flat_out[b * k + j] = int(p[0])

        return launch


def test_greedy_seed_host_side_with_a_stand_in_kernel(monkeypatch):
    ts = pytest.importorskip("llava_vqtoken.core.triton_kmeans", reason="needs triton")
    fake = FakeKernel()
    monkeypatch.setattr(ts, "_greedy_seed_kernel", fake)
    g = torch.Generator().manual_seed(4)
    b, m, k = 3, 5, 4
    xn = km.normalize_tokens(torch.randn(b, m, 3, generator=g))
    d2 = km.chord2(torch.bmm(xn, xn.transpose(1, 2)))
    first = torch.tensor([0.0, 0.5, 0.9])
    start = (first * m).long()
    one = torch.empty(1, k - 1, 3, m).exponential_(generator=g)
    own = torch.empty(b, k - 1, 3, m).exponential_(generator=g)
    cases = {
        "broadcast": (one.expand(b, -1, -1, -1), 0),  # one stream: batch stride 0, read as is
        "own": (own, (k - 1) * 3 * m),
        "fp64": (own.double(), (k - 1) * 3 * m),
        "transposed": (own.transpose(-1, -2).contiguous().transpose(-1, -2), (k - 1) * 3 * m),
    }
    for name, (race, stride) in cases.items():
        fake.launches.clear()
        picked = ts.greedy_seed(d2, race, start, k)
        assert picked.dtype == torch.long and picked.shape == (b, k), name
        noise = km.SeedNoise(None, first, race.float())
        want = km.seed_centres(xn, k, noise, m, use_gram=True)
        assert torch.equal(xn.gather(1, picked.unsqueeze(-1).expand(-1, -1, 3)), want), name
        assert fake.launches == [dict(grid=(b,), m=m, k=k, trials=3, L_PAD=4, BLOCK_M=8, num_warps=16,
                                      stride=stride, first=torch.long)], name
    # L a power of two already, one video
    fake.launches.clear()
    race = torch.empty(1, 1, 2, m).exponential_(generator=g)
    ts.greedy_seed(d2[:1], race, start[:1].int(), 2)
    launch = fake.launches[0]
    assert launch["L_PAD"] == 2 and launch["trials"] == 2 and launch["first"] == torch.long


class FakeWard:
    """Stands in for the Ward kernel: runs :func:`kmeans.ward_step` STEPS times per video and writes
    each video's groups and alive flags at the kernel's flat offsets."""

    def __init__(self):
        self.launches: list[dict] = []

    def __getitem__(self, grid):
        def launch(cost, n, group, alive, k0, steps, *, KP, num_warps):
            self.launches.append(dict(grid=grid, k0=k0, steps=steps, KP=KP, num_warps=num_warps,
                                      dtypes=(cost.dtype, n.dtype, group.dtype, alive.dtype)))
            flat_cost, flat_n = cost.reshape(-1), n.reshape(-1)
            for b in range(grid[0]):
                c = flat_cost[b * k0 * k0 : (b + 1) * k0 * k0].view(1, k0, k0)
                state = (c, flat_n[b * k0 : (b + 1) * k0][None], torch.ones(1, k0, dtype=torch.bool),
                         torch.arange(k0)[None])
                for _ in range(steps):
                    state = km.ward_step(*state)
                group.view(-1)[b * k0 : (b + 1) * k0] = state[3][0]
                alive.view(-1)[b * k0 : (b + 1) * k0] = state[2][0].to(alive.dtype)

        return launch


def test_ward_groups_host_side_with_a_stand_in_kernel(monkeypatch):
    tk = pytest.importorskip("llava_vqtoken.core.triton_kmeans", reason="needs triton")
    fake = FakeWard()
    monkeypatch.setattr(tk, "_ward_kernel", fake)
    g = torch.Generator().manual_seed(5)
    counts = torch.randint(0, 5, (2, 5), generator=g)
    sums = torch.randn(2, 5, 3, generator=g) * counts[..., None]
    cost = km.ward_costs(sums, counts)
    group, alive = tk.ward_groups(cost.double(), counts, 2)  # any dtypes: the kernel gets fp32
    assert group.dtype == torch.long and alive.dtype == torch.bool and group.shape == alive.shape == (2, 5)
    assert fake.launches == [dict(grid=(2,), k0=5, steps=3, KP=8, num_warps=8,
                                  dtypes=(torch.float32, torch.float32, torch.long, torch.int8))]
    state = (cost, counts.float(), torch.ones(2, 5, dtype=torch.bool), torch.arange(5).expand(2, 5).clone())
    for _ in range(3):
        state = km.ward_step(*state)
    assert torch.equal(group, state[3]) and torch.equal(alive, state[2])
    assert tk.WARD_WARPS == 8 and tk.NUM_WARPS == 16
    fake.launches.clear()
    tk.ward_groups(cost[:1].transpose(1, 2), counts[:1], 1)  # (symmetric) non-contiguous costs
    assert fake.launches[0]["KP"] == 8 and fake.launches[0]["steps"] == 4


def test_triton_branches_on_the_cpu_with_stand_in_kernels(monkeypatch):
    """Where _use_triton says yes, seeding and the merge go through triton_kmeans (here its stand-ins)
    and give the loops' answers; the merge only when there is something to merge (K0 > k)."""
    tk = pytest.importorskip("llava_vqtoken.core.triton_kmeans", reason="needs triton")
    seeds, wards = FakeKernel(), FakeWard()
    monkeypatch.setattr(tk, "_greedy_seed_kernel", seeds)
    monkeypatch.setattr(tk, "_ward_kernel", wards)
    xn = POOL[None].expand(2, 4, 2).contiguous()
    loop = km.seed_centres(xn, 3, hand_noise([0.0, 0.99]), 4, use_gram=True)
    monkeypatch.setattr(km, "_use_triton", lambda x: True)
    got = km.seed_centres(xn, 3, hand_noise([0.0, 0.99]), 4, use_gram=True)
    assert torch.equal(got, loop) and len(seeds.launches) == 1 and seeds.launches[0]["k"] == 3
    assert seeds.launches[0]["stride"] == 2 * 2 * 4  # each video's own copy of the race
    km.seed_centres(xn, 1, hand_noise([0.0, 0.99]), 4, use_gram=True)  # K = 1: no kernel
    km.seed_centres(xn, 3, hand_noise([0.0, 0.99]), 4, use_gram=True, steps=SpySteps())  # compiled steps: no kernel
    km.seed_centres(xn, 3, hand_noise([0.0, 0.99]), 4, use_gram=True, fused=False)
    assert len(seeds.launches) == 1
    groups, merged = km.ward_merge_down(WSUMS[None], WCOUNTS[None], 2)
    assert groups.tolist() == [[0, 0, 1, 0]] and len(wards.launches) == 1 and wards.launches[0]["steps"] == 2
    assert torch.allclose(merged[0], torch.stack([WSUMS[0] + WSUMS[1], WSUMS[2]]), atol=1e-6)
    groups, _ = km.ward_merge_down(WSUMS[None], WCOUNTS[None], 4)  # K0 == k: no kernel
    assert groups.tolist() == [[0, 1, 2, 3]] and len(wards.launches) == 1


# --- every tensor on the input's device (the meta device: a CPU tensor mixed in raises) ------------

META = torch.device("meta")


def test_the_fit_runs_on_the_meta_device():
    """The fit is sync-free, so it runs on the meta device; any helper tensor made on the CPU (the
    default device) would meet the meta tensors and raise, as it would meet CUDA ones on a GPU."""
    x = torch.randn(2, 30, 3).to(META)
    keys, first, race = torch.rand(2, 30).to(META), torch.rand(2).to(META), torch.rand(2, 5, 3, 20).to(META)
    for k, k0 in ((3, 6), (3, 3)):
        out = km._fit(x, keys, first, race[:, : k0 - 1], k=k, k0=k0, m=20, iters=4, tol=1e-4, steps=None)
        assert [o.device.type for o in out] == ["meta"] * 4 and out[1].shape == (2, 30)
    xn = km.normalize_tokens(x)
    assert xn.device.type == "meta" and xn.dtype == torch.float32
    noise = km.SeedNoise(None, first, race)
    for use_gram in (False, True):
        assert km.seed_centres(xn[:, :20], 6, noise, 20, use_gram=use_gram).device.type == "meta"
    c = km.seed_centres(xn, 6, km.SeedNoise(keys, first, race), 20)
    r = km.lloyd(xn, c, 3, active=torch.ones(2, 6, dtype=torch.bool, device=META))
    assert r.labels.device.type == r.counts.device.type == r.inertia.device.type == "meta"
    groups, merged = km.ward_merge_down(km.cluster_sums(xn, r.labels, 6), r.counts, 3)
    assert groups.device.type == merged.device.type == "meta"
    labels = torch.zeros(2, 3, dtype=torch.long, device=META)
    assert km.one_hot(labels, 4).device.type == km._counts(labels, 4).device.type == "meta"
    assert km._worst_fitted(torch.rand(2, 30).to(META), 6).device.type == "meta"


def test_the_triton_hosts_allocate_on_the_inputs_device(monkeypatch):
    tk = pytest.importorskip("llava_vqtoken.core.triton_kmeans", reason="needs triton")
    made = []

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                made.append(sorted({a.device.type for a in args if isinstance(a, torch.Tensor)}))
            return launch

    monkeypatch.setattr(tk, "_greedy_seed_kernel", Recorder())
    monkeypatch.setattr(tk, "_ward_kernel", Recorder())
    picked = tk.greedy_seed(torch.rand(2, 5, 5).to(META), torch.rand(2, 3, 2, 5).to(META),
                            torch.zeros(2, dtype=torch.long, device=META), 4)
    group, alive = tk.ward_groups(torch.rand(2, 5, 5).to(META), torch.rand(2, 5).to(META), 2)
    assert picked.device.type == group.device.type == alive.device.type == "meta"
    assert made == [["meta"], ["meta"]]
