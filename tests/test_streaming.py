"""Streaming VQToken (issue 18): the chunked fit against the in-memory one, chunk-boundary independence,
the chunked footprint, and the settings that cannot stream."""

from __future__ import annotations

import pytest
import torch

from llava_vqtoken.benchmarks.bench import structured_features
from llava_vqtoken.config import CompressorConfig, ConfigError
from llava_vqtoken.core import build_compressor
from llava_vqtoken.core.compressor import CompressionError
from llava_vqtoken.core.streaming import FeatureStore, compress_streamed, footprint_streamed
from llava_vqtoken.core.vq_attention import footprint_stats

T, H, W, D = 12, 9, 9, 32
#: the issue's bar for streaming vs in memory on a video that fits
INERTIA_REL = 0.02
AGREEMENT = 0.95


def features(seed: int = 1, clusters: int = 10) -> torch.Tensor:
    return structured_features(1, T, H, W, D, clusters, torch.device("cpu"), torch.float32, seed=seed)[0]


def stream(comp, feats: torch.Tensor, chunk_frames: int, feed: int):
    store = FeatureStore(chunk_frames)
    for s in range(0, feats.shape[0], feed):
        store.append(feats[s : s + feed])
    return compress_streamed(comp, store, "cpu")


def matched_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of tokens whose codes agree after a greedy one-to-one matching of the two codebooks."""
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    conf = torch.zeros(ka, kb).index_put_((a.flatten(), b.flatten()), torch.ones(a.numel()), accumulate=True)
    total = 0.0
    for _ in range(min(ka, kb)):
        v = conf.max()
        i, j = divmod(int(conf.argmax()), kb)
        total += float(v)
        conf[i, :] = -1
        conf[:, j] = -1
    return total / a.numel()


def test_matched_agreement_known_answers():
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert matched_agreement(a, torch.tensor([2, 2, 0, 0, 1, 1])) == 1.0  # a relabelling agrees fully
    assert matched_agreement(a, torch.tensor([0, 0, 0, 0, 1, 1])) == pytest.approx(4 / 6)


SPECS = {
    "fixed": dict(num_tokens=16),
    "fixed-motion": dict(num_tokens=8, footprint="motion"),
    "codebook-only": dict(num_tokens=16, attention="none", codebook="normalized"),
    "elbow": dict(num_tokens=None, adaptive="elbow", min_codes=4, max_codes=24),
    "silhouette": dict(num_tokens=None, adaptive="silhouette", min_codes=4, max_codes=16),
    "released": dict(CompressorConfig.released(min_codes=4, max_codes=16).to_dict(), apply_attention=True),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_streaming_matches_in_memory(name):
    x = features()
    comp = build_compressor(CompressorConfig(**SPECS[name]), D, grid=(H, W)).eval()
    with torch.no_grad():
        ref = comp(x[None])[0]
    got = stream(comp, x, chunk_frames=5, feed=7)
    assert got.num_codes == ref.num_codes
    assert got.key_map.shape == ref.key_map.shape == (T, H, W)  # every frame has its key map
    rel = abs(float(got.stats["inertia"]) - float(ref.stats["inertia"])) / float(ref.stats["inertia"])
    assert rel < INERTIA_REL
    assert matched_agreement(ref.key_map, got.key_map) >= AGREEMENT
    # same seeds, same steps: on these shapes the streamed fit is the in-memory one up to rounding
    assert torch.equal(got.key_map, ref.key_map)
    torch.testing.assert_close(got.tokens, ref.tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.codebook, ref.codebook, atol=1e-5, rtol=1e-5)


def test_streaming_close_on_unstructured_features():
    """Gaussian noise (no cluster structure: many near ties) still meets the issue's bar, at another chunk size."""
    x = torch.randn(T, H, W, D, generator=torch.Generator().manual_seed(3))
    comp = build_compressor(CompressorConfig(num_tokens=24, attention="none"), D).eval()
    with torch.no_grad():
        ref = comp(x[None])[0]
    got = stream(comp, x, chunk_frames=1, feed=5)
    rel = abs(float(got.stats["inertia"]) - float(ref.stats["inertia"])) / float(ref.stats["inertia"])
    assert rel < INERTIA_REL
    assert matched_agreement(ref.key_map, got.key_map) >= AGREEMENT


def test_result_does_not_depend_on_how_frames_are_fed():
    """The store re-blocks its input: feeding 1, 5 or all 12 frames at a time is bit-identical."""
    x = features(seed=2)
    comp = build_compressor(CompressorConfig(num_tokens=12, footprint="motion"), D).eval()
    outs = [stream(comp, x, chunk_frames=4, feed=f) for f in (1, 5, T)]
    for o in outs[1:]:
        assert torch.equal(o.key_map, outs[0].key_map)
        assert torch.equal(o.tokens, outs[0].tokens)


def test_store_blocks_and_gather():
    x = torch.arange(7 * 2 * 1 * 3, dtype=torch.float32).reshape(7, 2, 1, 3)
    store = FeatureStore(3)
    store.append(x[:2])
    store.append(x[2:])
    assert [b.shape[0] for b in store.blocks] == [3, 3, 1]
    assert (store.frames, store.tokens, store.grid, store.dim) == (7, 14, (2, 1), 3)
    flat = x.reshape(14, 3)
    idx = torch.tensor([13, 0, 6, 5])
    assert torch.equal(store.gather(idx, torch.device("cpu")), flat[idx])
    assert torch.equal(torch.cat([c for _, c in store.chunks(torch.device("cpu"))]), flat)
    assert [s for s, _ in store.chunks(torch.device("cpu"))] == [0, 6, 12]


@pytest.mark.parametrize("motion", [False, True])
def test_footprint_streamed_equals_footprint_stats(motion):
    key_map = torch.randint(0, 6, (7, 3, 4), generator=torch.Generator().manual_seed(0))
    key_map[:, :, :] = key_map.clamp_max(4)  # code 5 never occurs: its footprint is zeros in both
    ref = footprint_stats(key_map[None], 6, 4, motion)
    got = footprint_streamed(key_map, 6, 4, motion, chunk_frames=3)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_settings_that_cannot_stream_are_refused():
    with pytest.raises(ConfigError, match="chunk_frames"):
        CompressorConfig(name="pool", num_tokens=None, chunk_frames=8)
    with pytest.raises(ConfigError, match="chunk_frames"):
        CompressorConfig(chunk_frames=-1)
    x = features()
    with pytest.raises(CompressionError, match="exceeds"):
        stream(build_compressor(CompressorConfig(num_tokens=T * H * W + 1), D).eval(), x, 4, 4)
    with pytest.raises(CompressionError, match="built for"):
        stream(build_compressor(CompressorConfig(num_tokens=4), D + 8).eval(), x, 4, 4)
    with pytest.raises(CompressionError, match="inference only"):
        stream(build_compressor(CompressorConfig(num_tokens=4), D).train(), x, 4, 4)
    with pytest.raises(CompressionError, match="VQToken only"):
        compress_streamed(build_compressor(CompressorConfig(name="pool"), D).eval(), FeatureStore(4), "cpu")
    store = FeatureStore(4)
    store.append(x[:2])
    with pytest.raises(CompressionError, match="after chunks"):
        store.append(x[:2, :4])
    with pytest.raises(CompressionError, match=">= 1"):
        FeatureStore(0)
