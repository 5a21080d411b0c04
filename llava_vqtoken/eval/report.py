"""Turn lmms-eval results (+ per-sample token stats from the plugin) into a markdown/JSON report and,
for a sweep, a plot of accuracy vs visual tokens. Fails (non-zero exit) when a run has no results:
lmms-eval's CLI exits 0 even when evaluation fails."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from ..core.metrics import REFERENCE_TOKENS, tokdense


class ReportError(RuntimeError):
    """A run produced no usable results."""


def load_results(run_dir: Path) -> dict[str, Any]:
    files = sorted(run_dir.rglob("*results*.json"))
    if not files:
        raise ReportError(f"{run_dir}: lmms-eval wrote no results file (the evaluation failed; see its log)")
    return json.loads(files[-1].read_text())


def summarize_run(label: str, run_dir: Path) -> list[dict[str, Any]]:
    """One row per task: accuracy (%), mean visual tokens fed to the LLM, ratios, TokDense, s/sample."""
    results = load_results(run_dir)["results"]
    stats_file = run_dir / "stats.jsonl"
    stats = [json.loads(x) for x in stats_file.read_text().splitlines()] if stats_file.exists() else []
    rows = []
    for task, metrics in results.items():
        acc = next((v for k, v in metrics.items() if k.startswith("accuracy") and "stderr" not in k), None)
        if acc is None:
            acc = next((v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k
                        and k != "alias"), None)
        if acc is None:
            raise ReportError(f"{run_dir}: task {task} has no accuracy metric: {sorted(metrics)}")
        task_stats = [s for s in stats if s["task"] == task]
        if not task_stats:
            raise ReportError(f"{run_dir}: no per-sample token stats for task {task} (stats_file not written?)")
        tokens = statistics.mean(s["visual_tokens"] for s in task_stats)
        acc_pct = 100.0 * acc if acc <= 1.0 else acc
        rows.append({
            "run": label, "task": task, "accuracy": acc_pct, "samples": len(task_stats),
            "visual_tokens": tokens, "ratio_vs_23328": tokens / REFERENCE_TOKENS,
            "tokdense": tokdense(acc_pct, tokens),
            "seconds_per_sample": statistics.mean(s["seconds"] for s in task_stats),
            "compressor": task_stats[0]["compressor"], "frames": task_stats[0]["frames"],
        })
    return rows


def write_report(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| run | task | accuracy % | visual tokens | ratio vs 23,328 | TokDense | s/sample |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['task']} | {r['accuracy']:.2f} | {r['visual_tokens']:.1f} | "
            f"{100 * r['ratio_vs_23328']:.3f}% | {r['tokdense']:.4f} | {r['seconds_per_sample']:.3f} |"
        )
    note = ("\nVisual tokens = placeholders the LLM receives per video (codes + newline); TokDense = accuracy % / "
            "visual tokens (paper Eq. 2).\n")
    (out / "report.md").write_text("\n".join(lines) + "\n" + note)
    if len({r["run"] for r in rows}) > 1:
        plot(rows, out / "accuracy_vs_tokens.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for task in sorted({r["task"] for r in rows}):
        for r in (r for r in rows if r["task"] == task):
            ax.scatter(r["visual_tokens"], r["accuracy"])
            ax.annotate(r["run"], (r["visual_tokens"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("visual tokens per video (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llava_vqtoken.eval.report")
    p.add_argument("out", help="sweep directory: one sub-directory per run")
    p.add_argument("--runs", nargs="+", help="run sub-directories to include (default: all)")
    a = p.parse_args(argv)
    out = Path(a.out)
    runs = a.runs or sorted(d.name for d in out.iterdir() if d.is_dir())
    rows, failed = [], []
    for label in runs:
        try:
            rows += summarize_run(label, out / label)
        except ReportError as e:
            failed.append(str(e))
    if rows:
        write_report(rows, out)
        print((out / "report.md").read_text())
    for f in failed:
        print(f"eval report: error: {f}", file=sys.stderr)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
