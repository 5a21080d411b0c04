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


# ---------------------------------------------------------------- which spec runs (README "Which spec runs")


@pytest.fixture(scope="module")
def saved_vq(tiny_model, tmp_path_factory):
    """VQ12 / VQ32 / NONE_NORM: checkpoints saved through this host from the tiny stock model."""
    out = {}
    specs = {"VQ12": {"num_tokens": 12}, "VQ32": {"num_tokens": 32},
             "NONE_NORM": {"num_tokens": 16, "attention": "none", "codebook": "normalized"}}
    for name, spec in specs.items():
        d = tmp_path_factory.mktemp(name)
        m = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model, video_compressor=spec)
        m.save_pretrained(d)
        proc = VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), m.config)
        proc.save_pretrained(d)
        out[name] = d
    return out


def _saved_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_load_model_runs_the_saved_spec_with_every_trained_tensor(saved_vq):
    from llava_vqtoken.hosts.hf.load import load_model

    loaded = load_model(saved_vq["VQ12"])
    assert loaded.decision.from_checkpoint and loaded.decision.spec.num_tokens == 12
    assert loaded.processor.video_compressor["num_tokens"] == 12
    saved = _saved_tensors(saved_vq["VQ12"])
    comp = {k: v for k, v in saved.items() if "video_compressor" in k}
    assert len(comp) == 12 and len(saved) == 80
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in comp.items())


def test_load_model_refuses_an_untrained_change_in_one_line_and_reports_an_asked_one(saved_vq):
    from llava_vqtoken.hosts.hf.load import load_model

    with pytest.raises(CheckpointError, match="trained with num_tokens=32; num_tokens=12") as e:
        load_model(saved_vq["VQ32"], {"num_tokens": 12})
    assert "\n" not in str(e.value) and "--override-spec" in str(e.value)
    lines = []
    loaded = load_model(saved_vq["VQ32"], {"num_tokens": 12, "iters": 3}, allow_override=True, note=lines.append)
    assert loaded.model.config.compressor.num_tokens == 12 and loaded.processor.video_compressor["num_tokens"] == 12
    assert len(lines) == 1 and "num_tokens 32 -> 12" in lines[0] and "iters 10 -> 3" in lines[0]


def test_eval_model_keeps_the_saved_attention_and_codebook(saved_vq, capfd):
    """eval.sh --compressors vqtoken:num_tokens=32 on an attention=none/codebook=normalized checkpoint
    used to run attention=paper with fresh parameters and codebook=raw, silently."""
    from llava_vqtoken.hosts.lmms_eval.plugin import VQTokenHF

    path = str(saved_vq["NONE_NORM"])
    lm = VQTokenHF(pretrained=path, device="cpu", num_tokens="16")
    assert (lm.spec.attention, lm.spec.codebook, lm.spec.num_tokens) == ("none", "normalized", 16)
    assert list(lm.model.model.video_compressor.parameters()) == []
    with pytest.raises(CheckpointError, match="attention='none'; attention='paper' would drop"):
        VQTokenHF(pretrained=path, device="cpu", num_tokens="16", attention="paper")
    with pytest.raises(CheckpointError, match="num_tokens=16; num_tokens=32"):
        VQTokenHF(pretrained=path, device="cpu", num_tokens="32")
    capfd.readouterr()
    lm = VQTokenHF(pretrained=path, device="cpu", num_tokens="32", override_spec="true")
    assert lm.spec.num_tokens == 32 and lm.spec.attention == "none"
    assert "num_tokens 16 -> 32" in capfd.readouterr().err


def test_train_build_keeps_the_saved_spec_unless_asked(saved_vq, capsys, tmp_path):
    from llava_vqtoken.train.hf_train import build, parse_args

    model, proc = build(parse_args(["--model", str(saved_vq["VQ32"])]))
    assert model.config.compressor.num_tokens == 32 and proc.video_compressor["num_tokens"] == 32
    capsys.readouterr()
    for flags, words in ((["--model", str(saved_vq["VQ32"]), "--num-tokens", "12"], "num_tokens=32; num_tokens=12"),
                         (["--model", str(tmp_path)], "is not a model directory: it has no config.json")):
        with pytest.raises(SystemExit) as e:
            build(parse_args(flags))
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("train.sh: error: ") and words in err[0]
    model, proc = build(parse_args(["--model", str(saved_vq["VQ32"]), "--num-tokens", "12", "--override-spec"]))
    assert model.config.compressor.num_tokens == 12 and proc.video_compressor["num_tokens"] == 12


