"""LLaVA-NeXT plugin on a tiny llava_qwen built offline (skipped when LLaVA-NeXT is not installed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("llava", reason="LLaVA-NeXT (package 'llava') is not installed")

from llava_vqtoken.config import CompressorConfig  # noqa: E402
from llava_vqtoken.hosts.llava_next.tiny import build_tiny_llava_qwen  # noqa: E402

SPEC = CompressorConfig(num_tokens=8).to_dict()


def load(path, **kw):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(path), None, "llava_qwen", device_map="auto", torch_dtype="bfloat16",
                                 attn_implementation="sdpa", **kw)


def video_inputs(tokenizer, image_processor, frames=4):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, size=(frames, 240, 320, 3), dtype=np.uint8)
    pixels = image_processor.preprocess(list(video), return_tensors="pt")["pixel_values"].to(torch.bfloat16)
    prompt = "<|im_start|>user\n<image>\nwhat moves ?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    return ids, pixels


@pytest.fixture(scope="module")
def tiny_vq(installed, tmp_path_factory):
    return build_tiny_llava_qwen(tmp_path_factory.mktemp("m") / "llava-qwen-tiny-vq", video_compressor=SPEC)


def test_video_forward_gives_exact_token_count_and_images_keep_their_path(tiny_vq):
    tok, model, proc, _ = load(tiny_vq)
    ids, pixels = video_inputs(tok, proc)
    with torch.no_grad():
        out = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [pixels], ["video"], None)
    embeds = out[4]
    n_text = ids.shape[1] - 1
    assert embeds.shape[1] - n_text == 8 + 1  # 8 codes + image_newline
    assert model.get_model().last_video_tokens == [8]
    with torch.no_grad():  # the same frames as an image batch never touch the compressor
        model.get_model().last_video_tokens = None
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [pixels[:1]], ["image"], [(240, 320)])
    assert model.get_model().last_video_tokens is None


def test_generate(tiny_vq):
    tok, model, proc, _ = load(tiny_vq)
    ids, pixels = video_inputs(tok, proc)
    with torch.no_grad():
        out = model.generate(ids, images=[pixels], modalities=["video"], max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] >= 1


def test_save_and_reload_restore_compressor_exactly(tiny_vq, tmp_path):
    _, model, _, _ = load(tiny_vq)
    before = {k: v.clone() for k, v in model.state_dict().items() if "video_compressor" in k}
    assert before
    again = load(tiny_vq)[1]
    after = {k: v for k, v in again.state_dict().items() if "video_compressor" in k}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_released_checkpoint_layout_loads_without_missing_or_unexpected_keys(installed, tmp_path):
    from transformers import AutoConfig

    released = CompressorConfig.released().to_dict()
    path = build_tiny_llava_qwen(tmp_path / "llava-qwen-released", video_compressor=released)
    keys = [k for k in json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]] \
        if (path / "model.safetensors.index.json").exists() else None
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    cross = sorted(k for k in keys if k.startswith("model.cross_attention."))
    assert len(cross) == 20 and "model.cross_attention.to_q_proj.weight" in cross
    assert not any("video_compressor" in k for k in keys)
    # a released checkpoint has no video_compressor key: give it through overwrite_config, as lmms-eval does
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("video_compressor")
    (path / "config.json").write_text(json.dumps(cfg))
    from llava.model.language_model.llava_qwen import LlavaQwenForCausalLM

    cfg_obj = AutoConfig.from_pretrained(path)
    cfg_obj.video_compressor = released
    model, info = LlavaQwenForCausalLM.from_pretrained(path, config=cfg_obj, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert model.get_model().cross_attention.to_q_proj.weight.shape == (64, 27 * 27)
    tok, m2, proc, _ = load(path, overwrite_config={"video_compressor": released})
    ids, pixels = video_inputs(tok, proc)
    with torch.no_grad():
        out = m2.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [pixels], ["video"], None)
    (k,) = m2.get_model().last_video_tokens
    assert 12 <= k <= 32  # centroids only, as released
    assert out[4].shape[1] - (ids.shape[1] - 1) == k + 1


def test_two_training_steps_through_llava_next_trainer_with_compressor_lr_group(installed, tmp_path,
                                                                              stock_llava_qwen):
    stock = stock_llava_qwen  # the spec comes in through --video_compressor and initialize_vision_modules
    frames = tmp_path / "vid"
    frames.mkdir()
    from llava_vqtoken.video import make_video

    make_video(frames / "clip.mp4", frames=8, height=64, width=64)
    data = [{"id": "0", "video": "clip.mp4", "conversations": [
        {"from": "human", "value": "<image>\nwhat moves ?"}, {"from": "gpt", "value": "a red square"}]}] * 4
    (tmp_path / "data.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    args = [
        "--model_name_or_path", str(stock), "--version", "qwen_1_5", "--data_path", str(tmp_path / "data.json"),
        "--video_folder", str(frames), "--image_folder", str(frames),
        "--vision_tower", "tiny-org/tiny-siglip-patch14-384",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False", "--mm_patch_merge_type", "spatial_unpad", "--mm_newline_position",
        "one_token", "--mm_spatial_pool_mode", "bilinear", "--image_aspect_ratio", "anyres_max_9",
        "--image_grid_pinpoints", "[[384, 384], [384, 768]]", "--frames_upbound", "4",
        "--mm_tunable_parts", "mm_mlp_adapter,video_compressor", "--video_compressor", json.dumps(SPEC),
        "--video_compressor_lr", "3e-3", "--mm_projector_lr", "2e-3", "--learning_rate", "1e-3",
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none",
        "--model_max_length", "2048", "--dataloader_num_workers", "0", "--lazy_preprocess", "True",
        "--attn_implementation", "sdpa", "--use_cpu", "True", "--bf16", "False",
    ]
    probe = tmp_path / "groups.json"
    code = f"""
