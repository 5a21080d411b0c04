"""transformers host: conversion, token counts, generate, save/load, mismatch errors, adaptive K."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaOnevisionProcessor

from llava_vqtoken.hosts.hf import (
    CheckpointError,
    VQTokenLlavaOnevisionForConditionalGeneration,
    VQTokenLlavaOnevisionProcessor,
    generate_adaptive,
)
from llava_vqtoken.video import load_video

MSGS = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what moves left?"}]}]


@pytest.fixture(scope="module")
def converted(tiny_model):
    model, info = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_model, video_compressor={"num_tokens": 8}, output_loading_info=True
    )
    proc = VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), model.config)
    return model.eval(), proc, info


@pytest.fixture(scope="module")
def clip(video_file):
    return load_video(video_file, 4)


def _inputs(proc, frames):
    prompt = proc.apply_chat_template(MSGS, add_generation_prompt=True)
    return proc(text=prompt, videos=[frames], return_tensors="pt")


def test_stock_checkpoint_converts_with_only_new_compressor_weights(converted):
    model, _, info = converted
    assert info["unexpected_keys"] == [] or not info["unexpected_keys"]
    assert info["missing_keys"] and all(k.startswith("model.video_compressor.") for k in info["missing_keys"])
    assert model.config.model_type == "vqtoken_llava_onevision"
    assert model.config.video_compressor["num_tokens"] == 8


def test_exact_token_counts_and_forward(converted, clip):
    model, proc, _ = converted
    inputs = _inputs(proc, clip)
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 9  # 8 codes + newline
    with torch.no_grad():
        feats = model.model.get_video_features(inputs["pixel_values_videos"], return_dict=True)
        out = model(**inputs)
    assert feats.pooler_output.shape == (1, 9, model.config.text_config.hidden_size)
    assert feats["video_key_map"][0].shape == (4, 27, 27)
    assert out.logits.shape[:2] == inputs["input_ids"].shape


def test_greedy_and_beam_generate(converted, clip):
    model, proc, _ = converted
    inputs = _inputs(proc, clip)
    n = inputs["input_ids"].shape[1]
    greedy = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    beam = model.generate(**inputs, max_new_tokens=4, do_sample=False, num_beams=2, min_new_tokens=4)
    assert greedy.shape == (1, n + 4) and beam.shape == (1, n + 4)


def test_save_load_round_trip(converted, clip, tmp_path):
    model, proc, _ = converted
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    m2 = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    p2 = AutoProcessor.from_pretrained(tmp_path)
    assert type(m2) is VQTokenLlavaOnevisionForConditionalGeneration
    assert type(p2) is VQTokenLlavaOnevisionProcessor
    a, b = model.state_dict(), m2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs = _inputs(p2, clip)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, m2(**inputs).logits, atol=1e-5)


def test_stock_checkpoint_without_spec_is_refused(tiny_model):
    with pytest.raises(CheckpointError, match="stock LLaVA-OneVision"):
        VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model)


def test_processor_token_count_mismatch_is_a_clear_error(converted, clip, tiny_model):
    model, _, _ = converted
    stock_proc = LlavaOnevisionProcessor.from_pretrained(tiny_model)
    prompt = stock_proc.apply_chat_template(MSGS, add_generation_prompt=True)
    inputs = stock_proc(text=prompt, videos=[clip], return_tensors="pt")
    with pytest.raises(CheckpointError, match="video placeholder tokens"), torch.no_grad():
        model(**inputs)


def test_gradient_reaches_compressor_and_projector(converted, clip):
    model, proc, _ = converted
    inputs = _inputs(proc, clip)
    model.zero_grad()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "video_compressor" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_adaptive_k_batch_with_different_k(tiny_model):
    model = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_model, video_compressor={"num_tokens": None, "adaptive": "elbow", "min_codes": 3, "max_codes": 20}
    ).eval()
    proc = VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), model.config)
    with torch.no_grad():  # no positional signal: identical patches give identical tokens
        for name, p in model.model.vision_tower.named_parameters():
            if "position_embedding" in name:
                p.zero_()
    flat = np.full((4, 96, 128, 3), 30, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 255, size=(4, 96, 128, 3), dtype=np.uint8)
    prompt = proc.apply_chat_template(MSGS, add_generation_prompt=True)
    out, inputs = generate_adaptive(model, proc, [flat, noise], [prompt, prompt], max_new_tokens=3, do_sample=False)
    counts = (inputs["input_ids"] == model.config.video_token_id).sum(1).tolist()
    assert counts == model.model.last_video_tokens and counts[0] == 4 and counts[1] > counts[0]
    alone, _ = generate_adaptive(model, proc, [noise], [prompt], max_new_tokens=3, do_sample=False)
    assert torch.equal(alone[0, -3:], out[1, -3:])
    with pytest.raises(CheckpointError, match="adaptive K"):
        proc(text=prompt, videos=[flat], return_tensors="pt")


def test_trust_remote_code_export_loads_without_the_package(converted, tmp_path):
    import subprocess
    import sys
    import textwrap

    from llava_vqtoken.hosts.hf.export import export_remote_code

    model, proc, _ = converted
    export_remote_code(model, proc, tmp_path / "remote")
    code = textwrap.dedent(f'''
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):  # the package is not importable in this process
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "llava_vqtoken":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from transformers import AutoModelForImageTextToText, AutoProcessor
        path = {str(tmp_path / "remote")!r}
        m = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
        p = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        v = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
        msgs = [{{"role": "user", "content": [{{"type": "video"}}, {{"type": "text", "text": "hi"}}]}}]
        x = p(text=p.apply_chat_template(msgs, add_generation_prompt=True), videos=[v], return_tensors="pt")
        n = int((x["input_ids"] == m.config.video_token_id).sum())
        out = m.generate(**x, max_new_tokens=2, min_new_tokens=2)
        print("RESULT", type(m).__name__, n, out.shape[1] - x["input_ids"].shape[1])
    ''')
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    assert line, r.stderr[-2000:]
    assert line[0].split()[1:] == ["VQTokenLlavaOnevisionForConditionalGeneration", "9", "2"]


def test_new_compressor_weights_are_initialised_sanely(converted):
    model, _, _ = converted
    for name, p in model.model.video_compressor.named_parameters():
        assert torch.isfinite(p).all() and p.abs().max() < 10, name
