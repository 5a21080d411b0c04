"""Turn lmms-eval results (+ per-sample token stats from the plugin) into a markdown/JSON report and a
plot of accuracy vs visual tokens. Fails (non-zero exit) when a run has no results: lmms-eval's CLI
exits 0 even when evaluation fails.

What a row says, so that a number cannot be read wrongly: the sample count (checked against
lmms-eval's), the chance level where the task's option count is known, the ratio against the run's
own input tokens (frames x grid, not a fixed 23,328), where the per-sample predictions are, and,
for a model with random weights, a notice that its scores measure nothing but the pipeline.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from ..core.metrics import tokdense
from .tasks import TASK

#: answer options of multiple-choice tasks whose option count is fixed (chance = 100 / options)
TASK_OPTIONS = {TASK: 4, "videomme": 4, "nextqa_mc_test": 5, "egoschema": 5, "egoschema_subset": 5}

RANDOM_NOTICE = (
    "RANDOM WEIGHTS: the model has random weights (the embedded default, built to exercise the code), so "
    "these accuracies measure only that the pipeline runs; a random model rarely answers with a valid "
    "option letter, hence scores at or below chance. Token counts, ratios and timings are real."
)
PLOT = "accuracy_vs_tokens.png"
#: one marker per run, so that runs at the same point stay distinguishable (hollow, shrinking sizes)
MARKERS = "osD^vP*Xh<>p"

_TRACEBACK = "Traceback (most recent call last):"
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(: .*)?$")
_LOGGER_ERROR = re.compile(r"\|\s*(ERROR|CRITICAL)\s*\|.*? - (.*)$")


class ReportError(RuntimeError):
    """A run produced no usable results."""


def last_error_line(log: str) -> str | None:
    """The exception line of the last traceback in an lmms-eval log (``ValueError: ...``), else the
    message of its last ERROR record, else None."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line and not line[0].isspace() and _EXC_LINE.match(line):
                return line.strip()
    for line in reversed(lines):
        m = _LOGGER_ERROR.search(line)
        if m:
            return m.group(2).strip()
    return None


def load_results(run_dir: Path) -> tuple[dict[str, Any], Path]:
    files = sorted(run_dir.rglob("*results*.json"))
    if not files:
        raise ReportError(f"{run_dir}: lmms-eval wrote no results file (the evaluation failed; see its log)")
    return json.loads(files[-1].read_text()), files[-1]


def _accuracy(run_dir: Path, task: str, metrics: dict[str, Any]) -> float:
    acc = next((v for k, v in metrics.items() if k.startswith("accuracy") and "stderr" not in k), None)
    if acc is None:
        acc = next((v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k
                    and k != "alias"), None)
    if acc is None:
        raise ReportError(f"{run_dir}: task {task} has no accuracy metric: {sorted(metrics)}")
    return 100.0 * acc if acc <= 1.0 else float(acc)


def _predictions(run_dir: Path, task: str) -> str:
    files = sorted(run_dir.rglob(f"*_samples_{task}.jsonl"))
    if not files:
        raise ReportError(f"{run_dir}: no per-sample predictions for task {task} (lmms-eval --log_samples)")
    return str(files[-1].relative_to(run_dir.parent))


def chance_of(task: str) -> float | None:
    """Chance accuracy (%) of a multiple-choice task with a known option count, else None."""
    options = TASK_OPTIONS.get(task)
    return None if options is None else 100.0 / options


def _input_tokens(task_stats: list[dict[str, Any]]) -> float | None:
    values = [s.get("input_tokens") for s in task_stats]
    return None if any(v is None for v in values) else statistics.mean(values)


def _random_weights(task_stats: list[dict[str, Any]]) -> bool | None:
    flags = {s.get("random_weights") for s in task_stats}
    return True if True in flags else (False if flags == {False} else None)


