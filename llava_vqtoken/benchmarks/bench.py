"""``llava-vqtoken bench``: compressor speed and end-to-end latency, side by side in one process.

Part 1 (compressor): post-projector-like features for T frames of an H x W grid at width D, with
cluster structure; our fixed-K and adaptive fits (CUDA-graph replay and eager), batched over 8
videos, the full VQToken module, and a sync-heavy reference k-means run in the same process.
Part 2 (end to end): a random-weight transformers LLaVA-OneVision at real sizes (SigLIP-so400m/14
at 384 px; Qwen2-0.5B and Qwen2-7B widths): vision tower, compressor, time to first token for stock
pooling vs VQToken vs an ideal zero-cost compressor handing the LLM the same number of tokens,
decode tokens/s, peak memory, KV-cache size, and videos/s at several batch sizes.
Timings: CUDA events (or perf_counter on CPU), warm-up first, median of repeats.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from ..config import CompressorConfig
from ..core import build_compressor, cosine_kmeans
from ..core.adaptive import adaptive_kmeans
from ..core.baselines import pool_tokens
from ..core.graphs import CodeCache
from ..shapes import QWEN2 as QWEN  # LLM and vision-tower shapes by name: the one table
from ..shapes import SIGLIP
from .reference import reference_adaptive, reference_kmeans


def timeit(fn: Callable[[], Any], device: torch.device, reps: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` (synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def structured_features(
    b: int, t: int, h: int, w: int, d: int, clusters: int, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> torch.Tensor:
    """Features with real cluster structure: regions of the grid that drift over time share a centre."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    centres = torch.randn(b, clusters, d, generator=g) * 2.0
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    ts = torch.arange(t)[:, None, None]
    out = []
    for i in range(b):
        phase = torch.rand(3, generator=g) * 6.28
        region = ((ys * 3 + xs * 5 + ts * (1 + i % 3) + (phase[0] * 10).long()) // max(1, (h * w) // (4 * clusters)))
        labels = (region + (ys // max(1, h // 4)) * 7) % clusters
        feat = centres[i][labels.reshape(-1)] + 0.5 * torch.randn(t * h * w, d, generator=g)
        out.append(feat.reshape(t, h, w, d))
    return torch.stack(out).to(device=device, dtype=dtype)


def bench_compressor(
    device: torch.device, frames: int, grid: int, width: int, reps: int, reference: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = frames * grid * grid
    x1 = structured_features(1, frames, grid, grid, width, 48, device, dtype)
    x8 = structured_features(8, frames, grid, grid, width, 48, device, dtype, seed=1)
    r: dict[str, Any] = {"frames": frames, "grid": grid, "width": width, "tokens": n, "dtype": str(dtype)}
    cache = CodeCache()  # the captured graphs and compiled steps of the function rows (a module owns its own)
    flat1 = x1.reshape(1, n, width)
    t0 = time.perf_counter()
    cosine_kmeans(flat1, 32, compiled=True, cache=cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    r["first_compiled_call_s"] = time.perf_counter() - t0
    log(f"first call with torch.compile (compile + graph capture): {r['first_compiled_call_s']:.1f} s")
    rows = _compressor_rows(x1, x8, cache, reference, device, dtype)
    with torch.no_grad():
        r["timings"] = _time_rows(rows, device, reps, log)
        r.update(_fit_quality(flat1, log))
    return r


def _compressor_rows(x1: torch.Tensor, x8: torch.Tensor, cache: CodeCache, reference: bool, device: torch.device,
                     dtype: torch.dtype) -> list[tuple[str, Callable[[], Any], int]]:
    """(name, call, videos per call) of every timed row: the clustering functions, the modules, the
    same-budget baselines and, with ``reference``, the sync-heavy reference fits."""
    width = x1.shape[-1]
    flat1, flat8 = x1.reshape(1, -1, width), x8.reshape(8, -1, width)

    def vq_module(**kw: Any):
        return build_compressor(CompressorConfig(**kw), width).to(device=device, dtype=dtype).eval()

    vq, vq_c = vq_module(num_tokens=32), vq_module(num_tokens=32, compile=True)
    ada = dict(num_tokens=None, adaptive="elbow", min_codes=8, max_codes=64)
    vqa, vqa_c = vq_module(**ada), vq_module(**ada, compile=True)
    rows: list[tuple[str, Callable[[], Any], int]] = [
        ("kmeans K=32 (10 it, graph)", lambda: cosine_kmeans(flat1, 32, cache=cache), 1),
        ("kmeans K=32 (10 it, eager)", lambda: cosine_kmeans(flat1, 32, cuda_graphs=False), 1),
        ("kmeans K=32 (20 it, graph)", lambda: cosine_kmeans(flat1, 32, iters=20, cache=cache), 1),
        ("kmeans K=32 (10 it, graph + compile)", lambda: cosine_kmeans(flat1, 32, compiled=True, cache=cache), 1),
        ("adaptive elbow 8..64", lambda: adaptive_kmeans(flat1, 8, 64, "elbow", cache=cache), 1),
        ("adaptive elbow 8..64 (compile)",
         lambda: adaptive_kmeans(flat1, 8, 64, "elbow", compiled=True, cache=cache), 1),
        ("adaptive silhouette 8..64", lambda: adaptive_kmeans(flat1, 8, 64, "silhouette", cache=cache), 1),
        ("kmeans K=32, batch 8", lambda: cosine_kmeans(flat8, 32, cache=cache), 8),
        ("kmeans K=32, batch 8 (compile)", lambda: cosine_kmeans(flat8, 32, compiled=True, cache=cache), 8),
        ("adaptive elbow 8..64, batch 8", lambda: adaptive_kmeans(flat8, 8, 64, "elbow", cache=cache), 8),
        ("VQToken module K=32 (+attention)", lambda: vq(x1), 1),
        ("VQToken module K=32 (+attention, compile)", lambda: vq_c(x1), 1),
        ("VQToken module adaptive 8..64", lambda: vqa(x1), 1),
        ("VQToken module adaptive 8..64 (compile)", lambda: vqa_c(x1), 1),
        ("VQToken module K=32, batch 8 (compile)", lambda: vq_c(x8), 8),
    ]
    # the same-budget baselines of the motion-QA benchmark, as the modules a host builds (32 tokens per video)
    for name in ("pool", "prune", "tome", "temporal_merge"):
        base = vq_module(name=name, num_tokens=32)
        rows += [(f"baseline {name} 32 tokens", lambda m=base: m(x1), 1),
                 (f"baseline {name} 32 tokens, batch 8", lambda m=base: m(x8), 8)]
    if reference:
        rows += [
            ("reference fixed K=32 (sync per step)", lambda: reference_kmeans(flat1[0], 32), 1),
            ("reference adaptive 12..32 (21 fits)", lambda: reference_adaptive(flat1[0], 12, 32), 1),
        ]
    return rows


def _time_rows(rows: list[tuple[str, Callable[[], Any], int]], device: torch.device, reps: int,
               log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """ms per call and per video of every row; a row that fails (e.g. torch.compile unavailable) is
    reported and skipped."""
    timings = {}
    for name, fn, per in tqdm(rows, desc="compressor", disable=None):
        try:
            ms = timeit(fn, device, reps=reps if "reference adaptive" not in name else max(2, reps // 4))
        except Exception as e:
            log(f"{name:<46} failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
            continue
        timings[name] = {"ms": ms, "ms_per_video": ms / per}
        log(f"{name:<46} {ms:9.3f} ms  ({ms / per:8.3f} ms/video)")
    return timings


def _fit_quality(flat1: torch.Tensor, log: Callable[[str], None]) -> dict[str, Any]:
    """Our 20/10/5-iteration fits against 20 Lloyd iterations from (sync-heavy) k-means++ seeding, 3
    seeds each, and the elbow's K on the same video."""
    ref = [reference_kmeans(flat1[0], 32, iters=20, seed=s)[2] for s in range(3)]
    ours = [float(cosine_kmeans(flat1, 32, iters=20, seed=s).inertia[0]) for s in range(3)]
    ours10 = [float(cosine_kmeans(flat1, 32, iters=10, seed=s).inertia[0]) for s in range(3)]
    ours5 = [float(cosine_kmeans(flat1, 32, iters=5, seed=s).inertia[0]) for s in range(3)]
    log(f"inertia K=32 (3 seeds, mean): ours 20 it {statistics.mean(ours):.1f}, 10 it "
        f"{statistics.mean(ours10):.1f}, 5 it {statistics.mean(ours5):.1f}; "
        f"reference 20 Lloyd it from k-means++ {statistics.mean(ref):.1f}")
    return {"inertia_k32": {"ours_20": ours, "ours_10": ours10, "ours_5": ours5, "reference_20": ref},
            "adaptive_elbow_k": adaptive_kmeans(flat1, 8, 64, "elbow")[1][0].k}


# ---------------------------------------------------------------------------------------------- end to end

def build_random_model(llm: str, vision: str, device: torch.device, dtype: torch.dtype, attn: str):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(vision_use_head=False, **SIGLIP[vision]),
        text_config=Qwen2Config(max_position_embeddings=32768, **QWEN[llm]),
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_token_id=QWEN[llm]["vocab_size"] - 2, video_token_id=QWEN[llm]["vocab_size"] - 1,
    )
    cfg._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaOnevisionForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def bench_end_to_end(
    llm: str, vision: str, device: torch.device, frames: int, batches: list[int], reps: int, attn: str,
    log: Callable[[str], None], compile_steps: bool = False,
) -> dict[str, Any]:

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_random_model(llm, vision, device, dtype, attn)
    d = model.config.text_config.hidden_size
    text_len = 64
    vq = build_compressor(CompressorConfig(num_tokens=32, compile=compile_steps), d).to(device=device, dtype=dtype)
    vq.eval()
    out: dict[str, Any] = {"llm": llm, "vision": vision, "frames": frames, "attn": attn, "batches": {}}
    text = torch.randint(0, min(1000, QWEN[llm]["vocab_size"] - 2), (max(batches), text_len), device=device)

    for b in batches:
        res = _bench_batch(model, vq, b, frames, text[:b], reps, device, dtype)
        out["batches"][b] = res
        log(
            f"{llm:>4} b={b}: vision {res['vision_ms']:.1f} ms, compressor {res['compressor_ms']:.2f} ms, "
            f"TTFT stock {res['ttft_stock_ms']:.1f} / vq {res['ttft_vqtoken_ms']:.1f} "
            f"(sync check {res['ttft_vqtoken_synced_check_ms']:.1f}) / "
            f"floor {res['ttft_floor_ms']:.1f} ms, videos/s {res['videos_per_s_stock']:.2f} -> "
            f"{res['videos_per_s_vqtoken']:.2f}, "
            f"KV {res['kv_cache_mb_stock']:.1f} -> {res['kv_cache_mb_vqtoken']:.2f} MB"
        )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def run(args) -> dict[str, Any]:
    device = torch.device(args.device)
    log = print
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    report["date"] = time.strftime("%Y-%m-%d")
    report["torch"] = torch.__version__
    if "compressor" in args.parts:
        report["compressor"] = bench_compressor(
            device, args.frames, args.grid, args.width, args.reps, not args.no_reference, log
        )
    if "e2e" in args.parts:
        report["e2e"] = [
            bench_end_to_end(
                llm, args.vision, device, args.frames, args.batches, args.reps, args.attn, log, args.compile
            )
            for llm in args.llms
        ]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return report


@torch.no_grad()
def _bench_batch(model, vq, b: int, frames: int, text: torch.Tensor, reps: int, device, dtype) -> dict[str, Any]:
    """One batch size: vision, compressor, TTFT (stock / VQToken / zero-cost floor), decode, KV cache."""
    import copy

    from ..hosts.hf.features import project_video

    lm, head = model.model.language_model, model.lm_head
    vc = model.config.vision_config
    d = model.config.text_config.hidden_size
    newline = model.model.image_newline.to(dtype)
    pixels = torch.randn(b, frames, 3, vc.image_size, vc.image_size, device=device, dtype=dtype)
    feats = project_video(model, pixels)
    _, t, h, w, _ = feats.shape
    cached = torch.stack([v.tokens for v in vq(feats)])

    def with_newline(tok: torch.Tensor) -> torch.Tensor:
        return torch.cat([tok, newline.expand(tok.shape[0], 1, d)], dim=1)

    def stock_tokens(f: torch.Tensor) -> torch.Tensor:
        return with_newline(torch.stack([pool_tokens(f[i], None) for i in range(f.shape[0])]))

    def vq_tokens(f: torch.Tensor, defer: bool = True) -> torch.Tensor:
        return with_newline(torch.stack([v.tokens for v in vq(f, defer_checks=defer)]))

    def prefill(video_tokens: torch.Tensor):
        emb = torch.cat([video_tokens, lm.embed_tokens(text)], dim=1)
        o = lm(inputs_embeds=emb, use_cache=True)
        return head(o.last_hidden_state[:, -1]), o.past_key_values

    res: dict[str, Any] = {}
    res["vision_ms"] = timeit(lambda: project_video(model, pixels), device, reps)
    res["compressor_ms"] = timeit(lambda: vq(feats), device, reps)
    res["pool_ms"] = timeit(lambda: stock_tokens(feats), device, reps)
    res["ttft_stock_ms"] = timeit(lambda: prefill(stock_tokens(project_video(model, pixels))), device, reps)
    res["ttft_vqtoken_ms"] = timeit(lambda: prefill(vq_tokens(project_video(model, pixels))), device, reps)
    res["ttft_vqtoken_synced_check_ms"] = timeit(
        lambda: prefill(vq_tokens(project_video(model, pixels), defer=False)), device, reps
    )
    res["ttft_floor_ms"] = timeit(lambda: (project_video(model, pixels), prefill(with_newline(cached))), device, reps)
    res["video_tokens_stock"] = t * ((h + 1) // 2) * ((w + 1) // 2) + 1
    res["video_tokens_vqtoken"] = cached.shape[1] + 1
    for name, toks in (("stock", stock_tokens(feats)), ("vqtoken", vq_tokens(feats))):
        _, cache = prefill(toks)
        kv = sum(x.numel() * x.element_size() for layer in cache.layers for x in (layer.keys, layer.values))
        res[f"kv_cache_mb_{name}"] = kv / 2**20
        nxt = torch.zeros(b, 1, dtype=torch.long, device=device)

        def decode(cache=cache, nxt=nxt):
            c = copy.deepcopy(cache)
            for _ in range(16):
                lm(inputs_embeds=lm.embed_tokens(nxt), past_key_values=c, use_cache=True)

        ms = timeit(decode, device, max(2, reps // 3), warmup=1)
        res[f"decode_tok_s_{name}"] = 16 * b / (ms / 1000)
    res["videos_per_s_stock"] = b / (res["ttft_stock_ms"] / 1000)
    res["videos_per_s_vqtoken"] = b / (res["ttft_vqtoken_ms"] / 1000)
    if device.type == "cuda":
        res["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return res
