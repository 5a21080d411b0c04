"""Bad input to the CLI: one line on stderr, exit status 2, and before any compute."""

import pytest
import torch

from llava_vqtoken.cli import main


def _one_error_line(capsys, *args):
    code = main(list(args))
    _, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("llava-vqtoken: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0], err


def test_heatmap_into_a_missing_folder_fails_before_the_compute(capsys, tmp_path, video_file):
    line, err = _one_error_line(capsys, "compress", "--video", str(video_file), "--frames", "2",
                                "--heatmap", str(tmp_path / "out" / "x.png"))
    assert line == f"llava-vqtoken: error: --heatmap {tmp_path}/out/x.png: the folder {tmp_path}/out does not exist"
    assert "Loading weights" not in err and "RANDOM weights" not in err  # nothing was loaded


def test_model_folder_without_a_config(capsys, tmp_path, video_file):
    line, _ = _one_error_line(capsys, "compress", "--video", str(video_file), "--model", str(tmp_path))
    assert line == f"llava-vqtoken: error: --model {tmp_path} is not a model directory: it has no config.json"
    line, _ = _one_error_line(capsys, "export-remote", "--model", str(tmp_path), "--out", str(tmp_path / "o"))
    assert "has no config.json" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu(capsys, video_file):
    line, _ = _one_error_line(capsys, "compress", "--video", str(video_file), "--device", "cuda")
    assert line == ("llava-vqtoken: error: --device cuda: no CUDA GPU is available here "
                    "(torch.cuda.is_available() is False)")


def test_a_device_that_is_not_a_device(capsys, video_file):
    line, _ = _one_error_line(capsys, "compress", "--video", str(video_file), "--device", "gpu0")
    assert line.startswith("llava-vqtoken: error: --device 'gpu0' is not a torch device")


@pytest.mark.parametrize(
    "argv, prog",
    [
        (["llava_vqtoken.cli", "compress", "--footprint", "bogus"], "llava-vqtoken compress"),
        (["llava_vqtoken.cli", "compress", "--no-such-flag"], "llava-vqtoken"),
        (["llava_vqtoken.train.hf_train", "--num-tokens", "many"], "train.sh"),
        (["llava_vqtoken.eval.run", "--frames", "x"], "eval.sh"),
    ],
)
def test_a_usage_error_is_one_line_without_the_usage_block(argv, prog):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}: error: ") and lines[0].endswith("(see --help)")
