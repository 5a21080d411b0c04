"""lmms-eval plugin: registration, model_args aliases, report arithmetic, and the real CLI offline."""

import json

import pytest
import torch

from llava_vqtoken.config import ConfigError
from llava_vqtoken.eval.report import main as report_main
from llava_vqtoken.eval.report import summarize_run
from llava_vqtoken.eval.run import main as run_main
from llava_vqtoken.hosts.lmms_eval.plugin import compressor_from_model_args


def test_registered_through_entry_points():
    from lmms_eval.models import MODEL_REGISTRY_V2

    names = MODEL_REGISTRY_V2.list_model_names()
    assert "vqtoken_hf" in names and "llava_onevision_vqtoken_hf" in names


def test_vqtoken_wrapper_model_args_are_aliases():
    spec, rest = compressor_from_model_args(
        {"vqtoken_selection_method": "elbow", "vqtoken_min_clusters": "12", "vqtoken_max_clusters": "32",
         "max_frames_num": "16", "conv_template": "qwen_1_5"}
    )
    assert (spec.adaptive, spec.min_codes, spec.max_codes, spec.num_tokens) == ("elbow", 12, 32, None)
    assert rest == {"frames": "16", "conv_template": "qwen_1_5"}
    spec, _ = compressor_from_model_args({"vqtoken_selection_method": "fixed", "vqtoken_max_clusters": "32"})
    assert spec.adaptive is None and spec.num_tokens == 32
    spec, _ = compressor_from_model_args({"compressor": "tome", "num_tokens": "64"})
    assert spec.name == "tome" and spec.num_tokens == 64
    assert compressor_from_model_args({"frames": "8"})[0] is None
    with pytest.raises(ConfigError, match="vqtoken_selection_method"):
        compressor_from_model_args({"vqtoken_selection_method": "kmeans"})
    # "none" is an attention mode (the codebook-only ablation), not a null
    spec, _ = compressor_from_model_args({"compressor": "vqtoken", "attention": "none", "adaptive": "None"})
    assert spec.attention == "none" and spec.adaptive is None


def _fake_run(d, acc, tokens, seconds, task="t"):
    d.mkdir(parents=True)
    (d / "x_results.json").write_text(json.dumps({"results": {task: {"alias": task, "accuracy,none": acc}}}))
    (d / "stats.jsonl").write_text("\n".join(
        json.dumps({"task": task, "doc_id": i, "visual_tokens": n, "seconds": s, "frames": 32, "input_tokens": 23328,
                    "compressor": {"name": "vqtoken"}}) for i, (n, s) in enumerate(zip(tokens, seconds))))
    (d / f"x_samples_{task}.jsonl").write_text("{}\n")


def test_report_arithmetic(tmp_path):
    _fake_run(tmp_path / "vq", 0.5772, [13, 14, 12, 13.32], [0.1, 0.3, 0.2, 0.2])
    row = summarize_run("vq", tmp_path / "vq")[0]
    assert row["accuracy"] == pytest.approx(57.72)
    assert row["visual_tokens"] == pytest.approx(13.08)
    assert row["tokdense"] == pytest.approx(57.72 / 13.08)
    assert row["ratio"] == pytest.approx(13.08 / 23328)
    assert row["seconds_per_sample"] == pytest.approx(0.2)
    _fake_run(tmp_path / "pool", 0.572, [6273] * 2, [0.5, 0.5])
    assert report_main([str(tmp_path)]) == 0
    assert (tmp_path / "accuracy_vs_tokens.png").exists()
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert {r["run"] for r in rows} == {"vq", "pool"}
    (tmp_path / "broken").mkdir()
    assert report_main([str(tmp_path)]) == 1  # a run without results fails the report


