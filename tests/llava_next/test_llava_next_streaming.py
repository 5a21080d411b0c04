"""Streaming on the LLaVA-NeXT host (issue 18): a spec with chunk_frames > 0 sends a video through the
vision tower and projector chunk_frames frames at a time and fits the codebook over the chunks, as the
transformers host does; in training it is refused in one line. Skipped where LLaVA-NeXT is absent."""

import numpy as np
import pytest
import torch

pytest.importorskip("llava", reason="LLaVA-NeXT (package 'llava') is not installed")

from llava_vqtoken.config import CompressorConfig  # noqa: E402
from llava_vqtoken.core.compressor import CompressionError  # noqa: E402
from llava_vqtoken.core.streaming import FeatureStore, compress_streamed  # noqa: E402
from llava_vqtoken.hosts.llava_next.tiny import build_tiny_llava_qwen  # noqa: E402

K = 8
CHUNK = 3
FRAMES = 7  # blocks of 3, 3, 1
SIDE = 27  # SigLIP-384/14 patches per side
REFUSAL = ("chunk_frames streams at inference only (eval mode, no gradients); set chunk_frames=0 "
           "to train")


@pytest.fixture(scope="module")
def tiny_vq(installed, tmp_path_factory):
    spec = CompressorConfig(num_tokens=K).to_dict()
    return build_tiny_llava_qwen(tmp_path_factory.mktemp("m") / "llava-qwen-tiny-vq", video_compressor=spec)


def load_with_chunk(path, chunk: int):
    """The checkpoint with chunk_frames set through overwrite_config (a runtime field: no override needed)."""
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(path), None, "llava_qwen", device_map="auto", torch_dtype="bfloat16",
                                 attn_implementation="sdpa",
                                 overwrite_config={"video_compressor": {"chunk_frames": chunk}})


def video_inputs(tokenizer, image_processor, frames: int):
    """A prompt with one <image> and ``frames`` random 240x320 frames, preprocessed by LLaVA-NeXT."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    video = np.random.default_rng(0).integers(0, 255, size=(frames, 240, 320, 3), dtype=np.uint8)
    pixels = image_processor.preprocess(list(video), return_tensors="pt")["pixel_values"].to(torch.bfloat16)
    prompt = "<|im_start|>user\n<image>\nwhat moves ?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    return ids, pixels


def frames_seen_by_the_tower(model) -> list[int]:
    """Records the frame count of every vision-tower call (the memory bound: at most one chunk at a time)."""
    seen: list[int] = []
    tower = model.get_model().get_vision_tower()
    tower.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    return seen


def image_position(ids) -> int:
    """Where the visual tokens start in the embeddings: the <image> placeholder's index."""
    from llava.constants import IMAGE_TOKEN_INDEX

    return int((ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0, 0])


def video_pass(model, ids, pixels):
    with torch.no_grad():
        return model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels, ["video"] * len(pixels),
                                                          None)


def test_streamed_video_goes_through_the_tower_a_chunk_at_a_time_and_equals_in_memory(tiny_vq):
    """Regression (issue 18): chunk_frames was ignored; the whole video went through the tower at once."""
    tok, model, proc, _ = load_with_chunk(tiny_vq, CHUNK)
    assert model.get_model().video_compressor.config.chunk_frames == CHUNK
    ids, pixels = video_inputs(tok, proc, frames=FRAMES)
    seen = frames_seen_by_the_tower(model)
    out = video_pass(model, ids, [pixels])
    assert seen == [3, 3, 1]  # the batched pass sees the first chunk only, then the rest chunk by chunk

    whole = load_with_chunk(tiny_vq, 0)[1]
    ref = video_pass(whole, ids, [pixels])
    ref_map = whole.get_model().last_video_key_maps[0]
    n_text = ids.shape[1] - 1
    assert out[4].shape[1] - n_text == ref[4].shape[1] - n_text == K + 1  # K codes + image_newline
    assert model.get_model().last_video_tokens == [K]
    (key_map,) = model.get_model().last_video_key_maps
    assert key_map.shape == ref_map.shape == (FRAMES, SIDE, SIDE)  # every frame in the key map
    assert torch.equal(key_map, ref_map)
    torch.testing.assert_close(out[4], ref[4], atol=2e-2, rtol=2e-2)  # bf16 tokens, fp32 sums in another order


