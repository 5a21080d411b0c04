import pytest
import torch

from helpers import blobs, same_partition
from llava_vqtoken.core.adaptive import adaptive_kmeans, elbow_k, released_elbow_k


@pytest.mark.parametrize("method", ["elbow", "silhouette"])
@pytest.mark.parametrize("k", [4, 8, 16, 32])
def test_finds_the_number_of_blobs(method, k):
    x, truth = blobs(k, n=3200, d=48, noise=0.04, seed=k)
    res, choices = adaptive_kmeans(x, 2, 48, method)
    assert choices[0].k == k and choices[0].clamped is None
    assert same_partition(res.labels[0], truth)


@pytest.mark.parametrize("method", ["elbow", "silhouette"])
def test_clamps_low_and_says_so(method):
    x, _ = blobs(3, n=1500, d=32, noise=0.03)
    _, choices = adaptive_kmeans(x, 8, 32, method)
    assert choices[0].k == 8 and choices[0].clamped == "low" and choices[0].k_unclamped == 3


@pytest.mark.parametrize("method", ["elbow", "silhouette"])
def test_clamps_high_and_says_so(method):
    x, _ = blobs(60, n=6000, d=48, noise=0.03)
    _, choices = adaptive_kmeans(x, 4, 16, method)
    assert choices[0].k == 16 and choices[0].clamped == "high"


def test_batch_of_videos_gets_per_video_k():
    a, _ = blobs(5, n=2000, d=32, noise=0.03, seed=1)
    b, _ = blobs(12, n=2000, d=32, noise=0.03, seed=2)
    res, choices = adaptive_kmeans(torch.cat([a, b]), 2, 24, "elbow")
    assert [c.k for c in choices] == [5, 12]
    assert res.centroids.shape[1] == 24  # padded to max_codes, whatever the batch mates chose
    assert res.labels[0].max() < 5  # inactive codes of video 0 are never assigned
    assert (res.counts[0, 5:] == 0).all() and (res.counts[1, :12] > 0).all() and (res.counts[1, 12:] == 0).all()


def test_identical_tokens_use_the_lower_end():
    x = torch.ones(1, 400, 16)
    res, choices = adaptive_kmeans(x, 6, 20, "elbow")
    assert choices[0].k == 6 and choices[0].clamped == "low"


def test_elbow_index_maps_back_to_k():
    # distortion drops fast until K=7, then slowly: the elbow is K=7 (not an array index)
    curve = {k: (100.0 - 12.0 * k if k <= 7 else 16.0 - 0.5 * (k - 7)) for k in range(1, 20)}
    assert elbow_k(curve) == 7
    # a straight line has no elbow
    assert elbow_k({k: 50.0 - k for k in range(1, 10)}) is None


def _curve(elbow: int) -> dict[int, float]:
    """Distortion over the release's candidates 12..32: steep down to ``elbow``, then flat."""
    return {k: (100.0 - 10.0 * (k - 12) if k <= elbow else 100.0 - 10.0 * (elbow - 12) - 0.5 * (k - elbow))
            for k in range(12, 33)}


@pytest.mark.parametrize(("elbow", "released"), [(16, 12), (21, 12), (22, 13), (24, 15), (30, 21), (31, 22)])
def test_released_elbow_rule_on_hand_made_curves(elbow, released):
    # the release: j = argmax of the second differences over 12..32 (j = elbow - 13), K = max(j + 4, 12)
    assert released_elbow_k(_curve(elbow), 12) == released
    assert elbow_k(_curve(elbow)) == elbow  # ours maps the index back to K


def test_released_elbow_rule_first_index_on_ties_and_short_ranges():
    assert released_elbow_k({k: 10.0 - k for k in range(12, 33)}, 12) == 12  # all second differences 0
    assert released_elbow_k({12: 3.0, 13: 1.0}, 12) == 12


@pytest.mark.parametrize(("true_k", "ours", "released"), [(16, 16, 12), (24, 24, 15), (30, 30, 21)])
def test_released_selection_vs_ours_on_features(true_k, ours, released):
    x, _ = blobs(true_k, n=3000, d=32, noise=0.05, seed=true_k)
    _, a = adaptive_kmeans(x, 12, 32, "elbow")
    _, b = adaptive_kmeans(x, 12, 32, "elbow_released")
    assert (a[0].k, b[0].k) == (ours, released)
    assert b[0].clamped is None and b[0].k_unclamped == released


def test_bad_ranges():
    x = torch.randn(1, 20, 4)
    with pytest.raises(ValueError, match="min_codes"):
        adaptive_kmeans(x, 5, 4)
    with pytest.raises(ValueError, match="exceeds"):
        adaptive_kmeans(x, 2, 21)
    with pytest.raises(ValueError, match="elbow"):
        adaptive_kmeans(x, 2, 4, method="gap")