def test_real_lmms_eval_cli_offline(tiny_model, tmp_path, capsys):
    rc = run_main(["--model", str(tiny_model), "--compressors", "vqtoken:num_tokens=16", "pool:num_tokens=16",
                   "--frames", "4", "--samples", "2", "--out", str(tmp_path), "--device", "cpu"])
    assert rc == 0, (tmp_path / "pool-num_tokens=16" / "lmms_eval.log").read_text()[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["rows"]
    assert [r["run"] for r in rows] == ["vqtoken-num_tokens=16", "pool-num_tokens=16"]
    assert all(r["samples"] == 2 and r["visual_tokens"] == 17 for r in rows)  # 16 + newline, exactly
    assert all(r["input_tokens"] == 4 * 729 and r["ratio"] == 17 / 2916 for r in rows)  # 4 frames x 27 x 27
    assert report["random_weights"] is True and all(r["random_weights"] for r in rows)  # the tiny random model
    assert all(r["chance"] == 25.0 for r in rows)
    # a stock checkpoint converted: VQ-Attention is untrained (pool has no parameters), and the report says so
    assert [r["untrained_compressor"] for r in rows] == [True, False]
    assert report["caveats"] == [
        "vqtoken-num_tokens=16: the compressor's weights are freshly initialised (never trained)"]
    for r in rows:  # the predictions are saved, one line per sample, where the report says
        assert len((tmp_path / r["predictions"]).read_text().splitlines()) == 2
    assert "RANDOM WEIGHTS" in (tmp_path / "report.md").read_text()
    assert 0.0 <= rows[0]["accuracy"] <= 100.0


def test_failed_evaluation_gives_nonzero_exit(tiny_model, tmp_path, capsys):
    rc = run_main(["--model", str(tiny_model), "--compressors", "vqtoken:num_tokens=100000", "--frames", "2",
                   "--samples", "1", "--out", str(tmp_path), "--device", "cpu"])
    assert rc == 1
    err = capsys.readouterr().err
    # the exception line of lmms-eval's log, not only "wrote no results file"
    assert "[vqtoken-num_tokens=100000] failed: " in err and "100000" in err.split("failed: ")[1].splitlines()[0]


def test_llava_next_model_is_registered_and_maps_model_args():
    import importlib.util

    from lmms_eval.models import MODEL_REGISTRY_V2

    from llava_vqtoken.hosts.lmms_eval.llava_next import overwrite_for

    assert "vqtoken_llava_next" in MODEL_REGISTRY_V2.list_model_names()
    over, rest = overwrite_for({"pretrained": "ckpt", "vqtoken_selection_method": "elbow", "vqtoken_min_clusters": "12",
                                "vqtoken_max_clusters": "32", "max_frames_num": "32", "conv_template": "qwen_1_5"})
    assert over["video_compressor"]["adaptive"] == "elbow" and over["video_compressor"]["max_codes"] == 32
    assert rest == {"pretrained": "ckpt", "max_frames_num": 32, "conv_template": "qwen_1_5"}
    over, _ = overwrite_for({"released": "true"})
    assert over["video_compressor"]["attention"] == "released" and over["video_compressor"]["codebook"] == "normalized"
    if importlib.util.find_spec("llava") is None:
        from llava_vqtoken.hosts.lmms_eval.llava_next import VQTokenLlavaNext

        with pytest.raises(ImportError, match="LLaVA-NeXT"):
            VQTokenLlavaNext(pretrained="x", device="cpu")


def test_stats_are_written_only_where_the_stats_file_model_arg_says(tiny_model, tmp_path, monkeypatch):
    """No environment switch: LLAVA_VQTOKEN_STATS used to redirect the per-sample stats of a model
    built without stats_file (nothing set it; eval.sh passes stats_file=...)."""
    from llava_vqtoken.hosts.lmms_eval.plugin import VQTokenHF

    monkeypatch.setenv("LLAVA_VQTOKEN_STATS", str(tmp_path / "from_env.jsonl"))
    assert VQTokenHF(pretrained=str(tiny_model), device="cpu").stats_file is None
    given = str(tmp_path / "stats.jsonl")
    assert VQTokenHF(pretrained=str(tiny_model), device="cpu", stats_file=given).stats_file == given


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_and_no_device_means_what_is_there(tiny_model):
    """device=cuda on a machine without a GPU used to run on the CPU without a word."""
    from llava_vqtoken.hosts.lmms_eval.plugin import VQTokenHF

    with pytest.raises(ValueError, match="device=cuda: no CUDA GPU is available here"):
        VQTokenHF(pretrained=str(tiny_model), device="cuda")
    assert VQTokenHF(pretrained=str(tiny_model)).model.device.type == "cpu"
