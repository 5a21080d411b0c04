"""Command line: ``llava-vqtoken compress|make-video ...``.

Bad input exits with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CheckpointError, CompressorConfig, ConfigError
from .config_flags import EXIT_BAD_INPUT, OneLineParser, add_compressor_args, model_dir_problem, overrides_from_args
from .shapes import GRID, QWEN2, VIDEO_FRAMES
from .spec_rule import resolve_spec

#: --chunk-frames of ``compress``: not typed, a long VQToken clip is streamed anyway (stream_chunk)
CHUNK_HELP = (
    "config field chunk_frames: stream the clip N frames at a time (VQToken). Not given: a VQToken clip of "
    "more than 32 frames is streamed 32 at a time (or as the checkpoint's spec says), a shorter one runs at "
    "once; 0: always all at once"
)


class UsageError(ValueError):
    """A command-line value is invalid."""


def config_from_args(a: argparse.Namespace) -> CompressorConfig:
    """The spec the flags describe for a stock checkpoint (defaults where a flag is not given)."""
    return resolve_spec(None, overrides_from_args(a)).spec


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="llava-vqtoken", description="VQToken video-token compression for LLaVA-OneVision")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="compress one video and report token counts")
    c.add_argument("--video", help="video file (default: a generated clip of moving shapes)")
    c.add_argument("--model", help="transformers LLaVA-OneVision directory (default: tiny random model, built locally)")
    c.add_argument("--cache-dir", help="where the built-in tiny model and the demo clip are written "
                   "(default: ~/.cache/llava_vqtoken)")
    c.add_argument("--frames", type=int, default=None,
                   help="frames sampled uniformly (default 32); with --fps, the most frames (then uniformly)")
    c.add_argument("--fps", type=float, default=None,
                   help="sample by time: every round(clip fps / FPS)-th frame, as LLaVA-Video's loaders do")
    add_compressor_args(c, notes={"chunk_frames": CHUNK_HELP})
    c.add_argument("--device", default="cpu")
    c.add_argument("--heatmap", help="write a PNG of sampled frames over their key-map colours")
    c.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
    b = sub.add_parser("bench", help="time the compressor and the end-to-end pipeline (GPU numbers need CUDA)")
    b.add_argument("--device", default="cuda" if _cuda() else "cpu")
    b.add_argument("--parts", nargs="+", default=["compressor", "e2e"], choices=["compressor", "e2e"])
    b.add_argument("--frames", type=int, default=VIDEO_FRAMES)
    b.add_argument("--grid", type=int, default=GRID)
    b.add_argument("--width", type=int, default=QWEN2["0.5b"]["hidden_size"])
    b.add_argument("--llms", nargs="+", default=None, help="0.5b 7b (GPU default) or tiny (CPU default)")
    b.add_argument("--vision", default=None, help="so400m (GPU default) or tiny (CPU default)")
    b.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    b.add_argument("--attn", default="sdpa")
    b.add_argument("--reps", type=int, default=10)
    b.add_argument("--no-reference", action="store_true", help="skip the sync-heavy reference k-means")
    b.add_argument("--compile", action="store_true", help="end to end: torch.compile the Lloyd steps")
    b.add_argument("--out", help="write the JSON report here")
    e = sub.add_parser("export-remote", help="convert/copy a checkpoint into a trust_remote_code folder")
    e.add_argument("--model", required=True, help="stock LLaVA-OneVision or VQToken checkpoint directory")
    e.add_argument("--out", required=True)
    add_compressor_args(e)
    sub.add_parser("motionqa", help="synthetic motion-QA benchmark across compressors (see --help of the module)",
                   add_help=False)
    m = sub.add_parser("make-video", help="write a short synthetic clip (moving coloured squares)")
    m.add_argument("out")
    m.add_argument("--frames", type=int, default=48)
    m.add_argument("--seed", type=int, default=0)
    return p


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def _note(msg: str) -> None:
    print(f"[llava-vqtoken] {msg}", file=sys.stderr)


def check_device(device: str) -> None:
    """A usable torch device, or one line saying why not (before any compute)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")


def check_output_file(flag: str, path: str | None) -> None:
    """The folder of an output file exists (checked before the compute, not after it)."""
    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {parent} does not exist")


def check_model_dir(path: str) -> None:
    if not Path(path).is_dir():
        raise UsageError(f"--model must be a local model directory: {path}")
    why = model_dir_problem(path)
    if why:
        raise UsageError(why)


@dataclass
class Compressed:
    """What ``compress`` computed: the video, its frame plan, the result and how long it took."""

    video: str
    plan: Any  # video.FramePlan
    out: Any  # core.CompressedVideo
    ms: float
    chunk: int  # frames per streamed chunk (0: the whole video at once)
    shown: Any  # uint8 frames for --heatmap ([T, H, W, 3]; streamed: the ones the heatmap shows)


