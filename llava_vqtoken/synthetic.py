"""Generated demo data shared by training and evaluation: short clips of one square moving in one of
four directions (``DIRECTIONS``), with a question about it. The motion-QA generator uses the same directions."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

#: direction name -> (dy, dx) step of a moving object
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
