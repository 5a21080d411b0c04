"""Known answers for core/adaptive.py, written for the mutation run (scripts/mutation.sh).

The pure parts (Ward's tree and its cost curve, the partitions it replays, the elbow rules, the
silhouette, the cross-fitted gap shares and the separation walk) are checked against hand-worked
values and against plain-loop references written here. ``adaptive_kmeans`` is checked end to end on
tiny well-separated data whose answer is unambiguous (blobs around orthogonal axes, orthonormal
tokens, identical tokens): the chosen K, the clamps, the score curves' keys and known values, the
padding of a batch and the per-video streams. Nothing here depends on the k-means++ seeding order:
partitions are compared up to relabelling.
"""

import math
import re
import struct

import numpy as np
import pytest
import torch

from llava_vqtoken.core.adaptive import (
    GAP_BAND,
    GAP_SHARE,
    HASH_COORDS,
    METHODS,
    MIN_MASS_DIVISOR,
    adaptive_kmeans,
    elbow_k,
    gap_shares,
    merge_sides,
    partition_levels,
    released_elbow_k,
    separation_k,
    silhouette_scores,
    value_halves,
    ward_merge_tree,
)

ALL = ["separation", "elbow", "silhouette", "elbow_released"]


# ------------------------------------------------------------------ constants


def test_constants():
    assert METHODS == ("separation", "elbow", "silhouette", "elbow_released")
    assert (GAP_SHARE, GAP_BAND, MIN_MASS_DIVISOR, HASH_COORDS) == (0.03, 0.25, 4, 16)


# ------------------------------------------------------------------ Ward's tree


def _sse(points: list[np.ndarray]) -> float:
    """Sum of squared distances of the points to their mean, by a loop."""
    if not points:
        return 0.0
    mean = sum(points) / len(points)
    return float(sum(float(np.dot(p - mean, p - mean)) for p in points))


def _ward_by_tokens(groups: list[list[np.ndarray]]) -> tuple[list[tuple[int, int]], dict[int, float]]:
    """Ward agglomeration by brute force on the tokens: every step tries every pair (i < j, in order)
    and merges the one whose union raises the summed SSE least; j joins i."""
    groups = {i: list(g) for i, g in enumerate(groups)}
    merges = []
    distortion = {len(groups): sum(_sse(g) for g in groups.values())}
    while len(groups) > 1:
        best = None
        ids = sorted(groups)
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                i, j = ids[a], ids[b]
                cost = _sse(groups[i] + groups[j]) - _sse(groups[i]) - _sse(groups[j])
                if best is None or cost < best[0]:
                    best = (cost, i, j)
        _, i, j = best
        groups[i] = groups[i] + groups.pop(j)
        merges.append((i, j))
        distortion[len(groups)] = sum(_sse(g) for g in groups.values())
    return merges, distortion


def _tree_inputs(groups: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, float]:
    sums = np.stack([sum(g) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=np.float32)  # counts come as fp32 from the fit
    total_sq = float(sum(float(np.dot(p, p)) for g in groups for p in g))
    return (sums @ sums.T).astype(np.float32), counts, total_sq


@pytest.mark.parametrize("seed", range(6))
def test_ward_tree_equals_brute_force_on_tokens(seed):
    rng = np.random.default_rng(seed)
    k0, d = 7, 3
    sizes = rng.integers(1, 5, size=k0)
    sizes[seed % k0] = 1  # at least one singleton cluster
    groups = [[rng.normal(size=d) * 0.3 + rng.normal(size=d) for _ in range(s)] for s in sizes]
    groups = [[p.astype(np.float32).astype(np.float64) for p in g] for g in groups]
    gram, counts, total_sq = _tree_inputs(groups)
    merges, distortion = ward_merge_tree(gram, counts, total_sq)
    ref_merges, ref_dist = _ward_by_tokens(groups)
    assert [(int(i), int(j)) for i, j in merges] == ref_merges
    assert distortion.shape == (k0 + 1,) and math.isnan(distortion[0])
    for k in range(1, k0 + 1):
        assert distortion[k] == pytest.approx(ref_dist[k], rel=1e-5, abs=1e-5), k


def test_ward_tree_by_hand_on_a_line():
    # 1-D tokens: {0}, {1}, {10, 12}. Merge {0}+{1} (cost 1/2), then with {10,12} (cost 2*2/4 * 10.5^2)
    groups = [[np.array([0.0])], [np.array([1.0])], [np.array([10.0]), np.array([12.0])]]
    merges, distortion = ward_merge_tree(*_tree_inputs(groups))
    assert [(int(i), int(j)) for i, j in merges] == [(0, 1), (0, 2)]
    assert distortion[3] == pytest.approx(2.0)
    assert distortion[2] == pytest.approx(2.5)
    assert distortion[1] == pytest.approx(2.5 + 110.25)


def test_ward_tree_merges_empty_clusters_first_at_no_cost():
    # clusters 0 and 2 are empty: they join the first live cluster (1), then 1 and 3 merge
    groups = [[], [np.array([1.0, 0.0])], [], [np.array([0.0, 1.0]), np.array([0.0, 3.0])]]
    gram = np.zeros((4, 4))
    sums = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    gram[:] = sums @ sums.T
    counts = np.array([0.0, 1.0, 0.0, 2.0])
    merges, distortion = ward_merge_tree(gram, counts, 11.0)
    assert [(int(i), int(j)) for i, j in merges] == [(1, 0), (1, 2), (1, 3)]
    assert math.isnan(distortion[0])
    assert distortion[2:].tolist() == [2.0, 2.0, 2.0]  # every K from the live count up: the live SSE
    assert distortion[1] == pytest.approx(_sse([p for g in groups for p in g]))


def test_ward_tree_of_nothing_but_empty_clusters():
    merges, distortion = ward_merge_tree(np.zeros((3, 3)), np.zeros(3), 0.0)
    assert [(int(i), int(j)) for i, j in merges] == [(0, 1), (0, 2)]
    assert math.isnan(distortion[0]) and distortion[1:].tolist() == [0.0, 0.0, 0.0]


def test_ward_tree_clips_negative_costs_and_distortion():
    # an inconsistent Gram matrix (rounding, in real use): d = 1 + 1 - 2*2 < 0, so the merge costs 0,
    # and a total below the cluster norms gives a distortion clipped to 0
    merges, distortion = ward_merge_tree(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([1.0, 1.0]), 5.0)
    assert [(int(i), int(j)) for i, j in merges] == [(0, 1)]
    assert distortion[1:].tolist() == [3.0, 3.0]
    _, distortion = ward_merge_tree(np.array([[4.0, 0.0], [0.0, 1.0]]), np.array([1.0, 1.0]), 3.0)
    assert distortion[2] == 0.0 and distortion[1] == pytest.approx(0.0 + 0.5 * 5.0 - 2.0)


def _ward_by_gram(gram: np.ndarray, counts: np.ndarray, total_sq: float):
    """Ward's merges from the sum Gram matrix alone, by loops, with the negative squared distances of an
    inconsistent matrix clipped to 0 (all clusters non-empty). Returns (merges, distortion, clipped)."""
    g = [list(map(float, row)) for row in gram]
    n = [float(c) for c in counts]
    alive = list(range(len(n)))
    sse = total_sq - sum(g[i][i] / n[i] for i in alive)
    dist = {len(alive): max(sse, 0.0)}
    merges, clipped = [], [0, 0]
    while len(alive) > 1:
        best = None
        for a in range(len(alive)):
            for b in range(a + 1, len(alive)):
                i, j = alive[a], alive[b]
                d2 = g[i][i] / n[i] ** 2 + g[j][j] / n[j] ** 2 - 2 * g[i][j] / (n[i] * n[j])
                clipped[len(merges) > 0] += d2 < 0
                cost = n[i] * n[j] / (n[i] + n[j]) * max(d2, 0.0)
                if best is None or cost < best[0]:
                    best = (cost, i, j)
        cost, i, j = best
        sse += cost
        for r in range(len(n)):
            g[i][r] += g[j][r]
        for r in range(len(n)):
            g[r][i] += g[r][j]
        n[i] += n[j]
        alive.remove(j)
        merges.append((i, j))
        dist[len(alive)] = max(sse, 0.0)
    return merges, dist, clipped


@pytest.mark.parametrize("seed", [104, 109, 116, 126])
def test_ward_tree_equals_a_loop_on_an_inconsistent_gram(seed):
    rng = np.random.default_rng(seed)
    k0 = 6
    a = rng.normal(size=(k0, k0))
    gram = a + a.T + np.diag(rng.uniform(0.0, 2.0, size=k0))  # symmetric, not a Gram matrix of anything
    counts = rng.integers(1, 4, size=k0).astype(np.float64)
    merges, distortion = ward_merge_tree(gram, counts, 40.0)
    ref_merges, ref_dist, clipped = _ward_by_gram(gram, counts, 40.0)
    assert min(clipped) > 0  # negative squared distances both in the first costs and after merges
    assert [(int(i), int(j)) for i, j in merges] == ref_merges
    assert [distortion[k] for k in range(1, k0 + 1)] == pytest.approx([ref_dist[k] for k in range(1, k0 + 1)])


# ------------------------------------------------------------------ replaying the tree


def test_partition_levels_by_hand():
    merges = [(0, 3), (1, 2), (0, 1)]
    out = partition_levels(merges, 4, [4, 3, 2, 1])
    assert sorted(out) == [1, 2, 3, 4]
    assert out[4].tolist() == [0, 1, 2, 3]
    assert out[3].tolist() == [0, 1, 2, 0]
    assert out[2].tolist() == [0, 1, 1, 0]
    assert out[1].tolist() == [0, 0, 0, 0]
    # groups are numbered by their smallest surviving label, whatever the merge order
    out = partition_levels([(2, 0), (3, 1)], 4, [3, 2])
    assert sorted(out) == [2, 3]
    assert out[3].tolist() == [1, 0, 1, 2]
    assert out[2].tolist() == [0, 1, 0, 1]


def test_partition_levels_only_the_asked_levels():
    out = partition_levels([(0, 1), (0, 2)], 3, [2])
    assert list(out) == [2] and out[2].tolist() == [0, 0, 1]
    assert partition_levels([(0, 1)], 2, []) == {}
    assert partition_levels([(0, 1)], 2, [2])[2].tolist() == [0, 1]


def test_merge_sides_by_hand():
    side_i, side_j = merge_sides([(0, 3), (1, 2), (0, 1)], 4)
    assert side_i.dtype == np.float64 and side_j.dtype == np.float64
    assert side_i.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1]]
    assert side_j.tolist() == [[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 0]]
    side_i, side_j = merge_sides([], 2)
    assert side_i.shape == (0, 2) and side_j.shape == (0, 2)


