"""Known answers for the clustering of issue 16 (small shapes; the real-shape suite is
llava_vqtoken/benchmarks/clustering.py, results in docs/BENCHMARKS.md section 8)."""

import math

import pytest
import torch

from llava_vqtoken.benchmarks.clustering import adjusted_rand_index, blobs, no_structure, static_clip
from llava_vqtoken.config import CompressorConfig, ConfigError
from llava_vqtoken.core.adaptive import adaptive_kmeans
from llava_vqtoken.core.kmeans import cosine_kmeans, ward_merge_down


def test_adjusted_rand_index_known_values():
    a = torch.tensor([0, 0, 1, 1])
    assert adjusted_rand_index(a, torch.tensor([5, 5, 7, 7])) == 1.0
    assert adjusted_rand_index(a, torch.tensor([0, 1, 0, 1])) == pytest.approx(-0.5)


def test_ward_merge_down_joins_the_nearest_pairs():
    sums = torch.tensor([[[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]]]) * 10
    groups, merged = ward_merge_down(sums, torch.full((1, 4), 10.0), 2)
    assert groups.tolist() == [[0, 0, 1, 1]]
    assert torch.allclose(merged[0], sums[0, 0::2] + sums[0, 1::2])


def test_ward_merge_down_weighs_by_size_and_merges_empty_clusters_first():
    # A (100 tokens) at 0 deg, B (100) at 2 deg, C (2) at 30 deg, D (2) at 36 deg, E empty; K0 = 5 -> 3.
    # E merges first (cost 0; the first zero in row-major order is (A, E)). Then Ward's cost
    # n_i n_j / (n_i + n_j) d^2 is 50 x (2 sin 1 deg)^2 = 0.061 for A-B but 1 x (2 sin 3 deg)^2 = 0.011
    # for C-D: the small pair merges although it is three times farther apart.
    import math

    def at(deg: float, n: float) -> list[float]:
        return [n * math.cos(math.radians(deg)), n * math.sin(math.radians(deg))]

    sums = torch.tensor([[at(0, 100), at(2, 100), at(30, 2), at(36, 2), [0.0, 0.0]]])
    groups, merged = ward_merge_down(sums, torch.tensor([[100.0, 100.0, 2.0, 2.0, 0.0]]), 3)
    assert groups.tolist() == [[0, 1, 2, 2, 0]]
    assert torch.allclose(merged[0], torch.stack([sums[0, 0], sums[0, 1], sums[0, 2] + sums[0, 3]]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_over_seeded_fit_recovers_zipf_blobs(seed):
    # the old fit (single-start k-means++ + Lloyd, oversample=1) misses a blob at seed 2 (ARI 0.948)
    case = blobs(16, n=3000, d=96, sizes="zipf", seed=10 + seed)
    res = cosine_kmeans(case.x, 16, seed=seed)
    assert adjusted_rand_index(res.labels[0], case.truth) >= 0.99


def test_seed_sample_zero_is_an_error_not_an_index_crash():
    x = torch.randn(1, 100, 8)
    with pytest.raises(ValueError, match="seed_sample must be >= 1"):
        cosine_kmeans(x, 4, seed_sample=0)
    with pytest.raises(ValueError, match="seed_sample must be >= 1"):
        adaptive_kmeans(x, 2, 8, seed_sample=0)


@pytest.mark.parametrize(("field", "value"), [("seed_sample", 0), ("silhouette_sample", 0), ("tol", -1.0),
                                              ("tol", math.nan), ("oversample", 0)])
def test_config_refuses_bad_sampling_and_tolerance(field, value):
    with pytest.raises(ConfigError, match=f"compressor config: {field}="):
        CompressorConfig(**{field: value})


def test_no_elbow_never_reports_more_codes_than_tokens():
    x = torch.randn(1, 20, 16, generator=torch.Generator().manual_seed(0))
    _, ch = adaptive_kmeans(x, 2, 20, "elbow")
    assert ch[0].k_unclamped <= 20 and ch[0].k <= 20


@pytest.mark.parametrize("objects", [3, 6, 10])
def test_separation_counts_zipf_objects(objects):
    case = blobs(objects, n=2400, d=64, sizes="zipf", seed=objects)
    res, ch = adaptive_kmeans(case.x, 2, 24, "separation")
    assert ch[0].k == objects and ch[0].k_unclamped == objects
    assert adjusted_rand_index(res.labels[0], case.truth) == 1.0


def test_separation_gives_min_codes_without_structure():
    _, ch = adaptive_kmeans(no_structure(2400, 64).x, 4, 24, "separation")
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (4, 1, "low")


def test_repeating_the_frames_does_not_change_k():
    one, many = static_clip(5, 1, d=64), static_clip(5, 8, d=64)
    ks = [adaptive_kmeans(c.x, 2, 24, "separation")[1][0].k for c in (one, many)]
    assert ks == [5, 5]


@pytest.mark.parametrize("k_max", [20, 21, 24])
def test_separation_is_stable_under_small_changes_of_max_codes(k_max):
    case = blobs(7, n=2400, d=64, sizes="zipf", seed=7)
    assert adaptive_kmeans(case.x, 2, k_max, "separation")[1][0].k == 7
