"""Run under torchrun by tests/test_train_distributed.py: every rank encodes every record of a data set
with the training data path and writes, from rank 0, what each rank computed (a digest of input ids and
labels, and the number of supervised spans per record).

usage: dist_labels.py MODEL DATA OUT"""

import hashlib
import json
import sys

import torch
import torch.distributed as dist

from llava_vqtoken.train.data import IGNORE, VideoQADataset

FRAMES = 4
NUM_TOKENS = 8


def spans(labels: torch.Tensor) -> int:
    """How many runs of supervised (not IGNORE) positions."""
    on = (labels != IGNORE).int().tolist()
    return sum(1 for i, x in enumerate(on) if x and (i == 0 or not on[i - 1]))


def main(model: str, data: str, out: str) -> None:
    from transformers import AutoProcessor

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor

    dist.init_process_group("gloo")
    cfg = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        model, video_compressor={"num_tokens": NUM_TOKENS}).config
    proc = VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(model), cfg)
    ds = VideoQADataset(data, proc, frames=FRAMES)
    records = []
    for i in range(len(ds)):
        item = ds[i]
        h = hashlib.sha256(item["input_ids"].numpy().tobytes() + item["labels"].numpy().tobytes())
        records.append({"digest": h.hexdigest(), "spans": spans(item["labels"])})
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {"rank": dist.get_rank(), "records": records})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump([{"records": e["records"]} for e in everyone], f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