def check_compress_args(a: argparse.Namespace) -> None:
    """Every flag of ``compress`` checked before anything is loaded (one line, exit 2)."""
    if a.frames is not None and a.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {a.frames}")
    if a.fps is not None and not a.fps > 0:
        raise UsageError(f"--fps must be a positive number of frames per second, got {a.fps}")
    check_device(a.device)
    check_output_file("--heatmap", a.heatmap)
    if a.model:
        check_model_dir(a.model)
    resolve_spec(None, overrides_from_args(a))  # bad field values fail here, before any loading


def compress_video_path(a: argparse.Namespace) -> str:
    """--video, or the generated demo clip (written once, in --cache-dir)."""
    from .hosts.hf.tiny import default_cache
    from .video import make_video

    if a.video is not None:
        return a.video
    video = str(Path(a.cache_dir or default_cache()) / "demo_moving_shapes.mp4")
    if not Path(video).exists():
        make_video(video, frames=64)
    _note(f"no --video given: using the generated clip {video}")
    return video


def frame_plan(a: argparse.Namespace, video: str):
    """The frames to read (--frames uniformly, or --fps by time), and a note when the clip is short."""
    from .video import plan_frames, probe_video

    total, clip_fps, _ = probe_video(video)
    plan = plan_frames(total, clip_fps, a.frames, a.fps)
    if plan.short:
        asked = f"--frames {a.frames}" if a.fps is None else f"--fps {a.fps} ({plan.asked} frames)"
        _note(f"{video} has {total} frames, fewer than {asked}: all {len(plan.indices)} are used, none repeated "
              "(frames_asked and clip_frames in --json say so)")
    return plan


def stream_chunk(a: argparse.Namespace, cfg: CompressorConfig, frames: int) -> int:
    """Frames per streamed chunk: --chunk-frames (or the spec's), else STREAM_CHUNK for a VQToken clip
    longer than one chunk, so a long clip never sits in memory at once (--chunk-frames 0 forces it)."""
    from .hosts.hf.modeling import STREAM_CHUNK

    if cfg.chunk_frames or "chunk_frames" in overrides_from_args(a):
        return cfg.chunk_frames
    if cfg.name == "vqtoken" and frames > STREAM_CHUNK:
        _note(f"{frames} frames: streaming them {STREAM_CHUNK} at a time (--chunk-frames N to choose, 0: all at once)")
        return STREAM_CHUNK
    return 0


def _timed(fn, device: str) -> tuple[Any, float]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1000


def compress_in_memory(a: argparse.Namespace, loaded, video: str, plan) -> Compressed:
    """Decode the planned frames, encode them at once, compress (timed after a warm-up)."""
    import torch

    from .hosts.hf.features import preprocess_frames, project_video
    from .video import iter_frames

    frames = next(iter_frames(video, plan.indices, len(plan.indices)))
    compressor = loaded.model.model.video_compressor
    with torch.no_grad():
        feats = project_video(loaded.model, preprocess_frames(loaded.processor, frames).to(a.device))
        compressor(feats)  # warm-up so the timing shows steady state
        out, ms = _timed(lambda: compressor(feats)[0], a.device)
    return Compressed(video, plan, out, ms, 0, frames)


def compress_streaming(a: argparse.Namespace, loaded, video: str, plan, chunk: int) -> Compressed:
    """Decode, encode and project ``chunk`` frames at a time into the streaming fit (the hf host's
    ``compress_video_stream``), the features spilled to a temporary folder; the timing covers all of
    it. Keeps only the frames --heatmap shows."""
    from .hosts.hf.features import preprocess_frames
    from .video import iter_frames
    from .viz import heatmap_frames

    show = set(heatmap_frames(len(plan.indices)).tolist()) if a.heatmap else set()
    shown: list[Any] = []

    def pixel_chunks():
        at = 0
        for frames in iter_frames(video, plan.indices, chunk):
            shown.extend(f for i, f in enumerate(frames, start=at) if i in show)
            at += len(frames)
            yield preprocess_frames(loaded.processor, frames)

    model = loaded.model.model
    with tempfile.TemporaryDirectory(prefix="llava-vqtoken-features-") as spill:  # memory: one chunk, not the clip
        out, ms = _timed(
            lambda: model.compress_video_stream(pixel_chunks(), chunk_frames=chunk, spill_dir=spill), a.device
        )
    return Compressed(video, plan, out, ms, chunk, shown)


