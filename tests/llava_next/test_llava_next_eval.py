"""The LLaVA-NeXT lmms-eval model through the real lmms-eval CLI (skipped without llava or lmms-eval)."""

import json

import pytest

pytest.importorskip("llava", reason="LLaVA-NeXT (package 'llava') is not installed")
pytest.importorskip("lmms_eval", reason="lmms-eval is not installed in this environment")

from llava_vqtoken.eval.run import main as run_main  # noqa: E402
from llava_vqtoken.hosts.llava_next.tiny import build_tiny_llava_qwen  # noqa: E402


def test_vqtoken_llava_next_through_lmms_eval_cli(tmp_path):
    model = build_tiny_llava_qwen(tmp_path / "llava-qwen-eval")  # a stock checkpoint: converted by the spec
    rc = run_main(["--host", "llava-next", "--model", str(model), "--compressors", "vqtoken:num_tokens=8",
                   "tome:num_tokens=8", "--frames", "4", "--samples", "2", "--out", str(tmp_path / "ev"),
                   "--device", "cpu"])
    log = (tmp_path / "ev" / "vqtoken-num_tokens=8" / "lmms_eval.log").read_text()
    assert rc == 0, log[-3000:]
    rows = json.loads((tmp_path / "ev" / "report.json").read_text())["rows"]
    assert [r["run"] for r in rows] == ["vqtoken-num_tokens=8", "tome-num_tokens=8"]
    assert all(r["samples"] == 2 and r["visual_tokens"] == 9 for r in rows)  # 8 + image_newline
    assert all(r["input_tokens"] == 4 * 729 and r["ratio"] == 9 / 2916 for r in rows)  # 4 frames x 27 x 27
    assert all(r["random_weights"] for r in rows)  # the tiny random model says so
