"""Command line: ``llava-vqtoken compress|make-video ...``.

Bad input exits with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from .config import CheckpointError, CompressorConfig, ConfigError
from .config_flags import EXIT_BAD_INPUT, OneLineParser, add_compressor_args, model_dir_problem, overrides_from_args
from .spec_rule import resolve_spec


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
    c.add_argument("--frames", type=int, default=32)
    add_compressor_args(c)
    c.add_argument("--device", default="cpu")
    c.add_argument("--heatmap", help="write a PNG of sampled frames over their key-map colours")
    c.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
    b = sub.add_parser("bench", help="time the compressor and the end-to-end pipeline (GPU numbers need CUDA)")
    b.add_argument("--device", default="cuda" if _cuda() else "cpu")
    b.add_argument("--parts", nargs="+", default=["compressor", "e2e"], choices=["compressor", "e2e"])
    b.add_argument("--frames", type=int, default=32)
    b.add_argument("--grid", type=int, default=27)
    b.add_argument("--width", type=int, default=896)
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


def run_compress(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .hosts.hf.features import preprocess_frames, project_video
    from .hosts.hf.load import load_model
    from .hosts.hf.tiny import build_tiny_llava_onevision, default_cache, is_random
    from .video import load_video_counted, make_video

    if a.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {a.frames}")
    check_device(a.device)
    check_output_file("--heatmap", a.heatmap)
    if a.model:
        check_model_dir(a.model)
    resolve_spec(None, overrides_from_args(a))  # bad field values fail here, before any loading
    video = a.video
    if video is None:
        video = str(default_cache() / "demo_moving_shapes.mp4")
        if not Path(video).exists():
            make_video(video, frames=64)
        _note(f"no --video given: using the generated clip {video}")
    frames, clip_frames = load_video_counted(video, a.frames)
    if clip_frames < a.frames:
        _note(f"{video} has {clip_frames} frames, fewer than --frames {a.frames}: frames are repeated to fill "
              f"{a.frames} (clip_frames in --json says so)")

    model_dir = a.model or str(build_tiny_llava_onevision())
    if is_random(model_dir):
        _note(f"model {model_dir} has RANDOM weights (tiny built-in default): token counts are real, outputs are not")
    loaded = load_model(model_dir, overrides_from_args(a), a.override_spec, note=_note)
    model, cfg = loaded.model.to(a.device).eval(), loaded.decision.spec
    compressor = model.model.video_compressor
    with torch.no_grad():
        pixels = preprocess_frames(loaded.processor, frames).to(a.device)
        feats = project_video(model, pixels)
    _, t, h, w, d = feats.shape
    with torch.no_grad():
        compressor(feats)  # warm-up so the timing shows steady state
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = compressor(feats)[0]
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1000
    newline = int(cfg.newline)
    result: dict[str, Any] = {
        "video": str(video),
        "model": model_dir,
        "random_weights": is_random(model_dir),
        "compressor": cfg.to_dict(),
        "frames": int(t),
        "clip_frames": int(clip_frames),
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
        "compress_ms": round(ms, 3),
    }
    if "clamped" in out.stats:
        result["clamped"] = out.stats["clamped"]
    if a.heatmap:
        if out.key_map is None:
            raise UsageError(f"--heatmap needs a key map; compressor {cfg.name!r} has none (use vqtoken)")
        from .viz import key_map_heatmap

        title = f"{Path(video).name}: {out.num_codes} codes"
        key_map_heatmap(frames, out.key_map.cpu().numpy(), a.heatmap, title=title)
        result["heatmap"] = a.heatmap
    return result


def run_export(a: argparse.Namespace) -> str:
    from .hosts.hf.export import export_remote_code
    from .hosts.hf.load import load_model

    check_model_dir(a.model)
    loaded = load_model(a.model, overrides_from_args(a), a.override_spec, note=_note)
    return str(export_remote_code(loaded.model, loaded.processor, a.out))


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