import json, sys
import llava_vqtoken.train.llava_next as T
T.patch_training()
import llava.train.llava_trainer as lt
orig = lt.LLaVATrainer.create_optimizer
def spy(self):
    opt = orig(self)
    inner = getattr(opt, "optimizer", opt)
    groups = [{{"name": g.get("name"), "lr": g["lr"], "n": len(g["params"])}} for g in inner.param_groups]
    json.dump(groups, open({str(probe)!r}, "w"))
    return opt
lt.LLaVATrainer.create_optimizer = spy
T.main({args!r})
"""
    env = dict(os.environ, WANDB_DISABLED="true")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert probe.exists(), r.stdout[-3000:] + r.stderr[-5000:]
    groups = json.loads(probe.read_text())
    vq = [g for g in groups if g["name"] == "video_compressor"]
    assert len(vq) == 1 and vq[0]["lr"] == 3e-3 and vq[0]["n"] > 0
    assert any(g["lr"] == 2e-3 for g in groups)  # the projector's own LR is a group too
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "'loss'" in r.stdout + r.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["video_compressor"]["num_tokens"] == 8 and "video_compressor" in saved["mm_tunable_parts"]
    tok, model, proc, _ = load(out)
    ids, pixels = video_inputs(tok, proc)
    with torch.no_grad():
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [pixels], ["video"], None)
    assert model.get_model().last_video_tokens == [8]


def test_patch_applies_to_named_commit():
    src = os.environ.get("LLAVA_NEXT_SRC")
    if not src:
        pytest.skip("set LLAVA_NEXT_SRC to a LLaVA-NeXT checkout at b42941c to check patches/ applies")
    patch = Path(__file__).resolve().parents[2] / "patches" / "llava-next-b42941c-vqtoken.patch"
    r = subprocess.run(["git", "apply", "--check", str(patch)], cwd=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_stock_checkpoint_with_spec_gets_finite_small_compressor_weights(installed, tmp_path):
    path = build_tiny_llava_qwen(tmp_path / "llava-qwen-stock2")
    _, model, _, _ = load(path, overwrite_config={"video_compressor": SPEC})
    for name, p in model.get_model().video_compressor.named_parameters():
        assert torch.isfinite(p.float()).all() and p.float().abs().max() < 10, name


def test_launcher_names_a_missing_video_reader_instead_of_training_without_frames(monkeypatch, tmp_path):
    import llava.utils

    from llava_vqtoken.train.llava_next import check_video_reader

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"video": "a.mp4", "conversations": []}]))
    check_video_reader(str(data))  # both readers present in this environment: nothing to say
    monkeypatch.delattr(llava.utils, "VideoReader")
    with pytest.raises(SystemExit, match="cannot read videos"):
        check_video_reader(str(data))
    data.write_text(json.dumps([{"video": "shareVideoGPTV/a", "conversations": []}]))
    check_video_reader(str(data))  # frame folders are read with PIL


def test_text_only_samples_get_no_image_placeholders_from_the_tiny_tokenizer():
    # Qwen2's tokenizer has no unknown token; with one, preprocess_qwen maps unknown words to images
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.train.train import preprocess_qwen

    from llava_vqtoken.hosts.llava_next.tiny import _tokenizer

    turns = [[{"from": "human", "value": "what is a square? zebra"}, {"from": "gpt", "value": "a shape"}]]
    assert (preprocess_qwen(turns, _tokenizer(), has_image=False)["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 0
    turns[0][0]["value"] = "<image>\n" + turns[0][0]["value"]
    assert (preprocess_qwen(turns, _tokenizer(), has_image=True)["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1


@pytest.mark.parametrize("mods", [["video", "text", "video"], ["text", "image"]])
def test_training_forward_calls_the_compressor_exactly_once_and_grads_reach_it(tiny_vq, mods):
    # ZeRO-3 ranks must gather the same parameters in the same order: one call per forward, whatever the batch
    tok, model, proc, _ = load(tiny_vq)
    ids, video = video_inputs(tok, proc)
    text_ids = tok("<|im_start|>user\nwhat is a square ?<|im_end|>\n", return_tensors="pt").input_ids
    blank = torch.zeros(1, *video.shape[1:], dtype=video.dtype)
    rows = [ids[0] if m != "text" else text_ids[0] for m in mods]
    images = [video if m == "video" else blank for m in mods]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    input_ids = torch.stack([torch.cat([r, torch.full((width - len(r),), pad)]) for r in rows])
    calls = []
    comp = model.get_model().video_compressor
    handle = comp.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    model.train()
    try:
        out = model(input_ids=input_ids, attention_mask=input_ids.ne(pad), labels=input_ids.clone(), images=images,
                    modalities=mods, image_sizes=[(320, 240)] * len(mods))
        out.loss.backward()
    finally:
        handle.remove()
        model.eval()
    assert calls == [max(1, mods.count("video"))]  # one call, holding every video of the batch
    grads = [p.grad for p in comp.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    if "video" not in mods:
        assert all(float(g.abs().sum()) == 0 for g in grads)


PATCHED_CHECK = """
import sys, numpy as np, torch
import llava
assert llava.__file__.startswith(sys.argv[1]), llava.__file__
from llava_vqtoken.hosts.llava_next.tiny import build_tiny_llava_qwen
from llava.model.builder import load_pretrained_model
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import tokenizer_image_token
path = build_tiny_llava_qwen(sys.argv[2], video_compressor={"num_tokens": 8})
tok, model, proc, _ = load_pretrained_model(str(path), None, "llava_qwen", device_map="auto", torch_dtype="bfloat16",
                                            attn_implementation="sdpa")
