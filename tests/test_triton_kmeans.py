"""The Triton programs (greedy k-means++ seeding, Ward's merge down) give exactly the torch loops' answers.

On the CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, in a subprocess: the
variable must be set before triton is imported); on CUDA it runs compiled, and ``cosine_kmeans`` uses
it by default there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from llava_vqtoken.core import kmeans as km

triton = pytest.importorskip("triton", reason="triton is not installed (it comes with CUDA builds of torch)")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: (batch, tokens, dim, K, trials, seeding pool, per-video ids): plain and over-seeded trial counts, a
#: pool smaller than the tokens, L not a power of two, one broadcast stream (batch stride 0)
CASES = [
    (2, 300, 16, 7, 5, 200, True),
    (3, 150, 8, 12, 16, None, True),
    (1, 64, 4, 3, None, None, False),
    (4, 90, 8, 9, 6, 64, False),
]

CHECK = """
import torch
from llava_vqtoken.core import kmeans as km
from llava_vqtoken.core.triton_kmeans import greedy_seed

def fused_and_loop(b, n, d, k, trials, sample, ids, device):
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(b, n, d, generator=g).to(device)
    xn = km.normalize_tokens(x).float()
    streams = km.VideoStreams(b, x.device, 1, list(range(b)) if ids else None)
    noise, m = km.draw_seed_noise(n, k, streams, sample, trials, x.device)
    loop = km.seed_centres(xn, k, noise, m, use_gram=True, fused=False)
    pool = xn if noise.pool_keys is None else xn.gather(
        1, noise.pool_keys.topk(m, dim=1).indices.unsqueeze(-1).expand(b, m, d))
    d2 = km.chord2(torch.bmm(pool, pool.transpose(1, 2)))
    picked = greedy_seed(d2, noise.race, (noise.first * m).long().clamp_max(m - 1), k)
    return pool.gather(1, picked.unsqueeze(-1).expand(-1, -1, d)).float(), loop
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the compiled kernel is checked instead (below)")
def test_interpreted_kernel_equals_the_torch_loop():
    code = CHECK + textwrap.dedent(f"""
        for case in {CASES!r}:
            fused, loop = fused_and_loop(*case, device="cpu")
            assert torch.equal(fused, loop), case
        print("ok", len({CASES!r}))
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", str(len(CASES))]


@CUDA
@pytest.mark.parametrize("case", CASES)
def test_cuda_kernel_equals_the_torch_loop(case):
    namespace: dict = {}
    exec(CHECK, namespace)
    fused, loop = namespace["fused_and_loop"](*case, device="cuda")
    assert torch.equal(fused, loop)


@CUDA
def test_cosine_kmeans_uses_the_kernel_on_cuda_and_agrees_with_the_loop():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(6, 32, generator=g), dim=-1)
    x = (centres.repeat_interleave(50, 0) + 0.05 * torch.randn(300, 32, generator=g))[None].cuda()
    xn = km.normalize_tokens(x)
    noise, m = km.draw_seed_noise(300, 12, km.VideoStreams(1, x.device, 0), None, 16, x.device)
    default = km.seed_centres(xn, 12, noise, m)
    assert torch.equal(default, km.seed_centres(xn, 12, noise, m, fused=True))
    assert torch.equal(default, km.seed_centres(xn, 12, noise, m, fused=False))


def test_fused_seeding_is_refused_off_cuda():
    xn = km.normalize_tokens(torch.randn(1, 20, 4))
    noise, m = km.draw_seed_noise(20, 3, km.VideoStreams(1, xn.device, 0), None, None, xn.device)
    with pytest.raises(ValueError, match="^fused seeding runs on CUDA only$"):
        km.seed_centres(xn, 3, noise, m, use_gram=True, fused=True)


WARD = """
import torch
from llava_vqtoken.core import kmeans as km
from llava_vqtoken.core.triton_kmeans import ward_groups

def ward_both(b, k0, k, d, device):
    g = torch.Generator().manual_seed(k0 + k)
    counts = torch.randint(0, 30, (b, k0), generator=g).float()
    sums = torch.randn(b, k0, d, generator=g) * (counts > 0)[..., None]  # an empty cluster sums to 0
    cost, n = km.ward_costs(sums.to(device), counts.to(device)), counts.to(device)
    alive = torch.ones(b, k0, dtype=torch.bool, device=device)
    group = torch.arange(k0, device=device).expand(b, k0).clone()
    loop = cost.clone()
    for _ in range(k0 - k):
        loop, n, alive, group = km.ward_step(loop, n, alive, group)
    fused_group, fused_alive = ward_groups(cost, counts.to(device), k)
    return (fused_group, fused_alive), (group, alive)
"""
#: (batch, K0, K, dim): K0 not a power of two, down to one group, the over-seeded K = 32 and adaptive sizes
WARD_CASES = [(2, 12, 5, 6), (1, 64, 32, 16), (3, 9, 1, 4), (2, 132, 4, 8)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the compiled kernel is checked instead (below)")
def test_interpreted_ward_equals_the_torch_loop():
    code = WARD + textwrap.dedent(f"""
        for case in {WARD_CASES!r}:
            fused, loop = ward_both(*case, device="cpu")
            assert torch.equal(fused[0], loop[0]) and torch.equal(fused[1], loop[1]), case
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok"]


@CUDA
@pytest.mark.parametrize("case", WARD_CASES)
def test_cuda_ward_equals_the_torch_loop(case):
    namespace: dict = {}
    exec(WARD, namespace)
    fused, loop = namespace["ward_both"](*case, device="cuda")
    assert torch.equal(fused[0], loop[0]) and torch.equal(fused[1], loop[1])


@CUDA
def test_ward_merge_down_on_cuda_equals_the_cpu():
    g = torch.Generator().manual_seed(3)
    counts = torch.randint(1, 40, (2, 64), generator=g).float()
    sums = torch.randn(2, 64, 16, generator=g)
    cpu = km.ward_merge_down(sums, counts, 32)
    gpu = km.ward_merge_down(sums.cuda(), counts.cuda(), 32)
    assert torch.equal(gpu[0].cpu(), cpu[0])
    assert torch.allclose(gpu[1].cpu(), cpu[1], atol=1e-4)
