"""A small local multiple-choice video task for lmms-eval (``--include_path``), generated offline."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..synthetic import DIRECTIONS

UTILS = '''"""Task helpers for the generated vqtoken_motion_mc task (written by llava_vqtoken.eval.tasks)."""
import os


def doc_to_visual(doc):
    return [os.path.join(os.path.dirname(os.path.abspath(__file__)), doc["video"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\\n".join(f"{k}. {v}" for k, v in zip("ABCD", doc["options"]))
    return f"{doc['question']}\\n{options}\\nAnswer with the option's letter from the given choices directly."


def process_results(doc, results):
    pred = results[0].strip()
    letter = next((c for c in pred if c in "ABCD"), "")
    return {"accuracy": float(letter == doc["answer"])}
'''

YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  until: ["\\n"]
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.1
"""

TASK = "vqtoken_motion_mc"


def make_motion_task(out_dir: str | Path, n: int = 8, seed: int = 0) -> Path:
    """Write videos, data.json, utils.py and the task YAML into ``out_dir``; return the directory."""
    from ..synthetic import make_demo_dataset

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    make_demo_dataset(out, n=n, seed=seed, text_only=0)
    rng = random.Random(seed)
    docs = []
    names = list(DIRECTIONS)
    for i in range(n):
        truth = names[i % 4]
        options = names[:]
        rng.shuffle(options)
        docs.append({"id": i, "video": f"clip_{i:03d}.mp4", "question": "Which direction does the red square move?",
                     "options": options, "answer": "ABCD"[options.index(truth)]})
    (out / "data.json").write_text(json.dumps(docs, indent=1))
    (out / "utils.py").write_text(UTILS)
    (out / f"{TASK}.yaml").write_text(YAML.format(task=TASK, data=out / "data.json"))
    return out
