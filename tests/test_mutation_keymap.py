"""Known answers for core/keymap.py that the mutation run (scripts/mutation.sh) found unpinned."""

import pytest
import torch

from llava_vqtoken.core.keymap import canonical_order, codebook_means, key_map_grid, member_sums

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.mark.parametrize("device", DEVICES)
def test_canonical_order_two_videos_and_several_unused_codes(device):
    # on CUDA this also pins that every helper tensor is made on the labels' device
    labels = torch.tensor([[4, 4, 2, 4, 0], [1, 5, 1, 3, 5]], device=device)
    new, perm = canonical_order(labels, 6)
    assert new.device == labels.device and perm.device == labels.device
    assert new.dtype == torch.long and perm.dtype == torch.long
    assert new.tolist() == [[0, 0, 1, 0, 2], [0, 1, 0, 2, 1]]
    # used codes by first appearance, then the unused ones in their old order
    assert perm.tolist() == [[4, 2, 0, 1, 3, 5], [1, 5, 3, 0, 2, 4]]
    assert perm.gather(1, new).tolist() == labels.tolist()


def test_member_sums_by_hand():
    oh = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    src = torch.tensor([[[1.0, 2.0], [10.0, 20.0], [3.0, 5.0]]])
    sums = member_sums(oh, src)
    assert sums.dtype == torch.float32
    assert sums.tolist() == [[[4.0, 7.0], [10.0, 20.0]]]
    half = member_sums(oh.half(), src.half())
    assert half.dtype == torch.float32 and half.tolist() == [[[4.0, 7.0], [10.0, 20.0]]]


def test_codebook_means_by_hand_with_an_empty_code():
    # code 0: tokens (3,0) and (0,4) -> mean (1.5, 2); code 1: (0,6); code 2 empty -> its centroid
    # direction (0.6, 0.8) scaled by the mean token norm (3 + 4 + 6) / 3 = 13/3
    x = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [0.0, 6.0]]])
    labels = torch.tensor([[0, 0, 1]])
    centroids = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    book, counts = codebook_means(x, labels, 3, centroids)
    assert counts.tolist() == [[2.0, 1.0, 0.0]]
    torch.testing.assert_close(book, torch.tensor([[[1.5, 2.0], [0.0, 6.0], [0.6 * 13 / 3, 0.8 * 13 / 3]]]))
    # normalized: members are unit vectors, code 0 = ((1,0) + (0,1)) / 2, the empty code scale is 1
    book, _ = codebook_means(x, labels, 3, centroids, normalized=True)
    torch.testing.assert_close(book, torch.tensor([[[0.5, 0.5], [0.0, 1.0], [0.6, 0.8]]]))
    assert codebook_means(x.double(), labels, 3, centroids)[0].dtype == torch.float64


def test_key_map_grid_is_time_major_raster():
    labels = torch.arange(24).reshape(2, 12)
    grid = key_map_grid(labels, 3, 2, 2)
    assert grid.shape == (2, 3, 2, 2)
    assert grid[1, 2, 0, 1].item() == 12 + 2 * 4 + 0 * 2 + 1
    assert grid[0, 1, 1, 0].item() == 1 * 4 + 1 * 2 + 0