# ------------------------------------------------------------------ elbow rules


def test_elbow_by_hand():
    # second differences: K=3: 36, K=5: 11.9 (kept: >= 9), K=4: -8; strengths: K=3: 40/4-1 = 9, K=5: 12/0.1-1 = 119
    curve = {1: 100.0, 2: 60.0, 3: 20.0, 4: 16.0, 5: 4.0, 6: 3.9, 7: 3.8}
    assert elbow_k(curve) == 5
    assert elbow_k(curve, keep=0.5) == 3  # 11.9 < 18: only K=3 is kept
    assert elbow_k(curve, min_strength=119.5) is None
    assert elbow_k({k: curve[k] for k in [7, 3, 1, 5, 2, 6, 4]}) == 5  # any key order


def test_elbow_keep_is_inclusive():
    # second differences 32 (K=2) and exactly 8 = 0.25 * 32 (K=4); strengths 40/8-1 = 4 and 10/0.5-1 = 19
    curve = {1: 100.0, 2: 60.0, 3: 52.0, 4: 42.0, 5: 41.5}
    assert {k: curve[k - 1] - 2 * curve[k] + curve[k + 1] for k in (2, 3, 4)} == {2: 32.0, 3: -2.0, 4: 9.5}
    curve = {1: 100.0, 2: 60.0, 3: 52.0, 4: 43.5, 5: 43.0}  # K=4: 52 - 87 + 43 = 8
    assert elbow_k(curve) == 4
    assert elbow_k(curve, keep=0.2501) == 2


def test_elbow_strength_is_inclusive_and_ties_go_to_the_smaller_k():
    # K=2 and K=4 both: drop 40 before, 10 after: strength exactly 3
    curve = {1: 100.0, 2: 60.0, 3: 50.0, 4: 10.0, 5: 0.0}
    assert elbow_k(curve, min_strength=3.0) == 2
    assert elbow_k(curve, min_strength=3.0 + 1e-9) is None
    # default strength 1: a drop exactly twice the next one is an elbow
    assert elbow_k({1: 30.0, 2: 10.0, 3: 0.0}) == 2
    assert elbow_k({1: 30.0, 2: 10.1, 3: 0.0}) is None


def test_elbow_floor_on_a_flat_tail():
    # K=3: drop 1 before, 0 after: strength = 1 / (1e-9 * span) - 1 with span 2
    curve = {1: 2.0, 2: 1.0, 3: 0.0, 4: 0.0}
    strength = 1.0 / (1e-9 * 2.0) - 1.0
    assert elbow_k(curve, min_strength=strength * (1 - 1e-6)) == 3
    assert elbow_k(curve, min_strength=strength * (1 + 1e-6)) is None
    # on a small scale too (span 2e-3)
    small = {k: v * 1e-3 for k, v in curve.items()}
    assert elbow_k(small, min_strength=0.99e12) is None
    assert elbow_k(small, min_strength=0.49e9) == 3


