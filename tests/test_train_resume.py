"""Resuming an interrupted run must continue from the checkpoint's weights (all of them), so that it
ends with exactly the weights of the uninterrupted run: plain, under DeepSpeed (real, CPU) and with LoRA,
starting from a stock checkpoint written by transformers' own classes (saved in the legacy key layout)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llava_vqtoken.train.hf_train import main
from llava_vqtoken.video import make_video

# two steps per epoch at batch size 3 over five records, so the resume lands mid-epoch-two
RUN = ["--frames", "4", "--batch-size", "3", "--max-steps", "4", "--save-steps", "2", "--logging-steps", "1",
       "--lr", "2e-3", "--projector-lr", "3e-3", "--compressor-lr", "4e-3", "--num-tokens", "8", "--no-generate"]


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """A tiny LLaVA-OneVision saved by ``LlavaOnevisionForConditionalGeneration(config).save_pretrained``."""
    from llava_vqtoken.hosts.hf.tiny import build_tiny_llava_onevision

    path = build_tiny_llava_onevision(tmp_path_factory.mktemp("stock") / "ov")
    assert json.loads((path / "config.json").read_text())["model_type"] == "llava_onevision"
    with safe_open(str(path / "model.safetensors"), "pt") as f:  # the layout that the Trainer's reload missed
        assert any(k.startswith("language_model.model.") for k in f.keys())
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three clips, one two-turn record, one text-only record (the issue's train.json)."""
    d = tmp_path_factory.mktemp("data")
    recs = []
    for i, direction in enumerate(["left", "right", "up"]):
        make_video(d / f"c{i}.mp4", frames=6, height=32, width=32, seed=i)
        recs.append({"video": f"c{i}.mp4", "conversations": [
            {"from": "human", "value": "<image>\nwhich direction does the square move?"},
            {"from": "gpt", "value": direction}]})
    recs[0]["conversations"] += [{"from": "human", "value": "what colour is it?"}, {"from": "gpt", "value": "red"}]
    recs.append({"conversations": [{"from": "human", "value": "what is a square?"},
                                   {"from": "gpt", "value": "a shape"}]})
    recs.append({"video": "c1.mp4", "conversations": [{"from": "human", "value": "<image>\nhow many squares?"},
                                                      {"from": "gpt", "value": "three"}]})
    (d / "train.json").write_text(json.dumps(recs))
    return d / "train.json"


def run(model, data, out, *extra):
    return main(["--model", str(model), "--data", str(data), "--output-dir", str(out), *RUN, *extra])


def weights(out, name="checkpoint-4"):
    d = out / name
    f = d / "model.safetensors"
    if not f.exists():
        f = d / "adapter_model.safetensors"
    return load_file(str(f))


def assert_same_end(model, data, tmp_path, *extra):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(model, data, whole, *extra) == 0
    with pytest.raises(KeyboardInterrupt):
        run(model, data, cut, *extra, "--stop-after-steps", "3")
    assert run(model, data, cut, *extra) == 0
    summary = json.loads((cut / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2")
    assert summary["truncated_samples"] == {} and summary["skipped_videos"] == []
    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys() and a
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:3]}"
    full = json.loads((whole / "train_summary.json").read_text())["losses"]
    assert summary["losses"] == full[2:]  # the resumed steps 3-4 log the uninterrupted run's losses


def test_resume_ends_with_uninterrupted_weights(stock, data, tmp_path):
    assert_same_end(stock, data, tmp_path)


def test_resume_ends_with_uninterrupted_weights_deepspeed_zero2(stock, data, tmp_path):
    pytest.importorskip("deepspeed")
    assert_same_end(stock, data, tmp_path, "--deepspeed", "zero2")


def test_resume_ends_with_uninterrupted_weights_lora(stock, data, tmp_path):
    pytest.importorskip("peft")
    assert_same_end(stock, data, tmp_path, "--lora")


def test_resume_from_a_checkpoint_missing_weights_names_them(stock, data, tmp_path, capsys):
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run(stock, data, out, "--stop-after-steps", "3")
    f = out / "checkpoint-2" / "model.safetensors"
    sd = load_file(str(f))
    dropped = next(k for k in sd if k.endswith("multi_modal_projector.linear_1.weight"))
    del sd[dropped]
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(SystemExit) as e:
        run(stock, data, out)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("train.sh: error: cannot resume from")
    assert "1 weight(s) missing: model.multi_modal_projector.linear_1.weight" in err[-1]
