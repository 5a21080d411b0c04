"""Two data-parallel processes (torchrun, gloo on the CPU) under real DeepSpeed ZeRO-2 and ZeRO-3, with a
data set that mixes video, text-only and two-turn records, as a sharded multi-GPU run would see them:

- an interrupted run resumed from its checkpoint ends with exactly the weights of the uninterrupted run;
- the compressor's parameters are identical on every rank;
- every rank computes the same supervision mask for the same records.

Under ZeRO-3 a rank whose batch has no video must still run the video path (a blank frame with weight 0)
at the point where a video batch runs it, or the ranks' parameter gathers stop matching: with gloo that is
a crash ("collective mismatch"), with NCCL a hang or silently wrong parameters."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava_vqtoken.video import make_video

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]
RANKS = 2
RUN = ["--frames", "4", "--batch-size", "1", "--max-steps", "4", "--save-steps", "2", "--logging-steps", "1",
       "--lr", "2e-3", "--projector-lr", "3e-3", "--compressor-lr", "4e-3", "--num-tokens", "8", "--no-generate"]
LAUNCH_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={RANKS}",
           f"--master_port={free_port()}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    from llava_vqtoken.hosts.hf.tiny import build_tiny_llava_onevision

    return build_tiny_llava_onevision(tmp_path_factory.mktemp("stock") / "ov")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Seven records: video (one of them two-turn), text-only, and a two-turn video record; with one record
    per rank per step, steps 1 and 3 pair a video batch with a text-only one."""
    d = tmp_path_factory.mktemp("data")
    for i in range(3):
        make_video(d / f"c{i}.mp4", frames=6, height=32, width=32, seed=i)

    def turn(q, a):
        return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]

    recs = [
        {"video": "c0.mp4", "conversations": turn("<image>\nwhich way?", "left") + turn("colour?", "red")},
        {"conversations": turn("what is a square?", "a shape")},
        {"video": "c1.mp4", "conversations": turn("<image>\nwhich way?", "right")},
        {"video": "c2.mp4", "conversations": turn("<image>\nhow many?", "one")},
        {"video": "c1.mp4", "conversations": turn("<image>\nmoving?", "yes") + turn("fast?", "no")},
        {"conversations": turn("what is red?", "a colour")},
        {"video": "c0.mp4", "conversations": turn("<image>\nwhat moves?", "a square")},
    ]
    (d / "train.json").write_text(json.dumps(recs))
    return d / "train.json"


def train(model, data, out, zero, *extra):
    return torchrun("-m", "llava_vqtoken.train.hf_train", "--model", str(model), "--data", str(data),
                    "--output-dir", str(out), "--deepspeed", zero, *RUN, *extra)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_ranks_resume_to_the_uninterrupted_weights(stock, data, tmp_path, zero):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = train(stock, data, whole, zero)
    assert r.returncode == 0, r.stderr[-3000:]
    r = train(stock, data, cut, zero, "--stop-after-steps", "3")
    assert r.returncode != 0 and (cut / "checkpoint-2").is_dir(), r.stderr[-3000:]
    r = train(stock, data, cut, zero)
    assert r.returncode == 0, r.stderr[-3000:]

    full = json.loads((whole / "train_summary.json").read_text())
    resumed = json.loads((cut / "train_summary.json").read_text())
    assert full["world_size"] == resumed["world_size"] == RANKS
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["losses"] == full["losses"][2:]
    for summary in (full, resumed):
        sums = {e["digest"] for e in summary["ranks"]["per_rank"]}
        assert len(summary["ranks"]["per_rank"]) == RANKS and len(sums) == 1
        assert summary["ranks"]["compressor_identical"] is True

    a = load_file(str(whole / "checkpoint-4" / "model.safetensors"))
    b = load_file(str(cut / "checkpoint-4" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("model.video_compressor.") for k in a)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ after a {zero} resume on {RANKS} ranks, e.g. {differ[:3]}"


def test_every_rank_builds_the_same_supervision_mask(stock, data, tmp_path):
    script = ROOT / "tests" / "dist_labels.py"
    out = tmp_path / "labels.json"
    r = torchrun(str(script), str(stock), str(data), str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    digests = json.loads(out.read_text())
    assert len(digests) == RANKS and len({json.dumps(d) for d in digests}) == 1
    # the two-turn records supervise two answers each, the others one: count the supervised spans
    assert [d["spans"] for d in digests[0]["records"]] == [2, 1, 1, 1, 2, 1, 1]