def test_elbow_degenerate_curves():
    assert elbow_k({1: 5.0, 2: 5.0, 3: 5.0}) == 1  # flat: all tokens alike
    assert elbow_k({3: 5.0, 4: 5.0, 5: 5.0}) == 3
    assert elbow_k({2: 1e-4, 3: 1e-4, 4: 1e-4}) == 2
    assert elbow_k({1: 5.0, 2: 6.0, 3: 7.0}) == 1  # rising: span < 0
    assert elbow_k({1: 5.0, 2: 3.0}) is None  # no second difference
    assert elbow_k({1: 0.5, 2: 0.2, 3: 0.1, 4: 0.05}) == 2  # a small curve still has its elbow (strength 2)
    assert elbow_k({1: 10.0, 2: 9.0, 3: 7.0}) is None  # concave: no positive second difference
    assert elbow_k({1: 10.0, 2: 9.0, 3: 8.0, 4: 7.0}) is None  # straight line
    assert elbow_k({1: 10.0, 2: 9.0, 3: 8.0, 4: 7.0}, min_strength=0.0) is None  # ... whatever the strength


def test_released_elbow_by_hand():
    # second differences over the candidates in order: 3, 0, 5, 5 -> the first argmax is 2 -> K = 2 + 4
    curve = {10: 20.0, 11: 10.0, 12: 3.0, 13: -4.0, 14: -6.0, 15: -3.0}
    assert released_elbow_k(curve, 1) == 6
    assert released_elbow_k(curve, 5) == 6
    assert released_elbow_k(curve, 7) == 7  # raised to k_min
    assert released_elbow_k(curve, 10) == 10
    assert released_elbow_k({k: curve[k] for k in [15, 10, 13, 11, 14, 12]}, 1) == 6  # any key order
    late = {1: 10.0, 2: 9.0, 3: 8.0, 4: 7.0, 5: 12.0, 6: 17.0}  # second differences 0, 0, 6, 0
    assert released_elbow_k(late, 1) == 2 + 4
    ties = {1: 10.0, 2: 5.0, 3: 2.0, 4: 1.0, 5: 2.0, 6: 5.0}  # second differences 2, 2, 2, 2: the first
    assert released_elbow_k(ties, 1) == 4


def test_released_elbow_short_curves():
    assert released_elbow_k({1: 10.0, 2: 5.0, 3: 4.0}, 1) == 4  # one second difference, index 0
    assert released_elbow_k({1: 10.0, 2: 5.0}, 1) == 1
    assert released_elbow_k({7: 10.0}, 7) == 7
    assert released_elbow_k({1: 10.0, 2: 5.0}, 2) == 2


# ------------------------------------------------------------------ silhouette


def _silhouette_by_loops(xn: np.ndarray, groups: list[int], sample: list[int]) -> float:
    """Mean cosine silhouette of the sampled tokens (distances to all tokens), singletons 0."""
    total = 0.0
    for s in sample:
        mean_dist = {}
        for g in set(groups):
            members = [t for t in range(len(groups)) if groups[t] == g and t != s]
            if members:
                mean_dist[g] = sum(1.0 - float(np.dot(xn[s], xn[t])) for t in members) / len(members)
        own = groups[s]
        if own not in mean_dist:
            continue  # a singleton scores 0
        a = mean_dist[own]
        b = min(v for g, v in mean_dist.items() if g != own)
        total += (b - a) / max(a, b)
    return total / len(sample)


def _silhouette_all(xn: np.ndarray, groups: np.ndarray) -> float:
    """Mean cosine silhouette of all tokens from the full distance matrix (no singletons)."""
    dist = 1.0 - xn @ xn.T
    own = groups[:, None] == groups[None, :]
    a = (dist * own).sum(1) / (own.sum(1) - 1)
    b = np.min([dist[:, groups == g].mean(1) + np.where(groups == g, np.inf, 0.0) for g in np.unique(groups)], axis=0)
    return float(np.mean((b - a) / np.maximum(a, b)))


def _silhouette_inputs(xn: np.ndarray, labels0: list[int], k0: int, sample: list[int]):
    sums = np.stack([xn[[t for t in range(len(labels0)) if labels0[t] == j]].sum(0) for j in range(k0)])
    sims = torch.tensor(xn[sample] @ sums.T, dtype=torch.float32)
    counts = torch.tensor([labels0.count(j) for j in range(k0)], dtype=torch.float32)
    return sims, torch.tensor([labels0[s] for s in sample]), counts


@pytest.mark.parametrize("seed", range(3))
def test_silhouette_equals_loops_with_a_sample_and_padded_groups(seed):
    rng = np.random.default_rng(seed)
    # six original clusters on two opposite sides of the sphere (so b can exceed 1, where an empty
    # padded group, at distance 1, must not count), sizes from 1 (a singleton) to 6
    k0, d = 6, 4
    sizes = [1, 2, 3, 6, 4, 5]
    side = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    labels0, rows = [], []
    for j in range(k0):
        for _ in range(sizes[j]):
            v = rng.normal(size=d) * 0.4
            v[0] += 2.0 * side[j]
            v[1 + j % 3] += 1.0
            rows.append(v)
            labels0.append(j)
    xn = np.array(rows, dtype=np.float32).astype(np.float64)
    xn /= np.linalg.norm(xn, axis=1, keepdims=True)
    sample = sorted(rng.choice(len(labels0), size=12, replace=False).tolist())
    sample[0] = 0  # the singleton is sampled
    sample = sorted(set(sample))
    levels = {
        6: np.array([0, 1, 2, 3, 4, 5]),
        5: np.array([0, 0, 1, 2, 3, 4]),
        3: np.array([0, 0, 0, 1, 2, 2]),
        2: np.array([0, 0, 0, 1, 1, 1]),
        1: np.array([0, 0, 0, 0, 0, 0]),
    }
    sims, labels_s, counts = _silhouette_inputs(xn, labels0, k0, sample)
    got = silhouette_scores(sims, labels_s, counts, levels)
    assert sorted(got) == [2, 3, 5, 6]  # K=1 has no silhouette
    for k in [2, 3, 5, 6]:
        expected = _silhouette_by_loops(xn, [int(levels[k][j]) for j in labels0], sample)
        assert got[k] == pytest.approx(expected, abs=1e-5), k


def test_silhouette_inputs_in_other_dtypes():
    rng = np.random.default_rng(7)
    labels0 = [0, 0, 1, 1, 1, 2]
    xn = rng.normal(size=(6, 3))
    xn /= np.linalg.norm(xn, axis=1, keepdims=True)
    sims, labels_s, counts = _silhouette_inputs(xn, labels0, 3, list(range(6)))
    levels = {2: np.array([0, 1, 1]), 3: np.array([0, 1, 2])}
    ref = silhouette_scores(sims, labels_s, counts, levels)
    got = silhouette_scores(sims.double(), labels_s, counts.long(), levels)
    assert got == pytest.approx(ref, abs=1e-6)
    for k in levels:
        expected = _silhouette_by_loops(xn, [int(levels[k][j]) for j in labels0], range(6))
        assert ref[k] == pytest.approx(expected, abs=1e-5)


