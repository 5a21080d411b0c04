"""A video's compression depends on the video and the seed only: never on its batch mates, its place in
the batch, the compressor's process history or the global RNG (issue 14, items 1-3)."""

import pytest
import torch

from llava_vqtoken.config import CompressorConfig
from llava_vqtoken.core import build_compressor

T, H, W, D = 4, 6, 5, 32

#: every setting that draws random numbers per video
SETTINGS = {
    "fixed": dict(num_tokens=8),
    "elbow": dict(num_tokens=None, adaptive="elbow", min_codes=3, max_codes=12),
    "silhouette": dict(num_tokens=None, adaptive="silhouette", min_codes=3, max_codes=12),
    "elbow_released": dict(num_tokens=None, adaptive="elbow_released", min_codes=3, max_codes=12),
    "hash_random": dict(num_tokens=8, hash="random"),
    "attention_random": dict(num_tokens=8, attention="random"),
    "random_baseline": dict(name="random", num_tokens=8),
}


def videos(n: int = 4, device: str = "cpu") -> torch.Tensor:
    """n videos [n, T, H, W, D] with different numbers of distinct contents (2, 5, 9, ...), so that
    adaptive K differs between batch mates."""
    g = torch.Generator().manual_seed(11)
    out = []
    for i in range(n):
        k = 2 + 3 * i + i % 2
        centres = torch.randn(k, D, generator=g) * 3
        labels = torch.randint(0, k, (T * H * W,), generator=g)
        out.append(centres[labels] + 0.3 * torch.randn(T * H * W, D, generator=g))
    return torch.stack(out).reshape(n, T, H, W, D).to(device)


def _batches(v: int, n: int) -> list[tuple[list[int], int]]:
    """(batch of video indices, position of video v in it): alone, first, last, middle, sizes 1..3."""
    others = [i for i in range(n) if i != v]
    return [
        ([v], 0),
        ([v, others[0]], 0),
        ([others[1], v], 1),
        ([others[0], v, others[2]], 1),
        ([others[2], others[1], v], 2),
        ([v, v], 1),
    ]


def _check_batch_invariance(vq, feats: torch.Tensor) -> None:
    n = feats.shape[0]
    with torch.no_grad():
        for v in (0, n - 1):  # the simplest and the most complex video, each with every kind of mate
            alone = vq(feats[v : v + 1])[0]
            for batch, pos in _batches(v, n):
                got = vq(feats[batch])[pos]
                where = f"video {v} at position {pos} of batch {batch}"
                if alone.key_map is not None:
                    assert torch.equal(got.key_map, alone.key_map), where
                    assert got.num_codes == alone.num_codes, where
                assert torch.equal(got.tokens, alone.tokens), where


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_a_video_compresses_the_same_alone_and_in_any_batch(setting):
    vq = build_compressor(CompressorConfig(**SETTINGS[setting], heads=2), D).eval()
    _check_batch_invariance(vq, videos())


def test_adaptive_batch_mates_really_choose_other_k():
    """The features above make the invariance test meaningful: batch mates choose different K."""
    vq = build_compressor(CompressorConfig(**SETTINGS["elbow"], heads=2), D).eval()
    with torch.no_grad():
        ks = [o.num_codes for o in vq(videos())]
    assert len(set(ks)) >= 3, ks


