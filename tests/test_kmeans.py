import pytest
import torch

from helpers import blobs, same_partition
from llava_vqtoken.core.kmeans import cosine_kmeans, kmeans_plus_plus, lloyd, normalize_tokens


@pytest.mark.parametrize("k", [3, 8, 16])
def test_recovers_well_separated_blobs(k):
    x, truth = blobs(k, n=1600, d=32, noise=0.03, seed=k)
    res = cosine_kmeans(x, k, iters=30, seed=0)
    assert same_partition(res.labels[0], truth)
    assert res.counts.sum().item() == 1600
    assert (res.counts > 0).all()


def test_deterministic_per_seed_and_seed_matters():
    x = torch.randn(2, 3000, 24, generator=torch.Generator().manual_seed(1))
    a = cosine_kmeans(x, 12, seed=7)
    b = cosine_kmeans(x, 12, seed=7)
    c = cosine_kmeans(x, 12, seed=8)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.labels, c.labels)


def _plain_lloyd_random_init(x, k, iters, seed):
    xn = normalize_tokens(x)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[1], generator=g)[:k]
    return lloyd(xn, xn[:, idx].clone(), iters=iters, tol=0.0)


def test_inertia_no_worse_than_lloyd_from_random_init():
    ours, plain = [], []
    for s in range(5):
        x, _ = blobs(24, n=2400, d=16, noise=0.15, seed=100 + s)
        ours.append(cosine_kmeans(x, 24, iters=20, seed=s).inertia.item())
        plain.append(_plain_lloyd_random_init(x, 24, 20, s).inertia.item())
    assert sum(ours) <= sum(plain)


def test_empty_clusters_are_reseeded_never_zero():
    x = torch.randn(1, 500, 8, generator=torch.Generator().manual_seed(0))
    # all initial centres identical: every cluster but one starts empty
    init = x[:, :1].repeat(1, 10, 1)
    res = cosine_kmeans(x, 10, init=init, iters=10)
    assert (res.counts > 0).all()
    assert torch.isfinite(res.centroids).all()
    assert (res.centroids.norm(dim=-1) > 0.99).all()


def test_kmeanspp_picks_distinct_points():
    x, _ = blobs(6, n=600, d=16, noise=0.01)
    c = kmeans_plus_plus(normalize_tokens(x), 6, seed=0)
    sims = c[0] @ c[0].T
    assert (sims - torch.eye(6)).max() < 0.9  # six different blobs


def test_low_precision_inputs_accumulate_in_fp32():
    x, truth = blobs(5, n=1000, d=32, noise=0.03)
    for dt in (torch.bfloat16, torch.float16):
        res = cosine_kmeans(x.to(dt), 5, seed=0)
        assert res.centroids.dtype == torch.float32
        assert same_partition(res.labels[0], truth)


def test_bad_k_is_a_clear_error():
    x = torch.randn(1, 10, 4)
    with pytest.raises(ValueError, match="exceeds the number of tokens"):
        cosine_kmeans(x, 11)
    with pytest.raises(ValueError, match=">= 1"):
        cosine_kmeans(x, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_partition():
    x, truth = blobs(8, n=2000, d=32, noise=0.03)
    res = cosine_kmeans(x.cuda(), 8)
    assert same_partition(res.labels[0].cpu(), truth)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager():
    from llava_vqtoken.core.adaptive import adaptive_kmeans
    from llava_vqtoken.core.graphs import CodeCache

    x = torch.randn(3, 5000, 64, device="cuda", dtype=torch.bfloat16)
    cache = CodeCache()
    for _ in range(2):  # capture, then replay
        a = cosine_kmeans(x, 32, seed=4, cache=cache)
    assert len(cache) == 1
    b = cosine_kmeans(x, 32, seed=4, cuda_graphs=False)
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.centroids, b.centroids)
    ra, ca = adaptive_kmeans(x, 4, 40, "elbow", cache=cache)
    rb, cb = adaptive_kmeans(x, 4, 40, "elbow", cuda_graphs=False)
    assert [c.k for c in ca] == [c.k for c in cb] and torch.equal(ra.labels, rb.labels)


def test_gram_seeding_matches_direct_seeding():
    from llava_vqtoken.core.kmeans import VideoStreams, draw_seed_noise, seed_centres

    x = normalize_tokens(torch.randn(2, 700, 16, generator=torch.Generator().manual_seed(5)))
    noise, m = draw_seed_noise(700, 12, VideoStreams(2, x.device, 3), 512, None, x.device)
    a = seed_centres(x, 12, noise, m, use_gram=True)
    b = seed_centres(x, 12, noise, m, use_gram=False)
    assert torch.allclose(a, b)
