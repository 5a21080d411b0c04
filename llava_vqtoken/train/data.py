"""LLaVA-Video-178K-style data: a JSON list of {"video": path, "conversations": [...]} records.

Conversations use the LLaVA convention: {"from": "human"|"gpt", "value": "..."}, with ``<image>`` or
``<video>`` marking where the video goes in the first human turn. Records without "video" are
text-only. Loss is computed on the assistant turns only.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..video import VideoError, load_video, make_video

log = logging.getLogger("llava_vqtoken.train")
IGNORE = -100


def _messages(conversations: list[dict[str, str]], has_video: bool) -> list[dict[str, Any]]:
    msgs = []
    for turn in conversations:
        role = "user" if turn["from"] in ("human", "user") else "assistant"
        text = turn["value"].replace("<image>", "").replace("<video>", "").strip()
        if role == "user" and has_video and not msgs:
            content = [{"type": "video"}, {"type": "text", "text": text}]
        else:
            content = [{"type": "text", "text": text}]
        msgs.append({"role": role, "content": content})
    return msgs


class VideoQADataset(Dataset):
    """Tokenised samples; a missing or corrupt video is skipped with a warning naming it, and counted."""

    def __init__(self, path: str | os.PathLike[str], processor, frames: int, max_length: int = 2048) -> None:
        path = Path(path)
        self.records = json.loads(path.read_text())
        if not isinstance(self.records, list) or not self.records:
            raise ValueError(f"training data {path} must be a non-empty JSON list of records")
        self.root = path.parent
        self.processor, self.frames, self.max_length = processor, frames, max_length
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def _video_path(self, rec: dict[str, Any]) -> str:
        p = Path(rec["video"])
        return str(p if p.is_absolute() else self.root / p)

    def encode(self, rec: dict[str, Any]) -> dict[str, torch.Tensor]:
        has_video = "video" in rec and rec["video"]
        frames = load_video(self._video_path(rec), self.frames) if has_video else None
        msgs = _messages(rec["conversations"], bool(has_video))
        tok = self.processor.tokenizer
        # prompt = everything up to the last assistant turn; labels cover that turn only
        prompt = self.processor.apply_chat_template(msgs[:-1], add_generation_prompt=True)
        full = self.processor.apply_chat_template(msgs, add_generation_prompt=False)
        kw: dict[str, Any] = {"return_tensors": "pt"}
        if frames is not None:
            kw["videos"] = [frames]
        enc = self.processor(text=full, **kw)
        n_prompt = self.processor(text=prompt, **kw)["input_ids"].shape[1]
        ids = enc["input_ids"][0][: self.max_length]
        labels = ids.clone()
        labels[: min(n_prompt, len(ids))] = IGNORE
        item = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        if frames is not None:
            item["pixel_values_videos"] = enc["pixel_values_videos"][0]
        if tok.eos_token_id is not None and ids[-1] != tok.eos_token_id:
            pass  # the chat template already closes the assistant turn
        return item

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        for attempt in range(len(self.records)):
            rec = self.records[(i + attempt) % len(self.records)]
            try:
                return self.encode(rec)
            except VideoError as e:
                name = self._video_path(rec)
                if name not in self.skipped:
                    self.skipped.add(name)
                    log.warning("skipping sample with unusable video (%d skipped so far): %s", len(self.skipped), e)
        raise VideoError("no usable video in the whole training set")


def collate(batch: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids/labels/masks; stack the videos present (samples without video add none)."""
    n = max(len(b["input_ids"]) for b in batch)

    def pad(key: str, value: int) -> torch.Tensor:
        out = torch.full((len(batch), n), value, dtype=torch.long)
        for i, b in enumerate(batch):
            out[i, : len(b[key])] = b[key]
        return out

    out = {"input_ids": pad("input_ids", pad_id), "labels": pad("labels", IGNORE),
           "attention_mask": pad("attention_mask", 0)}
    vids = [b["pixel_values_videos"] for b in batch if "pixel_values_videos" in b]
    if vids:
        out["pixel_values_videos"] = torch.stack(vids)
    return out


DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def make_demo_dataset(out_dir: str | os.PathLike[str], n: int = 24, seed: int = 0, text_only: int = 2) -> Path:
    """Generate ``n`` short clips of one square moving in a direction, with a question about it,
    plus a few text-only records and one corrupt video (to exercise skipping). Returns the JSON path."""
    import av
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    names = list(DIRECTIONS)
    for i in range(n):
        d = names[i % 4]
        dy, dx = DIRECTIONS[d]
        path = out / f"clip_{i:03d}.mp4"
        if not path.exists():
            with av.open(str(path), mode="w") as c:
                s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=8)
                s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
                y, x = 24 + rng.randint(-4, 4), 24 + rng.randint(-4, 4)
                for t in range(8):
                    img = np.full((64, 64, 3), 10, dtype=np.uint8)
                    yy, xx = y + dy * 3 * t, x + dx * 3 * t
                    img[max(0, yy) : yy + 12, max(0, xx) : xx + 12] = (230, 40, 40)
                    for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)
        records.append({"video": path.name, "conversations": [
            {"from": "human", "value": "<image>\nwhich direction does the red square move?"},
            {"from": "gpt", "value": d},
        ]})
    for _ in range(text_only):
        records.append({"conversations": [{"from": "human", "value": "what is a square?"},
                                          {"from": "gpt", "value": "a shape"}]})
    (out / "corrupt.mp4").write_bytes(b"not a video at all" * 50)
    records.append({"video": "corrupt.mp4", "conversations": [{"from": "human", "value": "<image>\nwhat?"},
                                                              {"from": "gpt", "value": "left"}]})
    path = out / "data.json"
    path.write_text(json.dumps(records, indent=1))
    return path


__all__ = ["VideoQADataset", "collate", "make_demo_dataset", "make_video"]
