"""Which tokens carry loss: every assistant turn (its text and end-of-turn marker), nothing else."""

import json

import pytest

from llava_vqtoken.train.data import IGNORE, VideoQADataset
from llava_vqtoken.video import make_video

TWO_TURNS = [
    {"from": "human", "value": "<image>\nwhich direction does the square move?"},
    {"from": "gpt", "value": "left"},
    {"from": "human", "value": "what colour is it?"},
    {"from": "gpt", "value": "red"},
]


@pytest.fixture(scope="module")
def proc(tiny_model):
    from transformers import AutoProcessor

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor

    cfg = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_model, video_compressor={"num_tokens": 8}).config
    return VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), cfg)


def encode(proc, tmp_path, conversations, video=True):
    rec = {"conversations": conversations}
    if video:
        make_video(tmp_path / "c.mp4", frames=6, height=32, width=32)
        rec["video"] = "c.mp4"
    (tmp_path / "d.json").write_text(json.dumps([rec]))
    return VideoQADataset(tmp_path / "d.json", proc, frames=4)[0]


def ids(proc, text):
    return proc.tokenizer(text)["input_ids"]


def test_two_turn_record_supervises_both_answers_and_masks_the_rest(proc, tmp_path):
    item = encode(proc, tmp_path, TWO_TURNS)
    video = proc.tokenizer.convert_tokens_to_ids("<video>")
    turn1 = ids(proc, "<|im_start|>user\n<video>\nwhich direction does the square move?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    turn1 = turn1[: turn1.index(video)] + [video] * 9 + turn1[turn1.index(video) + 1:]  # 8 codes + newline
    answer1 = ids(proc, "left<|im_end|>\n")
    turn2 = ids(proc, "<|im_start|>user\nwhat colour is it?<|im_end|>\n<|im_start|>assistant\n")
    answer2 = ids(proc, "red<|im_end|>\n")
    assert item["input_ids"].tolist() == turn1 + answer1 + turn2 + answer2
    expected = [IGNORE] * len(turn1) + answer1 + [IGNORE] * len(turn2) + answer2
    assert item["labels"].tolist() == expected
    spans = [proc.tokenizer.decode([t for t in item["labels"][a:b].tolist()])
             for a, b in ((len(turn1), len(turn1) + len(answer1)), (len(expected) - len(answer2), len(expected)))]
    assert spans == ["left<|im_end|>\n", "red<|im_end|>\n"]


def test_text_only_two_turn_record(proc, tmp_path):
    item = encode(proc, tmp_path, [{"from": "human", "value": "what is a square?"}, {"from": "gpt", "value": "a shape"},
                                   {"from": "human", "value": "and a circle?"}, {"from": "gpt", "value": "round"}],
                  video=False)
    kept = [t for t in item["labels"].tolist() if t != IGNORE]
    assert kept == ids(proc, "a shape<|im_end|>\n") + ids(proc, "round<|im_end|>\n")
    assert "pixel_values_videos" not in item


def test_a_cut_through_the_video_placeholders_skips_the_sample_and_a_text_cut_is_recorded(proc, tmp_path):
    """max_length used to cut any sample silently, through its video placeholders too (a prompt whose
    placeholder count no longer matches the compressor's)."""
    make_video(tmp_path / "c.mp4", frames=6, height=32, width=32)
    recs = [{"video": "c.mp4", "conversations": TWO_TURNS},
            {"conversations": [{"from": "human", "value": "what is a square?"}, {"from": "gpt", "value": "a shape"}]}]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    full = VideoQADataset(tmp_path / "d.json", proc, frames=4)
    whole_text = full[1]
    video = proc.tokenizer.convert_tokens_to_ids("<video>")
    first = int((full[0]["input_ids"] == video).nonzero()[0])
    cut = first + 3  # inside the 9 placeholders
    ds = VideoQADataset(tmp_path / "d.json", proc, frames=4, max_length=cut)
    item = ds[0]  # the video sample is skipped, the next record takes its place
    assert item["input_ids"].tolist() == whole_text["input_ids"][:cut].tolist()
    assert item["labels"].tolist() == whole_text["labels"][:cut].tolist()
    assert len(ds.skipped) == 1 and next(iter(ds.skipped)).startswith("record 0 (")
    assert list(ds.truncated.values()) == [len(whole_text["input_ids"])]
    roomy = VideoQADataset(tmp_path / "d.json", proc, frames=4, max_length=first + 9 + 1)
    kept = roomy[0]  # the cut falls after the placeholders: the sample stays, cut and recorded
    assert (kept["input_ids"] == video).sum() == 9 and len(kept["input_ids"]) == first + 10
    assert not roomy.skipped and list(roomy.truncated.values()) == [len(full[0]["input_ids"])]
