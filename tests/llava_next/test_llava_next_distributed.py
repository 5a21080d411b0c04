"""LLaVA-NeXT's own trainer on two data-parallel processes (torchrun, gloo on the CPU, real DeepSpeed
ZeRO-2 and ZeRO-3), data mixing video, text-only and two-turn records: an interrupted run resumed from its
checkpoint ends with exactly the weights and losses of the uninterrupted run, and the compressor is the same
on both ranks. (Resuming failed outright before: transformers 4.45 reads the checkpoint's RNG file with
torch.load's default, which torch >= 2.6 made weights_only.)"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("llava", reason="LLaVA-NeXT (package 'llava') is not installed")
pytest.importorskip("deepspeed")

from safetensors.torch import load_file  # noqa: E402

from llava_vqtoken.video import make_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "dist_train.py"
RANKS = 2
TIMEOUT_S = 900
LOSS = re.compile(r"\{'loss': ([0-9.]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "vid").mkdir()
    for i in range(3):
        make_video(d / "vid" / f"c{i}.mp4", frames=8, height=64, width=64, seed=i)

    def turn(q, a):
        return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]

    recs = [("c0", turn("<image>\nwhich way?", "left") + turn("colour?", "red")), (None, turn("a square?", "a shape")),
            ("c1", turn("<image>\nwhich way?", "right")), ("c2", turn("<image>\nhow many?", "one")),
            ("c1", turn("<image>\nmoving?", "yes") + turn("fast?", "no")), (None, turn("what is red?", "a colour")),
            ("c0", turn("<image>\nwhat moves?", "a square")), ("c2", turn("<image>\nwhat moves?", "a square"))]
    rows = [{"id": str(i), "conversations": c, **({"video": f"{v}.mp4"} if v else {})} for i, (v, c) in enumerate(recs)]
    (d / "data.json").write_text(json.dumps(rows))
    return d


def train(stock, data, out, zero, stop=0):
    hub = os.environ["LLAVA_VQTOKEN_LLAVA_HOME"]
    ds = ROOT / "configs" / "deepspeed" / f"{zero}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_DISABLED": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={RANKS}", f"--master_port={free_port()}",
           str(SCRIPT), hub, str(stock), str(data / "data.json"), str(data / "vid"), str(out), str(ds), str(stop)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_ranks_resume_to_the_uninterrupted_weights(stock_llava_qwen, data, tmp_path, zero):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = train(stock_llava_qwen, data, whole, zero)
    assert r.returncode == 0, r.stderr[-3000:]
    full = LOSS.findall(r.stdout + r.stderr)
    r = train(stock_llava_qwen, data, cut, zero, stop=3)
    assert r.returncode != 0 and "stopped after step 3" in r.stderr and (cut / "checkpoint-2").is_dir()
    r = train(stock_llava_qwen, data, cut, zero)
    assert r.returncode == 0, r.stderr[-3000:]
    assert LOSS.findall(r.stdout + r.stderr) == full[2:] and len(full) == 4
    for out in (whole, cut):
        ranks = json.loads((out / "vqtoken_ranks.json").read_text())
        assert len(ranks["per_rank"]) == RANKS and ranks["compressor_identical"] is True
    a = load_file(str(whole / "checkpoint-4" / "model.safetensors"))
    b = load_file(str(cut / "checkpoint-4" / "model.safetensors"))
    assert a.keys() == b.keys() and any("video_compressor" in k for k in a)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ after a {zero} resume on {RANKS} ranks, e.g. {differ[:3]}"
