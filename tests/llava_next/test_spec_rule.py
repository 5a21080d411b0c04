"""LLaVA-NeXT host: the same spec rule and CheckpointError as the transformers host (README "Which spec
runs"); new compressor weights come from the spec's seed, never from uninitialised memory; a
non-finite compressor output is an error, never a generation."""

import json

import pytest
import torch

pytest.importorskip("llava", reason="LLaVA-NeXT (package 'llava') is not installed")

import numpy as np  # noqa: E402

from llava_vqtoken.config import CheckpointError, CompressorConfig  # noqa: E402
from llava_vqtoken.core.compressor import CompressionError  # noqa: E402
from llava_vqtoken.hosts.llava_next import OVERRIDE_KEY, follow_training_flags  # noqa: E402
from llava_vqtoken.hosts.llava_next.tiny import build_tiny_llava_qwen  # noqa: E402

VQ8 = CompressorConfig(num_tokens=8).to_dict()


def load(path, **kw):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(path), None, "llava_qwen", device_map="auto", torch_dtype="bfloat16",
                                 attn_implementation="sdpa", **kw)


def video_inputs(tokenizer, image_processor, frames=4):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    video = np.random.default_rng(0).integers(0, 255, size=(frames, 240, 320, 3), dtype=np.uint8)
    pixels = image_processor.preprocess(list(video), return_tensors="pt")["pixel_values"].to(torch.bfloat16)
    prompt = "<|im_start|>user\n<image>\nwhat moves ?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    return ids, pixels


@pytest.fixture(scope="module")
def authors_release(installed, tmp_path_factory):
    """The authors' layout: model.cross_attention.* weights, no video_compressor key in config.json."""
    path = build_tiny_llava_qwen(tmp_path_factory.mktemp("r") / "llava-qwen-release",
                                 video_compressor=CompressorConfig.released().to_dict())
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("video_compressor")
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def stock(installed, tmp_path_factory):
    return build_tiny_llava_qwen(tmp_path_factory.mktemp("s") / "llava-qwen-stock")


@pytest.fixture(scope="module")
def vq8(installed, tmp_path_factory):
    return build_tiny_llava_qwen(tmp_path_factory.mktemp("v") / "llava-qwen-vq8", video_compressor=VQ8)


def _file_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_the_authors_release_without_a_spec_runs_its_trained_attention_not_stock_pooling(authors_release, capfd):
    capfd.readouterr()
    tok, model, proc, _ = load(authors_release)
    assert "the authors' released layout" in capfd.readouterr().err
    assert CompressorConfig.from_dict(model.config.video_compressor) == CompressorConfig.released()
    saved = {k: v for k, v in _file_tensors(authors_release).items() if k.startswith("model.cross_attention.")}
    state = model.state_dict()
    assert len(saved) == 20 and all(torch.equal(state[k], v.to(state[k].dtype)) for k, v in saved.items())
    ids, pixels = video_inputs(tok, proc)
    with torch.no_grad():
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [pixels], ["video"], None)
    (k,) = model.get_model().last_video_tokens
    assert 12 <= k <= 32  # compressed, not 4 x 196 pooled tokens


def test_the_authors_release_with_the_default_spec_is_refused_in_one_line(authors_release):
    with pytest.raises(CheckpointError) as e:  # the whole default spec, as the eval plugin used to pass
        load(authors_release, overwrite_config={"video_compressor": CompressorConfig().to_dict()})
    msg = str(e.value)
    assert "\n" not in msg and "attention='released'" in msg and "attention='paper'" in msg, msg
    assert "would drop its trained compressor weights" in msg and "--override-spec" in msg
    with pytest.raises(CheckpointError, match="trained with num_tokens=None; num_tokens=32 has no parameters"):
        load(authors_release, overwrite_config={"video_compressor": {"num_tokens": 32}})


def test_a_flag_change_of_a_saved_spec_is_refused_unless_asked(vq8, capfd):
    with pytest.raises(CheckpointError, match="trained with num_tokens=8; num_tokens=12 has no parameters"):
        load(vq8, overwrite_config={"video_compressor": {"num_tokens": 12}})
    capfd.readouterr()
    _, model, _, _ = load(vq8, overwrite_config={"video_compressor": {"num_tokens": 12}, OVERRIDE_KEY: True})
    assert model.get_model().video_compressor.config.num_tokens == 12
    assert "num_tokens 8 -> 12" in capfd.readouterr().err
    assert not hasattr(model.config, OVERRIDE_KEY)  # never saved with the checkpoint
    _, model, _, _ = load(vq8, overwrite_config={"video_compressor": {"iters": 3}})  # runtime: allowed
    assert model.get_model().video_compressor.config.iters == 3


def test_released_attention_on_a_checkpoint_without_it_gets_seeded_weights_and_generates(stock):
    spec = CompressorConfig.released(apply_attention=True).to_dict()
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        tok, model, proc, _ = load(stock, overwrite_config={"video_compressor": spec})
        states.append({k: v.clone() for k, v in model.state_dict().items() if "cross_attention" in k})
    assert len(states[0]) == 20
    assert all(torch.isfinite(v.float()).all() for v in states[0].values())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # from the spec's seed alone
    ids, pixels = video_inputs(tok, proc)
    with torch.no_grad():
        out = model.generate(ids, images=[pixels], modalities=["video"], max_new_tokens=2, min_new_tokens=2,
                             do_sample=False)
    assert out.shape == (1, 2)


def test_a_non_finite_compressor_output_is_an_error_not_a_generation(vq8):
    tok, model, proc, _ = load(vq8)
    with torch.no_grad():
        next(model.get_model().video_compressor.parameters()).fill_(float("nan"))
    ids, pixels = video_inputs(tok, proc)
    with pytest.raises(CompressionError, match="output contains NaN or Inf"), torch.no_grad():
        model.generate(ids, images=[pixels], modalities=["video"], max_new_tokens=2, do_sample=False)


def test_training_flags_on_a_checkpoint_with_a_compressor_follow_the_rule(vq8):
    _, model, _, _ = load(vq8)
    inner = model.get_model()
    with pytest.raises(CheckpointError, match="trained with num_tokens=8; num_tokens=12"):
        follow_training_flags(inner, json.dumps({"num_tokens": 12}))
    follow_training_flags(inner, {"num_tokens": 8, "iters": 4})
    assert inner.video_compressor.config.iters == 4 and model.config.video_compressor["iters"] == 4
