"""Video decoding (decord, PyAV fallback), uniform frame sampling and synthetic test videos.

Long clips: :func:`plan_frames` picks the frames to read (``frames`` uniformly, or ``fps`` by time as
LLaVA-Video's loaders do) without decoding anything, and :func:`iter_frames` decodes only those, in
order, ``chunk`` at a time, so memory holds one chunk, never the clip.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
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
    if num_frames < 1:
        raise VideoError(f"number of frames must be >= 1, got {num_frames}")
    path = _checked_path(path)
    errors = []
    for name in _backends(backend):
        try:
            out, total = _DECODERS[name](path, num_frames)
        except VideoError:
            raise
        except ImportError as e:
            errors.append(f"{name} not installed ({e})")
            continue
        except Exception as e:  # decoders raise many types for corrupt input
            errors.append(_decoder_error(name, e))
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


@dataclass(frozen=True)
class FramePlan:
    """Which frames of a clip to read, and what was asked (for a one-line report of a short clip)."""

    indices: np.ndarray  # increasing, unique frame indices
    total: int  # frames in the clip
    clip_fps: float  # its average frame rate
    asked: int  # frames asked for (--frames N, or duration x --fps)

    @property
    def short(self) -> bool:
        """The clip gives fewer frames than asked (they are not padded)."""
        return len(self.indices) < self.asked


def probe_video(path: str | os.PathLike[str], backend: str = "auto") -> tuple[int, float, str]:
    """(frame count, average fps, backend that read it) without decoding the frames."""
    path = _checked_path(path)
    errors = []
    for name in _backends(backend):
        try:
            total, fps = _PROBES[name](path)
        except ImportError as e:
            errors.append(f"{name} not installed ({e})")
            continue
        except Exception as e:  # decoders raise many types for corrupt input
            errors.append(_decoder_error(name, e))
            continue
        if total < 1:
            raise VideoError(f"video has no frames: {path}")
        return total, fps, name
    raise VideoError(f"cannot decode video {path}: {'; '.join(errors)}")


def plan_frames(total: int, clip_fps: float, frames: int | None = None, fps: float | None = None) -> FramePlan:
    """The frames to read: ``frames`` uniformly over the clip, or every round(clip_fps / fps)-th frame
    from the first (LLaVA-Video's rule), at most ``frames`` of them (then uniformly, as LLaVA-Video's
    ``max_frames_num``). A clip with fewer frames than asked gives all its frames, not repeats."""
    if frames is not None and frames < 1:
        raise VideoError(f"number of frames must be >= 1, got {frames}")
    if fps is None:
        n = 32 if frames is None else frames
        return FramePlan(np.unique(sample_indices(total, min(n, total))), total, clip_fps, n)
    if not fps > 0 or not math.isfinite(fps):
        raise VideoError(f"--fps must be a positive number, got {fps}")
    if not clip_fps > 0:
        raise VideoError("the clip has no frame rate, so frames cannot be sampled by time; use --frames")
    step = max(1, round(clip_fps / fps))
    idx = np.arange(0, total, step)
    asked = max(1, math.floor(total / clip_fps * fps))
    if frames is not None and len(idx) > frames:
        idx = np.unique(sample_indices(total, frames))
        asked = frames
    return FramePlan(idx, total, clip_fps, min(asked, len(idx)) if step > 1 else asked)


def iter_frames(
    path: str | os.PathLike[str], indices: np.ndarray, chunk: int, backend: str = "auto"
) -> Iterator[np.ndarray]:
    """Decode the frames at ``indices`` (increasing) in order, ``chunk`` at a time: uint8 [c, H, W, 3]."""
    if chunk < 1:
        raise VideoError(f"chunk must be >= 1 frame, got {chunk}")
    path = _checked_path(path)
    name = probe_video(path, backend)[2]
    yield from _CHUNKED[name](path, np.asarray(indices), chunk)


def _checked_path(path: str | os.PathLike[str]) -> str:
    path = str(path)
    if not os.path.exists(path):
        raise VideoError(f"video not found: {path}")
    if os.path.isdir(path):
        raise VideoError(f"video path is a directory: {path}")
    if os.path.getsize(path) == 0:
        raise VideoError(f"video file is empty: {path}")
    return path


def _decoder_error(name: str, e: Exception) -> str:
    """One line for a decoder's failure: its first line, or its type when it has no text."""
    return f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def _backends(backend: str) -> list[str]:
    if backend != "auto" and backend not in _DECODERS:
        raise VideoError(f"unknown video backend {backend!r}; choose from {', '.join(_DECODERS)}")
    return list(_DECODERS) if backend == "auto" else [backend]


def _probe_decord(path: str) -> tuple[int, float]:
    from decord import VideoReader, cpu  # type: ignore[import-not-found]

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    return len(vr), float(vr.get_avg_fps())


def _probe_pyav(path: str) -> tuple[int, float]:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoError(f"video has no frames (no video stream): {path}")
        stream = container.streams.video[0]
        total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        rate = stream.average_rate or stream.guessed_rate
        return int(total), float(rate) if rate else 0.0


def _probe_opencv(path: str) -> tuple[int, float]:
    import cv2  # type: ignore[import-not-found]

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise RuntimeError("OpenCV cannot open it")
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()


def _chunks_decord(path: str, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    from decord import VideoReader, cpu  # type: ignore[import-not-found]

    vr = VideoReader(path, ctx=cpu(0), num_threads=1)
    for s in range(0, len(indices), chunk):
        yield vr.get_batch(indices[s : s + chunk].tolist()).asnumpy()


def _sequential(frames: Iterator[np.ndarray], indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """Keep the frames at ``indices`` of a frame-by-frame decode, yielded ``chunk`` at a time."""
    want, buf, at = iter(indices.tolist()), [], 0
    nxt = next(want, None)
    for i, frame in enumerate(frames):
        if nxt is None:
            break
        if i == nxt:
            buf.append(frame)
            at += 1
            nxt = next(want, None)
            if len(buf) == chunk:
                yield np.stack(buf)
                buf = []
    if buf:
        yield np.stack(buf)
    if at < len(indices):
        raise VideoError(f"the clip ended after frame {i}, before {len(indices) - at} of the planned frames")


def _chunks_pyav(path: str, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    import av

    with av.open(path) as container:
        frames = (f.to_ndarray(format="rgb24") for f in container.decode(video=0))
        yield from _sequential(frames, indices, chunk)


def _chunks_opencv(path: str, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    import cv2  # type: ignore[import-not-found]

    cap = cv2.VideoCapture(path)

    def frames() -> Iterator[np.ndarray]:
        ok, frame = cap.read()
        while ok:
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            ok, frame = cap.read()

    try:
        yield from _sequential(frames(), indices, chunk)
    finally:
        cap.release()


_PROBES = {"decord": _probe_decord, "pyav": _probe_pyav, "opencv": _probe_opencv}
_CHUNKED = {"decord": _chunks_decord, "pyav": _chunks_pyav, "opencv": _chunks_opencv}