def compress_result(
    a: argparse.Namespace, c: Compressed, cfg: CompressorConfig, model_dir: str, grid: tuple[int, int]
) -> dict[str, Any]:
    """The --json object."""
    import torch

    from .hosts.hf.tiny import is_random

    out = c.out
    t, (h, w) = len(c.plan.indices), grid
    newline = int(cfg.newline)
    result: dict[str, Any] = {
        "video": c.video,
        "model": model_dir,
        "random_weights": is_random(model_dir),
        # an adaptive rule picks K per video: no fixed K is claimed (num_codes is the one used)
        "compressor": cfg.replace(chunk_frames=c.chunk, num_tokens=None if cfg.adaptive else cfg.num_tokens).to_dict(),
        "frames": int(t),
        "frames_asked": int(c.plan.asked),
        "fps": a.fps,
        "clip_frames": int(c.plan.total),
        "clip_fps": c.plan.clip_fps,
        "chunk_frames": c.chunk,
        "grid": [int(h), int(w)],
        "tokens_in": int(out.tokens_in),
        "tokens_out": out.num_tokens + newline,
        "newline": bool(newline),
        "num_codes": out.num_codes,
        "key_map_shape": list(out.key_map.shape) if out.key_map is not None else None,
        "key_map_sha256": (
            hashlib.sha256(out.key_map.to(torch.int32).cpu().numpy().tobytes()).hexdigest()
            if out.key_map is not None
            else None
        ),
        "ratio": (out.num_tokens + newline) / out.tokens_in,
        "compress_ms": round(c.ms, 3),
    }
    if "clamped" in out.stats:
        result["clamped"] = out.stats["clamped"]
    return result


def write_heatmap(a: argparse.Namespace, c: Compressed, cfg: CompressorConfig) -> None:
    import numpy as np

    from .viz import heatmap_frames, key_map_heatmap

    if c.out.key_map is None:
        raise UsageError(f"--heatmap needs a key map; compressor {cfg.name!r} has none (use vqtoken)")
    key_map = c.out.key_map.cpu().numpy()
    if c.chunk:  # only the frames the heatmap shows were kept
        key_map = key_map[heatmap_frames(key_map.shape[0])]
    title = f"{Path(c.video).name}: {c.out.num_codes} codes"
    key_map_heatmap(np.asarray(c.shown), key_map, a.heatmap, title=title)


def run_compress(a: argparse.Namespace) -> dict[str, Any]:
    from .hosts.hf.features import grid_size
    from .hosts.hf.load import load_model
    from .hosts.hf.tiny import build_tiny_llava_onevision, is_random

    check_compress_args(a)
    video = compress_video_path(a)
    plan = frame_plan(a, video)
    model_dir = a.model or str(build_tiny_llava_onevision(cache_dir=a.cache_dir))
    if is_random(model_dir):
        _note(f"model {model_dir} has RANDOM weights (tiny built-in default): token counts are real, outputs are not")
    loaded = load_model(model_dir, overrides_from_args(a), a.override_spec, note=_note)
    loaded.model.to(a.device).eval()
    cfg = loaded.decision.spec
    chunk = stream_chunk(a, cfg, len(plan.indices))
    c = compress_streaming(a, loaded, video, plan, chunk) if chunk else compress_in_memory(a, loaded, video, plan)
    result = compress_result(a, c, cfg, model_dir, grid_size(loaded.model.config))
    if a.heatmap:
        write_heatmap(a, c, cfg)
        result["heatmap"] = a.heatmap
    return result


def run_export(a: argparse.Namespace) -> str:
    from .hosts.hf.export import export_remote_code
    from .hosts.hf.load import load_model
    from .hosts.hf.tiny import RANDOM_MARKER, is_random

    check_model_dir(a.model)
    loaded = load_model(a.model, overrides_from_args(a), a.override_spec, note=_note)
    out = export_remote_code(loaded.model, loaded.processor, a.out)
    if is_random(a.model):  # a converted random model is still random: every later report must say so
        shutil.copy(Path(a.model) / RANDOM_MARKER, out / RANDOM_MARKER)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["motionqa"]:
        from .motionqa.bench import main as motionqa_main

        return motionqa_main(argv[1:])
    a = parser.parse_args(argv)
    from .core.compressor import CompressionError
    from .video import VideoError

    try:
        if a.command == "make-video":
            from .video import make_video

            if a.frames < 1:
                raise UsageError(f"--frames must be >= 1, got {a.frames}")
            print(make_video(a.out, frames=a.frames, seed=a.seed))
            return 0
        if a.command == "export-remote":
            print(run_export(a))
            return 0
        if a.command == "bench":
            from .benchmarks.bench import run as run_bench

            gpu = a.device.startswith("cuda")
            a.llms = a.llms or (["0.5b", "7b"] if gpu else ["tiny"])
            a.vision = a.vision or ("so400m" if gpu else "tiny")
            if not gpu and "e2e" in a.parts:
                _note("CPU run: the end-to-end part uses tiny models, its timings only show the code paths work; "
                      "GPU numbers need --device cuda")
            run_bench(a)
            return 0
        result = run_compress(a)
    except (UsageError, ConfigError, CheckpointError, CompressionError, VideoError) as e:
        print(f"llava-vqtoken: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if a.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k in ("video", "frames", "tokens_in", "tokens_out", "num_codes", "ratio", "compress_ms"):
            print(f"{k:>12}: {result[k]}")
        if result.get("heatmap"):
            print(f"{'heatmap':>12}: {result['heatmap']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