def summarize_run(label: str, run_dir: Path) -> list[dict[str, Any]]:
    """One row per task: accuracy (%), sample count, chance (%), mean visual tokens fed to the LLM, the
    input tokens they came from, their ratio, TokDense, s/sample and the predictions file."""
    results, _ = load_results(run_dir)
    stats_file = run_dir / "stats.jsonl"
    stats = [json.loads(x) for x in stats_file.read_text().splitlines() if x] if stats_file.exists() else []
    rows = []
    for task, metrics in results["results"].items():
        acc = _accuracy(run_dir, task, metrics)
        task_stats = [s for s in stats if s["task"] == task]
        if not task_stats:
            raise ReportError(f"{run_dir}: no per-sample token stats for task {task} (stats_file not written?)")
        scored = results.get("n-samples", {}).get(task, {}).get("effective")
        if scored is not None and scored != len(task_stats):
            raise ReportError(f"{run_dir}: task {task}: {len(task_stats)} samples in stats.jsonl but lmms-eval "
                              f"scored {scored} (a stale or mixed stats file?)")
        tokens = statistics.mean(s["visual_tokens"] for s in task_stats)
        input_tokens = _input_tokens(task_stats)
        rows.append({
            "run": label, "task": task, "samples": len(task_stats), "accuracy": acc, "chance": chance_of(task),
            "visual_tokens": tokens, "input_tokens": input_tokens,
            "ratio": None if input_tokens is None else tokens / input_tokens,
            "tokdense": tokdense(acc, tokens),
            "seconds_per_sample": statistics.mean(s["seconds"] for s in task_stats),
            "compressor": task_stats[0]["compressor"], "frames": task_stats[0]["frames"],
            "random_weights": _random_weights(task_stats), "predictions": _predictions(run_dir, task),
            "untrained_compressor": task_stats[0].get("untrained_compressor"),
            "overridden": task_stats[0].get("overridden") or [],
        })
    return rows


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _markdown(rows: list[dict[str, Any]], notice: str | None) -> str:
    lines = [f"**{notice}**", ""] if notice else []
    lines += [
        "| run | task | n | accuracy % | chance % | visual tokens | input tokens | ratio | TokDense | s/sample |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = None if r["ratio"] is None else 100 * r["ratio"]
        lines.append(
            f"| {r['run']} | {r['task']} | {r['samples']} | {r['accuracy']:.2f} | {_fmt(r['chance'], '.1f')} | "
            f"{r['visual_tokens']:.1f} | {_fmt(r['input_tokens'], ',.0f')} | {_fmt(ratio, '.3f', '%')} | "
            f"{r['tokdense']:.4f} | {r['seconds_per_sample']:.3f} |"
        )
    lines += [
        "",
        "n = samples scored. Chance = 100 / options of a multiple-choice task (n/a: not known for this task). "
        "Visual tokens = placeholders the LLM receives per video (codes + newline); input tokens = frames x "
        "grid tokens the compressor received; ratio = visual / input tokens; TokDense = accuracy % / visual "
        "tokens (paper Eq. 2).",
        "",
        "Per-sample predictions (lmms-eval `--log_samples`), relative to this folder:",
        "",
    ]
    lines += [f"- {r['run']} / {r['task']}: `{r['predictions']}`" for r in rows]
    lines += ["", f"Plot: `{PLOT}`."]
    return "\n".join(lines) + "\n"


def spec_caveats(rows: list[dict[str, Any]]) -> list[str]:
    """One line per run whose compressor was never trained or whose spec was overridden against its
    checkpoint (README "Which spec runs"): such a score is not the checkpoint's."""
    out = []
    for run in dict.fromkeys(r["run"] for r in rows):
        row = next(r for r in rows if r["run"] == run)
        if row.get("untrained_compressor"):
            out.append(f"{run}: the compressor's weights are freshly initialised (never trained)")
        if row.get("overridden"):
            out.append(f"{run}: spec overridden against the checkpoint's training ({', '.join(row['overridden'])})")
    return out


def write_report(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    random = any(r["random_weights"] for r in rows)
    notice = RANDOM_NOTICE if random else None
    caveats = spec_caveats(rows)
    report = {"random_weights": random, "notice": notice, "caveats": caveats, "plot": PLOT, "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    md = _markdown(rows, notice)
    if caveats:
        md = "\n".join(f"**{c}**" for c in caveats) + "\n\n" + md
    (out / "report.md").write_text(md)
    fig = build_figure(rows)
    fig.savefig(out / PLOT, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def build_figure(rows: list[dict[str, Any]]):
    """Accuracy (0-100%) vs visual tokens, one panel per task, one legend entry per run, the chance
    level as a dashed line; the title says so when the weights are random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(9.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, r in enumerate(r for r in rows if r["task"] == task):
            ax.scatter(r["visual_tokens"], r["accuracy"], marker=MARKERS[runs.index(r["run"]) % len(MARKERS)],
                       s=110 - 80 * i / max(len(runs) - 1, 1), facecolors="none",
                       edgecolors=f"C{runs.index(r['run']) % 10}", label=r["run"], clip_on=False, zorder=3)
        chance = chance_of(task)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:g}%)")
        ax.set_xscale("log")
        ax.set_ylim(0.0, 100.0)
        ax.set_xlabel("visual tokens per video (log)")
        ax.set_ylabel("accuracy (%)")
        n = sorted({r["samples"] for r in rows if r["task"] == task})
        ax.set_title(f"{task} (n = {', '.join(map(str, n))})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    title = "accuracy vs visual tokens"
    if any(r["random_weights"] for r in rows):
        title += "\nRANDOM WEIGHTS: scores measure nothing but the pipeline"
    fig.suptitle(title, fontsize=10, color="firebrick" if "RANDOM" in title else "black")
    fig.tight_layout()
    return fig


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
