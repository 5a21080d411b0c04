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

from .config import COMPRESSORS, CheckpointError, CompressorConfig, ConfigError

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """A command-line value is invalid."""


def add_compressor_args(p: argparse.ArgumentParser) -> None:
    """Flags named after :class:`CompressorConfig` fields (``num_tokens`` -> ``--num-tokens``)."""
    d = CompressorConfig()
    p.add_argument("--compressor", dest="name", default="vqtoken", choices=COMPRESSORS, help="method (config: name)")
    p.add_argument("--num-tokens", type=int, default=None,
                   help=f"token budget per video (K codes; default {d.num_tokens}; for pool: stock 2x pooling)")
    p.add_argument("--adaptive", choices=["elbow", "silhouette"], default=None, help="choose K per video")
    p.add_argument("--min-codes", type=int, default=d.min_codes)
    p.add_argument("--max-codes", type=int, default=d.max_codes)
    p.add_argument("--iters", type=int, default=d.iters)
    p.add_argument("--attention", choices=["paper", "none", "random", "released"], default=d.attention)
    p.add_argument("--hash", choices=["kmeans", "random"], default=d.hash)
    p.add_argument("--codebook", choices=["raw", "normalized"], default=d.codebook)
    p.add_argument("--seed", type=int, default=d.seed)


def config_from_args(a: argparse.Namespace) -> CompressorConfig:
    num_tokens = a.num_tokens
    if num_tokens is None and a.name != "pool" and a.adaptive is None:
        num_tokens = CompressorConfig().num_tokens  # pool without a budget is LLaVA-OneVision's stock pooling
    return CompressorConfig(
        name=a.name, num_tokens=num_tokens, adaptive=a.adaptive, min_codes=a.min_codes, max_codes=a.max_codes,
        iters=a.iters, attention=a.attention, hash=a.hash, codebook=a.codebook, seed=a.seed,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llava-vqtoken", description="VQToken video-token compression for LLaVA-OneVision")
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


def run_compress(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from .core import build_compressor
    from .hosts.hf.features import preprocess_frames, project_video
    from .hosts.hf.tiny import build_tiny_llava_onevision, default_cache, is_random
    from .video import load_video, make_video

    if a.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {a.frames}")
    cfg = config_from_args(a)
    video = a.video
    if video is None:
        video = str(default_cache() / "demo_moving_shapes.mp4")
        if not Path(video).exists():
            make_video(video, frames=64)
        _note(f"no --video given: using the generated clip {video}")
    frames = load_video(video, a.frames)

    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_dir = a.model or str(build_tiny_llava_onevision())
    if not Path(model_dir).is_dir():
        raise UsageError(f"--model must be a local model directory: {model_dir}")
    if is_random(model_dir):
        _note(f"model {model_dir} has RANDOM weights (tiny built-in default): token counts are real, outputs are not")
    processor = AutoProcessor.from_pretrained(model_dir)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(model_dir).to(a.device).eval()
    with torch.no_grad():
        pixels = preprocess_frames(processor, frames).to(a.device)
        feats = project_video(model, pixels)
    _, t, h, w, d = feats.shape
    compressor = build_compressor(cfg, d, grid=(h, w)).to(a.device).eval()
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
    import json

    from transformers import AutoProcessor

    from .hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor
    from .hosts.hf.export import export_remote_code

    cfg_file = Path(a.model) / "config.json"
    if not cfg_file.exists():
        raise UsageError(f"--model must be a local checkpoint directory with config.json: {a.model}")
    is_vq = json.loads(cfg_file.read_text()).get("model_type") == "vqtoken_llava_onevision"
    spec = None if is_vq else config_from_args(a).to_dict()
    model = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(a.model, video_compressor=spec)
    proc = AutoProcessor.from_pretrained(a.model)
    if not isinstance(proc, VQTokenLlavaOnevisionProcessor):
        proc = VQTokenLlavaOnevisionProcessor.from_stock(proc, model.config)
    return str(export_remote_code(model, proc, a.out))


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