@pytest.mark.parametrize("setting", ["fixed", "random_baseline"])
def test_video_ids_give_each_video_its_own_stream_independent_of_the_batch(setting):
    vq = build_compressor(CompressorConfig(**SETTINGS[setting], heads=2), D).eval()
    f = videos()
    same = f[:1].expand(3, -1, -1, -1, -1)
    with torch.no_grad():
        by_id = vq(same, video_ids=[7, 8, 7])
        alone7, alone8 = vq(f[:1], video_ids=[7])[0], vq(f[:1], video_ids=[8])[0]
        shuffled = vq(torch.cat([f[1:2], f[:1]]), video_ids=[3, 8])[1]
    assert torch.equal(by_id[0].tokens, alone7.tokens) and torch.equal(by_id[2].tokens, alone7.tokens)
    assert torch.equal(by_id[1].tokens, alone8.tokens) and torch.equal(shuffled.tokens, alone8.tokens)
    assert not torch.equal(alone7.tokens, alone8.tokens)  # another id is another draw
    with pytest.raises(ValueError, match="video_ids"):
        vq(same, video_ids=[1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU half of the batch-invariance test)")
@pytest.mark.parametrize("setting", ["fixed", "elbow", "silhouette", "hash_random", "attention_random"])
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_cuda_key_maps_do_not_depend_on_batch_mates(setting, cuda_graphs):
    vq = build_compressor(CompressorConfig(**SETTINGS[setting], heads=2, cuda_graphs=cuda_graphs), D)
    vq = vq.cuda().eval()
    feats = videos(device="cuda")
    with torch.no_grad():
        for v in range(feats.shape[0]):
            alone = vq(feats[v : v + 1])[0]
            for batch, pos in _batches(v, feats.shape[0]):
                got = vq(feats[batch])[pos]
                assert got.num_codes == alone.num_codes
                assert torch.equal(got.key_map, alone.key_map), f"video {v} in batch {batch}"


# ----------------------------------------------------------------------------- graph caches (item 2)


def test_cpu_runs_capture_nothing_and_caches_are_not_shared():
    a = build_compressor(CompressorConfig(num_tokens=8, attention="none"), D)
    b = build_compressor(CompressorConfig(num_tokens=8, attention="none", codebook="normalized"), D)
    with torch.no_grad():
        a(videos(2))
        b(videos(2))
    assert len(a.code_cache) == len(b.code_cache) == 0 and a.code_cache is not b.code_cache


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graphs are captured on the GPU only)")
def test_cuda_graphs_of_a_freed_compressor_never_serve_a_new_one():
    """Build, use, free and rebuild compressors of alternating configs with identical shapes (the
    allocator hands the new module the old one's addresses): each must match an eager run of its own
    config. The old process-wide cache, keyed on id(self) and parameter addresses, replayed the
    freed compressor's graph (tokens off by up to 0.70 on an H200)."""
    import gc

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 27, 27, 64, generator=g).mul_(4).cuda()
    for i in range(24):
        cfg = CompressorConfig(num_tokens=16, attention="none", codebook=("raw", "normalized")[i % 2])
        fast = build_compressor(cfg, 64).cuda().eval()
        eager = build_compressor(cfg.replace(cuda_graphs=False), 64).cuda().eval()
        with torch.no_grad():
            fast(x)  # capture
            got = fast(x)  # replay
            want = eager(x)
        assert len(fast.code_cache) > 0 and len(eager.code_cache) == 0
        for a, b in zip(got, want):
            assert torch.equal(a.key_map, b.key_map), f"build {i} ({cfg.codebook})"
            torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=1e-5, msg=f"build {i} ({cfg.codebook})")
        del fast, eager, got, want
        gc.collect()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graphs are captured on the GPU only)")
@pytest.mark.parametrize("setting", ["fixed", "elbow"])
def test_cuda_graph_cache_stays_bounded_over_many_clip_lengths_and_answers_as_eager(setting):
    from llava_vqtoken.core.graphs import MAX_GRAPHS

    fast = build_compressor(CompressorConfig(**SETTINGS[setting], heads=2), 64).cuda().eval()
    eager = build_compressor(CompressorConfig(**SETTINGS[setting], heads=2, cuda_graphs=False), 64).cuda().eval()
    g = torch.Generator().manual_seed(5)
    clips = [torch.randn(1, t, 6, 6, 64, generator=g).cuda() for t in range(2, 14)]
    with torch.no_grad():
        for x in [*clips, *clips[:2]]:  # the first lengths again, after their graphs were freed
            got, want = fast(x)[0], eager(x)[0]
            assert torch.equal(got.key_map, want.key_map)
            torch.testing.assert_close(got.tokens, want.tokens, rtol=0, atol=1e-5)
            assert 0 < len(fast.code_cache) <= MAX_GRAPHS


# ----------------------------------------------------------------------------- initialisation (item 3)


@pytest.mark.parametrize(
    "spec", [dict(num_tokens=8), dict(num_tokens=8, footprint="motion"), dict(CompressorConfig.released().to_dict())]
)
def test_initial_weights_come_from_the_config_seed_alone(spec):
    cfg = CompressorConfig(**spec)
    torch.manual_seed(1)
    a = build_compressor(cfg, 64, grid=(H, W)).state_dict()
    torch.rand(1000)  # the global RNG moves on; the weights must not
    torch.manual_seed(2)
    b = build_compressor(cfg, 64, grid=(H, W)).state_dict()
    c = build_compressor(cfg.replace(seed=1), 64, grid=(H, W)).state_dict()
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


def test_reset_parameters_restores_the_initial_weights():
    vq = build_compressor(CompressorConfig(num_tokens=8), 64)
    first = {k: v.clone() for k, v in vq.state_dict().items()}
    with torch.no_grad():
        for p in vq.parameters():
            p.add_(1.0)
    vq.reset_parameters()
    assert all(torch.equal(first[k], v) for k, v in vq.state_dict().items())


# ----------------------------------------------------------------------------- through the transformers host


def test_hf_last_token_logits_alone_equal_batched(tiny_model, video_file):
    from transformers import AutoProcessor

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor
    from llava_vqtoken.video import load_video

    model = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_model, video_compressor={"num_tokens": 8}
    ).eval()
    proc = VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), model.config)
    clip = load_video(video_file, 4)
    other = clip[:, ::-1, :, :].copy() if clip.shape[-1] == 3 else clip[..., ::-1].copy()
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what moves left?"}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)

    def last_logits(clips):
        inputs = proc(text=[prompt] * len(clips), videos=list(clips), return_tensors="pt")
        with torch.no_grad():
            return model(**inputs).logits[:, -1].float()

    alone = last_logits([clip])[0]
    first, second = last_logits([clip, other])
    swapped = last_logits([other, clip])[1]
    torch.testing.assert_close(first, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(swapped, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(second, alone)  # the two clips really differ
