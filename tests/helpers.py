"""Shared test helpers (a plain module: conftest.py names collide across test folders)."""

import torch


def blobs(k: int, n: int = 2000, d: int = 32, noise: float = 0.05, seed: int = 0):
    """n tokens drawn around k random unit directions; returns (x [1, n, d], true labels [n])."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=-1)
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=g)]
    x = centres[labels] + noise * torch.randn(n, d, generator=g)
    return x[None], labels


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when labelings a and b define the same partition (up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))
