"""LLaVA-Video-178K-style data: a JSON list of {"video": path, "conversations": [...]} records.

Conversations use the LLaVA convention: {"from": "human"|"gpt", "value": "..."}, with ``<image>`` or
``<video>`` marking where the video goes in the first human turn. Records without "video" are
text-only. Every assistant turn is supervised; every other token (system, human turns, video) is masked.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..video import VideoError, load_video_counted

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


class SampleTooLong(ValueError):
    """A sample longer than ``max_length`` whose cut would fall inside the video's placeholders."""


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
        self.short_videos: dict[str, int] = {}  # path -> frames it really has, when fewer than asked
        self.truncated: dict[str, int] = {}  # start of a cut sample's conversation -> its full length

    def __len__(self) -> int:
        return len(self.records)

    def _video_path(self, rec: dict[str, Any]) -> str:
        p = Path(rec["video"])
        return str(p if p.is_absolute() else self.root / p)

    def encode(self, rec: dict[str, Any]) -> dict[str, torch.Tensor]:
        has_video = bool(rec.get("video"))
        frames = self._frames(self._video_path(rec)) if has_video else None
        msgs = _messages(rec["conversations"], has_video)
        kw: dict[str, Any] = {"return_tensors": "pt"}
        if frames is not None:
            kw["videos"] = [frames]
        enc = self.processor(text=self.processor.apply_chat_template(msgs, add_generation_prompt=False), **kw)
        ids = enc["input_ids"][0]
        labels = assistant_labels(self.processor, msgs, ids)
        ids, labels = self._truncate(rec, ids, labels)
        item = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        if frames is not None:
            item["pixel_values_videos"] = enc["pixel_values_videos"][0]
        return item

    def _truncate(self, rec: dict[str, Any], ids: torch.Tensor, labels: torch.Tensor):
        """Cut a sample to ``max_length`` tokens, recorded in ``truncated`` (warned once per record); a cut
        through the video's placeholder tokens would break the prompt, so that sample is skipped instead."""
        if len(ids) <= self.max_length:
            return ids, labels
        token = self.processor.tokenizer.convert_tokens_to_ids(getattr(self.processor, "video_token", "<video>"))
        where = (ids == token).nonzero()
        if len(where) and int(where[-1]) >= self.max_length:
            raise SampleTooLong(f"{len(ids)} tokens, more than max_length {self.max_length}: the video's "
                                f"placeholders would be cut")
        key = json.dumps(rec["conversations"])[:80]
        if key not in self.truncated:
            self.truncated[key] = len(ids)
            log.warning("sample of %d tokens cut to max_length %d (%d such sample(s) so far): %s", len(ids),
                        self.max_length, len(self.truncated), key)
        return ids[: self.max_length], labels[: self.max_length]

    def _frames(self, path: str) -> Any:
        """Decode ``self.frames`` frames; a clip with fewer is reported once and recorded with its count."""
        if path in self.skipped:  # known unusable: do not decode again (its decoder errors were shown once)
            raise VideoError(f"unusable video (skipped before): {path}")
        frames, total = load_video_counted(path, self.frames)
        if total < self.frames and path not in self.short_videos:
            self.short_videos[path] = total
            log.warning("video has %d frame(s), fewer than --frames %d: frames repeat (%d such clip(s) so far): %s",
                        total, self.frames, len(self.short_videos), path)
        return frames

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        for attempt in range(len(self.records)):
            rec = self.records[(i + attempt) % len(self.records)]
            try:
                return self.encode(rec)
            except (VideoError, SampleTooLong) as e:
                n = (i + attempt) % len(self.records)
                name = self._video_path(rec) if isinstance(e, VideoError) else f"record {n} ({e})"
                if name not in self.skipped:
                    self.skipped.add(name)
                    log.warning("skipping sample with unusable video (%d skipped so far): %s", len(self.skipped), e)
        raise VideoError("no usable video in the whole training set")


def assistant_labels(processor, msgs: list[dict[str, Any]], ids: torch.Tensor) -> torch.Tensor:
    """Labels for ``ids`` (the whole conversation, video placeholders expanded): every assistant turn as
    the chat template renders it (its text and end-of-turn marker) keeps its ids, all else is IGNORE.

    Each turn's span comes from the token length of the rendered conversation up to it, so any chat
    template works whose renderings of successive prefixes are token prefixes of the whole (checked)."""
    tok = processor.tokenizer
    plain = tok(processor.apply_chat_template(msgs, add_generation_prompt=False))["input_ids"]
    video_id = tok.convert_tokens_to_ids(processor.video_token)
    expanded = len(ids) - len(plain)  # placeholder tokens the processor added for the video
    if expanded and plain.count(video_id) != 1:
        raise ValueError(f"expected one video placeholder in the conversation, found {plain.count(video_id)}")

    def end_of(prefix: list[dict[str, Any]], generation_prompt: bool) -> int:
        if not prefix and not generation_prompt:
            return 0
        part = tok(processor.apply_chat_template(prefix, add_generation_prompt=generation_prompt))["input_ids"]
        if plain[: len(part)] != part:
            raise ValueError("the chat template does not render conversation prefixes as token prefixes; "
                             "cannot tell which tokens belong to the assistant turns")
        return len(part) + (expanded if video_id in part else 0)

    labels = torch.full_like(ids, IGNORE)
    for n, m in enumerate(msgs):
        if m["role"] == "assistant":
            start, end = end_of(msgs[:n], True), end_of(msgs[: n + 1], False)
            labels[start:end] = ids[start:end]
    return labels


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


__all__ = ["VideoQADataset", "collate"]