def test_silhouette_by_hand_with_close_groups_and_a_singleton():
    # three unit tokens in 2-D: a, b at 0 and 60 degrees, c at 90 degrees; groups {a, b}, {c}
    xn = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]])
    sims, labels_s, counts = _silhouette_inputs(xn, [0, 0, 1], 2, [0, 1, 2])
    got = silhouette_scores(sims, labels_s, counts, {2: np.array([0, 1])})
    # a: a = 1 - 0.5 = 0.5, b = 1 - 0 = 1 -> 0.5; b: a = 0.5, b = 1 - cos 30 -> (b - a) / 0.5; c: singleton 0
    b_b = 1.0 - math.sqrt(3) / 2
    assert got[2] == pytest.approx((0.5 + (b_b - 0.5) / 0.5 + 0.0) / 3, abs=1e-6)


def test_silhouette_of_nothing_to_score():
    sims = torch.ones(2, 1)
    assert silhouette_scores(sims, torch.zeros(2, dtype=torch.long), torch.tensor([2.0]), {1: np.array([0])}) == {}
    assert silhouette_scores(sims, torch.zeros(2, dtype=torch.long), torch.tensor([2.0]), {}) == {}


def test_silhouette_identical_groups_score_zero():
    # two groups of the same token: a = b = 0, the silhouette is 0 (not a division by zero)
    xn = np.array([[1.0, 0.0]] * 4)
    sims, labels_s, counts = _silhouette_inputs(xn, [0, 0, 1, 1], 2, [0, 1, 2, 3])
    assert silhouette_scores(sims, labels_s, counts, {2: np.array([0, 1])}) == {2: 0.0}


# ------------------------------------------------------------------ value hash and gap shares


def _half_by_hand(row: list[float]) -> bool:
    h = 0
    for i, v in enumerate(row[:16]):
        bits = struct.unpack("<i", struct.pack("<f", v))[0]
        h += bits * (0x9E3779B1 * (2 * i + 1))
    h = (h + 2**63) % 2**64 - 2**63  # int64 wrap-around
    return (h >> 11) % 2 == 0


def test_value_halves_equals_the_hash_by_hand():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    got = value_halves(x).tolist()
    assert got == [_half_by_hand(r) for r in x.tolist()]
    assert 16 < sum(got) < 48
    # only the first 16 coordinates count
    y = x.clone()
    y[:, 16:] = torch.randn(64, 4, generator=g)
    assert value_halves(y).tolist() == got
    # fewer than 16 coordinates
    small = torch.randn(64, 3, generator=g)
    assert value_halves(small).tolist() == [_half_by_hand(r) for r in small.tolist()]
    # copies of a token fall in the same half
    assert value_halves(torch.cat([x, x])).tolist() == got + got
    # 2-byte tokens hash their own 16 bits
    half = x.to(torch.bfloat16)
    assert value_halves(half).tolist() == [_half_by_hand16(r) for r in half.view(torch.int16).tolist()]
    with pytest.raises(ValueError, match="hashes 2-, 4- or 8-byte floats, got torch.float8_e4m3fn"):
        value_halves(x.to(torch.float8_e4m3fn))


def _half_by_hand16(row_bits: list[int]) -> bool:
    h = sum(b * (0x9E3779B1 * (2 * i + 1)) for i, b in enumerate(row_bits[:16]))
    return (h >> 11) % 2 == 0


def test_bf16_tokens_fall_in_both_halves_and_separation_finds_their_groups():
    """normalize_tokens gives bf16 on CUDA. The hash widened them to fp32 and read those bits, whose low
    16 are zero for a widened bf16 value: every CUDA token fell in one half, every gap share was 1.0 and
    the separation rule chose min_codes for every video on the GPU (found by the CUDA case of
    test_on_cuda_every_tensor_stays_on_the_device_and_graphs_go_to_the_given_cache)."""
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(256, 32, generator=g), dim=-1)
    assert 96 < int(value_halves(x.to(torch.bfloat16)).sum()) < 160
    axes, truth = _axes(3, 200)
    xn = torch.nn.functional.normalize(axes[0], dim=-1).to(torch.bfloat16)
    side_i, side_j = merge_sides([(0, 1), (0, 2)], 3)  # merges into 2 groups, then into 1
    assert (gap_shares(xn, truth, 3, side_i[::-1], side_j[::-1]) < 0.03).all()  # 90 degrees apart: gaps


def _shares_by_loops(xn: torch.Tensor, labels: list[int], side_i: np.ndarray, side_j: np.ndarray) -> list[float]:
    rows = xn.double().tolist()
    even = [_half_by_hand(r) for r in xn.tolist()]
    d = len(rows[0])
    # a cluster with no token in one half uses its tokens for both roles
    has = {(lab, e) for lab, e in zip(labels, even)}
    for_dir = [e or (lab, True) not in has for lab, e in zip(labels, even)]
    for_proj = [not e or (lab, False) not in has for lab, e in zip(labels, even)]

    def mean(vs):
        return [sum(v[c] for v in vs) / max(len(vs), 1) for c in range(d)]

    out = []
    for a_row, b_row in zip(side_i, side_j):
        ea = [r for r, lab, e in zip(rows, labels, for_dir) if e and a_row[lab]]
        eb = [r for r, lab, e in zip(rows, labels, for_dir) if e and b_row[lab]]
        w = [p - q for p, q in zip(mean(ea), mean(eb))]
        pa = [sum(p * q for p, q in zip(r, w)) for r, lab, o in zip(rows, labels, for_proj) if o and a_row[lab]]
        pb = [sum(p * q for p, q in zip(r, w)) for r, lab, o in zip(rows, labels, for_proj) if o and b_row[lab]]
        ma, mb = sum(pa) / max(len(pa), 1), sum(pb) / max(len(pb), 1)
        half = (ma - mb) / 2
        if half <= 0:
            out.append(1.0)
            continue
        mid = sum(1 for p in pa + pb if abs((p - (ma + mb) / 2) / half) < 0.25)
        out.append(mid / max(len(pa) + len(pb), 1))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_gap_shares_equal_loops(seed):
    g = torch.Generator().manual_seed(seed)
    k0, d = 5, 6
    sizes = [1, 2, 9, 14, 30]
    labels = [j for j in range(k0) for _ in range(sizes[j])]
    centres = torch.randn(k0, d, generator=g)
    x = centres[labels] + 0.8 * torch.randn(len(labels), d, generator=g)
    xn = torch.nn.functional.normalize(x, dim=-1)
    merges = [(0, 1), (2, 3), (0, 4), (0, 2)]
    side_i, side_j = merge_sides(merges, k0)
    side_i, side_j = side_i[::-1], side_j[::-1]  # reversed views, as adaptive_kmeans passes them
    got = gap_shares(xn, torch.tensor(labels), k0, side_i, side_j)
    assert got.dtype == torch.float32 and got.shape == (4,)
    ref = _shares_by_loops(xn, labels, side_i, side_j)
    assert got.tolist() == pytest.approx(ref, abs=1e-6)
    assert len(set(ref)) > 2  # not all 0 or 1


def _pick(candidates: list[list[float]], even: bool, count: int) -> list[list[float]]:
    out = [c for c in candidates if _half_by_hand(c) == even][:count]
    assert len(out) == count
    return out


