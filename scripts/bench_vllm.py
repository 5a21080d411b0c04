"""Serving benchmark through vLLM's OpenAI-compatible server: stock LLaVA-OneVision vs VQToken (fixed K),
side by side in one run, at several numbers of concurrent video requests (docs/BENCHMARKS.md, "vLLM").

    .venv-vllm/bin/python scripts/bench_vllm.py --out runs/bench-vllm [--text-hidden 512] [--frames 8]

Both checkpoints are the embedded default's geometry (384 px, 27 x 27 grid per frame) with random weights at
the given text width, made with the main environment (.venv): the stock one, and the same converted to
K tokens. Each request sends its own generated clip (no two alike, so no cache helps), streams the answer,
and records the time to its first token; a level sends `concurrency` requests at once, `--waves` times.
Prints one JSON object; --json-out writes it too.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN_PY = ROOT / ".venv" / "bin" / "python"
PROMPT = "what moves left"
STARTUP_S = 900


#: a deeper text model than the embedded default's 2 layers: the tiny builder's tokenizer and processor,
#: its config with the text depth, heads (64 wide) and MLP (Qwen2-0.5B's ratio) changed, new random weights
DEEPEN = """
import torch
from transformers import AutoConfig, LlavaOnevisionForConditionalGeneration
cfg = AutoConfig.from_pretrained({path!r})
cfg.text_config.num_hidden_layers = {layers}
cfg.text_config.layer_types = ["full_attention"] * {layers}
cfg.text_config.num_attention_heads = cfg.text_config.hidden_size // 64
cfg.text_config.intermediate_size = cfg.text_config.hidden_size * 5
torch.manual_seed(0)
LlavaOnevisionForConditionalGeneration(cfg).save_pretrained({path!r})
"""


def build(out: Path, text_hidden: int, text_layers: int, num_tokens: int, clips: int) -> tuple[Path, Path, list[Path]]:
    stock, vq = out / "stock", out / f"vq{num_tokens}"
    code = (
        "import sys\nfrom llava_vqtoken.hosts.hf.tiny import build_tiny_llava_onevision as b\n"
        "from llava_vqtoken.video import make_video\n"
        f"b({str(stock)!r}, text_hidden={text_hidden})\n"
        f"[make_video({str(out)!r} + f'/clip_{{i}}.mp4', frames=48, seed=i) for i in range({clips})]\n"
    )
    if text_layers != 2:
        code += DEEPEN.format(path=str(stock), layers=text_layers)
    subprocess.run([str(MAIN_PY), "-c", code], check=True, cwd=ROOT)
    subprocess.run([str(MAIN_PY), "-m", "llava_vqtoken.cli", "export-remote", "--model", str(stock), "--out",
                    str(vq), "--num-tokens", str(num_tokens)], check=True, cwd=ROOT)
    return hub_layout(stock, out / "stock-hub"), vq, [out / f"clip_{i}.mp4" for i in range(clips)]


def hub_layout(src: Path, dst: Path) -> Path:
    """A copy of a checkpoint saved by transformers 5 with the vision tower in the hub key layout
    (``vision_tower.vision_model.*``), the only one vLLM's stock LLaVA-OneVision loads (our plugin takes both)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    state = load_file(str(src / "model.safetensors"))
    saved = re.compile(r"^vision_tower\.(?!vision_model\.)")
    renamed = {saved.sub("vision_tower.vision_model.", k): v for k, v in state.items()}
    save_file(renamed, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: Path, port: int, frames: int, log: Path) -> subprocess.Popen:
    # `vllm serve` is the same server, but the CPU wheel's `vllm` command fails (README "vLLM plugin")
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--enforce-eager", "--max-model-len", "8192", "--limit-mm-per-prompt", '{"video": 1}',
            "--kv-cache-memory-bytes", str(2 << 30), "--media-io-kwargs", json.dumps({"video": {"num_frames": frames}}),
            "--no-enable-prefix-caching"]
    server = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return server
        except OSError:
            time.sleep(2)
    server.terminate()
    raise SystemExit(f"the server did not come up in {STARTUP_S} s; see {log}")


def one_request(port: int, model: Path, clip: Path, max_tokens: int) -> dict:
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    body = {"model": str(model), "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                      {"type": "text", "text": PROMPT}]}]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    start = time.perf_counter()
    first, usage = None, None
    with urllib.request.urlopen(req, timeout=3600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            # vLLM sends its first chunk (the role) once the first token exists: that is the TTFT
            if first is None and chunk.get("choices"):
                first = time.perf_counter() - start
            usage = chunk.get("usage") or usage
    return {"ttft_s": first, "total_s": time.perf_counter() - start, "prompt_tokens": usage["prompt_tokens"]}


def level(port: int, model: Path, clips: list[Path], concurrency: int, waves: int, max_tokens: int) -> dict:
    rows, wall = [], 0.0
    for w in range(waves):
        batch = [clips[(w * concurrency + i) % len(clips)] for i in range(concurrency)]
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            rows += list(pool.map(lambda c: one_request(port, model, c, max_tokens), batch))
        wall += time.perf_counter() - start
    ttft = [r["ttft_s"] for r in rows]
    return {"concurrency": concurrency, "requests": len(rows), "req_per_s": len(rows) / wall,
            "ttft_median_s": statistics.median(ttft), "ttft_max_s": max(ttft),
            "prompt_tokens": sorted({r["prompt_tokens"] for r in rows})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-vllm")
    p.add_argument("--text-hidden", type=int, default=512)
    p.add_argument("--text-layers", type=int, default=2, help="2: the embedded default's depth")
    p.add_argument("--num-tokens", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--waves", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--json-out")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in a.concurrency.split(",")]
    clips_needed = max(levels) * a.waves + 1
    stock, vq, clips = build(out, a.text_hidden, a.text_layers, a.num_tokens, clips_needed)
    result = {"text_hidden": a.text_hidden, "text_layers": a.text_layers, "frames": a.frames,
              "num_tokens": a.num_tokens, "max_tokens": a.max_tokens, "waves": a.waves, "models": {}}
    for name, model in (("stock", stock), (f"vqtoken_k{a.num_tokens}", vq)):
        port = free_port()
        server = serve(model, port, a.frames, out / f"serve-{name}.log")
        try:
            one_request(port, model, clips[-1], 2)  # warm-up, not counted
            result["models"][name] = [level(port, model, clips, c, a.waves, a.max_tokens) for c in levels]
        finally:
            server.terminate()
            server.wait(timeout=120)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json_out:
        Path(a.json_out).write_text(text)


if __name__ == "__main__":
    main()
