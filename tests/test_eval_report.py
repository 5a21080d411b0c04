"""The offline eval report must not mislead: known answers for ratio, TokDense, sample count, chance
level, the random-weights notice, the saved predictions and the plot's axes (issue 14)."""

import json

import pytest

from llava_vqtoken.eval.report import build_figure, summarize_run, write_report
from llava_vqtoken.eval.report import main as report_main
from llava_vqtoken.eval.tasks import TASK

GRID = 27 * 27  # the real LLaVA-OneVision geometry: 384 px frames, patch 14


def fake_run(d, acc, tokens, *, task=TASK, frames=8, random_weights=True, effective=None, samples_file=True,
             **extra):
    """A run directory as eval.sh leaves it: lmms-eval's results (+ samples) and the plugin's stats."""
    sub = d / "tiny-llava-ov"
    sub.mkdir(parents=True)
    n = len(tokens)
    results = {"results": {task: {"alias": task, "accuracy,none": acc, "accuracy_stderr,none": 0.0}},
               "n-samples": {task: {"original": 8, "effective": n if effective is None else effective}}}
    (sub / "20260101_results.json").write_text(json.dumps(results))
    if samples_file:
        (sub / f"20260101_samples_{task}.jsonl").write_text(
            "\n".join(json.dumps({"doc_id": i, "filtered_resps": ["A"], "target": "B"}) for i in range(n)))
    (d / "stats.jsonl").write_text("\n".join(
        json.dumps({"task": task, "doc_id": i, "visual_tokens": t, "input_tokens": frames * GRID, "seconds": 0.5,
                    "frames": frames, "compressor": {"name": "vqtoken"}, "random_weights": random_weights, **extra})
        for i, t in enumerate(tokens)))


def test_row_known_answers(tmp_path):
    fake_run(tmp_path / "vq", 0.5, [33, 33, 33, 33], frames=8)
    row = summarize_run("vq", tmp_path / "vq")[0]
    assert row["samples"] == 4
    assert row["input_tokens"] == 8 * 729 == 5832
    assert row["ratio"] == 33 / 5832  # not 33 / 23,328
    assert row["accuracy"] == 50.0
    assert row["tokdense"] == 50.0 / 33
    assert row["chance"] == 25.0  # four options
    assert row["random_weights"] is True
    assert row["predictions"] == "vq/tiny-llava-ov/20260101_samples_vqtoken_motion_mc.jsonl"


def test_report_md_and_json_say_random_weights_chance_and_counts(tmp_path):
    fake_run(tmp_path / "vq", 0.0, [33] * 4, frames=8)
    fake_run(tmp_path / "pool", 0.0, [785] * 4, frames=8)
    assert report_main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "RANDOM WEIGHTS" in md
    assert "chance" in md and "25.0" in md
    assert "| vq | vqtoken_motion_mc | 4 | 0.00 | 25.0 | 33.0 | 5,832 | 0.566% | 0.0000 |" in md
    assert "| pool | vqtoken_motion_mc | 4 | 0.00 | 25.0 | 785.0 | 5,832 | 13.460% | 0.0000 |" in md
    assert "vq/tiny-llava-ov/20260101_samples_vqtoken_motion_mc.jsonl" in md
    assert "23,328" not in md
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["random_weights"] is True and "random weights" in rep["notice"].lower()
    assert [(r["run"], r["samples"], r["chance"], r["ratio"]) for r in rep["rows"]] == [
        ("pool", 4, 25.0, 785 / 5832), ("vq", 4, 25.0, 33 / 5832)]
    assert (tmp_path / "accuracy_vs_tokens.png").exists()


def test_trained_model_has_no_random_notice(tmp_path):
    fake_run(tmp_path / "vq", 0.6, [33] * 2, frames=32, random_weights=False)
    write_report(summarize_run("vq", tmp_path / "vq"), tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["random_weights"] is False and rep["notice"] is None
    assert "RANDOM" not in (tmp_path / "report.md").read_text()
    assert rep["rows"][0]["ratio"] == 33 / 23328


def test_unknown_task_has_no_invented_chance(tmp_path):
    fake_run(tmp_path / "vq", 0.6, [33] * 2, task="some_open_task", random_weights=False)
    row = summarize_run("vq", tmp_path / "vq")[0]
    assert row["chance"] is None
    write_report([row], tmp_path)
    assert "| vq | some_open_task | 2 | 60.00 | n/a |" in (tmp_path / "report.md").read_text()


def test_sample_count_mismatch_with_lmms_eval_is_an_error(tmp_path):
    from llava_vqtoken.eval.report import ReportError

    fake_run(tmp_path / "vq", 0.5, [33] * 3, effective=4)  # stats of 3 samples, lmms-eval scored 4
    with pytest.raises(ReportError, match="3 .*4"):
        summarize_run("vq", tmp_path / "vq")


def test_missing_predictions_are_an_error(tmp_path):
    from llava_vqtoken.eval.report import ReportError

    fake_run(tmp_path / "vq", 0.5, [33] * 2, samples_file=False)
    with pytest.raises(ReportError, match="predictions"):
        summarize_run("vq", tmp_path / "vq")


def test_plot_axes_chance_line_and_legend(tmp_path):
    rows = []
    for label in ("a", "b", "c", "d", "e", "f"):  # six runs at the same point, as the random model gives
        fake_run(tmp_path / label, 0.0, [33] * 2)
        rows += summarize_run(label, tmp_path / label)
    fig = build_figure(rows)
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 100.0)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:6] == ["a", "b", "c", "d", "e", "f"] and "chance (25%)" in legend
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_label() == "chance (25%)"] == [25.0]
    assert not ax.texts  # no annotations to overprint
    assert "random weights" in fig._suptitle.get_text().lower()


def test_untrained_or_overridden_compressors_are_named_in_the_report(tmp_path):
    fake_run(tmp_path / "stock", 0.6, [33] * 2, random_weights=False, untrained_compressor=True, overridden=[])
    fake_run(tmp_path / "over", 0.6, [13] * 2, random_weights=False, untrained_compressor=False,
             overridden=["num_tokens"])
    fake_run(tmp_path / "ok", 0.6, [33] * 2, random_weights=False, untrained_compressor=False, overridden=[])
    rows = [r for run in ("stock", "over", "ok") for r in summarize_run(run, tmp_path / run)]
    write_report(rows, tmp_path)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["caveats"] == [
        "stock: the compressor's weights are freshly initialised (never trained)",
        "over: spec overridden against the checkpoint's training (num_tokens)",
    ]
    assert (tmp_path / "report.md").read_text().startswith(
        "**stock: the compressor's weights are freshly initialised (never trained)**\n"
        "**over: spec overridden against the checkpoint's training (num_tokens)**\n")


def test_spec_decision_says_when_weights_are_untrained():
    from llava_vqtoken.config import CompressorConfig
    from llava_vqtoken.spec_rule import resolve_spec

    stock = resolve_spec(None, {"num_tokens": 12})
    assert stock.untrained(has_parameters=True) and not stock.untrained(has_parameters=False)
    saved = CompressorConfig(num_tokens=32)
    assert not resolve_spec(saved, {"iters": 3}).untrained(True)
    assert not resolve_spec(saved, {"num_tokens": 12}, allow_override=True).untrained(True)  # same weights
    assert resolve_spec(saved, {"attention": "random"}, allow_override=True).untrained(True)  # new weights
