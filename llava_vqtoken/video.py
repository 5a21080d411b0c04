"""Video decoding (decord, PyAV fallback), uniform frame sampling and synthetic test videos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """A video cannot be used: missing, unreadable, or without frames."""


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """Uniform sampling as lmms-eval does it: linspace over [0, total-1], integer positions."""
    return np.linspace(0, total - 1, num_frames, dtype=int)


def _decode_decord(path: str, num_frames: int) -> tuple[np.ndarray, int]:
    from decord import VideoReader, cpu  # type: ignore[import-not-found]

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    total = len(vr)
    if total == 0:
        raise VideoError(f"video has no frames: {path}")
    return vr.get_batch(sample_indices(total, num_frames).tolist()).asnumpy(), total


def _decode_pyav(path: str, num_frames: int) -> tuple[np.ndarray, int]:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoError(f"video has no frames (no video stream): {path}")
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise VideoError(f"video has no frames: {path}")
    return np.stack([frames[i] for i in sample_indices(len(frames), num_frames)]), len(frames)


def _decode_opencv(path: str, num_frames: int) -> tuple[np.ndarray, int]:
    import cv2  # type: ignore[import-not-found]

    cap = cv2.VideoCapture(path)
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        ok, frame = cap.read()
    cap.release()
    if not frames:
        raise RuntimeError("OpenCV read no frames")
    return np.stack([frames[i] for i in sample_indices(len(frames), num_frames)]), len(frames)


_DECODERS = {"decord": _decode_decord, "pyav": _decode_pyav, "opencv": _decode_opencv}


def load_video(path: str | os.PathLike[str], num_frames: int, backend: str = "auto") -> np.ndarray:
    """Decode ``num_frames`` uniformly sampled RGB frames -> uint8 [T, H, W, 3].

    ``backend``: ``auto`` (decord, then PyAV, then OpenCV), ``decord``, ``pyav`` or ``opencv``. Raises
    VideoError with one line naming the problem (missing file, corrupt file, zero frames, bad frame count).
    A clip with fewer than ``num_frames`` frames repeats some; :func:`load_video_counted` also says how many it has.
    """
    return load_video_counted(path, num_frames, backend)[0]


def load_video_counted(
    path: str | os.PathLike[str], num_frames: int, backend: str = "auto"
) -> tuple[np.ndarray, int]:
    """:func:`load_video`, plus the number of frames the clip really has (fewer than ``num_frames``: repeats)."""
    path = str(path)
    if num_frames < 1:
        raise VideoError(f"number of frames must be >= 1, got {num_frames}")
    if not os.path.exists(path):
        raise VideoError(f"video not found: {path}")
    if os.path.isdir(path):
        raise VideoError(f"video path is a directory: {path}")
    if os.path.getsize(path) == 0:
        raise VideoError(f"video file is empty: {path}")
    backends = list(_DECODERS) if backend == "auto" else [backend]
    if backend != "auto" and backend not in _DECODERS:
        raise VideoError(f"unknown video backend {backend!r}; choose from {', '.join(_DECODERS)}")
    errors = []
    for name in backends:
        try:
            out, total = _DECODERS[name](path, num_frames)
        except VideoError:
            raise
        except ImportError as e:
            errors.append(f"{name} not installed ({e})")
            continue
        except Exception as e:  # decoders raise many types for corrupt input
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        if out.ndim != 4 or out.shape[0] == 0:
            raise VideoError(f"video has no frames: {path}")
        return out, total
    raise VideoError(f"cannot decode video {path}: {'; '.join(errors)}")


def make_video(
    path: str | os.PathLike[str],
    frames: int = 48,
    height: int = 96,
    width: int = 128,
    shapes: int = 3,
    fps: int = 8,
    seed: int = 0,
) -> Path:
    """Write a short clip of coloured squares moving on a dark background (H.264 via PyAV)."""
    import av

    rng = np.random.default_rng(seed)
    colors = rng.integers(64, 256, size=(shapes, 3))
    size = rng.integers(max(4, height // 8), max(6, height // 4), size=shapes)
    pos = rng.uniform(0, 1, size=(shapes, 2)) * [height - size.max(), width - size.max()]
    vel = rng.uniform(-1, 1, size=(shapes, 2)) * [height / frames, width / frames] * 1.5
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            img = np.full((height, width, 3), 20, dtype=np.uint8)
            for s in range(shapes):
                y, x = pos[s].astype(int)
                img[y : y + size[s], x : x + size[s]] = colors[s]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
            pos += vel
            for ax, lim in ((0, height), (1, width)):
                hit = (pos[:, ax] < 0) | (pos[:, ax] > lim - size)
                vel[hit, ax] *= -1
                pos[:, ax] = np.clip(pos[:, ax], 0, lim - size)
        for packet in stream.encode():
            out.mux(packet)
    return path