def test_streamed_tokens_are_compress_streamed_on_the_same_features(tiny_vq):
    """The host adds nothing to the core's streaming: the same features in a FeatureStore, through
    compress_streamed (what the transformers host runs), give the same key map and tokens."""
    tok, model, proc, _ = load_with_chunk(tiny_vq, CHUNK)
    ids, pixels = video_inputs(tok, proc, frames=FRAMES)
    out = video_pass(model, ids, [pixels])
    comp = model.get_model().video_compressor
    with torch.no_grad():
        feats = torch.cat([model.encode_images(pixels[s : s + CHUNK]) for s in range(0, FRAMES, CHUNK)])
        store = FeatureStore(CHUNK)
        store.append(feats.reshape(FRAMES, SIDE, SIDE, -1))
        direct = compress_streamed(comp, store, feats.device)
    assert torch.equal(model.get_model().last_video_key_maps[0], direct.key_map)
    newline = model.get_model().image_newline[None].to(direct.tokens.dtype)
    start = image_position(ids)
    assert torch.equal(out[4][0, start : start + K + 1], torch.cat([direct.tokens, newline]))


def test_a_batch_of_videos_streams_each_one_and_keeps_images_on_their_path(tiny_vq):
    tok, model, proc, _ = load_with_chunk(tiny_vq, CHUNK)
    ids, long = video_inputs(tok, proc, frames=FRAMES)
    short = long[:2]  # shorter than one chunk: one block
    batch = torch.cat([ids, ids])
    seen = frames_seen_by_the_tower(model)
    video_pass(model, batch, [long, short])
    assert seen == [3 + 2, 3, 1]
    assert model.get_model().last_video_tokens == [K, K]
    assert [m.shape[0] for m in model.get_model().last_video_key_maps] == [FRAMES, 2]
    alone = load_with_chunk(tiny_vq, CHUNK)[1]
    video_pass(alone, ids, [short])
    assert torch.equal(alone.get_model().last_video_key_maps[0], model.get_model().last_video_key_maps[1])
    model.get_model().last_video_tokens = None
    with torch.no_grad():  # an image never touches the compressor
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, [long[:1]], ["image"], [(240, 320)])
    assert model.get_model().last_video_tokens is None


def test_generate_streams(tiny_vq):
    tok, model, proc, _ = load_with_chunk(tiny_vq, CHUNK)
    ids, pixels = video_inputs(tok, proc, frames=FRAMES)
    with torch.no_grad():
        out = model.generate(ids, images=[pixels], modalities=["video"], max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1 and out.shape[1] >= 1
    assert model.get_model().last_video_key_maps[0].shape[0] == FRAMES


def test_training_with_chunk_frames_is_refused_in_one_line(tiny_vq):
    """Regression (issue 18): a training forward with chunk_frames > 0 trained in memory, silently."""
    tok, model, proc, _ = load_with_chunk(tiny_vq, CHUNK)
    ids, pixels = video_inputs(tok, proc, frames=FRAMES)
    model.train()
    with pytest.raises(CompressionError) as err:
        model.prepare_inputs_labels_for_multimodal(ids, None, None, None, ids.clone(), [pixels], ["video"], None)
    assert str(err.value) == REFUSAL
    assert "\n" not in str(err.value)


def test_in_memory_batch_lists_every_video(tiny_vq):
    """Regression (new-user trial): with chunk_frames 0, each video is compressed by its own call and
    last_video_tokens / last_video_key_maps kept only the batch's last video ([K] for two videos)."""
    tok, model, proc, _ = load_with_chunk(tiny_vq, 0)
    ids, long = video_inputs(tok, proc, frames=FRAMES)
    video_pass(model, torch.cat([ids, ids]), [long, long[:2]])
    assert model.get_model().last_video_tokens == [K, K]
    assert [m.shape[0] for m in model.get_model().last_video_key_maps] == [FRAMES, 2]