def _two_sided(odd_a: list[float], odd_b: list[float]) -> tuple[torch.Tensor, list[int]]:
    """Tokens in 2-D (not unit: gap_shares takes them as given): one even (direction) token per side at
    (1, y0) and (-1, y0), and odd tokens at (x, y) for the given x's; the second coordinate only puts
    each token in the wanted half (the hash of :func:`value_halves`)."""
    ys = [round(0.1 + i * 0.0137, 4) for i in range(400)]  # any values: only the hash sees them
    y0 = next(y for y in ys if _half_by_hand([1.0, y]) and _half_by_hand([-1.0, y]))
    rows, labels = [[1.0, y0], [-1.0, y0]], [0, 1]
    for side, xs in ((0, odd_a), (1, odd_b)):
        for x in xs:
            y = next(y for y in ys if not _half_by_hand([x, y]) and [x, y] not in rows)
            rows.append([x, y])
            labels.append(side)
    return torch.tensor(rows), labels


def test_gap_share_band_edge_and_unseparated_sides():
    side_i, side_j = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    # even means (1, y0) and (-1, y0): direction (2, 0), projections 2x; odd sides at mean x = +1 and -1,
    # so t = x. x = 0.25 is on the band's edge (outside), x = 0.125 inside.
    x, labels = _two_sided([1.625, 0.25, 1.125], [-1.0])
    assert gap_shares(x, torch.tensor(labels), 2, side_i, side_j).tolist() == [0.0]
    x, labels = _two_sided([1.625, 0.125, 1.25], [-1.0])
    assert gap_shares(x, torch.tensor(labels), 2, side_i, side_j).tolist() == [0.25]
    # odd sides with the same mean projection (half = 0) or reversed ones (half < 0): 1.0
    x, labels = _two_sided([1.0, -1.0], [0.5, -0.5])
    assert gap_shares(x, torch.tensor(labels), 2, side_i, side_j).tolist() == [1.0]
    x, labels = _two_sided([-1.0], [1.0])
    assert gap_shares(x, torch.tensor(labels), 2, side_i, side_j).tolist() == [1.0]


def test_gap_share_small_but_positive_half():
    # direction (2, 0); odd sides at x = 0.2 and 0.1 (half = 0.1): t = (2x - 0.3) / 0.1 -> 1, -1, and the
    # token at x = 0.16 has t = 0.2 (in the band)
    side_i, side_j = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    x, labels = _two_sided([0.2, 0.16, 0.24], [0.1])
    got = gap_shares(x, torch.tensor(labels), 2, side_i, side_j)
    assert got.tolist() == pytest.approx(_shares_by_loops(x, labels, side_i, side_j))
    assert got.tolist() == [0.25]


# ------------------------------------------------------------------ separation walk


def test_separation_walk_by_hand():
    big = np.array([10.0, 10.0, 10.0, 10.0])
    assert separation_k(np.array([0.0, 0.01, 0.5, 0.0]), big, big, 5.0) == 3  # stops at the first gap-less merge
    assert separation_k(np.array([0.0, GAP_SHARE, 0.0]), big[:3], big[:3], 5.0) == 2  # the threshold is no gap
    assert separation_k(np.array([0.0, 0.0299, 0.0]), big[:3], big[:3], 5.0) == 4
    assert separation_k(np.array([]), np.array([]), np.array([]), 5.0) == 1
    assert separation_k(np.array([0.5]), big[:1], big[:1], 5.0) == 1


def test_separation_walk_skips_small_sides():
    shares = np.array([0.0, 0.5, 0.0, 0.9])
    # the second merge has a side of 2 tokens: neither counted nor a stop
    assert separation_k(shares, np.array([10.0, 2.0, 10.0, 10.0]), np.array([10.0] * 4), 5.0) == 3
    assert separation_k(shares, np.array([10.0] * 4), np.array([10.0, 2.0, 10.0, 10.0]), 5.0) == 3
    # a side of exactly min_mass counts (so the 0.5 stops the walk)
    assert separation_k(shares, np.array([10.0, 5.0, 10.0, 10.0]), np.array([10.0] * 4), 5.0) == 2
    # a small side with a gap is not counted either
    assert separation_k(np.array([0.0, 0.0, 0.9]), np.array([10.0, 1.0, 10.0]), np.array([10.0] * 3), 5.0) == 2


# ------------------------------------------------------------------ adaptive_kmeans: refusals


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((2, 4), {"method": "gap"},
         "adaptive method must be one of separation, elbow, silhouette, elbow_released, got 'gap'"),
        ((5, 4), {}, "need 1 <= min_codes <= max_codes, got min_codes=5, max_codes=4"),
        ((0, 4), {}, "need 1 <= min_codes <= max_codes, got min_codes=0, max_codes=4"),
        ((2, 21), {}, "max_codes=21 exceeds the number of tokens N=20"),
        ((2, 4), {"oversample": 0}, "oversample must be >= 1, got 0"),
        ((2, 4), {"silhouette_sample": 0}, "silhouette_sample must be >= 1, got 0"),
    ],
)
def test_refusals_word_for_word(args, kwargs, message):
    x = torch.randn(1, 20, 4)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        adaptive_kmeans(x, *args, **kwargs)


def test_edges_of_the_refusals_are_accepted():
    x = torch.eye(6)[None]
    for method in ALL:
        _, ch = adaptive_kmeans(x, 1, 6, method, oversample=1, silhouette_sample=1, cuda_graphs=False)
        assert 1 <= ch[0].k <= 6
    _, ch = adaptive_kmeans(x, 3, 3, "elbow", cuda_graphs=False)
    assert ch[0].k == 3


# ------------------------------------------------------------------ adaptive_kmeans: known K


