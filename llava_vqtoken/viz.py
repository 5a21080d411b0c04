"""Plots: key-map heatmaps over sampled frames."""

from __future__ import annotations

import os

import numpy as np


def heatmap_frames(t: int, max_frames: int = 8) -> np.ndarray:
    """Which of T frames :func:`key_map_heatmap` shows (a streamed ``compress`` keeps only these)."""
    return np.unique(np.linspace(0, t - 1, min(max_frames, t)).round().astype(int))


def key_map_heatmap(
    frames: np.ndarray, key_map: np.ndarray, path: str | os.PathLike[str], max_frames: int = 8, title: str = ""
) -> None:
    """Save a PNG: sampled frames (top) with their key-map codes overlaid, and the bare key maps (bottom).

    frames uint8 [T, H, W, 3]; key_map int [T, h, w]. Colours are per code index and consistent
    across frames, so a code's motion shows as its colour moving.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = key_map.shape[0]
    pick = heatmap_frames(t, max_frames)
    k = int(key_map.max()) + 1
    cmap = matplotlib.colormaps["tab20" if k <= 20 else "turbo"].resampled(max(k, 2))
    fig, axes = plt.subplots(2, len(pick), figsize=(2.2 * len(pick), 4.6), squeeze=False)
    for col, i in enumerate(pick):
        frame = frames[min(i, len(frames) - 1)]
        codes = key_map[i]
        colour = cmap(codes / max(k - 1, 1))[..., :3]
        ys = (np.arange(frame.shape[0]) * codes.shape[0] // frame.shape[0]).clip(0, codes.shape[0] - 1)
        xs = (np.arange(frame.shape[1]) * codes.shape[1] // frame.shape[1]).clip(0, codes.shape[1] - 1)
        up = colour[ys][:, xs]
        axes[0, col].imshow((0.55 * frame / 255.0 + 0.45 * up).clip(0, 1))
        axes[0, col].set_title(f"frame {i}", fontsize=8)
        axes[1, col].imshow(codes, cmap=cmap, vmin=0, vmax=max(k - 1, 1), interpolation="nearest")
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title or f"VQToken key map: {k} codes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
