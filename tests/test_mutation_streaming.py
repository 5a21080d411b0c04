"""Known answers for core/streaming.py, fast enough for the mutation run (scripts/mutation.sh).

The FeatureStore's exact contents (in memory and spilled), the worst-fitted segment rule and one
assignment pass by hand; every other step against its in-memory counterpart (``kmeans``, ``adaptive``,
``VQTokenCompressor``) on tiny videos, fed in chunks of 1, 2 and odd sizes. Nothing here hard-codes a
k-means++ seeding sequence: the streamed fit must equal whatever the in-memory fit gives.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llava_vqtoken.config import CompressorConfig
from llava_vqtoken.core import build_compressor
from llava_vqtoken.core.adaptive import adaptive_kmeans, gap_shares, value_halves
from llava_vqtoken.core.compressor import CompressionError
from llava_vqtoken.core.kmeans import (
    SeedNoise,
    VideoStreams,
    _worst_fitted,
    cosine_kmeans,
    draw_seed_noise,
    lloyd,
    lloyd_step,
    normalize_tokens,
    seed_centres,
)
from llava_vqtoken.core.streaming import (
    NO_TOKEN,
    RESEED_EVERY,
    FeatureStore,
    StreamingFit,
    _Worst,
    check_streamable,
    codebook_sums,
    compress_streamed,
    footprint_streamed,
    gap_shares_streamed,
    streaming_adaptive,
    streaming_kmeans,
)
from llava_vqtoken.core.vq_attention import footprint_stats

CPU = torch.device("cpu")
D = 8
#: (chunk_frames, frames per append): blocks of one frame, even and odd blocks fed unevenly, one block for all
FEEDS = [(1, 1), (2, 3), (3, 2), (16, 5)]


def blobs(t: int = 5, h: int = 2, w: int = 3, d: int = D, centres: int = 4, seed: int = 0) -> torch.Tensor:
    """[t, h, w, d] tokens around ``centres`` random directions, norms 0.5..2 (a clear clustering)."""
    g = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(centres, d, generator=g), dim=-1)
    lab = torch.randint(0, centres, (t * h * w,), generator=g)
    mag = 0.5 + 1.5 * torch.rand(t * h * w, 1, generator=g)
    return (dirs[lab] * mag + 0.05 * torch.randn(t * h * w, d, generator=g)).reshape(t, h, w, d)


def noise(t: int = 5, h: int = 2, w: int = 3, d: int = D, seed: int = 1) -> torch.Tensor:
    """Gaussian tokens: no clustering, so every step of the recipe shows in the answer."""
    return torch.randn(t, h, w, d, generator=torch.Generator().manual_seed(seed))


def store_of(x: torch.Tensor, chunk_frames: int, feed: int, spill_dir=None) -> FeatureStore:
    store = FeatureStore(chunk_frames, spill_dir=spill_dir)
    for s in range(0, x.shape[0], feed):
        store.append(x[s : s + feed])
    return store


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def exact(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


# ---------------------------------------------------------------- FeatureStore


def test_a_new_store_is_empty():
    store = FeatureStore(3)
    assert store.chunk_frames == 3 and store.device == CPU and store.spill_dir is None
    assert (store.num_blocks, store.frames, store.tokens) == (0, 0, 0)
    assert (store.dtype, store.grid, store.dim) == (None, None, None)
    assert store._fill == 0 and store._pin is False and store._raw == []
    assert FeatureStore(1).chunk_frames == 1  # the smallest block


@pytest.mark.parametrize("bad", [0, -2])
def test_store_refuses_blocks_of_no_frame(bad):
    with pytest.raises(CompressionError, match=exact(f"chunk_frames must be >= 1 to stream, got {bad}")):
        FeatureStore(bad)


def test_store_refuses_a_spill_dir_that_is_not_a_cpu_folder(tmp_path):
    store = FeatureStore(2, spill_dir=str(tmp_path))
    assert store.spill_dir == tmp_path and store.device == CPU
    missing, afile = tmp_path / "missing", tmp_path / "file"
    afile.write_text("x")
    for where, device in ((missing, "cpu"), (afile, "cpu"), (tmp_path, "meta")):
        msg = f"spill_dir {where} must be an existing folder, with the store on the CPU"
        with pytest.raises(CompressionError, match=exact(msg)):
            FeatureStore(2, device, where)
    meta = FeatureStore(2, "meta")  # another device without spilling is fine: the blocks live there
    meta.append(torch.ones(3, 1, 2, 4))
    assert meta.block(0).device == torch.device("meta") and meta.block(1).shape == (1, 2, 4)


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3, 4, 5), (0, 2, 1, 3), (2, 0, 1, 3), (2, 2, 0, 3), (2, 2, 1, 0)])
def test_store_refuses_chunks_that_are_not_frames(shape):
    msg = f"a chunk of video features must be [frames, H, W, D], got {shape}"
    with pytest.raises(CompressionError, match=exact(msg)):
        FeatureStore(2).append(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 3, 1, 3), (1, 2, 2, 3), (1, 2, 1, 4)])
def test_store_refuses_a_chunk_of_another_grid(shape):
    store = FeatureStore(2)
    store.append(torch.zeros(3, 2, 1, 3))
    h, w, d = shape[1:]
    with pytest.raises(CompressionError, match=exact(f"a chunk of grid {h}x{w}x{d} after chunks of 2x1x3")):
        store.append(torch.zeros(shape))
    assert store.frames == 3


def test_store_refuses_to_spill_a_dtype_without_an_integer_view(tmp_path):
    with pytest.raises(CompressionError, match=exact("features of dtype torch.float64 cannot be spilled to disk")):
        FeatureStore(2, spill_dir=tmp_path).append(torch.zeros(1, 1, 1, 2, dtype=torch.float64))
    store = FeatureStore(2)  # in memory any dtype is kept as it is
    store.append(torch.ones(1, 1, 1, 2, dtype=torch.float64))
    assert store.block(0).dtype == torch.float64


@pytest.mark.parametrize("feeds", [[7], [1] * 7, [2, 5], [3, 3, 1], [4, 3]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_store_blocks_hold_the_frames_in_order(feeds, dtype):
    x = torch.arange(7 * 2 * 1 * 3, dtype=torch.float32).reshape(7, 2, 1, 3).to(dtype)
    store = FeatureStore(3)
    s = 0
    for f in feeds:
        store.append(x[s : s + f])
        s += f
    assert (store.frames, store.tokens, store.cells, store.grid, store.dim, store.dtype) == (7, 14, 2, (2, 1), 3, dtype)
    assert store.num_blocks == 3 and store._fill == 1 and store._pin is False
    for i, (a, b) in enumerate([(0, 3), (3, 6), (6, 7)]):
        blk = store.block(i)
        assert blk.dtype == dtype and blk.shape == (b - a, 2, 3)
        assert torch.equal(blk, x[a:b].reshape(b - a, 2, 3))
    got = list(store.chunks(CPU))
    assert [s for s, _ in got] == [0, 6, 12]
    assert [c.shape for _, c in got] == [(6, 3), (6, 3), (2, 3)]
    assert torch.equal(torch.cat([c for _, c in got]), flat(x))


def test_a_video_of_whole_blocks_and_one_longer_than_a_block():
    x = torch.randn(6, 1, 2, 4)
    store = store_of(x, 3, 6)
    assert store.num_blocks == 2 and store._fill == 3
    assert torch.equal(store.block(1), x[3:].reshape(3, 2, 4))
    store.append(x[:1])  # the next frame opens a third block
    assert store.num_blocks == 3 and store._fill == 1 and store.frames == 7
    assert torch.equal(store.block(2), x[:1].reshape(1, 2, 4))
    one = store_of(x[:2], 16, 1)  # a block longer than the video
    assert one.num_blocks == 1 and one.block(0).shape == (2, 2, 4) and torch.equal(one.block(0), x[:2].reshape(2, 2, 4))


@pytest.mark.parametrize(
    ("dtype", "np_int"), [(torch.float32, np.int32), (torch.bfloat16, np.int16), (torch.float16, np.int16)]
)
def test_spilled_blocks_are_the_raw_bits_on_disk(tmp_path, dtype, np_int):
    x = torch.randn(7, 2, 1, 3).to(dtype)
    store = store_of(x, 3, 2, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["block0000000.bin", "block0000001.bin"]  # the full blocks; the last stays in memory
    assert store._raw[0] == tmp_path / names[0] and store._raw[1] == tmp_path / names[1]
    assert isinstance(store._raw[2], torch.Tensor)
    for i, name in enumerate(names):
        bits = np.fromfile(tmp_path / name, dtype=np_int)
        assert bits.size == 3 * 2 * 3
        back = torch.from_numpy(bits).view(dtype).reshape(3, 2, 3)
        assert torch.equal(back, x[3 * i : 3 * i + 3].reshape(3, 2, 3))
        assert torch.equal(store.block(i), back)
    assert torch.equal(store.block(2), x[6:].reshape(1, 2, 3))
    assert torch.equal(torch.cat([c for _, c in store.chunks(CPU)]), flat(x))
    whole = tmp_path / "whole"
    whole.mkdir()
    exact_fit = store_of(x[:6], 3, 6, whole)
    assert all(not isinstance(r, torch.Tensor) for r in exact_fit._raw)  # a full last block is spilled too
    assert torch.equal(exact_fit.block(1), x[3:6].reshape(3, 2, 3))


@pytest.mark.parametrize("spill", [False, True])
def test_gather_returns_the_tokens_asked_for_in_that_order(tmp_path, spill):
    x = torch.randn(5, 1, 2, 3)
    store = store_of(x, 2, 3, tmp_path if spill else None)
    idx = torch.tensor([9, 0, 4, 4, 3, 8, 1])
    got = store.gather(idx, CPU)
    assert got.dtype == torch.float32 and torch.equal(got, flat(x)[idx])
    assert store.gather(torch.tensor([], dtype=torch.long), CPU).shape == (0, 3)
    bf = store_of(x.bfloat16(), 4, 5)
    assert bf.gather(idx, CPU).dtype == torch.bfloat16 and torch.equal(bf.gather(idx, CPU), flat(x.bfloat16())[idx])


# ---------------------------------------------------------------- the worst-fitted segment rule

#: 1 - best of ten tokens (exact in fp32); segments of 10 // 3 = 3 tokens, token 9 in none
BAD = [0.125, 0.5, 0.5, 0.25, 0.875, 0.375, 0.0, 0.0, 0.0, 1.5]


@pytest.mark.parametrize("blocks", [[10], [1] * 10, [2, 3, 5], [2, 7, 1], [4, 4, 2]])
def test_worst_fitted_tokens_by_hand(blocks):
    best = 1.0 - torch.tensor(BAD)
    worst = _Worst(10, 3, CPU)
    assert worst.step == 3 and worst.k == 3
    assert worst.val.tolist() == [NO_TOKEN] * 3 and worst.idx.tolist() == [0, 0, 0]
    s = 0
    for b in blocks:
        worst.update(s, best[s : s + b])
        s += b
    # segment 0: tokens 1 and 2 tie at 0.5 -> the first (across a block boundary too); segment 1: token 4;
    # segment 2: all fit perfectly -> its first token; token 9 (the worst) is in no segment
    assert worst.idx.tolist() == [1, 4, 6] and worst.val.tolist() == [0.5, 0.875, 0.0]
    assert worst.idx.dtype == worst.order().dtype == torch.long
    assert worst.order().tolist() == [4, 1, 6]
    assert worst.order().tolist() == _worst_fitted(best[None], 3)[0].tolist()


def test_worst_fitted_equal_segments_keep_their_order_and_a_late_block_changes_nothing():
    best = 1.0 - torch.tensor([0.5, 0.25, 0.5, 0.25, 0.75])
    worst = _Worst(5, 2, CPU)  # segments {0, 1} and {2, 3}; token 4 is past them
    worst.update(0, best[:4])
    worst.update(4, best[4:])  # only tokens past the segments: nothing changes
    assert worst.idx.tolist() == [0, 2] and worst.order().tolist() == [0, 2]
    one = _Worst(3, 3, CPU)  # K = N: every token is its own segment
    one.update(0, 1.0 - torch.tensor([0.25, 0.75, 0.5]))
    assert one.order().tolist() == [1, 2, 0]


#: best fit of 64 tokens in 32 segments of 2: the first token of every even segment fits at 0.5, all else perfectly
TIED = torch.ones(64).index_fill_(0, torch.arange(0, 64, 4), 0.5)


def test_worst_fitted_ties_between_segments_keep_the_segment_order():
    # 32 segments tie in two groups: a stable order, as many ties as an unstable sort scrambles on the CPU
    worst = _Worst(64, 32, CPU)
    worst.update(0, TIED[:40])
    worst.update(40, TIED[40:])
    assert worst.order().tolist() == list(range(0, 64, 4)) + list(range(2, 64, 4))


# regression: kmeans._worst_fitted ordered tied segments with an unstable argsort (scrambled on the CPU from
# 32 codes on), the streamed fit with a stable one: re-seeding could pick other tokens
def test_worst_fitted_ties_streamed_equal_in_memory():
    worst = _Worst(64, 32, CPU)
    worst.update(0, TIED)
    assert worst.order().tolist() == _worst_fitted(TIED[None], 32)[0].tolist()


@pytest.mark.parametrize("k", [1, 3, 7, 23])
def test_worst_fitted_streamed_equals_in_memory(k):
    best = torch.rand(23, generator=torch.Generator().manual_seed(k))
    worst = _Worst(23, k, CPU)
    for s in range(0, 23, 4):
        worst.update(s, best[s : s + 4])
    assert worst.order().tolist() == _worst_fitted(best[None], k)[0].tolist()


# ---------------------------------------------------------------- StreamingFit: one pass, seeds, Lloyd


def hand_store(chunk_frames: int, feed: int) -> FeatureStore:
    # 3 frames of 1x2 tokens: (2,0) (0,3) | (4,0) (0,0) | (0,5) (3,4)
    x = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[4.0, 0.0], [0.0, 0.0]], [[0.0, 5.0], [3.0, 4.0]]])
    return store_of(x[:, None], chunk_frames, feed)


@pytest.mark.parametrize(("chunk_frames", "feed"), [(1, 1), (2, 3), (3, 2), (5, 1)])
def test_final_pass_by_hand(chunk_frames, feed):
    fit = StreamingFit(hand_store(chunk_frames, feed), CPU, 1e-4)
    assert fit.n == 6 and fit.tol == 1e-4 and fit.device == CPU
    out = fit.final(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # unit tokens (1,0) (0,1) (1,0) (0,0) (0,1) (.6,.8); the zero token ties at 0 and takes code 0
    assert out.labels.tolist() == [0, 1, 0, 0, 1, 1] and out.labels.dtype == torch.long
    assert out.counts.tolist() == [3.0, 3.0] and out.counts.dtype == torch.float32
    assert float(out.inertia) == pytest.approx(1.2, abs=1e-6)  # 1 (the zero token) + 0.2
    torch.testing.assert_close(out.unit_sums, torch.tensor([[2.0, 0.0], [0.6, 2.8]]))
    assert float(out.total_sq) == pytest.approx(5.0, abs=1e-6)  # the zero token adds nothing
    masked = fit.final(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([True, False]))
    assert masked.labels.tolist() == [0] * 6 and masked.counts.tolist() == [6.0, 0.0]
    assert float(masked.inertia) == pytest.approx(3.4, abs=1e-6)
    torch.testing.assert_close(masked.unit_sums, torch.tensor([[2.6, 2.8], [0.0, 0.0]]))


def test_a_fit_needs_frames():
    with pytest.raises(CompressionError, match=exact("video features are empty: no frames were streamed")):
        StreamingFit(FeatureStore(2), CPU, 1e-4)


def noise_for(n: int, k: int, seed_sample: int | None, trials: int | None, seed: int = 3):
    return draw_seed_noise(n, k, VideoStreams(1, CPU, seed), seed_sample, trials, CPU)


@pytest.mark.parametrize(("k", "seed_sample", "trials"), [(4, None, None), (4, 7, None), (5, 9, 16), (30, 12, 2)])
def test_seeds_are_the_in_memory_seeds(k, seed_sample, trials):
    x = noise()
    nz, m = noise_for(30, k, seed_sample, trials)
    ref = seed_centres(normalize_tokens(flat(x)[None]), k, nz, m)[0]
    for chunk_frames, feed in FEEDS:
        got = StreamingFit(store_of(x, chunk_frames, feed), CPU, 1e-4).seeds(k, nz, m)
        assert torch.equal(got, ref)


def in_memory_step(x, centroids, active, reseed):
    act = torch.ones(1, centroids.shape[0], dtype=torch.bool) if active is None else active[None]
    done = torch.zeros(1, dtype=torch.bool)
    new, _ = lloyd_step(normalize_tokens(flat(x)[None]), centroids[None], done, act, active is not None, 0.0, reseed)
    return new[0]


def centres_with_empty_codes(d: int = D) -> torch.Tensor:
    """Two directions among positive tokens and three that no positive token is nearest to."""
    c = torch.zeros(5, d)
    c[0, 0] = c[1, 1] = 1.0
    c[2], c[3], c[4] = -1.0, -1.0, -1.0
    c[3, 2] = 0.5
    c[4, 3] = 0.25
    return F.normalize(c, dim=-1)


@pytest.mark.parametrize("reseed", [False, True])
@pytest.mark.parametrize(
    "active", [None, [True, True, False, True, True], [True, True, True, True, False], [True, False, True, True, True]]
)
def test_lloyd_step_equals_in_memory(reseed, active):
    x = torch.rand(5, 2, 3, D, generator=torch.Generator().manual_seed(4))  # positive: codes 2..4 get no member
    c = centres_with_empty_codes()
    act = None if active is None else torch.tensor(active)
    ref = in_memory_step(x, c, act, reseed)
    for chunk_frames, feed in FEEDS:
        got = StreamingFit(store_of(x, chunk_frames, feed), CPU, 1e-4).step(c, act, reseed)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
        if act is not None:
            assert torch.equal(got[~act], c[~act])  # an inactive code never moves
    moved = ~torch.isclose(ref, c).all(dim=-1)
    if act is None or act[1]:
        assert moved[2:].any() == reseed  # empty codes move only when re-seeded


def test_lloyd_step_keeps_a_short_sum_at_unit_length():
    # two tokens 150 degrees apart share code 0: their sum has length 0.52 and is normalised back to 1
    a = torch.tensor([[[0.2588, 0.9659]], [[0.2588, -0.9659]]])
    fit = StreamingFit(store_of(a[:, None], 1, 1), CPU, 1e-4)
    got = fit.step(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), None, False)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))


@pytest.mark.parametrize(("iters", "tol"), [(1, 1e-4), (2, 1e-4), (3, 1e-4), (5, 0.0), (3, 10.0), (4, 0.5)])
@pytest.mark.parametrize("masked", [False, True])
def test_lloyd_equals_in_memory(iters, tol, masked):
    """Empty codes re-seeded at the in-memory steps (a 1-step fit, then the 2nd, 5th...), and the stop at ``tol``."""
    x = torch.rand(5, 2, 3, D, generator=torch.Generator().manual_seed(5))
    c = centres_with_empty_codes()
    act = torch.tensor([True, True, True, True, False]) if masked else None
    ref = lloyd(normalize_tokens(flat(x)[None]), c[None], iters, tol, None if act is None else act[None])
    for chunk_frames, feed in FEEDS:
        fit = StreamingFit(store_of(x, chunk_frames, feed), CPU, tol)
        got = fit.lloyd(c, iters, act)
        torch.testing.assert_close(got, ref.centroids[0], atol=1e-6, rtol=0)
        out = fit.final(got, act)
        assert torch.equal(out.labels, ref.labels[0]) and torch.equal(out.counts, ref.counts[0])
        torch.testing.assert_close(out.inertia, ref.inertia[0], atol=1e-5, rtol=0)


def test_lloyd_stops_once_converged_before_a_reseed_step():
    """Converged codes and three empty ones: with tol 0.5 the fit stops after the first step (shift 0),
    so the empty codes are never re-seeded (the second step would)."""
    x = torch.rand(4, 1, 2, D, generator=torch.Generator().manual_seed(6))
    fit = StreamingFit(store_of(x, 2, 2), CPU, 0.5)
    settled = centres_with_empty_codes()
    for _ in range(4):
        settled = fit.step(settled, None, False)
    assert torch.equal(settled[2:], centres_with_empty_codes()[2:])
    assert torch.equal(fit.lloyd(settled, 3), settled)  # one step, no change: stop
    assert RESEED_EVERY == 3
    moved = StreamingFit(store_of(x, 2, 2), CPU, 0.0).lloyd(settled, 2)
    assert torch.equal(moved[:2], settled[:2]) and not torch.equal(moved[2:], settled[2:])  # step 2 re-seeds


# ---------------------------------------------------------------- fixed K against cosine_kmeans


@pytest.mark.parametrize(
    ("data", "k", "iters", "seed_sample", "oversample", "video_id"),
    [
        ("blobs", 4, 10, None, 2, None),
        ("blobs", 4, 10, 10, 2, 7),
        ("noise", 3, 3, None, 1, None),
        ("noise", 5, 4, 9, 2, 2),
        ("noise", 4, 2, 6, 3, None),  # the pool (6) caps the over-seeded fit at 6 < 12 codes
        ("noise", 4, 1, 3, 2, None),  # a pool smaller than K: plain k-means++ from 3 tokens
        ("noise", 2, 5, None, 8, None),
        ("noise", 30, 3, None, 2, None),  # K = N
        ("noise", 1, 3, None, 2, 1),
        ("noise", 16, 6, None, 2, 5),  # K0 = N = 30 < 32
    ],
)
def test_fixed_k_equals_cosine_kmeans(data, k, iters, seed_sample, oversample, video_id):
    x = blobs() if data == "blobs" else noise()
    ids = None if video_id is None else [video_id]
    ref = cosine_kmeans(flat(x)[None], k, iters, 1e-4, 5, seed_sample, video_ids=ids, oversample=oversample)
    for chunk_frames, feed in FEEDS:
        store = store_of(x, chunk_frames, feed)
        centroids, fin = streaming_kmeans(store, k, iters, 1e-4, 5, seed_sample, CPU, video_id, oversample)
        assert torch.equal(fin.labels, ref.labels[0])
        assert torch.equal(fin.counts, ref.counts[0])
        torch.testing.assert_close(centroids, ref.centroids[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(fin.inertia, ref.inertia[0], atol=1e-5, rtol=0)


def test_fixed_k_of_identical_tokens_keeps_a_direction_per_code():
    x = torch.ones(3, 1, 2, D)
    ref = cosine_kmeans(flat(x)[None], 4, 4, 1e-4, 0, None)
    centroids, fin = streaming_kmeans(store_of(x, 2, 1), 4, 4, 1e-4, 0, None, CPU)
    assert torch.equal(centroids, ref.centroids[0]) and torch.equal(fin.labels, ref.labels[0])
    assert (centroids.norm(dim=-1) > 0.5).all()


@pytest.mark.parametrize("k", [0, 31])
def test_fixed_k_out_of_range(k):
    store = store_of(noise(), 2, 2)
    with pytest.raises(CompressionError, match=exact(f"num_tokens={k} must be within 1..30 (the video's tokens)")):
        streaming_kmeans(store, k, 3, 1e-4, 0, None, CPU)


# ---------------------------------------------------------------- adaptive K against adaptive_kmeans


def two_values() -> torch.Tensor:
    """Row 0 of every frame is e0, row 1 is 2 e1."""
    x = torch.zeros(5, 2, 3, D)
    x[:, 0, :, 0] = 1.0
    x[:, 1, :, 1] = 2.0
    return x


def adaptive_cfg(method: str, k_min: int, k_max: int, **kw) -> CompressorConfig:
    return CompressorConfig(num_tokens=None, adaptive=method, min_codes=k_min, max_codes=k_max, **kw)


def adaptive_ref(x: torch.Tensor, cfg: CompressorConfig, video_id: int | None):
    return adaptive_kmeans(
        flat(x)[None], cfg.min_codes, cfg.max_codes, cfg.adaptive, cfg.iters, cfg.refine_iters, cfg.tol, cfg.seed,
        cfg.seed_sample, cfg.silhouette_sample, video_ids=None if video_id is None else [video_id],
        oversample=cfg.oversample,
    )


ADAPTIVE = [
    ("blobs", "elbow", 2, 6, {}, None),
    ("blobs", "separation", 2, 6, {}, 3),
    ("blobs", "silhouette", 2, 6, dict(silhouette_sample=11), None),
    ("blobs", "elbow_released", 2, 6, {}, None),
    ("noise", "elbow", 2, 4, dict(iters=3, refine_iters=2), None),  # no elbow: more codes than the range
    ("noise", "elbow", 3, 30, dict(iters=2), None),  # max_codes = N
    ("noise", "separation", 1, 5, dict(seed_sample=6), 1),  # the pool caps K0
    ("noise", "silhouette", 2, 5, dict(silhouette_sample=500, oversample=1), 4),
    ("noise", "elbow_released", 2, 8, dict(seed=3), None),
    ("same", "elbow", 2, 4, {}, None),  # identical tokens: one group, clamped to the range's lower end
    ("same", "separation", 2, 4, {}, None),
    ("two", "elbow", 1, 4, {}, None),  # two distinct tokens: D(2) = 0 but D(1) > 0 is not degenerate
]


@pytest.mark.parametrize(("data", "method", "k_min", "k_max", "kw", "video_id"), ADAPTIVE)
def test_adaptive_k_equals_adaptive_kmeans(data, method, k_min, k_max, kw, video_id):
    x = {"blobs": blobs, "noise": noise, "same": lambda: torch.ones(5, 2, 3, D), "two": two_values}[data]()
    cfg = adaptive_cfg(method, k_min, k_max, **kw)
    ref, (choice,) = adaptive_ref(x, cfg, video_id)
    for chunk_frames, feed in FEEDS[:3]:
        centroids, fin, got, active = streaming_adaptive(store_of(x, chunk_frames, feed), cfg, CPU, video_id)
        assert (got.k, got.k_unclamped, got.clamped) == (choice.k, choice.k_unclamped, choice.clamped)
        assert got.scores.keys() == choice.scores.keys()
        # (identical tokens: the distortions are rounding, 1e-5 here)
        assert list(got.scores.values()) == pytest.approx(list(choice.scores.values()), abs=1e-4)
        assert active.tolist() == [i < choice.k for i in range(k_max)]
        assert torch.equal(fin.labels, ref.labels[0]) and torch.equal(fin.counts, ref.counts[0])
        torch.testing.assert_close(centroids, ref.centroids[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(fin.inertia, ref.inertia[0], atol=1e-5, rtol=0)
    if data == "same":
        assert (choice.k, choice.k_unclamped, choice.clamped) == (k_min, 1, "low")
    if data == "two":
        assert (choice.k, choice.k_unclamped, choice.clamped) == (2, 2, None)
        rows = fin.labels.reshape(5, 2, 3)
        assert rows[:, 0].unique().numel() == rows[:, 1].unique().numel() == 1 and rows[0, 0, 0] != rows[0, 1, 0]


def test_adaptive_choices_that_clamp():
    _, _, high, _ = streaming_adaptive(store_of(noise(), 2, 2), adaptive_cfg("elbow", 2, 4, iters=3), CPU)
    assert (high.k, high.k_unclamped, high.clamped) == (4, 5, "high")  # no elbow: k_max + 1
    _, _, top, _ = streaming_adaptive(store_of(noise(), 2, 2), adaptive_cfg("elbow", 3, 30, iters=2), CPU)
    assert (top.k, top.k_unclamped, top.clamped) == (30, 30, None)  # no elbow, and no more codes than tokens


def test_adaptive_max_codes_above_the_tokens():
    with pytest.raises(CompressionError, match=exact("max_codes=31 exceeds the video's 30 tokens")):
        streaming_adaptive(store_of(noise(), 2, 2), adaptive_cfg("elbow", 2, 31), CPU)


@pytest.mark.parametrize("seed", [8, 10])
def test_gap_shares_streamed_equal_in_memory(seed):
    x = noise(t=6, seed=seed)
    xn = normalize_tokens(flat(x))
    labels = (xn @ torch.randn(4, D, generator=torch.Generator().manual_seed(seed + 100)).T).argmax(dim=1)
    # merges: 0|1, 01|23, 2|3, 0|0 (a group with itself), nothing|3, 02|13
    side_i = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]], dtype=float)
    side_j = np.array([[0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1]], dtype=float)
    ref = gap_shares(xn, labels, 4, side_i, side_j)
    assert ref[3] == 1.0 and len(set(ref.tolist())) >= 4  # a group with itself does not separate; shares vary
    for chunk_frames, feed in FEEDS:
        fit = StreamingFit(store_of(x, chunk_frames, feed), CPU, 1e-4)
        got = gap_shares_streamed(fit, labels, 4, side_i, side_j)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_gap_shares_streamed_with_one_token_sides_equal_in_memory():
    """Sides with one even token (their mean is that token) or one odd token (their mean projection is
    its own), on either side of a merge, and a merge of two empty sides (no separation: 1.0)."""
    x = noise(t=6, seed=3)
    xn = normalize_tokens(flat(x))
    even = value_halves(xn)
    ev, od = even.nonzero()[:, 0], (~even).nonzero()[:, 0]
    labels = torch.randint(1, 4, (36,), generator=torch.Generator().manual_seed(1003))
    labels[ev[0]] = 0  # cluster 0: one even token and four odd ones
    labels[od[:4]] = 0
    labels[od[labels[od] == 3]] = 2  # cluster 3: its even tokens and one odd token
    labels[od[4]] = 3
    side_i = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=float)
    side_j = np.array([[0, 1, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=float)
    ref = gap_shares(xn, labels, 4, side_i, side_j)
    assert ref[4] == 1.0 and ref[0] == ref[2] > 0  # a merge and its mirror have the same share
    for chunk_frames, feed in FEEDS:
        fit = StreamingFit(store_of(x, chunk_frames, feed), CPU, 1e-4)
        torch.testing.assert_close(gap_shares_streamed(fit, labels, 4, side_i, side_j), ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- codebook sums and the footprint


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codebook_sums_by_hand(normalized, dtype):
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [6.0, 8.0], [1.0, 0.0], [0.0, 0.5], [0.0, 0.0]]).to(dtype)
    labels = torch.tensor([0, 2, 0, 2, 2, 0])
    store = store_of(x.reshape(3, 1, 2, 2), 2, 1)
    sums, norms = codebook_sums(store, labels, 3, CPU, normalized)
    assert sums.dtype == torch.float32 and sums.shape == (3, 2)
    if normalized:
        torch.testing.assert_close(sums, torch.tensor([[1.2, 1.6], [0.0, 0.0], [1.0, 2.0]]), atol=1e-2, rtol=0)
        assert float(norms) == pytest.approx(5.0, abs=1e-2)
        unit = F.normalize(x.float(), dim=-1).to(dtype).float()  # unit tokens in the store dtype (bf16: 0.6016)
        torch.testing.assert_close(sums, torch.zeros(3, 2).index_add_(0, labels, unit), atol=1e-6, rtol=0)
        assert float(norms) == pytest.approx(float(unit.norm(dim=-1).sum()), abs=1e-6)
    else:
        assert sums.tolist() == [[9.0, 12.0], [0.0, 0.0], [1.0, 2.5]]
        assert float(norms) == pytest.approx(18.5)


@pytest.mark.parametrize("motion", [False, True])
@pytest.mark.parametrize(
    ("t", "h", "w", "chunk"), [(7, 3, 4, 3), (7, 3, 4, 1), (5, 2, 3, 2), (4, 1, 3, 9), (2, 3, 1, 1), (1, 2, 2, 1)]
)
def test_footprint_streamed_equals_footprint_stats(motion, t, h, w, chunk):
    key_map = torch.randint(0, 5, (t, h, w), generator=torch.Generator().manual_seed(t * h * w))
    key_map[key_map == 3] = 4  # code 3 never occurs, code 6 is past every label
    key_map[0, -1, 0] = 5  # code 5 occurs once, in the first frame only
    ref = footprint_stats(key_map[None], 7, 2, motion)
    got = footprint_streamed(key_map, 7, 2, motion, chunk)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_footprint_of_codes_that_move_appear_late_or_leave_early_by_hand(chunk):
    # code 0 at (0, 0) in frame 0 and at (1, 1) in frame 2; code 2 once, at (0, 1) in the last frame;
    # code 3 once, at (1, 1) in the first frame; code 1 fills the rest; code 4 never occurs
    key_map = torch.ones(3, 2, 2, dtype=torch.long)
    key_map[0, 0, 0] = key_map[2, 1, 1] = 0
    key_map[2, 0, 1], key_map[0, 1, 1] = 2, 3
    fp = footprint_streamed(key_map, 5, 1, True, chunk)[0]
    assert fp.shape == (5, 3 * 2 + 3 + 3 + 2 + 8)
    # times (first, last frame / 2), centroid (h, w) in the first and the last frame, displacement
    assert fp[0, -8:].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    assert fp[2, -8:].tolist() == pytest.approx([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert fp[3, -8:].tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert fp[4].tolist() == [0.0] * 22
    assert fp[0, -10:-8].tolist() == pytest.approx([2 / 12, 2 / 3])  # share of tokens, of frames
    assert fp[2, -10:-8].tolist() == pytest.approx([1 / 12, 1 / 3])
    assert fp[2, 6:9].tolist() == pytest.approx([1.0, 0.0, 1.0])  # mean (t, h, w) of its one token
    assert fp[2, 9:12].tolist() == [0.0] * 3 and fp[0, 9:12].tolist() == pytest.approx([0.5] * 3)  # spread
    torch.testing.assert_close(fp[None], footprint_stats(key_map[None], 5, 1, True), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- the compressor


def stream(comp, x: torch.Tensor, chunk_frames: int, feed: int, video_id: int | None = None):
    return compress_streamed(comp, store_of(x, chunk_frames, feed), "cpu", video_id)


SPECS = {
    "fixed": dict(num_tokens=4),
    "fixed-motion-1": dict(num_tokens=5, footprint="motion", oversample=1, seed_sample=10),
    "normalized-no-attention": dict(num_tokens=4, attention="none", codebook="normalized"),
    "no-apply": dict(num_tokens=4, apply_attention=False),
    "random": dict(num_tokens=4, attention="random", hash="random", seed=4),
    "elbow": dict(num_tokens=None, adaptive="elbow", min_codes=2, max_codes=6),
    "silhouette": dict(num_tokens=None, adaptive="silhouette", min_codes=2, max_codes=6, silhouette_sample=9),
    "separation-random-hash": dict(num_tokens=None, adaptive="separation", min_codes=2, max_codes=6, hash="random"),
    "released": dict(CompressorConfig.released(min_codes=2, max_codes=6).to_dict(), apply_attention=True),
    "released-not-applied": dict(CompressorConfig.released(min_codes=2, max_codes=6).to_dict()),
}


@pytest.mark.parametrize("data", ["blobs", "noise"])
@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("video_id", [None, 3])
def test_compress_streamed_equals_in_memory(name, data, video_id):
    x = blobs(d=16) if data == "blobs" else noise(d=16)
    comp = build_compressor(CompressorConfig(**SPECS[name]), 16, grid=(2, 3)).eval()
    with torch.no_grad():
        ref = comp(x[None], video_ids=None if video_id is None else [video_id])[0]
    for chunk_frames, feed in FEEDS[:3]:
        got = stream(comp, x, chunk_frames, feed, video_id)
        assert (got.num_codes, got.tokens_in) == (ref.num_codes, 30)
        assert torch.equal(got.key_map, ref.key_map)
        assert got.codebook.dtype == ref.codebook.dtype and got.codebook.shape == ref.codebook.shape
        torch.testing.assert_close(got.codebook, ref.codebook, atol=1e-5, rtol=0)
        assert got.tokens.shape == ref.tokens.shape and not got.tokens.requires_grad
        torch.testing.assert_close(got.tokens, ref.tokens, atol=1e-5, rtol=0)
        assert got.stats.keys() == ref.stats.keys() | {"streamed_chunk_frames"}
        assert got.stats["streamed_chunk_frames"] == chunk_frames and got.stats["num_codes"] == ref.num_codes
        assert bool(got.stats["finite"]) and bool(got.stats["finite_output"])
        torch.testing.assert_close(got.stats["inertia"], ref.stats["inertia"], atol=1e-5, rtol=0)
        for key in ("clamped", "k_unclamped"):
            assert got.stats.get(key, "absent") == ref.stats.get(key, "absent")


@pytest.mark.parametrize("codebook", ["raw", "normalized"])
def test_identical_tokens_stream_like_in_memory(codebook):
    """Empty codes take their centroid scaled to the mean token norm, as in memory."""
    x = torch.full((3, 1, 2, 16), 2.0)
    comp = build_compressor(CompressorConfig(num_tokens=4, attention="none", codebook=codebook), 16).eval()
    with torch.no_grad():
        ref = comp(x[None])[0]
    got = stream(comp, x, 2, 1)
    assert torch.equal(got.key_map, ref.key_map)
    torch.testing.assert_close(got.codebook, ref.codebook, atol=1e-6, rtol=0)
    scale = 8.0 if codebook == "raw" else 1.0  # the norm of a token (2.0 in 16 channels) or of a unit token
    assert got.codebook.norm(dim=-1).tolist() == pytest.approx([scale] * 4, rel=1e-5)


def test_compress_streamed_keeps_the_store_dtype():
    x = blobs(d=16).bfloat16()
    comp = build_compressor(CompressorConfig(num_tokens=4, attention="none"), 16).eval()
    got = stream(comp, x, 2, 3)
    with torch.no_grad():
        ref = comp(x[None])[0]
    assert got.codebook.dtype == torch.bfloat16 and torch.equal(got.key_map, ref.key_map)
    torch.testing.assert_close(got.codebook, ref.codebook, atol=1e-2, rtol=0)


def test_one_frame_and_every_token_its_own_code():
    x = noise(t=1, d=16)
    comp = build_compressor(CompressorConfig(num_tokens=6, attention="none"), 16).eval()
    with torch.no_grad():
        ref = comp(x[None])[0]
    got = stream(comp, x, 4, 1)
    assert got.key_map.tolist() == [[[0, 1, 2], [3, 4, 5]]] == ref.key_map.tolist()  # by first appearance
    assert torch.equal(got.codebook, flat(x))  # each code is its one token
    assert float(got.stats["inertia"]) == pytest.approx(0.0, abs=1e-5)


def test_streaming_refusals_word_for_word():
    x = noise(d=16)
    pool = build_compressor(CompressorConfig(name="pool"), 16)
    msg = "chunk_frames streams VQToken only; compressor 'pool' needs the whole video at once (set chunk_frames=0)"
    with pytest.raises(CompressionError, match=exact(msg)):
        check_streamable(pool)
    comp = build_compressor(CompressorConfig(num_tokens=4), 16)
    msg = "chunk_frames streams at inference only (eval mode, no gradients); set chunk_frames=0 to train"
    with pytest.raises(CompressionError, match=exact(msg)):
        stream(comp.train(), x, 2, 2)
    assert check_streamable(comp.eval()) is comp
    with pytest.raises(CompressionError, match=exact("features have width 16 but the compressor was built for 24")):
        stream(build_compressor(CompressorConfig(num_tokens=4), 24).eval(), x, 2, 2)
    with pytest.raises(CompressionError, match=exact("num_tokens=31 exceeds the video's 30 tokens")):
        stream(build_compressor(CompressorConfig(num_tokens=31), 16).eval(), x, 2, 2)
    assert stream(build_compressor(CompressorConfig(num_tokens=30), 16).eval(), x, 4, 3).num_codes == 30
    cfg = adaptive_cfg("elbow", 2, 31)
    with pytest.raises(CompressionError, match=exact("max_codes=31 exceeds the video's 30 tokens")):
        stream(build_compressor(cfg, 16).eval(), x, 2, 2)


def test_non_finite_features_and_outputs_are_reported():
    x = noise(d=16)
    x[2, 1, 0, 3] = float("inf")
    comp = build_compressor(CompressorConfig(num_tokens=4, attention="none"), 16).eval()
    msg = "video features contain NaN or Inf; check the vision tower's dtype and input frames"
    with pytest.raises(CompressionError, match=exact(msg)):
        stream(comp, x, 2, 2)
    bad = build_compressor(CompressorConfig(num_tokens=4), 16).eval()
    with torch.no_grad():
        bad.attention.out_proj.weight.fill_(float("nan"))
    msg = "the compressor's output contains NaN or Inf although its input is finite; check its weights and dtype"
    with pytest.raises(CompressionError, match=exact(msg)):
        stream(bad, noise(d=16), 2, 2)


# regression: streaming reported a codebook that overflows fp32 (finite input) as non-finite input; in
# memory the same video raises the 'output' error (finite was codebook & inertia)
def test_a_codebook_overflow_is_reported_as_the_in_memory_path_does():
    x = torch.randn(3, 1, 2, 16, generator=torch.Generator().manual_seed(0))
    x[..., 0] = 3e38  # finite tokens whose per-code sums overflow fp32
    comp = build_compressor(CompressorConfig(num_tokens=2, attention="none"), 16).eval()
    msg = "the compressor's output contains NaN or Inf although its input is finite; check its weights and dtype"
    with pytest.raises(CompressionError, match=exact(msg)):
        comp(x[None])
    with pytest.raises(CompressionError, match=exact(msg)):
        stream(comp, x, 2, 1)


def test_results_are_made_on_the_compute_device():
    """On the meta device (shapes only, no values; a CPU tensor mixed in raises): every tensor of a
    footprint, of the codebook sums and of a Lloyd step is made on the compute device."""
    meta = torch.device("meta")
    key_map = torch.randint(0, 5, (4, 2, 3), generator=torch.Generator().manual_seed(0)).to(meta)
    for motion in (False, True):
        fp = footprint_streamed(key_map, 7, 2, motion, 3)
        assert fp.device == meta and fp.shape == footprint_stats(key_map[None], 7, 2, motion).shape
        one = footprint_streamed(key_map[:1, :1], 7, 2, motion, 3)  # one frame of one row: zeros(1) for t and h
        assert one.device == meta and one.shape == fp.shape
    store = store_of(noise(), 2, 2)
    sums, norms = codebook_sums(store, torch.zeros(30, dtype=torch.long, device=meta), 3, meta, True)
    assert sums.device == norms.device == meta and sums.shape == (3, D) and norms.shape == ()
    fit = StreamingFit(store, meta, 1e-4)
    for active in (None, torch.ones(3, dtype=torch.bool, device=meta)):
        new = fit.step(torch.zeros(3, D, device=meta), active, False)
        assert new.device == meta and new.shape == (3, D)
    nz, m = noise_for(30, 3, None, None)  # seeds from every token (the pool's index cannot leave the meta device)
    seeds = fit.seeds(3, SeedNoise(None, nz.first.to(meta), nz.race.to(meta)), m)
    assert seeds.device == meta and seeds.shape == (3, D)
    assert store.gather(torch.tensor([4, 0]), meta).device == meta
    assert all(x.device == meta for _, x in store.chunks(meta))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@CUDA
def test_streaming_on_cuda_keeps_every_tensor_there(tmp_path):
    """Features from the GPU land in pinned CPU blocks (not when spilled), and every result of the fit,
    the footprint, the codebook sums and the compressor is on the compute device (devices and shapes
    only: in bf16 the numbers are the CUDA path's own)."""
    cuda = torch.device("cuda")
    x = blobs(d=16)
    store = FeatureStore(2)
    store.append(x[:3].to(cuda))
    store.append(x[3:].to(cuda))
    assert store._pin is True and store.block(0).device == CPU and store.block(0).is_pinned()
    assert all(c.device.type == "cuda" for _, c in store.chunks(cuda))
    assert torch.equal(torch.cat([c for _, c in store.chunks(cuda)]).cpu(), flat(x))
    assert store.gather(torch.tensor([3, 29]), cuda).device.type == "cuda"
    spilled = FeatureStore(2, spill_dir=tmp_path)
    spilled.append(x.to(cuda))
    assert spilled._pin is False and torch.equal(spilled.block(0), x[:2].reshape(2, 6, 16))
    worst = _Worst(64, 32, cuda)
    worst.update(0, TIED.to(cuda))
    assert worst.order().tolist() == list(range(0, 64, 4)) + list(range(2, 64, 4))

    def on_cuda(*ts):
        return all(t.device.type == "cuda" for t in ts)

    centroids, fin = streaming_kmeans(store, 4, 5, 1e-4, 0, 10, cuda, 3)
    assert on_cuda(centroids, fin.labels, fin.inertia, fin.counts, fin.unit_sums, fin.total_sq)
    assert fin.labels.shape == (30,) and float(fin.counts.sum()) == 30.0
    sums, norms = codebook_sums(store, fin.labels, 4, cuda, True)
    assert on_cuda(sums, norms) and sums.shape == (4, 16)
    half = store_of(x.bfloat16(), 2, 5)  # bf16 members: the one-hot must be bf16 too on CUDA (member_sums)
    for normalized in (False, True):
        sums, _ = codebook_sums(half, fin.labels, 4, cuda, normalized)
        src = F.normalize(flat(x), dim=-1) if normalized else flat(x)
        ref = torch.zeros(4, 16).index_add_(0, fin.labels.cpu(), src)
        torch.testing.assert_close(sums.cpu(), ref, atol=0.1, rtol=0.02)
    fp = footprint_streamed(fin.labels.reshape(5, 2, 3), 4, 2, True, 2)
    assert on_cuda(fp) and fp.shape == footprint_stats(fin.labels.reshape(1, 5, 2, 3), 4, 2, True).shape
    for method in ("elbow", "separation", "silhouette", "elbow_released"):
        cfg = adaptive_cfg(method, 2, 6, silhouette_sample=9, seed_sample=10)
        centroids, fin, choice, active = streaming_adaptive(store, cfg, cuda, 3)
        assert on_cuda(centroids, fin.labels, fin.counts, active) and 2 <= choice.k <= 6
    for name, spec in SPECS.items():
        comp = build_compressor(CompressorConfig(**spec), 16, grid=(2, 3)).to(cuda).eval()
        got = compress_streamed(comp, store, cuda, 3)
        assert on_cuda(got.tokens, got.key_map, got.codebook), name
        assert got.key_map.shape == (5, 2, 3) and got.codebook.shape == (got.num_codes, 16), name
