"""The fused (Triton) k-means++ seeding picks exactly the seeds of the torch loop.

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
from llava_vqtoken.core.triton_seeding import greedy_seed

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