def _axes(k: int, per: int, d: int = 16, noise: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per`` tokens around each of the first k coordinate axes (well separated: 90 degrees apart)."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.arange(k).repeat_interleave(per)
    x = torch.eye(d)[truth] + noise * torch.randn(k * per, d, generator=g)
    return x[None], truth


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _sse_of(x: torch.Tensor, truth: torch.Tensor) -> float:
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    return float(sum(((xn[truth == g] - xn[truth == g].mean(0)) ** 2).sum() for g in truth.unique()))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_each_rule_finds_the_blobs(k):
    x, truth = _axes(k, 200)
    for method in ["separation", "elbow", "silhouette"]:
        res, ch = adaptive_kmeans(x, 1, 8, method, cuda_graphs=False)
        assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (k, k, None), method
        assert _same_partition(res.labels[0], truth), method
        assert res.centroids.shape == (1, 8, 16) and res.counts.shape == (1, 8)
        assert res.counts[0, :k].tolist() == [200.0] * k and res.counts[0, k:].sum() == 0


def test_score_curves_keys_and_known_values():
    x, truth = _axes(3, 200)
    n = 600
    _, ch = adaptive_kmeans(x, 2, 6, "elbow", cuda_graphs=False)
    scores = ch[0].scores
    assert sorted(scores) == list(range(1, 9))  # K = 1 .. k_max + 2
    assert scores[1] == pytest.approx(_sse_of(x[0], torch.zeros(n, dtype=torch.long)), rel=1e-5)
    assert scores[3] == pytest.approx(_sse_of(x[0], truth), rel=1e-4)
    # K = 2 merges the two blobs whose merge costs least: 200 * 200 / 400 * |mu_a - mu_b|^2
    xn = torch.nn.functional.normalize(x[0].double(), dim=-1)
    mu = [xn[truth == g].mean(0) for g in range(3)]
    cost = min(100.0 * float(((mu[a] - mu[b]) ** 2).sum()) for a, b in [(0, 1), (0, 2), (1, 2)])
    assert scores[2] == pytest.approx(scores[3] + cost, rel=1e-5)
    _, ch = adaptive_kmeans(x, 2, 6, "separation", cuda_graphs=False)
    scores = ch[0].scores
    assert sorted(scores) == list(range(2, 10))  # the gap share of the merge from K to K - 1, K = 2 .. k_max + 3
    assert scores[2] == 0.0 and scores[3] == 0.0 and scores[4] >= GAP_SHARE
    _, ch = adaptive_kmeans(x, 2, 6, "silhouette", silhouette_sample=n, cuda_graphs=False)
    scores = ch[0].scores
    assert sorted(scores) == list(range(2, 8))  # K = 2 .. k_max + 1
    xn = torch.nn.functional.normalize(x[0].double(), dim=-1).numpy()
    assert scores[3] == pytest.approx(_silhouette_all(xn, truth.numpy()), abs=1e-4)
    assert max(scores, key=scores.get) == 3
    _, ch = adaptive_kmeans(x, 2, 6, "elbow_released", cuda_graphs=False)
    assert sorted(ch[0].scores) == list(range(2, 7))  # the release's candidates k_min .. k_max
    # second differences over 2..6: the largest is the first (D2 - 2 D3 + D4 ~ 200): K = 0 + 4
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (4, 4, None)
    assert ch[0].scores[3] == pytest.approx(_sse_of(x[0], truth), rel=1e-4)


def test_clamps_low_and_high_with_the_unclamped_pick():
    x, _ = _axes(3, 200)
    for method in ["separation", "elbow", "silhouette"]:
        _, ch = adaptive_kmeans(x, 4, 8, method, cuda_graphs=False)
        assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (4, 3, "low"), method
    x, truth = _axes(5, 200)
    # k_max = 3: separation walks the last k_max + 2 merges (5 distinct groups); the elbow has no elbow
    # below k_max + 2 (k_max + 1); the silhouette's best candidate is its last, k_max + 1; the release
    # has one second difference over 1..3 (K = 0 + 4)
    for method, pick in [("separation", 5), ("elbow", 4), ("silhouette", 4), ("elbow_released", 4)]:
        res, ch = adaptive_kmeans(x, 1, 3, method, cuda_graphs=False)
        assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (3, pick, "high"), method
        assert res.counts[0].tolist().count(0.0) == 0 and res.labels[0].max() == 2


@pytest.mark.parametrize("method", ALL)
def test_identical_tokens_take_the_lower_end(method):
    x = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(0)).expand(1, 60, 8).contiguous()
    res, ch = adaptive_kmeans(x, 3, 6, method, cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (3, 1, "low")
    assert sorted(ch[0].scores) == list(range(1, 9))  # the distortion, K = 1 .. k_max + 2
    assert max(ch[0].scores.values()) < 1e-4
    _, ch = adaptive_kmeans(x, 1, 6, method, cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (1, 1, None)
    assert res.labels.shape == (1, 60) and res.centroids.shape == (1, 6, 8)


def test_identical_tokens_whatever_their_value():
    # the all-identical test was distortion[1] <= 1e-6 * total_sq, within the fp32 rounding of the Gram
    # path: for this token the rounding left 6.08e-5 > 6e-5 (now STATIC_SHARE = 1e-4)
    # 60 copies of one 8-D token (about 2% of random tokens): the distortion comes out as fp32 rounding
    # noise just above the threshold, so the video is not seen as static and elbow_released picks
    # K = 0 + 4 (all second differences 0) instead of the lower end
    x = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(39)).expand(1, 60, 8).contiguous()
    _, ch = adaptive_kmeans(x, 3, 6, "elbow_released", cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (3, 1, "low")


@pytest.mark.parametrize("method", ALL)
def test_nearly_identical_tokens_take_the_lower_end(method):
    g = torch.Generator().manual_seed(1)
    x = torch.ones(1, 1, 8) + 1e-5 * torch.randn(1, 60, 8, generator=g)
    _, ch = adaptive_kmeans(x, 2, 6, method, cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (2, 1, "low")


def test_orthonormal_tokens_have_no_elbow():
    # every partition of n orthonormal tokens into K groups has distortion n - K: a straight line,
    # so the elbow rule asks for k_max + 1 codes (capped at the n tokens)
    x = torch.eye(10)[None]
    _, ch = adaptive_kmeans(x, 1, 6, "elbow", cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (6, 7, "high")
    assert ch[0].scores == pytest.approx({k: 10.0 - k for k in range(1, 9)}, abs=1e-5)
    res, ch = adaptive_kmeans(x, 1, 10, "elbow", cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (10, 10, None)
    assert sorted(ch[0].scores) == list(range(1, 11))  # K up to n, not k_max + 2
    assert sorted(res.labels[0].tolist()) == list(range(10))
    res, ch = adaptive_kmeans(x, 1, 9, "elbow", cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (9, 10, "high")
    assert sorted(ch[0].scores) == list(range(1, 11))


def test_outliers_are_no_object_for_the_separation_rule():
    # three blobs of 200 and 7 outlier tokens: 607 tokens, K0 = 2 * (8 + 2) = 20 clusters, so a side
    # needs 607 / (4 * 20) = 7.59 tokens to count: the outliers neither count nor stop the walk
    x, _ = _axes(3, 200)
    g = torch.Generator().manual_seed(5)
    out = torch.eye(16)[10] + 0.05 * torch.randn(7, 16, generator=g)
    x = torch.cat([x[0], out])[None]
    _, ch = adaptive_kmeans(x, 1, 8, "separation", cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (3, 3, None)


@pytest.mark.parametrize("method", ALL)
def test_repeated_frames_do_not_change_k(method):
    x, truth = _axes(3, 100, seed=3)
    _, once = adaptive_kmeans(x, 2, 8, method, cuda_graphs=False)
    res, twice = adaptive_kmeans(x.repeat(1, 3, 1), 2, 8, method, cuda_graphs=False)
    assert twice[0].k == once[0].k
    if method != "elbow_released":
        assert twice[0].k == 3
        assert _same_partition(res.labels[0], truth.repeat(3))


def test_a_batch_is_padded_to_max_codes_per_video():
    a, ta = _axes(3, 200, seed=1)
    b, tb = _axes(5, 120, seed=2)  # 600 tokens each
    x = torch.cat([a, b])
    for method in ["separation", "elbow", "silhouette"]:
        res, ch = adaptive_kmeans(x, 2, 8, method, cuda_graphs=False)
        assert [c.k for c in ch] == [3, 5], method
        assert res.centroids.shape == (2, 8, 16) and res.counts.shape == (2, 8) and res.labels.shape == (2, 600)
        assert res.counts[0].tolist() == [200.0] * 3 + [0.0] * 5
        assert res.counts[1].tolist() == [120.0] * 5 + [0.0] * 3
        assert res.labels[0].max() == 2 and res.labels[1].max() == 4
        assert (res.centroids[0, 3:] == 0).all() and (res.centroids[1, 5:] == 0).all()
        assert _same_partition(res.labels[0], ta) and _same_partition(res.labels[1], tb)


def test_codes_above_a_videos_k_stay_inactive_on_noise():
    # on noise the refinement does not settle at once, so empty active codes would be re-seeded: codes
    # K_b.. of video b must be masked, not just empty at the start
    x = torch.randn(2, 300, 8, generator=torch.Generator().manual_seed(1))
    res, ch = adaptive_kmeans(x, 2, 6, "silhouette", cuda_graphs=False)
    for b, c in enumerate(ch):
        assert (res.counts[b, c.k:] == 0).all() and (res.counts[b, : c.k] > 0).all()
        assert int(res.labels[b].max()) == c.k - 1
    assert [c.k for c in ch] != [6, 6]  # at least one video has inactive codes


def test_refined_centroids_are_the_normalised_group_means():
    x, truth = _axes(3, 200)
    xn = torch.nn.functional.normalize(x[0], dim=-1)
    for iters in (0, 5):
        res, ch = adaptive_kmeans(x, 2, 8, "elbow", refine_iters=iters, cuda_graphs=False)
        assert ch[0].k == 3 and _same_partition(res.labels[0], truth)
        for c in range(3):
            mean = torch.nn.functional.normalize(xn[res.labels[0] == c].sum(0), dim=-1)
            assert torch.allclose(res.centroids[0, c], mean, atol=1e-5), (iters, c)
        assert (res.centroids[0, 3:] == 0).all()
        cos = (xn * res.centroids[0, res.labels[0]]).sum(-1)
        assert float(res.inertia[0]) == pytest.approx(float((1.0 - cos).sum()), rel=1e-4)


def test_a_videos_choice_does_not_depend_on_its_batch_mates():
    # with video ids, each video draws its own seeding and silhouette sample: a video alone and the same
    # video second in a batch get the same scores (the sample of 50 of 400 tokens differs by stream)
    a, ta = _axes(4, 100, seed=4)
    b, _ = _axes(2, 200, seed=5)
    _, alone = adaptive_kmeans(a, 2, 8, "silhouette", silhouette_sample=50, video_ids=[7], cuda_graphs=False)
    res, both = adaptive_kmeans(torch.cat([b, a]), 2, 8, "silhouette", silhouette_sample=50, video_ids=[3, 7],
                                cuda_graphs=False)
    assert both[1].k == alone[0].k == 4 and both[0].k == 2
    assert both[1].scores == pytest.approx(alone[0].scores, abs=1e-6)
    assert _same_partition(res.labels[1], ta)
    _, other = adaptive_kmeans(a, 2, 8, "silhouette", silhouette_sample=50, video_ids=[8], cuda_graphs=False)
    assert other[0].scores != pytest.approx(alone[0].scores, abs=1e-6)
    _, seeded = adaptive_kmeans(a, 2, 8, "silhouette", silhouette_sample=50, seed=1, video_ids=[7], cuda_graphs=False)
    assert seeded[0].scores != pytest.approx(alone[0].scores, abs=1e-6)


def test_separation_walks_every_merge_of_a_tight_tree():
    # oversample 1: K0 = k_top = 5 clusters, 4 merges, all between the 5 blobs: the walk sees every one
    x, _ = _axes(5, 200)
    _, ch = adaptive_kmeans(x, 1, 3, "separation", oversample=1, cuda_graphs=False)
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (3, 5, "high")
    assert sorted(ch[0].scores) == [2, 3, 4, 5] and set(ch[0].scores.values()) == {0.0}


def test_silhouette_ties_go_to_the_smaller_k():
    # orthonormal tokens: every distance is 1, so every token's silhouette is 0 for every K
    _, ch = adaptive_kmeans(torch.eye(10)[None], 1, 6, "silhouette", cuda_graphs=False)
    assert ch[0].scores == {k: 0.0 for k in range(2, 8)}
    assert (ch[0].k, ch[0].k_unclamped, ch[0].clamped) == (2, 2, None)


def test_gap_share_with_a_single_odd_token_on_a_side():
    # side a has one odd token (projection 2), side b four (-2, -2.5, -1.5, 0.2): ma = 2, mb = -1.45,
    # half = 1.725, centre 0.275; only the token at 0.2 is in the band: 1 of 5
    side_i, side_j = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    x, labels = _two_sided([1.0], [-1.0, -1.25, -0.75, 0.1])
    got = gap_shares(x, torch.tensor(labels), 2, side_i, side_j)
    assert got.tolist() == pytest.approx(_shares_by_loops(x, labels, side_i, side_j))
    assert got.tolist() == pytest.approx([0.2])


def _token(x: float, y: float, even: bool, used: list) -> list[float]:
    """(x, y, z) with a tiny z (it moves projections by < 1e-3) that puts the token in the wanted half."""
    zs = (i * 1e-4 for i in range(1, 4000))
    z = next(z for z in zs if _half_by_hand([x, y, z]) == even and [x, y, z] not in used)
    used.append([x, y, z])
    return used[-1]


def test_gap_share_with_unequal_even_counts():
    # side a's direction tokens (1, +-0.3) average (1, 0); side b has one, (-1, 1): the direction is
    # (2, -1). Odd tokens: a: (1, 0), (-1, -0.5); b: (-1, 1), (-1, 0.5). Projections 2, -1.5 | -3, -2.5:
    # ma = 0.25, mb = -2.75, half = 1.5, centre -1.25, t = 13/6, -1/6, -7/6, -5/6: one of four in the band
    used: list = []
    rows = [_token(1.0, 0.3, True, used), _token(1.0, -0.3, True, used), _token(-1.0, 1.0, True, used)]
    rows += [_token(1.0, 0.0, False, used), _token(-1.0, -0.5, False, used)]
    rows += [_token(-1.0, 1.0, False, used), _token(-1.0, 0.5, False, used)]
    labels = [0, 0, 1, 0, 0, 1, 1]
    side_i, side_j = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    x = torch.tensor(rows)
    got = gap_shares(x, torch.tensor(labels), 2, side_i, side_j)
    assert got.tolist() == pytest.approx(_shares_by_loops(x, labels, side_i, side_j))
    assert got.tolist() == [0.25]


def _uniform(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, d, generator=g)


def _outcome(res, ch) -> tuple:
    return res.labels.tolist(), res.centroids.tolist(), [(c.k, c.k_unclamped, c.clamped, c.scores) for c in ch]


def test_defaults_spelled_out():
    # 2100 tokens of noise: more than the default seeding pool (2048) and silhouette sample (2048), and a
    # fit that has not converged by its 10th step
    x = _uniform(2100)
    explicit = dict(iters=10, refine_iters=5, tol=1e-4, seed=0, seed_sample=2048, silhouette_sample=2048,
                    cuda_graphs=True, compiled=False, cache=None, video_ids=None, oversample=2)
    assert _outcome(*adaptive_kmeans(x, 2, 6)) == _outcome(*adaptive_kmeans(x, 2, 6, "elbow", **explicit))
    base = _outcome(*adaptive_kmeans(x, 2, 6, "silhouette"))
    assert base == _outcome(*adaptive_kmeans(x, 2, 6, "silhouette", **explicit))
    # ... and each default matters here
    for change in [dict(iters=11), dict(refine_iters=6), dict(tol=1.0001), dict(seed=1), dict(seed_sample=2049),
                   dict(silhouette_sample=2049)]:
        assert _outcome(*adaptive_kmeans(x, 2, 6, "silhouette", **{**explicit, **change})) != base, change


def test_tol_and_iters_reach_both_fits():
    # tol = inf freezes each fit after its first step: the same as one step of each
    x = _uniform(300)
    frozen = adaptive_kmeans(x, 2, 6, "elbow", iters=10, refine_iters=5, tol=math.inf, cuda_graphs=False)
    one = adaptive_kmeans(x, 2, 6, "elbow", iters=1, refine_iters=1, cuda_graphs=False)
    full = adaptive_kmeans(x, 2, 6, "elbow", iters=10, refine_iters=5, cuda_graphs=False)
    assert _outcome(*frozen) == _outcome(*one)
    assert frozen[1][0].scores != full[1][0].scores  # the top fit moved on
    refined = adaptive_kmeans(x, 2, 6, "elbow", iters=10, refine_iters=1, cuda_graphs=False)
    assert refined[1][0].scores == full[1][0].scores and _outcome(*refined) != _outcome(*full)


def test_seeding_noise_is_asked_for_k0_clusters(monkeypatch):
    # K0 = oversample * (k_max + 2) clusters (at most N), with the over-seeding trials when K0 > k_top
    import llava_vqtoken.core.adaptive as adaptive

    calls = []
    real = adaptive.draw_seed_noise

    def spy(n, k, streams, sample, trials, device):
        calls.append((n, k, sample, trials, device))
        return real(n, k, streams, sample, trials, device)

    monkeypatch.setattr(adaptive, "draw_seed_noise", spy)
    x, _ = _axes(3, 100)
    adaptive_kmeans(x, 2, 6, "elbow", cuda_graphs=False)
    adaptive_kmeans(x, 2, 6, "elbow", oversample=1, seed_sample=50, cuda_graphs=False)
    adaptive_kmeans(x[:, :7], 2, 6, "elbow", cuda_graphs=False)
    cpu = torch.device("cpu")
    assert calls == [(300, 16, 2048, 16, cpu), (300, 8, 50, None, cpu), (7, 7, 2048, None, cpu)]


def test_seed_sample_is_checked():
    with pytest.raises(ValueError, match="^seed_sample must be >= 1"):
        adaptive_kmeans(torch.randn(1, 20, 4), 2, 4, seed_sample=0)


def test_a_given_cache_stays_empty_on_the_cpu():
    from llava_vqtoken.core.graphs import CodeCache

    cache = CodeCache()
    x, _ = _axes(3, 100)
    _, ch = adaptive_kmeans(x, 2, 6, "elbow", cache=cache)
    assert ch[0].k == 3 and len(cache) == 0


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@CUDA
@pytest.mark.parametrize("method", ALL)
def test_on_cuda_every_tensor_stays_on_the_device_and_graphs_go_to_the_given_cache(method):
    from llava_vqtoken.core.graphs import CodeCache

    x, truth = _axes(3, 200)
    _, on_cpu = adaptive_kmeans(x, 2, 8, method, silhouette_sample=100, cuda_graphs=False)
    cache = CodeCache()
    res, ch = adaptive_kmeans(x.cuda(), 2, 8, method, silhouette_sample=100, cache=cache, video_ids=[4])
    assert res.labels.is_cuda and res.centroids.is_cuda
    assert ch[0].k == on_cpu[0].k and (method == "elbow_released" or ch[0].k == 3)
    assert _same_partition(res.labels[0].cpu(), truth) or method == "elbow_released"
    assert sorted(k[1] for k in cache.keys()) == [
        ("adaptive-refine", 8, 20, 5, 1e-4, False),
        ("adaptive-top", 20, 600, 10, 1e-4, False),
    ]
    unused = CodeCache()
    _, plain = adaptive_kmeans(x.cuda(), 2, 8, method, silhouette_sample=100, cache=unused, video_ids=[4],
                               cuda_graphs=False)
    assert len(unused) == 0 and plain[0].k == ch[0].k


@CUDA
def test_pure_parts_on_cuda_equal_the_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    assert value_halves(x.cuda()).tolist() == value_halves(x).tolist()
    labels = torch.arange(64) % 4
    xn = torch.nn.functional.normalize(x, dim=-1)
    side_i, side_j = merge_sides([(0, 1), (2, 3), (0, 2)], 4)
    got = gap_shares(xn.cuda(), labels.cuda(), 4, side_i[::-1], side_j[::-1])
    ref = gap_shares(xn, labels, 4, side_i[::-1], side_j[::-1])
    assert got.is_cuda and got.cpu().tolist() == pytest.approx(ref.tolist())
    sums = torch.stack([xn[labels == j].sum(0) for j in range(4)])
    levels = {2: np.array([0, 0, 1, 1]), 3: np.array([0, 1, 2, 2])}
    counts = torch.full((4,), 16.0)
    ref = silhouette_scores(xn @ sums.T, labels, counts, levels)
    got = silhouette_scores((xn @ sums.T).cuda(), labels.cuda(), counts.cuda(), levels)
    assert got == pytest.approx(ref, abs=1e-5)


def test_groups_of_exact_copies_are_told_apart():
    """Flat regions (black bars, a slide, a synthetic clip's background) give clusters that are copies of
    one token, so all of a cluster's tokens fall in one half of the cross-fit: the direction or the
    projections of such a side were empty and every merge read 1.0 (not separated), giving K = 1. Such a
    cluster now serves both roles (cross_fit_roles)."""
    from llava_vqtoken.core.adaptive import cross_fit_roles

    truth = torch.arange(3).repeat_interleave(50)
    x = torch.eye(16)[truth] * torch.tensor([1.0, 2.0, 3.0])[truth, None]  # three values, 50 copies each
    res, ch = adaptive_kmeans(x[None], 1, 8, "separation")
    assert ch[0].k == 3 and _same_partition(res.labels[0], truth)
    even = value_halves(torch.nn.functional.normalize(x, dim=-1))
    assert all(len(set(even[truth == g].tolist())) == 1 for g in range(3))  # each group in one half
    to_dir, to_proj = cross_fit_roles(truth, even, 3)
    assert to_dir.all() and to_proj.all()
    mixed = torch.tensor([True, False, True, True])  # cluster 0 in both halves, cluster 1 in the even one only
    to_dir, to_proj = cross_fit_roles(torch.tensor([0, 0, 1, 1]), mixed, 2)
    assert to_dir.tolist() == [True, False, True, True] and to_proj.tolist() == [False, True, True, True]
