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


def test_normalized_half_members_are_rounded_to_half_before_the_sum():
    # the members are normalised in fp32, stored in the input's fp16, then summed in fp32: averaging
    # the fp32 unit vectors instead gives -0.08984375 and -0.13427734375 / 0.209228515625 here
    x = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(0)).half()
    labels = torch.tensor([[0, 0, 0, 1, 1, 1]])
    book, _ = codebook_means(x, labels, 2, torch.eye(3)[None, :2], normalized=True)
    assert book.dtype == torch.float16
    assert book.tolist() == [[[-0.135009765625, 0.201416015625, -0.08990478515625],
                              [-0.1343994140625, 0.2091064453125, 0.57763671875]]]
    members = torch.nn.functional.normalize(x.float(), dim=-1).half().float()[0]
    want = torch.stack([members[:3].sum(0) / 3, members[3:].sum(0) / 3]).half()
    assert torch.equal(book[0], want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_member_sums_of_half_on_cuda_with_and_without_gradients():
    oh = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]], device="cuda").half()
    src = torch.tensor([[[1.0, 2.0], [10.0, 20.0], [3.0, 5.0]]], device="cuda").half()
    sums = member_sums(oh, src)
    assert sums.dtype == torch.float32 and sums.tolist() == [[[4.0, 7.0], [10.0, 20.0]]]
    # fp16 would overflow: 3 x 40000 = 120000 > 65504
    big = torch.full((1, 3, 1), 40000.0, device="cuda").half()
    assert member_sums(torch.ones(1, 3, 1, device="cuda").half(), big).item() == 120000.0
    leaf = src.clone().requires_grad_(True)
    sums = member_sums(oh, leaf)
    assert sums.dtype == torch.float32 and sums.requires_grad
    (sums * torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], device="cuda")).sum().backward()
    assert leaf.grad.tolist() == [[[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]]
    with torch.no_grad():
        assert member_sums(oh, leaf).tolist() == [[[4.0, 7.0], [10.0, 20.0]]]


def test_codebook_means_empty_code_scale_is_per_video():
    # video 0: token norms 3 and 5 -> scale 4; video 1: norms 1 and 1 -> scale 1; code 1 is empty in both
    x = torch.tensor([[[3.0, 0.0], [0.0, 5.0]], [[1.0, 0.0], [0.0, 1.0]]])
    labels = torch.zeros(2, 2, dtype=torch.long)
    centroids = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[1.0, 0.0], [0.0, 1.0]]])
    book, counts = codebook_means(x, labels, 2, centroids)
    assert counts.tolist() == [[2.0, 0.0], [2.0, 0.0]]
    torch.testing.assert_close(book, torch.tensor([[[1.5, 2.5], [2.4, 3.2]], [[0.5, 0.5], [0.0, 1.0]]]))
