"""LLaVA-NeXT training data: unusable videos are found at launch, reported, skipped and counted (LLaVA-NeXT
itself silently trains on the next row instead, or dies with an IndexError when it is the last row)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("llava", reason="LLaVA-NeXT (package 'llava') is not installed")

from llava_vqtoken.config import CompressorConfig  # noqa: E402
from llava_vqtoken.train.llava_next import SKIPPED_REPORT, drop_unusable_videos  # noqa: E402
from llava_vqtoken.video import make_video  # noqa: E402

TURNS = [{"from": "human", "value": "<image>\nwhat moves ?"}, {"from": "gpt", "value": "a red square"}]


def dataset(folder, names):
    folder.mkdir(exist_ok=True)
    make_video(folder / "good.mp4", frames=8, height=64, width=64)
    (folder / "corrupt.mp4").write_bytes(b"not a video at all" * 50)
    rows = [{"id": str(i), "video": n, "conversations": TURNS} for i, n in enumerate(names)]
    data = folder.parent / "data.json"
    data.write_text(json.dumps(rows))
    return data, rows


def test_launch_check_drops_missing_and_corrupt_videos_and_reports_them(tmp_path, capsys):
    vids = tmp_path / "vid"
    data, rows = dataset(vids, ["good.mp4", "missing.mp4", "good.mp4", "corrupt.mp4"])
    rows.append({"id": "text", "conversations": TURNS})
    data.write_text(json.dumps(rows))
    checked = drop_unusable_videos(str(data), str(vids), str(tmp_path / "out"))
    assert json.loads(open(checked).read()) == [rows[0], rows[2], rows[4]]
    report = json.loads((tmp_path / "out" / SKIPPED_REPORT).read_text())
    assert report["samples"] == 5 and report["samples_skipped"] == 2
    assert sorted(report["skipped_videos"]) == ["corrupt.mp4", "missing.mp4"]
    assert "video not found" in report["skipped_videos"]["missing.mp4"]
    err = capsys.readouterr().err
    assert "skipping 2 of 5 sample(s): 2 unusable video(s)" in err


def test_launch_check_leaves_clean_data_alone_and_refuses_all_bad(tmp_path):
    data, _ = dataset(tmp_path / "vid", ["good.mp4", "good.mp4"])
    assert drop_unusable_videos(str(data), str(tmp_path / "vid"), str(tmp_path / "out")) == str(data)
    data, _ = dataset(tmp_path / "vid", ["corrupt.mp4", "missing.mp4"])
    with pytest.raises(SystemExit, match="no usable sample"):
        drop_unusable_videos(str(data), str(tmp_path / "vid"), str(tmp_path / "out"))


def test_training_with_a_corrupt_video_in_the_last_row_skips_it_and_trains(tmp_path, stock_llava_qwen):
    stock = stock_llava_qwen
    vids = tmp_path / "vid"
    data, _ = dataset(vids, ["good.mp4", "missing.mp4", "good.mp4", "corrupt.mp4"])
    out = tmp_path / "out"
    args = [
        "--model_name_or_path", str(stock), "--version", "qwen_1_5", "--data_path", str(data),
        "--video_folder", str(vids), "--image_folder", str(vids),
        "--vision_tower", "tiny-org/tiny-siglip-patch14-384",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False", "--mm_patch_merge_type", "spatial_unpad", "--mm_newline_position",
        "one_token", "--mm_spatial_pool_mode", "bilinear", "--image_aspect_ratio", "anyres_max_9",
        "--image_grid_pinpoints", "[[384, 384], [384, 768]]", "--frames_upbound", "4",
        "--mm_tunable_parts", "mm_mlp_adapter,video_compressor",
        "--video_compressor", json.dumps(CompressorConfig(num_tokens=8).to_dict()),
        "--learning_rate", "1e-3", "--output_dir", str(out), "--num_train_epochs", "1",
        "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--save_strategy", "no",
        "--logging_steps", "1", "--report_to", "none", "--model_max_length", "2048",
        "--dataloader_num_workers", "0", "--lazy_preprocess", "True", "--attn_implementation", "sdpa",
        "--use_cpu", "True", "--bf16", "False",
    ]
    code = f"import llava_vqtoken.train.llava_next as T\nT.main({args!r})\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, WANDB_DISABLED="true"))
    said = r.stdout + r.stderr
    assert r.returncode == 0, said[-4000:]
    assert "Failed to fetch sample" not in said and "Failed to read video file" not in said
    assert "skipping 2 of 4 sample(s): 2 unusable video(s)" in said
    report = json.loads((out / SKIPPED_REPORT).read_text())
    assert sorted(report["skipped_videos"]) == ["corrupt.mp4", "missing.mp4"]
    ranks = json.loads((out / "vqtoken_ranks.json").read_text())
    assert sum("loss" in h for h in ranks["log_history"]) == 2  # one epoch over the two usable rows
