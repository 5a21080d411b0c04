"""Fine-tuning through the HF Trainer (and DeepSpeed on CPU): loss, per-part LRs, skipping, resume, save/load."""

import json
import logging
import shutil

import pytest
import torch

from llava_vqtoken.synthetic import make_demo_dataset
from llava_vqtoken.train.data import VideoQADataset, collate
from llava_vqtoken.train.hf_train import main

FAST = ["--lr", "2e-3", "--projector-lr", "3e-3", "--compressor-lr", "4e-3", "--batch-size", "4", "--frames", "4"]


def summary(out):
    return json.loads((out / "train_summary.json").read_text())


def test_training_lowers_loss_applies_part_lrs_skips_bad_video_and_reloads(tiny_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="llava_vqtoken.train")
    out = tmp_path / "run"
    assert main(["--model", str(tiny_model), "--output-dir", str(out), "--max-steps", "24", "--save-steps", "12",
                 "--logging-steps", "4", *FAST]) == 0
    s = summary(out)
    assert s["losses"][-1] < s["losses"][0] - 0.5
    lrs = {g["name"]: g["lr"] for g in s["param_groups"]}
    assert lrs == {"language_model": 2e-3, "projector": 3e-3, "compressor": 4e-3}  # vision tower frozen
    assert len(s["skipped_videos"]) == 1 and s["skipped_videos"][0].endswith("corrupt.mp4")
    assert "reloaded" in caplog.text and (out / "final" / "model.safetensors").exists()


def test_interrupted_run_resumes_from_last_checkpoint(tiny_model, tmp_path):
    out = tmp_path / "run"
    args = ["--model", str(tiny_model), "--output-dir", str(out), "--max-steps", "8", "--save-steps", "3",
            "--no-generate", *FAST]
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--stop-after-steps", "4"])
    assert (out / "checkpoint-3").exists() and not (out / "final").exists()
    assert main(args) == 0
    s = summary(out)
    assert s["resumed_from"].endswith("checkpoint-3")
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8


def test_deepspeed_zero2_one_process(tiny_model, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "ds"
    assert main(["--model", str(tiny_model), "--output-dir", str(out), "--max-steps", "3", "--save-steps", "3",
                 "--deepspeed", "zero2", "--no-generate", *FAST]) == 0
    lrs = {g["name"]: g["lr"] for g in summary(out)["param_groups"]}
    assert lrs["compressor"] == 4e-3 and lrs["projector"] == 3e-3  # not flattened away by DeepSpeed


def test_lora_run_saves_a_plain_vqtoken_checkpoint(tiny_model, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert main(["--model", str(tiny_model), "--output-dir", str(out), "--max-steps", "3", "--save-steps", "3",
                 "--lora", *FAST]) == 0
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["model_type"] == "vqtoken_llava_onevision"


def test_text_only_batch_still_touches_the_video_path(tiny_model, tmp_path):
    from transformers import AutoProcessor

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor

    cls = VQTokenLlavaOnevisionForConditionalGeneration
    model = cls.from_pretrained(tiny_model, video_compressor={"num_tokens": 8})
    proc = VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), model.config)
    data = make_demo_dataset(tmp_path / "d", n=4, text_only=2)
    ds = VideoQADataset(data, proc, frames=4)
    text_only = [ds[i] for i in range(len(ds)) if "pixel_values_videos" not in ds[i]]
    batch = collate(text_only, proc.tokenizer.pad_token_id)
    assert "pixel_values_videos" not in batch
    model.train()
    model(**batch).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "video_compressor" in n]
    assert grads and all(g is not None for g in grads)  # zero, but present on every rank
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_train_sh_rejects_unknown_host(tmp_path):
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    r = subprocess.run(["bash", "train.sh", "--host", "nope"], capture_output=True, text=True,
                       env={"NO_VENV": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "--host must be" in r.stderr