def test_converting_twice_gives_identical_compressor_weights_whatever_the_global_seed(tiny_model):
    states = []
    cls = VQTokenLlavaOnevisionForConditionalGeneration
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = cls.from_pretrained(tiny_model, video_compressor={"num_tokens": 8})
        states.append({k: v for k, v in m.state_dict().items() if "video_compressor" in k})
    assert len(states[0]) == 12
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    # and a different spec seed gives different weights: the seed is what decides
    m = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_model, video_compressor={"num_tokens": 8, "seed": 1}
    )
    other = {k: v for k, v in m.state_dict().items() if "video_compressor" in k}
    assert not all(torch.equal(states[0][k], other[k]) for k in other)


def test_conversion_says_one_line_instead_of_the_load_report_table(tiny_model, caplog, capfd):
    import logging

    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model, video_compressor={"num_tokens": 8})
    text = caplog.text + capfd.readouterr().err
    assert "MISSING" not in text and "LOAD REPORT" not in text
    mine = [r.getMessage() for r in caplog.records if r.name == "llava_vqtoken"]
    assert mine == [f"{tiny_model}: 12 new compressor tensors (24,448 parameters, seed 0); every stock weight loaded"]


def test_a_missing_stock_weight_is_refused_not_hidden(tiny_model, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    for f in tiny_model.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    state = load_file(str(tiny_model / "model.safetensors"))
    dropped = next(k for k in state if "multi_modal_projector.linear_1.weight" in k)
    del state[dropped]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 stock weight\(s\) missing \(model.multi_modal_projector.linear_1"):
        VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path, video_compressor={"num_tokens": 8})


def test_placeholder_mismatch_inside_generate_is_a_checkpoint_error(converted, clip, tiny_model):
    """generate() computes the features before forward and passes pixel_values_videos=None there: the
    mismatch used to surface as transformers' 'Video features and video tokens do not match'."""
    model, _, _ = converted
    stock_proc = LlavaOnevisionProcessor.from_pretrained(tiny_model)
    inputs = stock_proc(text=stock_proc.apply_chat_template(MSGS, add_generation_prompt=True), videos=[clip],
                        return_tensors="pt")
    with pytest.raises(CheckpointError, match=r"holds 785 video placeholder tokens but the VQToken compressor gave 9"):
        model.generate(**inputs, max_new_tokens=2)


def test_a_json_string_spec_converts_like_the_dict(tiny_model):
    m = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model, video_compressor='{"num_tokens": 8}')
    assert m.config.compressor.num_tokens == 8


def test_zero_frames_to_the_processor_or_the_model_is_one_clear_error(converted):
    from llava_vqtoken.core.compressor import CompressionError

    model, proc, _ = converted
    prompt = proc.apply_chat_template(MSGS, add_generation_prompt=True)
    with pytest.raises(CompressionError, match="video 0 has no frames"):
        proc(text=prompt, videos=[np.zeros((0, 64, 64, 3), dtype=np.uint8)], return_tensors="pt")
    with pytest.raises(CompressionError, match="at least one frame, got shape \\(1, 0, 3, 384, 384\\)"):
        model.model.get_video_features(torch.zeros(1, 0, 3, 384, 384))


def test_eval_settings_are_checked_against_the_checkpoint_before_launch(saved_vq):
    from llava_vqtoken.config import ConfigError
    from llava_vqtoken.hosts.lmms_eval.plugin import check_model_args

    path = str(saved_vq["NONE_NORM"])
    check_model_args("hf", {"pretrained": path, "compressor": "vqtoken", "num_tokens": "16", "frames": "4"})
    with pytest.raises(ConfigError, match="trained with num_tokens=16; num_tokens=32"):
        check_model_args("hf", {"pretrained": path, "compressor": "vqtoken", "num_tokens": "32"})
    with pytest.raises(ConfigError, match="name='vqtoken'.*name='pool'.*would drop its trained compressor weights"):
        check_model_args("hf", {"pretrained": path, "compressor": "pool", "num_tokens": "32"})
    check_model_args("hf", {"pretrained": path, "compressor": "pool", "num_tokens": "32", "override_spec": "true"})
