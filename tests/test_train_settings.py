"""train.sh does what its flags say: --epochs counts, --adaptive is refused at start, every checkpoint-N
loads with its processor, clips shorter than --frames are reported, DeepSpeed's accelerator note is quiet."""

import json
import subprocess
import sys

import pytest

from llava_vqtoken.train.hf_train import main, parse_args
from llava_vqtoken.video import make_video

FAST = ["--frames", "4", "--batch-size", "2", "--num-tokens", "8", "--logging-steps", "1", "--no-generate"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight records: seven clips (one of 3 frames) and one text-only record."""
    d = tmp_path_factory.mktemp("data")
    recs = []
    for i in range(7):
        make_video(d / f"c{i}.mp4", frames=3 if i == 0 else 8, height=32, width=32, seed=i)
        recs.append({"video": f"c{i}.mp4", "conversations": [{"from": "human", "value": "<image>\nwhere?"},
                                                             {"from": "gpt", "value": "left"}]})
    recs.append({"conversations": [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "a shape"}]})
    (d / "train.json").write_text(json.dumps(recs))
    return d / "train.json"


def test_epochs_sets_the_number_of_steps(tiny_model, data, tmp_path):
    out = tmp_path / "run"
    # 8 records at batch size 2: 4 steps per epoch; 0.5 epochs = 2 steps (the old default ran 30)
    assert main(["--model", str(tiny_model), "--data", str(data), "--output-dir", str(out), "--epochs", "0.5",
                 "--save-steps", "1", *FAST]) == 0
    s = json.loads((out / "train_summary.json").read_text())
    assert s["steps"] == 2 and len(s["losses"]) == 2 and s["epochs"] == 0.5


def test_epochs_and_max_steps_together_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--epochs", "1", "--max-steps", "4"])
    assert e.value.code == 2 and "give --epochs or --max-steps, not both" in capsys.readouterr().err


def test_adaptive_is_refused_at_start_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--adaptive", "elbow"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--adaptive cannot be trained" in err and "Traceback" not in err


def test_every_checkpoint_loads_with_its_processor_and_short_clips_are_reported(tiny_model, data, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionProcessor

    out = tmp_path / "run"
    assert main(["--model", str(tiny_model), "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
                 "--save-steps", "1", *FAST]) == 0
    for ckpt in ("checkpoint-1", "checkpoint-2"):
        proc = AutoProcessor.from_pretrained(out / ckpt)
        assert isinstance(proc, VQTokenLlavaOnevisionProcessor) and proc.video_compressor["num_tokens"] == 8
        assert type(AutoModelForImageTextToText.from_pretrained(out / ckpt)).__name__.startswith("VQToken")
    s = json.loads((out / "train_summary.json").read_text())
    assert s["frames"] == 4
    assert {k.rsplit("/", 1)[1]: v for k, v in s["short_videos"].items()} == {"c0.mp4": 3}


def test_deepspeed_accelerator_note_is_not_printed():
    pytest.importorskip("deepspeed")
    quiet = "from llava_vqtoken.dist import quiet_deepspeed_accelerator; quiet_deepspeed_accelerator()\n"
    code = ("import logging, torch\nfrom accelerate.utils import extract_model_from_parallel\n"
            "extract_model_from_parallel(torch.nn.Linear(1, 1))\n"  # what save_pretrained and the Trainer call
            "logging.getLogger('DeepSpeed').warning('still heard')\n")
    said = {}
    for name, prog in (("plain", code), ("quiet", quiet + code)):
        r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        said[name] = r.stdout + r.stderr
    assert "Setting accelerator" in said["plain"]  # what every command printed
    assert "Setting accelerator" not in said["quiet"] and "still heard" in said["quiet"]  # other messages stay


def test_adaptive_checkpoint_is_refused_before_training(tiny_model, data, tmp_path, capsys):
    from transformers import AutoProcessor

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration

    ckpt = tmp_path / "adaptive"
    VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_model, video_compressor={"num_tokens": None, "adaptive": "elbow", "min_codes": 2, "max_codes": 8}
    ).save_pretrained(ckpt)
    AutoProcessor.from_pretrained(tiny_model).save_pretrained(ckpt)
    with pytest.raises(SystemExit) as e:
        main(["--model", str(ckpt), "--data", str(data), "--output-dir", str(tmp_path / "run"), "--max-steps", "1",
              "--frames", "4", "--no-generate"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "adaptive-K compressor" in err[-1] and not (tmp_path / "run" / "checkpoint-1").exists()


def test_bad_and_short_clips_are_reported_once_not_every_epoch(tiny_model, tmp_path, monkeypatch, caplog):
    import logging

    from transformers import AutoProcessor

    import llava_vqtoken.train.data as data_mod
    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor

    cfg = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_model, video_compressor={"num_tokens": 8}).config
    proc = VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), cfg)
    make_video(tmp_path / "short.mp4", frames=2, height=32, width=32)
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 20)
    turns = [{"from": "human", "value": "<image>\nwhere?"}, {"from": "gpt", "value": "left"}]
    (tmp_path / "d.json").write_text(json.dumps([{"video": "bad.mp4", "conversations": turns},
                                                 {"video": "short.mp4", "conversations": turns}]))
    decoded: list[str] = []
    real = data_mod.load_video_counted
    monkeypatch.setattr(data_mod, "load_video_counted", lambda p, n: decoded.append(p.rsplit("/", 1)[1]) or real(p, n))
    caplog.set_level(logging.WARNING, logger="llava_vqtoken.train")
    ds = data_mod.VideoQADataset(tmp_path / "d.json", proc, frames=4)
    for _epoch in range(3):
        assert [int(ds[i]["pixel_values_videos"].shape[0]) for i in range(2)] == [4, 4]  # bad -> next record
    assert decoded.count("bad.mp4") == 1  # its decoder errors appear once, not every epoch
    assert ds.short_videos == {str(tmp_path / "short.mp4"): 2}
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("bad.mp4" in w for w in warnings) == 1 and sum("short.mp4" in w for w in warnings) == 1


def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [x for x in err if x.startswith("train.sh: error: ")]
    assert e.value.code == 2 and len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


@pytest.mark.parametrize("bad, why", [
    (["--frames", "0"], "--frames must be >= 1, got 0"),
    (["--model", "{tmp}/nowhere"], "is not a model directory: it has no config.json"),
    (["--data", "{tmp}/missing.json"], "is not a readable JSON file"),
    (["--data", "{tmp}/clip.mp4"], "is not a readable JSON file"),
    (["--data", "{tmp}/dict.json"], "must hold a non-empty JSON list of records"),
])
def test_bad_flags_and_files_are_one_line_before_loading(capsys, tmp_path, bad, why):
    (tmp_path / "clip.mp4").write_bytes(b"\x00\xab\xff" * 10)
    (tmp_path / "dict.json").write_text('{"video": "a.mp4"}')
    line = _refused(capsys, [b.format(tmp=tmp_path) for b in bad] + ["--output-dir", str(tmp_path / "o")])
    assert why in line


def test_resume_with_another_spec_is_refused(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", str(tiny_model), "--data", str(data), "--output-dir", str(out), "--max-steps", "2",
            "--save-steps", "1", *FAST]
    assert main(args) == 0 and (out / "checkpoint-2").is_dir()
    capsys.readouterr()
    line = _refused(capsys, [*args, "--num-tokens", "12", "--max-steps", "3"])  # later flags win in argparse
    assert "cannot resume from" in line and "num_tokens 8 -> 12" in line
