"""The rank check compares exact digests of the compressor's parameters, not sums."""

import torch

from llava_vqtoken.dist import params_digest, rank_report


def test_digest_tells_apart_values_that_a_sum_cannot():
    a = [torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([3.0]))]
    swapped = [torch.nn.Parameter(torch.tensor([2.0, 1.0])), torch.nn.Parameter(torch.tensor([3.0]))]
    assert sum(float(p.sum()) for p in a) == sum(float(p.sum()) for p in swapped)
    assert params_digest(a) != params_digest(swapped)
    assert params_digest(a) == params_digest([torch.nn.Parameter(p.detach().clone()) for p in a])


def test_digest_is_exact_for_bf16_and_one_ulp_changes_it():
    x = torch.nn.Parameter(torch.tensor([1.0, 3.0], dtype=torch.bfloat16))
    y = torch.nn.Parameter(torch.tensor([1.0 + 2.0**-7, 3.0], dtype=torch.bfloat16))  # bf16's next value after 1
    assert float(y[0]) != 1.0 and params_digest([x]) != params_digest([y])


def test_single_process_report():
    p = [torch.nn.Parameter(torch.tensor([1.0, -1.0]))]
    out = rank_report(p)
    assert out["compressor_identical"] is True and len(out["per_rank"]) == 1
    assert out["per_rank"][0]["checksum"] == 0.0 and out["per_rank"][0]["digest"] == params_digest(p)