video = np.random.default_rng(0).integers(0, 255, size=(4, 64, 64, 3), dtype=np.uint8)
pix = proc.preprocess(list(video), return_tensors="pt")["pixel_values"].to(torch.bfloat16)
ids = tokenizer_image_token("<|im_start|>user\\n<image>\\nwhat moves ?<|im_end|>\\n", tok, IMAGE_TOKEN_INDEX,
                            return_tensors="pt")
text = tok("<|im_start|>user\\nwhat is a square ?<|im_end|>\\n", return_tensors="pt").input_ids[0]
rows, pad = [ids, text, ids], tok.pad_token_id
input_ids = torch.stack([torch.cat([r, torch.full((max(map(len, rows)) - len(r),), pad)]) for r in rows])
calls = []
comp = model.get_model().video_compressor
comp.register_forward_hook(lambda m, i, o: calls.append(len(o)))
model.train()
out = model(input_ids=input_ids, attention_mask=input_ids.ne(pad), labels=input_ids.clone(),
            images=[pix, torch.zeros(1, *pix.shape[1:], dtype=pix.dtype), pix],
            modalities=["video", "text", "video"], image_sizes=[(64, 64)] * 3)
out.loss.backward()
assert calls == [2] and all(p.grad is not None for p in comp.parameters()), calls
model.eval()
with torch.no_grad():
    model.generate(ids[None], images=[pix], modalities=["video"], max_new_tokens=2, do_sample=False)
assert model.get_model().last_video_tokens == [8]
print("ok")
"""


def test_patched_checkout_trains_with_one_compressor_call_and_generates(tmp_path):
    import shutil

    src = os.environ.get("LLAVA_NEXT_SRC")
    if not src:
        pytest.skip("set LLAVA_NEXT_SRC to a LLaVA-NeXT checkout at b42941c to run the patched code")
    shutil.copytree(Path(src) / "llava", tmp_path / "src" / "llava")
    patch = Path(__file__).resolve().parents[2] / "patches" / "llava-next-b42941c-vqtoken.patch"
    subprocess.run(["git", "apply", str(patch)], cwd=tmp_path / "src", check=True)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "src"))
    r = subprocess.run([sys.executable, "-c", PATCHED_CHECK, str(tmp_path / "src"), str(tmp_path / "llava-qwen-p")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
