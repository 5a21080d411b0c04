"""vLLM (CPU build) serves our checkpoints as the transformers host runs them: same prompt ids (K + 1 video
placeholders), same greedy tokens, same top log-probabilities; videos of a batch do not leak into each
other; images and text-only requests keep the stock path; bad checkpoints are refused in one line.

One engine per module (each start costs ~40 s on the 2-core machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vllm_support import ENGINE_ARGS, Reference, batch_vs_solo

from llava_vqtoken.hosts.vllm.model import hub_key, video_tokens

# apply_model sends a function to the engine's worker: vLLM pickles it (by reference) only when this is set,
# and the worker imports it from vllm_support.py, on the path of the processes vLLM starts
os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
LOGPROB_ATOL = 1e-4  # fp32: the two hosts agree to ~1e-6 here (same layers, one CPU)


@pytest.fixture(scope="module")
def llm(reference: Reference):
    from vllm import LLM

    engine = LLM(str(reference.dir / "vq"), limit_mm_per_prompt={"video": 3, "image": 1}, **ENGINE_ARGS)
    yield engine
    engine.llm_engine.engine_core.shutdown()


def generate(llm, requests: list[dict], top: int):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=top)
    return llm.generate(requests, params, use_tqdm=False)


def assert_same_answer(out, want: dict) -> None:
    assert list(out.prompt_token_ids) == want["prompt_ids"]
    got = out.outputs[0]
    assert list(got.token_ids) == want["tokens"]
    for step, (have, expect) in enumerate(zip(got.logprobs, want["logprobs"])):
        for token, logprob in expect.items():
            assert have[int(token)].logprob == pytest.approx(logprob, abs=LOGPROB_ATOL), f"step {step}, token {token}"


def test_concurrent_videos_match_transformers_host(llm, reference: Reference):
    """Three videos of 2, 4 and 6 frames in one batch: each gets exactly K + 1 placeholders and the
    answer the transformers host gives for that video alone."""
    ref = reference.data
    requests = [
        {"prompt": ref["video_prompt"], "multi_modal_data": {"video": reference.video(i)}}
        for i in range(len(ref["videos"]))
    ]
    outs = generate(llm, requests, ref["top"])
    for out, want in zip(outs, ref["videos"], strict=True):
        assert list(out.prompt_token_ids).count(ref["video_token_id"]) == ref["num_tokens"] + 1
        assert_same_answer(out, want)
    # the videos differ, so do their answers' probabilities: a leak would show
    firsts = [w["logprobs"][0] for w in ref["videos"]]
    assert len({tuple(sorted(f.items())) for f in firsts}) == len(firsts)


def test_batch_leaves_each_video_its_own_tokens(llm, reference: Reference):
    """In the worker: a video's K + 1 embeddings are bit-identical whether it is compressed alone or
    next to videos of other lengths."""
    (shapes, equal_solo, equal_first), = llm.apply_model(batch_vs_solo)
    k = reference.data["num_tokens"]
    assert [list(s) for s in shapes] == [[k + 1, 256]] * 3
    assert equal_solo == [True, True, True]
    assert equal_first == [False, False]


def test_image_and_text_keep_the_stock_path(llm, reference: Reference):
    ref = reference.data
    image = {"prompt": ref["image_prompt"], "multi_modal_data": {"image": np.load(reference.dir / "image.npy")}}
    text = {"prompt": ref["text_prompt"]}
    out_image, out_text = generate(llm, [image, text], ref["top"])
    assert_same_answer(out_image, ref["image"])
    assert_same_answer(out_text, ref["text"])


def test_hub_layout_checkpoint_loads_the_same_weights(reference: Reference):
    """The same weights with hub key names (vision_tower.vision_model.*) give the same answer."""
    from vllm import LLM

    engine = LLM(str(reference.dir / "vq-hub"), limit_mm_per_prompt={"video": 1, "image": 0}, **ENGINE_ARGS)
    try:
        ref = reference.data
        (out,) = generate(engine, [{"prompt": ref["video_prompt"], "multi_modal_data": {"video": reference.video(1)}}],
                          ref["top"])
        assert_same_answer(out, ref["videos"][1])
    finally:
        engine.llm_engine.engine_core.shutdown()


REFUSE = """
import sys
from vllm import LLM
LLM(sys.argv[1], limit_mm_per_prompt={{"video": 1}}, **{args!r})
"""


def start_engine(path: Path) -> subprocess.CompletedProcess:
    body = REFUSE.format(args=ENGINE_ARGS).splitlines()
    code = "if __name__ == '__main__':\n" + "\n".join("    " + line for line in body)
    return subprocess.run([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)


def test_checkpoint_without_compressor_weights_is_refused(reference: Reference):
    path = reference.dir / "stripped"
    run = start_engine(path)
    assert run.returncode != 0
    line = (
        f"llava_vqtoken.config.CheckpointError: {path} has no trained weights for its 'vqtoken' compressor "
        "(12 of 12 tensors missing, e.g. model.video_compressor.attention.footprint_mlp.0.weight); serve a "
        "checkpoint saved by llava-vqtoken with its compressor, not a stock or stripped one"
    )
    # raised in the engine's worker process, whose log lines vLLM prefixes with the process and logger
    assert any(r.endswith(" " + line) for r in run.stdout.splitlines()), run.stdout[-3000:]


def test_adaptive_k_is_refused_before_the_engine_starts(reference: Reference):
    path = reference.dir / "adaptive"
    run = start_engine(path)
    assert run.returncode != 0
    assert run.stdout.strip().splitlines()[-1] == (
        f"llava_vqtoken.config.CheckpointError: {path}: adaptive K (elbow) cannot be served by vLLM: vLLM "
        "reserves each video's placeholder tokens before the vision tower runs, and adaptive K is known only "
        "after clustering; serve a fixed-K checkpoint (video_compressor.adaptive null, num_tokens K)"
    )


@pytest.mark.parametrize(
    "saved, loaded",
    [
        ("vision_tower.embeddings.patch_embedding.weight",
         "vision_tower.vision_model.embeddings.patch_embedding.weight"),
        ("vision_tower.vision_model.post_layernorm.bias", "vision_tower.vision_model.post_layernorm.bias"),
        ("model.vision_tower.encoder.layers.0.mlp.fc1.weight",
         "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"),
        ("model.video_compressor.attention.q_proj.weight", "video_compressor.attention.q_proj.weight"),
        ("language_model.model.norm.weight", "language_model.model.norm.weight"),
        ("image_newline", "image_newline"),
    ],
)
def test_hub_key(saved: str, loaded: str):
    assert hub_key(saved) == loaded


def test_video_tokens_known_answers():
    from llava_vqtoken.config import CompressorConfig

    assert video_tokens(CompressorConfig(num_tokens=32), 16, (27, 27)) == 33
    assert video_tokens(CompressorConfig(num_tokens=32, newline=False), 16, (27, 27)) == 32
    released = CompressorConfig.released(adaptive=None, num_tokens=12, apply_attention=True)
    assert video_tokens(released, 8, (27, 27)) == 13  # max(frames, K) + 1
    assert video_tokens(released, 40, (27, 27)) == 41
