"""Run lmms-eval (its real CLI) over one model, some tasks and a sweep of compressor settings, then
write the report. What ``eval.sh`` runs.

Compressor settings are ``NAME[:key=value,...]`` with the core's field names, e.g.
``vqtoken:num_tokens=32``, ``vqtoken:adaptive=elbow,min_codes=8,max_codes=64``, ``tome:num_tokens=32``,
``none``. With no tasks given, a small local video task is generated and everything runs offline.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from .report import main as report_main
from .tasks import TASK, make_motion_task

DEFAULT_SWEEP = [
    "vqtoken:num_tokens=32",
    "vqtoken:adaptive=elbow,min_codes=8,max_codes=64",
    "pool:num_tokens=32",
    "prune:num_tokens=32",
    "tome:num_tokens=32",
    "temporal_merge:num_tokens=32",
    "random:num_tokens=32",
    "none",
]


def label_of(setting: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", setting.replace(":", "-").replace(",", "-"))


def model_args(setting: str, model: str | None, frames: int, stats: Path, extra: str) -> str:
    name, _, rest = setting.partition(":")
    parts = [f"compressor={name}"] + ([rest] if rest else [])
    if model:
        parts.insert(0, f"pretrained={model}")
    parts += [f"frames={frames}", f"stats_file={stats}"]
    if extra:
        parts.append(extra)
    return ",".join(parts)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eval.sh", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint dir (default: the tiny random model)")
    p.add_argument("--host", default="hf", choices=["hf", "llava-next"],
                   help="transformers (vqtoken_hf) or LLaVA-NeXT (vqtoken_llava_next; needs llava and --model)")
    p.add_argument("--tasks", help="lmms-eval tasks, comma-separated (default: a generated local task)")
    p.add_argument("--compressors", nargs="+", default=None, help="settings to sweep (see module doc)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--limit", type=float, default=None)
    p.add_argument("--gpus", type=int, default=1, help="processes through accelerate launch")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--include-path", default=None, help="extra lmms-eval task directory")
    p.add_argument("--model-args", default="", help="extra model_args passed through (k=v,...)")
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--samples", type=int, default=8, help="size of the generated task")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import torch

    if a.host == "llava-next" and not a.model:
        print("eval.sh: error: --host llava-next needs --model (a llava_qwen checkpoint directory)", file=sys.stderr)
        return 2

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    include = a.include_path
    tasks = a.tasks
    if not tasks:
        include = str(make_motion_task(out / "task", n=a.samples))
        tasks = TASK
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        print(f"eval.sh: no --tasks: generated the offline task {TASK} in {include}", file=sys.stderr)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sweep = a.compressors or DEFAULT_SWEEP
    labels = []
    for setting in sweep:
        label = label_of(setting)
        run_dir = out / label
        run_dir.mkdir(parents=True, exist_ok=True)
        stats = run_dir / "stats.jsonl"
        stats.unlink(missing_ok=True)
        for old in run_dir.rglob("*results*.json"):
            old.unlink()
        launcher = [sys.executable, "-m"] if a.gpus <= 1 else [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(a.gpus), "-m"]
        cmd = launcher + [
            "lmms_eval", "--model", "vqtoken_hf" if a.host == "hf" else "vqtoken_llava_next",
            "--model_args", model_args(setting, a.model, a.frames, stats, a.model_args),
            "--tasks", tasks, "--batch_size", str(a.batch_size), "--output_path", str(run_dir),
            "--device", device, "--verbosity", "WARNING",
        ]
        if include:
            cmd += ["--include_path", include]
        if a.limit is not None:
            cmd += ["--limit", str(a.limit)]
        print(f"eval.sh: [{label}] {' '.join(cmd)}", file=sys.stderr)
        with open(run_dir / "lmms_eval.log", "w") as log:
            rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            print(f"eval.sh: [{label}] lmms-eval exited with {rc}; see {run_dir / 'lmms_eval.log'}", file=sys.stderr)
        labels.append(label)
    # lmms-eval can exit 0 after a failed evaluation: the report checks that every run produced results
    return report_main([str(out), "--runs", *labels])


if __name__ == "__main__":
    sys.exit(main())
