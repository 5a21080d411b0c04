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
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..config import ConfigError, repeated_keys
from ..config_flags import OneLineParser, model_dir_problem
from .report import last_error_line
from .report import main as report_main
from .tasks import TASK, make_motion_task

#: runs one lmms-eval command with its output going to the log; returns the exit status
Launcher = Callable[[list[str], dict[str, str], IO[str]], int]


def launch_subprocess(cmd: list[str], env: dict[str, str], log: IO[str]) -> int:
    return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


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
    p = OneLineParser(prog="eval.sh", description=__doc__.splitlines()[0])
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


class UsageError(ValueError):
    """A flag or setting eval.sh refuses before launching anything."""


def parse_model_args(text: str, what: str) -> dict[str, object]:
    """model_args as lmms-eval's CLI parses them (its own parser), or UsageError naming ``what``."""
    from lmms_eval.utils import simple_parse_args_string

    try:
        return simple_parse_args_string(text)
    except ValueError:
        bad = next((kv for kv in text.split(",") if "=" not in kv), text)
        raise UsageError(f"{what}: {bad!r} is not key=value") from None


def check_model_path(model: str | None) -> None:
    """A local --model (a folder that exists, or a path: absolute, ./, ../) must hold config.json;
    anything else is left to the host as a hub id."""
    if model is None:
        return
    local = Path(model).exists() or model.startswith(("/", "./", "../", "~"))
    why = model_dir_problem(model) if local else None
    if why:
        raise UsageError(why)


def check_device(device: str | None) -> None:
    """``cuda`` without a GPU is refused (the model would quietly run on the CPU)."""
    import torch

    if device is None or device == "cpu":
        return
    if not device.startswith("cuda"):
        raise UsageError(f"--device {device!r} must be cpu or cuda")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available here")


def check_settings(a: argparse.Namespace, sweep: list[str]) -> None:
    """Every flag and every --compressors setting as the plugin will read it; UsageError on the first bad one."""
    from ..hosts.lmms_eval.plugin import check_model_args

    for flag, value in (("--frames", a.frames), ("--batch-size", a.batch_size), ("--gpus", a.gpus),
                        ("--samples", a.samples)):
        if value < 1:
            raise UsageError(f"{flag} {value} must be >= 1")
    if a.limit is not None and a.limit <= 0:
        raise UsageError(f"--limit {a.limit:g} must be > 0")
    check_device(a.device)
    check_model_path(a.model)
    host = "hf" if a.host == "hf" else "llava-next"
    try:
        check_model_args(host, parse_model_args(a.model_args, "--model-args"))
    except ConfigError as e:
        raise UsageError(f"--model-args {a.model_args!r}: {e}") from None
    seen: dict[str, str] = {}
    for setting in sweep:
        label = label_of(setting)
        if label in seen:
            raise UsageError(f"--compressors {setting!r} is given twice (as {seen[label]!r}: same run folder {label})")
        seen[label] = setting
        what = f"bad --compressors setting {setting!r}"
        try:
            twice = repeated_keys(setting)
            if twice:
                raise ConfigError(f"{', '.join(twice)} given twice")
            args = parse_model_args(model_args(setting, a.model, a.frames, Path("stats.jsonl"), a.model_args), what)
            check_model_args(host, args)
        except ConfigError as e:
            raise UsageError(f"{what}: {e}") from None


def lmms_eval_command(a: argparse.Namespace, setting: str, run_dir: Path, tasks: str, include: str | None,
                      device: str) -> list[str]:
    launcher = [sys.executable, "-m"] if a.gpus <= 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(a.gpus), "-m"]
    cmd = launcher + [
        "lmms_eval", "--model", "vqtoken_hf" if a.host == "hf" else "vqtoken_llava_next",
        "--model_args", model_args(setting, a.model, a.frames, run_dir / "stats.jsonl", a.model_args),
        "--tasks", tasks, "--batch_size", str(a.batch_size), "--output_path", str(run_dir),
        "--device", device, "--verbosity", "WARNING", "--log_samples",
    ]
    if include:
        cmd += ["--include_path", include]
    if a.limit is not None:
        cmd += ["--limit", str(a.limit)]
    return cmd


def clear_run_dir(run_dir: Path) -> None:
    """No file of an earlier run may be read as this run's: stats, results and predictions go."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stats.jsonl").unlink(missing_ok=True)
    for old in [*run_dir.rglob("*results*.json"), *run_dir.rglob("*_samples_*.jsonl")]:
        old.unlink()


def run_one(label: str, cmd: list[str], run_dir: Path, env: dict[str, str], launch: Launcher) -> None:
    print(f"eval.sh: [{label}] {' '.join(cmd)}", file=sys.stderr)
    log_path = run_dir / "lmms_eval.log"
    with open(log_path, "w") as log:
        rc = launch(cmd, env, log)
    if rc == 0 and any(run_dir.rglob("*results*.json")):
        return
    why = last_error_line(log_path.read_text(errors="replace")) or "no error line in the log"
    status = f"lmms-eval exited with {rc}" if rc else "lmms-eval wrote no results"
    print(f"eval.sh: [{label}] failed: {why} ({status}; log: {log_path})", file=sys.stderr)


def main(argv: list[str] | None = None, launch: Launcher = launch_subprocess) -> int:
    a = parse(argv)
    if a.host == "llava-next" and not a.model:
        print("eval.sh: error: --host llava-next needs --model (a llava_qwen checkpoint directory)", file=sys.stderr)
        return 2
    sweep = a.compressors or DEFAULT_SWEEP
    try:
        check_settings(a, sweep)
    except UsageError as e:
        print(f"eval.sh: error: {e}", file=sys.stderr)
        return 2
    import torch

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    include, tasks = a.include_path, a.tasks
    if not tasks:
        include = str(make_motion_task(out / "task", n=a.samples))
        tasks = TASK
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        print(f"eval.sh: no --tasks: generated the offline task {TASK} in {include}", file=sys.stderr)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    labels = []
    for setting in sweep:
        label = label_of(setting)
        run_dir = out / label
        clear_run_dir(run_dir)
        run_one(label, lmms_eval_command(a, setting, run_dir, tasks, include, device), run_dir, env, launch)
        labels.append(label)
    # lmms-eval can exit 0 after a failed evaluation: the report checks that every run produced results
    return report_main([str(out), "--runs", *labels])


if __name__ == "__main__":
    sys.exit(main())
