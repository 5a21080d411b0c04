"""Known-answer tests for the core: hand-worked inputs whose exact output is written down here.

Each case pins *which* tokens come out (not only how many), so a one-line change to a baseline,
the footprint, the silhouette, the Lloyd loop or the random-attention mask fails a test.
"""

import math

import pytest
import torch

from helpers import same_partition
from llava_vqtoken.core.adaptive import elbow_k, silhouette_scores
from llava_vqtoken.core.baselines import bipartite_merge, prune_tokens, temporal_merge_tokens, tome_tokens
from llava_vqtoken.core.kmeans import lloyd, normalize_tokens
from llava_vqtoken.core.vq_attention import VQAttention, footprint_dim, footprint_stats


def video(tokens: list[list[float]], t: int, h: int, w: int) -> torch.Tensor:
    return torch.tensor(tokens, dtype=torch.float32).reshape(t, h, w, -1)


# ---------------------------------------------------------------- baselines


def test_prune_keeps_the_largest_norms_in_original_order():
    v = video([[3, 0], [0, 1], [0, 0.5], [4, 0], [0, -2]], 1, 1, 5)
    assert prune_tokens(v, 2).tolist() == [[3, 0], [4, 0]]
    assert prune_tokens(v, 3).tolist() == [[3, 0], [4, 0], [0, -2]]


def test_bipartite_merge_is_a_size_weighted_mean():
    a = torch.tensor([[[2.0, 0.0]]])
    b = torch.tensor([[[0.0, 2.0]]])
    tokens, sizes = bipartite_merge(a, b, torch.tensor([[2.0]]), torch.tensor([[1.0]]), 1)
    assert torch.allclose(tokens, torch.tensor([[[4 / 3, 2 / 3]]]))
    assert sizes.tolist() == [[3.0]]


def test_tome_averages_the_most_similar_pair_and_keeps_the_rest():
    # alternate split: A = (t0, t2), B = (t1, t3); t0 is nearly t1, so t0 merges into t1
    v = video([[1, 0], [1, 0.1], [0, 1], [-1, 0]], 1, 1, 4)
    out = tome_tokens(v, 3)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0], [1.0, 0.05], [-1.0, 0.0]]))


def test_temporal_merge_pairs_each_token_with_its_match_in_the_previous_frame():
    # frame 1's tokens go to their most similar frame-0 token: (1, 0) <- (2, 0) and (0, 1) <- (0, 3)
    v = video([[1, 0], [0, 1], [0, 3], [2, 0]], 2, 1, 2)
    out = temporal_merge_tokens(v, 2)
    assert torch.allclose(out, torch.tensor([[1.5, 0.0], [0.0, 2.0]]))


def test_temporal_merge_batch_equals_video_by_video():
    g = torch.Generator().manual_seed(0)
    vids = torch.randn(3, 4, 3, 3, 8, generator=g)
    batched = temporal_merge_tokens(vids, 10)
    for i in range(3):
        assert torch.allclose(batched[i], temporal_merge_tokens(vids[i], 10))


# ---------------------------------------------------------------- footprint


def test_footprint_marginal_and_motion_by_hand():
    # T=2, H=1, W=2: code 0 at (t0, w0); code 1 at (t0, w1), (t1, w0), (t1, w1)
    key_map = torch.tensor([[[[0, 1]], [[1, 1]]]])
    fp = footprint_stats(key_map, 2, freqs=1, motion=True)[0]
    assert fp.shape == (2, footprint_dim(1, motion=True)) == (2, 22)
    c1 = fp[1]
    # Fourier part, octave pi: [sin, cos] of t, h, w averaged over the three members
    assert torch.allclose(c1[:6], torch.tensor([0.0, -1 / 3, 0.0, 1.0, 0.0, -1 / 3]), atol=1e-6)
    assert torch.allclose(c1[6:9], torch.tensor([2 / 3, 0.0, 2 / 3]))  # mean (t, h, w)
    s = math.sqrt(2 / 9)
    assert torch.allclose(c1[9:12], torch.tensor([s, 0.0, s]), atol=1e-6)  # spread
    assert torch.allclose(c1[12:14], torch.tensor([0.75, 1.0]))  # share of tokens, share of frames
    # motion: first/last frame, centroid (h, w) in each, displacement
    assert torch.allclose(c1[14:], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.0, -0.5]))
    c0 = fp[0]
    assert torch.allclose(c0[6:14], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.5]))
    assert torch.allclose(c0[14:], torch.zeros(8))  # appears once and never moves


