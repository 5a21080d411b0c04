"""Long videos at a constant token budget (issue 18): streamed VQToken vs stock, at real sizes.

A random-weight VQToken LLaVA-OneVision (SigLIP-so400m/14 at 384 px + Qwen2-0.5B widths, bf16,
sdpa) on CUDA. For each frame count: the streamed path of the transformers host
(``compress_video_stream``: vision tower + projector ``chunk`` frames at a time, features kept on the
CPU, the streaming fit) -> time, time per frame, peak GPU memory, then TTFT (stream + prefill of the
K + 1 video tokens and 64 text tokens); stock LLaVA-OneVision (all frames through the tower at once,
2x pooling, prefill) while its tokens fit the context and its memory the GPU; and the in-memory
VQToken (all frames at once) while it fits. Pixels are random, drawn on the GPU chunk by chunk.

``python -m llava_vqtoken.benchmarks.streaming --frames 32 128 512 1024 2048 3600 --out stream.json``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..config import CompressorConfig
from ..core.baselines import pool_tokens
from ..core.graphs import CodeCache
from ..shapes import GRID
from .bench import QWEN, SIGLIP

TEXT_TOKENS = 64
#: stock LLaVA-OneVision tokens per frame after its 2x pooling (27 x 27 -> 14 x 14)
STOCK_PER_FRAME = math.ceil(GRID / 2) ** 2


def build_model(num_tokens: int, chunk: int, device: torch.device, preset: str = "0.5b"):
    from transformers import Qwen2Config, SiglipVisionConfig

    from ..hosts.hf.modeling import VQTokenLlavaOnevisionConfig, VQTokenLlavaOnevisionForConditionalGeneration

    cfg = VQTokenLlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(vision_use_head=False, **SIGLIP["so400m" if preset == "0.5b" else "tiny"]),
        text_config=Qwen2Config(max_position_embeddings=32768, **QWEN[preset]),
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_token_id=QWEN[preset]["vocab_size"] - 2, video_token_id=QWEN[preset]["vocab_size"] - 1,
        video_compressor=CompressorConfig(num_tokens=num_tokens, chunk_frames=chunk).to_dict(),
    )
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:  # built on the CPU: the compressor seeds its parameters from CPU generators
        model = VQTokenLlavaOnevisionForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.to(device).eval()


def pixel_chunks(frames: int, chunk: int, size: int, device: torch.device) -> Iterator[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    for s in range(0, frames, chunk):
        n = min(chunk, frames - s)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        yield torch.randn(1, n, 3, size, size, device=device, dtype=dtype, generator=g)


def measured(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """(result, seconds, peak GPU GiB allocated, weights included; 0 on the CPU)."""
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    if gpu:
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) / 2**30 if gpu else 0.0


def prefill(model, video_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    lm = model.model.language_model
    emb = torch.cat([video_tokens[None], lm.embed_tokens(text)], dim=1)
    out = lm(inputs_embeds=emb, use_cache=True)
    return model.lm_head(out.last_hidden_state[:, -1])


@torch.no_grad()
def run_frames(model, frames: int, chunk: int, text: torch.Tensor, device: torch.device, max_ctx: int,
               in_memory_up_to: int) -> dict[str, Any]:
    size = model.config.vision_config.image_size
    inner = model.model
    newline = inner.image_newline[None]
    row: dict[str, Any] = {"frames": frames, "chunk": chunk}

    def streamed():
        v = inner.compress_video_stream(pixel_chunks(frames, chunk, size, device))
        return prefill(model, torch.cat([v.tokens, newline.to(v.tokens.dtype)]), text), v

    (_, v), sec, peak = measured(streamed, device)
    row.update(stream_ttft_s=sec, ms_per_frame=1000 * sec / frames, stream_peak_gib=peak, num_codes=v.num_codes,
               inertia_per_token=float(v.stats["inertia"]) / v.tokens_in, key_map_frames=int(v.key_map.shape[0]))
    stock_tokens = frames * STOCK_PER_FRAME + 1
    row["stock_tokens"] = stock_tokens
    if stock_tokens + text.shape[1] > max_ctx:
        row["stock"] = f"not run: {stock_tokens:,} video tokens exceed the {max_ctx:,}-token context"
    else:
        def stock():
            pixels = torch.cat(list(pixel_chunks(frames, frames, size, device)))
            feats = inner._grid_features(pixels)[1][0]
            return prefill(model, torch.cat([pool_tokens(feats, None), newline]), text)

        try:
            _, sec, peak = measured(stock, device)
            row.update(stock_ttft_s=sec, stock_peak_gib=peak)
        except torch.OutOfMemoryError as e:
            row["stock"] = f"out of memory: {str(e).splitlines()[0][:160]}"
            torch.cuda.empty_cache()
    if frames <= in_memory_up_to:
        def in_memory():
            pixels = torch.cat(list(pixel_chunks(frames, frames, size, device)))
            feats = inner._grid_features(pixels)[1]
            return inner.video_compressor(feats)[0]

        try:
            ref, sec, peak = measured(in_memory, device)
            row.update(in_memory_s=sec, in_memory_peak_gib=peak,
                       in_memory_inertia_per_token=float(ref.stats["inertia"]) / ref.tokens_in)
        except torch.OutOfMemoryError as e:
            row["in_memory"] = f"out of memory: {str(e).splitlines()[0][:160]}"
        finally:
            forget_graphs(inner.video_compressor, device)
    return row


def forget_graphs(compressor: Any, device: torch.device) -> None:
    """Drop the CUDA graphs the in-memory run captured for this clip's shape: the compressor's cache
    keeps each graph's static inputs and memory pool (about twice the clip's features), which would
    otherwise count in the peak of every later streamed run (the 2026-12-03 morning run measured 2.19x
    at 2,048 frames that way, with the graphs of the in-memory runs at 32 to 1,024 frames still held)."""
    compressor.code_cache = CodeCache()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[32, 128, 512, 1024, 2048, 3600])
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--num-tokens", type=int, default=64)
    p.add_argument("--in-memory-up-to", type=int, default=1024)
    p.add_argument("--budget-s", type=float, default=300.0, help="skip the larger frame counts past this time")
    p.add_argument("--warmup-frames", type=int, default=32)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="0.5b", choices=["0.5b", "tiny"], help="tiny: a CPU check of the code path")
    p.add_argument("--out")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    start = time.perf_counter()
    model = build_model(a.num_tokens, a.chunk, device, a.preset)
    text = torch.randint(0, min(1000, QWEN[a.preset]["vocab_size"] - 2), (1, TEXT_TOKENS), device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {"device": name, "date": time.strftime("%Y-%m-%d"),
                              "torch": torch.__version__, "num_tokens": a.num_tokens, "chunk": a.chunk, "rows": []}
    run_frames(model, a.warmup_frames, a.chunk, text, device, 32768, 0)  # warm-up
    for f in a.frames:
        if time.perf_counter() - start > a.budget_s:
            row: dict[str, Any] = {"frames": f, "skipped": f"past --budget-s {a.budget_s:g}"}
        else:
            row = run_frames(model, f, a.chunk, text, device, model.config.text_config.max_position_embeddings,
                             a.in_memory_up_to)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "w") as fh:
                json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