def test_marginal_footprint_is_the_motion_one_without_its_tail():
    key_map = torch.randint(0, 5, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    marginal = footprint_stats(key_map, 5, freqs=2)
    motion = footprint_stats(key_map, 5, freqs=2, motion=True)
    assert torch.equal(marginal, motion[..., : footprint_dim(2)])


# ---------------------------------------------------------------- silhouette and elbow


def brute_force_silhouette(x: torch.Tensor, labels: list[int]) -> float:
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    dist = 1.0 - xn @ xn.T
    groups = sorted(set(labels))
    lab = torch.tensor(labels)
    total = 0.0
    for i in range(len(labels)):
        own = lab == lab[i]
        if own.sum() == 1:
            continue  # singleton: 0
        a = (dist[i][own].sum() - dist[i, i]) / (own.sum() - 1)
        b = min(dist[i][lab == g].mean() for g in groups if g != labels[i])
        total += float((b - a) / max(a, b))
    return total / len(labels)


def test_silhouette_matches_brute_force_on_fifty_points():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 5, generator=g)
    labels0 = torch.arange(50) % 4  # four original clusters, arbitrary (not fitted) assignment
    labels0[7] = 3
    xn = normalize_tokens(x[None])[0].float()
    sums = torch.stack([xn[labels0 == j].sum(0) for j in range(4)])
    counts = torch.bincount(labels0, minlength=4).float()
    levels = {4: [0, 1, 2, 3], 3: [0, 1, 2, 0], 2: [0, 1, 1, 0]}
    import numpy as np

    scores = silhouette_scores(xn @ sums.T, labels0, counts, {k: np.array(v) for k, v in levels.items()})
    for k, m in levels.items():
        expected = brute_force_silhouette(x, [m[int(j)] for j in labels0])
        assert scores[k] == pytest.approx(expected, abs=1e-5), k


def test_silhouette_singleton_scores_zero():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels0 = torch.tensor([0, 0, 1])
    xn = normalize_tokens(x[None])[0].float()
    sums = torch.stack([xn[:2].sum(0), xn[2]])
    import numpy as np

    scores = silhouette_scores(xn @ sums.T, labels0, torch.tensor([2.0, 1.0]), {2: np.array([0, 1])})
    assert scores[2] == pytest.approx(brute_force_silhouette(x, [0, 0, 1]), abs=1e-6)


def test_elbow_on_hand_made_curves():
    assert elbow_k({1: 100.0, 2: 50.0, 3: 10.0, 4: 8.0, 5: 6.0, 6: 4.0}) == 3
    assert elbow_k({1: 100.0, 2: 90.0, 3: 80.0, 4: 70.0, 5: 60.0, 6: 50.0}) is None  # straight line
    assert elbow_k({1: 5.0, 2: 5.0, 3: 5.0}) == 1  # flat: all tokens alike
    # two bends: the sharper one (drop before / drop after) wins
    assert elbow_k({1: 100.0, 2: 60.0, 3: 20.0, 4: 16.0, 5: 4.0, 6: 3.9, 7: 3.8}) == 5


# ---------------------------------------------------------------- Lloyd loop


def three_blobs(n_per: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(3, 6)
    labels = torch.arange(3).repeat_interleave(n_per)
    return (centres[labels] + 0.02 * torch.randn(3 * n_per, 6, generator=g))[None], labels


def test_empty_cluster_is_reseeded_where_ties_cannot_help():
    x, truth = three_blobs()
    xn = normalize_tokens(x)
    # two centres on blobs 0 and 1, the third facing away from every token: it never wins a token,
    # so only re-seeding can give blob 2 its own code
    init = torch.nn.functional.normalize(torch.tensor([[[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0],
                                                        [-1.0, -1.0, -1.0, 0, 0, 0]]]), dim=-1)
    res = lloyd(xn, init, iters=6, tol=0.0)
    assert same_partition(res.labels[0], truth)
    assert (res.counts > 0).all()


def test_tol_stops_a_video_once_it_has_converged():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 400, 8, generator=g)
    xn = normalize_tokens(x)
    init = xn[:, :6].clone()
    one = lloyd(xn, init, iters=1, tol=1e9)
    five = lloyd(xn, init, iters=5, tol=1e9)  # frozen after the first step
    moving = lloyd(xn, init, iters=5, tol=0.0)
    assert torch.equal(one.centroids, five.centroids)
    assert not torch.equal(one.centroids, moving.centroids)  # the case would show an ignored tol


# ---------------------------------------------------------------- random attention under a mask


def test_random_attention_never_reads_masked_codes():
    torch.manual_seed(0)
    att = VQAttention(16, heads=2, freqs=2, mode="random")
    codebook = torch.randn(1, 4, 16)
    key_map = torch.tensor([[[[0, 1], [1, 0]]]])  # only codes 0 and 1 occur
    active = torch.tensor([[True, True, False, False]])

    def run(poison: bool, mask: torch.Tensor | None = active) -> torch.Tensor:
        def hook(_module, _inputs, out):
            if poison:
                out = out.clone()
                out[:, 2:] = 1e4  # values of the masked codes
            return out

        handle = att.v_proj.register_forward_hook(hook)
        try:
            return att(codebook, key_map, active=mask, draw=lambda fn: fn(torch.Generator().manual_seed(5)))
        finally:
            handle.remove()

    clean, poisoned = run(False), run(True)
    assert torch.allclose(clean[:, :2], poisoned[:, :2])
    assert not torch.allclose(run(False, None)[:, :2], run(True, None)[:, :2])  # unmasked, the poison shows
