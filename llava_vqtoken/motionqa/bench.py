"""Train a small LLaVA-OneVision-shaped model per compressor on motion QA and compare them.

``llava-vqtoken motionqa`` (``python -m llava_vqtoken.motionqa.bench``). Every compressor gets the
same total budget (``--num-tokens``, 32 by default) except ``none`` (the uncompressed ceiling). The
vision tower is trained from scratch; the loss is 4-way cross-entropy over the option letters at the
answer position. Accuracy per question type on a held-out split, for each seed and each training
budget (``--steps``), goes to results.json (each run with its ``settings``: every flag that changes
its numbers, so that ``--from-results`` reports only runs of one setting together), report.md and plots:
accuracy_vs_tokens.png, accuracy_by_type.png, accuracy_vs_steps.png (learning curves) and, for several
clip lengths (``--frames``), accuracy_vs_frames.png.

The defaults are the setting of docs/BENCHMARKS.md section 5: clear motion, objects named by order
of appearance, 500 steps of direction questions first (``--curriculum-steps``/``--curriculum-types``,
one value each per phase; several phases run in turn), then the four-type mix, evaluated at 1000 and
4000 steps. One seed of the ten default settings is one ~7-minute run on an H100 with ``--workers 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import CompressorConfig
from ..core.metrics import tokdense
from .data import COLORS, REFER, TYPES, make_split, min_frames, object_size

DEFAULT_COMPRESSORS = [
    "vqtoken", "vqtoken:attention=none", "vqtoken:hash=random", "vqtoken:attention=random",
    "vqtoken:footprint=motion", "pool", "prune", "tome", "temporal_merge", "none",
]


#: an encoded split's pixels: each clip's distinct frames and, per frame, which of them it is
PIXEL_KEYS = ("pixel_frames", "frame_index")

LEARNED = 90.0  # accuracy (%) at which a question type counts as learned by a run

#: flags that must be at least 1
POSITIVE_FLAGS = ("train_size", "test_size", "steps", "batch", "num_tokens", "workers", "patch")
#: flags of which every value is one run: none may repeat
RUN_FLAGS = ("compressors", "seeds", "frames")
#: flags that neither change a run's numbers nor belong in its ``settings``: the run's own setting, seed
#: and clip length, and --steps (report pools runs that stopped at different budgets)
UNRECORDED_FLAGS = frozenset({"compressors", "seeds", "frames", "steps", "workers", "device", "out", "from_results"})
#: what every run in a results.json has
RUN_KEYS = ("label", "seed", "by_steps")
#: the report's plots; accuracy_vs_frames.png only for several clip lengths
PLOTS = ("accuracy_vs_tokens.png", "accuracy_by_type.png", "accuracy_vs_steps.png", "accuracy_vs_frames.png")
#: accuracy (%) of a guess among the four options
CHANCE = 25.0
#: plot markers and line styles, one combination per setting or clip length
MARKERS = ("o", "s", "^", "v", "D", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")
#: the y axis of every accuracy plot, and the label of the mean over question types
ACC_YLIM = (0, 105)
ACC_ALL = "accuracy (%), mean over question types and seeds"
#: patches per side of a frame: an object one patch wide needs room to move one width
MIN_PATCHES = 2


def parse_setting(setting: str, budget: int) -> dict[str, Any]:
    """A sweep setting (``NAME[:key=value,...]``) with the shared budget unless it names its own."""
    spec = CompressorConfig.parse_setting(setting)
    spec.setdefault("num_tokens", None if spec["name"] == "none" else budget)
    return spec


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag that changes a run's numbers, as JSON values: a run's ``settings`` in results.json."""
    return json.loads(json.dumps({k: v for k, v in vars(args).items() if k not in UNRECORDED_FLAGS}))


def spec_label(spec: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in spec.items())


def build(spec: dict[str, Any], size: int, patch: int, vision_hidden: int, text_hidden: int, seed: int,
          vision_layers: int = 3, text_layers: int = 2):
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from ..hosts.hf import (
        VQTokenLlavaOnevisionConfig,
        VQTokenLlavaOnevisionForConditionalGeneration,
        VQTokenLlavaOnevisionProcessor,
    )
    from ..hosts.hf.tiny import CHAT_TEMPLATE, build_tokenizer

    tok = build_tokenizer()
    cfg = VQTokenLlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                                         num_hidden_layers=vision_layers, num_attention_heads=4, image_size=size,
                                         patch_size=patch, vision_use_head=False),
        text_config=Qwen2Config(vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                                num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=8192, tie_word_embeddings=True),
        image_token_id=tok.convert_tokens_to_ids("<image>"), video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=[[size, size]], video_compressor=spec,
    )
    torch.manual_seed(seed)
    model = VQTokenLlavaOnevisionForConditionalGeneration(cfg)
    px = {"height": size, "width": size}
    proc = VQTokenLlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=px, image_grid_pinpoints=[[size, size]]),
        video_processor=LlavaOnevisionVideoProcessor(size=px), tokenizer=tok,
        num_image_tokens=(size // patch) ** 2, vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE,
        video_compressor=cfg.video_compressor, video_grid=[size // patch, size // patch],
    )
    proc.tokenizer.padding_side = "left"
    return model, proc


def _pad_frames(frames: np.ndarray, width: int) -> np.ndarray:
    """A clip's distinct frames padded to ``width`` with copies of its last (never indexed)."""
    return np.concatenate([frames, np.repeat(frames[-1:], width - len(frames), 0)]) if width > len(frames) else frames


def encode(proc, samples, width: int | None = None) -> dict[str, torch.Tensor]:
    """Tokens, and pixels as each clip's distinct frames (``pixel_frames`` [B, U, 3, H, W], padded to
    ``width``) with ``frame_index`` [B, T]: the video processor works frame by frame, so its output
    for the whole clip is ``pixel_frames`` gathered by ``frame_index`` (see :func:`take`); the video
    placeholder count is the one for the clip's T frames."""
    from ..hosts.hf.modeling import tokens_per_video

    texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": p}]}],
                                      add_generation_prompt=True) for _, _, p, _ in samples]
    clips = [c for c, _, _, _ in samples]
    width = width or max(len(c.frames) for c in clips)
    spec, grid = CompressorConfig.from_dict(proc.video_compressor), tuple(proc.video_grid)
    counts = [tokens_per_video(spec, len(c), grid) for c in clips]
    batch = proc(text=texts, videos=[_pad_frames(c.frames, width) for c in clips], return_tensors="pt",
                 padding=True, num_video_tokens=None if None in counts else counts)
    batch["pixel_frames"] = batch.pop("pixel_values_videos")
    batch["frame_index"] = torch.from_numpy(np.stack([c.index for c in clips]))
    batch["answers"] = torch.tensor([a for _, _, _, a in samples])
    return batch


def encode_all(proc, samples, device, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Encode a whole split once (left-padded to one width) and move it to ``device``: training then
    only indexes tensors, so a step costs the model's time and not the processor's."""
    width = max(len(c.frames) for c, _, _, _ in samples)
    parts = [encode(proc, samples[i : i + chunk], width) for i in range(0, len(samples), chunk)]
    width = max(p["input_ids"].shape[1] for p in parts)
    pad = proc.tokenizer.pad_token_id
    for p in parts:
        extra = width - p["input_ids"].shape[1]
        if extra:
            p["input_ids"] = F.pad(p["input_ids"], (extra, 0), value=pad)
            p["attention_mask"] = F.pad(p["attention_mask"], (extra, 0), value=0)
    return {k: torch.cat([p[k] for p in parts]).to(device) for k in parts[0]}


def take(data: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of an encoded split, with every clip's frames drawn out as ``pixel_values_videos``
    [B, T, 3, H, W] float32 (the distinct frames are kept in half precision)."""
    out = {k: v[idx] for k, v in data.items() if k not in PIXEL_KEYS}
    frames, index = data["pixel_frames"][idx].float(), data["frame_index"][idx]
    out["pixel_values_videos"] = frames[torch.arange(len(idx), device=index.device)[:, None], index]
    return out


def option_logits(model, batch, letter_ids: torch.Tensor, device) -> torch.Tensor:
    inputs = {k: v.to(device) for k, v in batch.items() if k != "answers"}
    out = model(**inputs, logits_to_keep=1)
    return out.logits[:, -1, letter_ids]


def curriculum_rows(train, types) -> torch.Tensor:
    """Rows of ``train`` whose question type is in ``types`` (what one curriculum phase samples)."""
    rows = [i for i, (_, qtype, _, _) in enumerate(train) if qtype in types]
    if not rows:
        raise ValueError(f"the curriculum's question types {list(types)} are not in the training split")
    return torch.tensor(rows)


def curriculum_phases(args: argparse.Namespace) -> list[tuple[int, tuple[str, ...]]]:
    """The curriculum as (steps, question types) per phase, in order; empty for ``--curriculum-steps 0``."""
    steps = list(args.curriculum_steps)
    groups = [_phase_types(g) if isinstance(g, str) else tuple(g) for g in args.curriculum_types]
    if not any(steps):
        return []
    if any(n < 0 for n in steps):
        raise ValueError(f"--curriculum-steps must not be negative, got {steps}")
    if len(steps) != len(groups):
        raise ValueError(f"{len(steps)} --curriculum-steps value(s) for {len(groups)} --curriculum-types phase(s): "
                         "give one of each per phase (a phase's types joined by commas, e.g. direction,identity)")
    return [(n, g) for n, g in zip(steps, groups) if n]


def curriculum_schedule(train, args: argparse.Namespace) -> list[tuple[int, torch.Tensor]]:
    """Per curriculum phase, in order: (the step it ends before, the rows of ``train`` it samples)."""
    schedule, end = [], 0
    for n, types in curriculum_phases(args):
        end += n
        schedule.append((end, curriculum_rows(train, types)))
    return schedule


def batch_rows(step: int, phases: list[tuple[int, torch.Tensor]], n_train: int, batch: int,
               gen: torch.Generator) -> torch.Tensor:
    """Training rows for ``step``: drawn from the rows of the curriculum phase the step falls in
    (``phases``: (end step, rows) in order), from the whole split once every phase is over."""
    pool = next((rows for stop, rows in phases if step < stop), None)
    if pool is None:
        return torch.randint(n_train, (batch,), generator=gen)
    return pool[torch.randint(len(pool), (batch,), generator=gen)]


def run_one(spec, train, test, args, seed, device, encoded: dict | None = None,
            pixels: dict[str, torch.Tensor] | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one model from scratch on ``train`` and evaluate it on ``test`` at each budget; after
    each but the last, ``progress`` gets the results so far (``complete`` False), so a run cut short
    keeps the budgets it reached. ``encoded`` caches the encoded splits between seeds of one setting;
    ``pixels`` keeps one half-precision copy of each split's pixels for every setting (they are the same)."""
    model, proc = build(spec, args.size, args.patch, args.vision_hidden, args.text_hidden, seed,
                        args.vision_layers, args.text_layers)
    model.to(device).train()
    letters = torch.tensor([proc.tokenizer.convert_tokens_to_ids(c) for c in "ABCD"], device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(seed)
    results: dict[str, Any] = {"spec": spec, "seed": seed, "by_steps": {}, "complete": False}
    encoded = {} if encoded is None else encoded
    pixels = {} if pixels is None else pixels
    if not encoded:
        encoded.update(train=encode_all(proc, train, device), test=encode_all(proc, test, device))
        for split in ("train", "test"):  # pixels are the same for every setting: keep one copy, in fp16
            mine = encoded[split]
            shared = pixels.setdefault(f"pixels_{split}", {"pixel_frames": mine["pixel_frames"].half(),
                                                           "frame_index": mine["frame_index"]})
            mine.update(shared)
    tr, te = encoded["train"], encoded["test"]
    qtypes = [q for _, q, _, _ in test]
    phases = curriculum_schedule(train, args)
    step, t0 = 0, time.perf_counter()
    for budget in sorted(args.steps):
        while step < budget:
            rows = batch_rows(step, phases, len(train), args.batch, gen)
            batch = take(tr, rows.to(device))
            loss = F.cross_entropy(option_logits(model, batch, letters, device), batch["answers"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        model.eval()
        correct = {t: [] for t in TYPES}
        with torch.no_grad():
            for start in range(0, len(test), args.batch):
                tb = take(te, torch.arange(start, min(start + args.batch, len(test)), device=device))
                hits = (option_logits(model, tb, letters, device).argmax(-1) == tb["answers"]).tolist()
                for qtype, hit in zip(qtypes[start : start + args.batch], hits):
                    correct[qtype].append(float(hit))
        model.train()
        acc = {t: 100 * statistics.mean(v) for t, v in correct.items() if v}
        acc["all"] = statistics.mean(acc[t] for t in TYPES if t in acc)
        results["by_steps"][budget] = {
            "accuracy": acc, "last_loss": float(loss.detach()), "seconds": time.perf_counter() - t0,
        }
        tqdm.write(f"{spec_label(spec)} seed {seed} at {budget} steps: "
                   + " ".join(f"{t} {v:.0f}" for t, v in acc.items())
                   + f" | loss {float(loss.detach()):.3f} | {time.perf_counter() - t0:.0f} s")
        results["visual_tokens"] = int(model.model.last_video_tokens[0]) if model.model.last_video_tokens else None
        if progress is not None and budget != max(args.steps):
            progress(dict(results, by_steps=dict(results["by_steps"])))  # a copy: later budgets go to the run's own
    results["complete"] = True
    return results


def _row(label: str, frames: int | None, budget: str, reached: list[dict[str, Any]], types: list[str],
         tokens: int | None, run: str) -> dict[str, Any]:
    """One report row: the runs that ``reached`` a budget, their accuracies pooled over seeds."""
    accs = {t: [r["by_steps"][budget]["accuracy"].get(t, float("nan")) for r in reached] for t in (*types, "all")}
    row = {"run": run, "setting": label, "frames": frames, "steps": int(budget), "visual_tokens": tokens,
           "seeds": len(reached), "learned": {t: sum(a >= LEARNED for a in v) for t, v in accs.items() if t != "all"}}
    for t, v in accs.items():
        row[t] = statistics.mean(v)
        row[f"{t}_sd"] = statistics.pstdev(v) if len(v) > 1 else 0.0
    row["tokdense"] = tokdense(row["all"], tokens) if tokens else None
    return row


def report_rows(runs: list[dict[str, Any]], types: list[str]) -> list[dict[str, Any]]:
    """One row per (setting, clip length, budget): settings in order of first appearance, then by length."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    groups = sorted(dict.fromkeys((r["label"], r.get("frames")) for r in runs),
                    key=lambda g: (labels.index(g[0]), g[1] or 0))
    several = len({n for _, n in groups}) > 1
    rows = []
    for label, frames in groups:
        mine = [r for r in runs if (r["label"], r.get("frames")) == (label, frames)]
        run = f"{label} @{frames}f" if several else label
        for budget in sorted({b for r in mine for b in r["by_steps"]}, key=int):  # runs may stop at different budgets
            reached = [r for r in mine if budget in r["by_steps"]]
            rows.append(_row(label, frames, budget, reached, types, mine[0]["visual_tokens"], run))
    return rows


def report_text(rows: list[dict[str, Any]], types: list[str], runs: list[dict[str, Any]]) -> str:
    """report.md: the table, what its numbers are, and how many runs stopped before their last budget."""
    head = "| run | frames | steps | tokens | seeds | " + " | ".join(types) + " | all | TokDense |"
    lines = [head, "|" + "---|" * (7 + len(types))]
    for r in rows:
        cells = " | ".join(f"{r[t]:.1f}±{r[t + '_sd']:.1f} ({r['learned'][t]}/{r['seeds']})" for t in types)
        lines.append(f"| {r['setting']} | {r['frames']} | {r['steps']} | {r['visual_tokens']} | {r['seeds']} | {cells} "
                     f"| {r['all']:.1f}±{r['all_sd']:.1f} | {r['tokdense']:.3f} |")
    text = "\n".join(lines) + (f"\n\nChance is {CHANCE:.0f}%. Mean ± population s.d. over seeds; (n/N): n of N seeds "
                               f"reached {LEARNED:.0f}% on that question type.\n")
    cut = sum(not r.get("complete", True) for r in runs)
    if cut:
        text += (f"\n{cut} of {len(runs)} runs stopped before their last budget (complete: false in results.json): "
                 "rows at later budgets pool fewer seeds (the seeds column).\n")
    return text


def report(runs: list[dict[str, Any]], out: Path) -> str:
    """report.json, report.md and the plots of ``runs`` in ``out`` (plots it does not draw are removed)."""
    types = [t for t in TYPES if any(t in b["accuracy"] for r in runs for b in r["by_steps"].values())]
    rows = report_rows(runs, types)
    (out / "report.json").write_text(json.dumps(rows, indent=1))
    text = report_text(rows, types, runs)
    (out / "report.md").write_text(text)
    drawn = draw_plots(rows, types, out)
    for name in PLOTS:
        if name not in drawn:  # from an earlier report into the same folder
            (out / name).unlink(missing_ok=True)
    return text


def draw_plots(rows: list[dict[str, Any]], types: list[str], out: Path) -> list[str]:
    """The plots of ``rows`` in ``out``; their names (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return []
    plot_by_tokens(rows, out / "accuracy_vs_tokens.png", plt)
    plot_by_type(rows, types, out / "accuracy_by_type.png", plt)
    plot_by_steps(rows, types, out / "accuracy_vs_steps.png", plt)
    if len({r["frames"] for r in rows}) < 2:
        return list(PLOTS[:3])
    plot_by_frames(rows, out / "accuracy_vs_frames.png", plt)
    return list(PLOTS)


def make_splits(a: argparse.Namespace, frames: int) -> tuple[list, list]:
    """The training and test splits of clips of ``frames`` frames (the same clips in every process)."""
    shuffle = a.option_order == "shuffled"
    cell = a.patch if a.grid_objects else None
    types = tuple(a.types)
    args = (frames, a.size, a.objects, shuffle, cell, types, a.refer, a.clear_motion)
    return make_split(a.train_size, 1000, *args), make_split(a.test_size, 2000, *args)


class Runner:
    """The runs of one process: builds the splits of each clip length once and keeps, per (setting, clip
    length), the encoded splits (shared by its seeds) and, per clip length, one half-precision copy of
    the pixels (the same for every setting)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.splits: dict[int, tuple[list, list]] = {}
        self.encoded: dict[tuple[str, int], dict[str, Any]] = {}
        self.pixels: dict[int, dict[str, Any]] = {}

    def run(self, setting: str, seed: int, frames: int,
            progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """One (setting, seed, clip length) run; ``progress`` gets its results after each budget but the last."""
        a = self.args
        if frames not in self.splits:
            self.splits[frames] = make_splits(a, frames)
        train, test = self.splits[frames]
        curriculum = [[n, list(types)] for n, types in curriculum_phases(a)]
        settings = run_settings(a)

        def labelled(res: dict[str, Any]) -> dict[str, Any]:
            res.update(label=setting, frames=frames, curriculum=curriculum, settings=settings)
            return res

        report_partial = None if progress is None else (lambda res: progress(labelled(res)))
        return labelled(run_one(parse_setting(setting, a.num_tokens), train, test, a, seed, torch.device(a.device),
                                self.encoded.setdefault((setting, frames), {}), self.pixels.setdefault(frames, {}),
                                report_partial))


#: seconds between checks that the workers are still alive while waiting for a result
WORKER_POLL_S = 5.0


class WorkersGone(RuntimeError):
    """Every worker process exited before all runs reported (one was killed, say)."""


def _serve(args: argparse.Namespace, threads: int, jobs, results) -> None:
    """A worker process: one Runner for every job it takes from ``jobs`` (None: stop); each run's
    results after every budget (``complete`` False until the last), or (job, traceback) when it
    failed, go to ``results``; a failed run does not stop the worker."""
    torch.set_num_threads(threads)
    runner: Runner | None = None
    for job in iter(jobs.get, None):
        try:
            runner = runner or Runner(args)
            results.put((True, runner.run(*job, lambda res: results.put((True, res)))))
        except Exception:
            results.put((False, (job, traceback.format_exc())))


def _job_name(job: tuple[str, int, int]) -> str:
    return f"{job[0]} seed {job[1]} at {job[2]} frames"


def _failures(failed: list[tuple[tuple, str]], unfinished: list[tuple], out: str) -> str:
    """One error naming every run that failed or never reported, then the failures' tracebacks."""
    names = [f"{_job_name(job)} failed" for job, _ in failed]
    names += [f"{_job_name(job)} never reported" for job in unfinished]
    head = f"motionqa: {'; '.join(names)} (the other runs' results are in {out}/results.json)"
    return "\n".join([head, *(f"--- {_job_name(job)}:\n{trace}" for job, trace in failed)])


def run_parallel(jobs: list[tuple[str, int, int]], args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """``args.workers`` processes on ``args.device``, each with its own Runner; results in finish order.
    A failed run does not stop the others: after every run has finished or failed, one RuntimeError
    names the failed ones."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    for job in [*jobs, *[None] * args.workers]:
        todo.put(job)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    procs = [ctx.Process(target=_serve, args=(args, threads, todo, done), daemon=True) for _ in range(args.workers)]
    for proc in procs:
        proc.start()
    pending, failed = set(jobs), []
    try:
        while pending:
            ok, value = _next_result(done, procs)
            if not ok:
                failed.append(value)
                pending.discard(value[0])
                continue
            if value["complete"]:
                pending.discard((value["label"], value["seed"], value["frames"]))
            yield value
    except WorkersGone:
        pass
    finally:
        for proc in procs:
            proc.join(timeout=WORKER_POLL_S)
            if proc.is_alive():
                proc.terminate()
    if failed or pending:
        raise RuntimeError(_failures(failed, [job for job in jobs if job in pending], args.out))


def _next_result(done, procs) -> tuple[bool, Any]:
    while True:
        try:
            return done.get(timeout=WORKER_POLL_S)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                raise WorkersGone("motionqa: every worker process exited before all runs finished") from None


def run_all(jobs: list[tuple[str, int, int]], args: argparse.Namespace,
            progress: Callable[[dict[str, Any]], None]) -> Iterator[dict[str, Any]]:
    """Every (setting, seed, clip length) run, in this process or in ``--workers`` processes: yields
    each finished run; ``progress`` gets each run's results after every budget, the last included."""
    if args.workers > 1:
        for res in run_parallel(jobs, args):
            progress(res)
            if res["complete"]:
                yield res
        return
    runner: Runner | None = None
    for setting, seed, frames in jobs:
        runner = runner or Runner(args)
        res = runner.run(setting, seed, frames, progress)
        progress(res)
        yield res


def _style(i: int) -> dict[str, str]:
    """Marker and line style of the ``i``-th setting: distinct for 28 settings, so equal lines stay apart."""
    return {"marker": MARKERS[i % len(MARKERS)], "ls": LINESTYLES[i % len(LINESTYLES)]}


def _colours(plt, n: int):
    return plt.get_cmap("tab10" if n <= 10 else "tab20")


def plot_by_tokens(rows: list[dict[str, Any]], path: Path, plt) -> None:
    """Accuracy (all question types) against visual tokens, one panel per training budget: a colour
    per setting and, with several clip lengths, a marker per length; the seed spread as error bars."""
    budgets = sorted({r["steps"] for r in rows})
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    lengths = sorted({r["frames"] for r in rows}, key=lambda n: n or 0)
    cmap = _colours(plt, len(settings))
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.6 * len(budgets) + 2.2, 3.8), squeeze=False, sharey=True)
    for ax, steps in zip(axes[0], budgets):
        for r in (r for r in rows if r["steps"] == steps):
            marker = MARKERS[lengths.index(r["frames"]) % len(MARKERS)]
            ax.errorbar(r["visual_tokens"], r["all"], r["all_sd"], capsize=3, ms=5, ls="none", marker=marker,
                        color=cmap(settings.index(r["setting"])))
        ax.axhline(CHANCE, ls=":", c="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("visual tokens per video")
        ax.set_title(f"{steps} training steps", fontsize=9)
        ax.set_ylim(*ACC_YLIM)
    _legend_settings(axes[0, -1], rows, settings, lengths, cmap)
    axes[0, 0].set_ylabel(ACC_ALL, fontsize=8)
    axes[0, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("synthetic motion-QA: accuracy against visual tokens", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_by_frames(rows: list[dict[str, Any]], path: Path, plt) -> None:
    """Accuracy (all question types) against frames per clip at the shared token budget, one line per
    setting (each its own colour, marker and line style) and one panel per training budget, the seed
    spread as error bars and chance dashed."""
    budgets = sorted({r["steps"] for r in rows})
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    cmap = _colours(plt, len(settings))
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.6 * len(budgets) + 1.8, 3.6), squeeze=False, sharey=True)
    for ax, steps in zip(axes[0], budgets):
        for i, setting in enumerate(settings):
            mine = (r for r in rows if r["setting"] == setting and r["steps"] == steps)
            sub = sorted(mine, key=lambda r: r["frames"])
            if sub:
                tokens = sorted({r["visual_tokens"] for r in rows if r["setting"] == setting})  # every length
                ax.errorbar([r["frames"] for r in sub], [r["all"] for r in sub], [r["all_sd"] for r in sub],
                            ms=3, capsize=3, color=cmap(i), **_style(i),
                            label=f"{setting} ({'/'.join(map(str, tokens))} tok)")
        ax.axhline(CHANCE, ls="--", c="grey", lw=0.8, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames per clip")
        ax.set_title(f"{steps} training steps", fontsize=9)
        ax.set_ylim(*ACC_YLIM)
    axes[0, 0].set_ylabel(ACC_ALL, fontsize=8)
    handles: dict[str, Any] = {}  # every panel's entries: a setting may stop before the last budget
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0, -1].legend(list(handles.values()), list(handles), fontsize=6, loc="center left",
                       bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("synthetic motion-QA, tiny model trained from scratch per run", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_by_type(rows: list[dict[str, Any]], types: list[str], path: Path, plt) -> None:
    """Grouped bars: accuracy per question type for every run, one panel per training budget, with
    the seed spread as error bars and chance as a dashed line."""
    budgets = sorted({r["steps"] for r in rows})
    labels = list(dict.fromkeys(r["run"] for r in rows))
    fig, axes = plt.subplots(len(budgets), 1, figsize=(max(6, 0.9 * len(labels)), 2.8 * len(budgets)), squeeze=False)
    width = 0.8 / len(types)
    for ax, steps in zip(axes[:, 0], budgets):
        by_run = {r["run"]: r for r in rows if r["steps"] == steps}
        for j, t in enumerate(types):
            xs = [i + (j - (len(types) - 1) / 2) * width for i, lab in enumerate(labels) if lab in by_run]
            ys = [by_run[lab][t] for lab in labels if lab in by_run]
            err = [by_run[lab][f"{t}_sd"] for lab in labels if lab in by_run]
            ax.bar(xs, ys, width, yerr=err, capsize=2, label=t)
        ax.axhline(CHANCE, ls="--", c="grey", lw=0.8)
        ax.set_ylim(*ACC_YLIM)
        ax.set_ylabel(f"accuracy (%)\n{steps} steps")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([f"{lab}\n({by_run[lab]['visual_tokens']} tok)" if lab in by_run else lab for lab in labels],
                           fontsize=6, rotation=25, ha="right")
    axes[0, 0].legend(fontsize=7, ncol=len(types), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _legend_settings(ax, rows: list[dict[str, Any]], settings: list[str], lengths: list, cmap) -> None:
    """Legend entries: a colour (and line style: the ceiling dashed) per setting with its token counts,
    a marker per clip length when there are several, and chance."""
    for i, setting in enumerate(settings):
        counts = {r["visual_tokens"] for r in rows if r["setting"] == setting}
        tokens = "/".join(map(str, sorted(counts, key=lambda n: n or 0)))
        ax.plot([], [], "--" if setting == "none" else "-", color=cmap(i), label=f"{setting} ({tokens} tok)")
    if len(lengths) > 1:
        for j, n in enumerate(lengths):
            ax.plot([], [], MARKERS[j % len(MARKERS)], color="black", label=f"{n} frames")
    ax.plot([], [], ":", c="grey", lw=0.8, label=f"chance ({CHANCE:.0f}%)")


def plot_by_steps(rows: list[dict[str, Any]], types: list[str], path: Path, plt) -> None:
    """Learning curves: accuracy against training steps for every run, one panel per question type
    and one for all types, with the seed spread as a band (sample efficiency at a glance): a colour
    per setting (the uncompressed ceiling dashed) and, with several clip lengths, a marker per length."""
    panels = [*types, "all"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.6, 3.2), squeeze=False, sharey=True)
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    lengths = sorted({r["frames"] for r in rows}, key=lambda n: n or 0)
    cmap = _colours(plt, len(settings))
    for ax, t in zip(axes[0], panels):
        for lab in dict.fromkeys(r["run"] for r in rows):
            sub = sorted((r for r in rows if r["run"] == lab), key=lambda r: r["steps"])
            xs, ys = [r["steps"] for r in sub], [r[t] for r in sub]
            sd = [r[f"{t}_sd"] for r in sub]
            colour = cmap(settings.index(sub[0]["setting"]))
            ax.plot(xs, ys, "--" if sub[0]["setting"] == "none" else "-", ms=3, color=colour, label=f"_{lab}",
                    marker=MARKERS[lengths.index(sub[0]["frames"]) % len(MARKERS)])
            ax.fill_between(xs, [y - e for y, e in zip(ys, sd)], [y + e for y, e in zip(ys, sd)], color=colour,
                            alpha=0.08)
        ax.axhline(CHANCE, ls=":", c="grey", lw=0.8)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("training steps")
        ax.set_ylim(*ACC_YLIM)
    axes[0, 0].set_ylabel("accuracy (%)")
    _legend_settings(axes[0, -1], rows, settings, lengths, cmap)
    axes[0, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _phase_types(value: str) -> tuple[str, ...]:
    types = tuple(t for t in value.split(",") if t)
    bad = [t for t in types if t not in TYPES]
    if bad or not types:
        raise argparse.ArgumentTypeError(f"unknown question type(s) {bad or value!r}; choose from {', '.join(TYPES)}")
    return types


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llava-vqtoken motionqa", description=__doc__.splitlines()[0])
    p.add_argument("--compressors", nargs="+", default=DEFAULT_COMPRESSORS)
    p.add_argument("--num-tokens", type=int, default=32)
    p.add_argument("--steps", nargs="+", type=int, default=[1000, 4000], help="training budgets (evaluated at each)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES, help="question types to train and test")
    p.add_argument("--curriculum-steps", nargs="+", type=int, default=[500],
                   help="steps of each curriculum phase (0: no curriculum); after the last phase, all --types")
    p.add_argument("--curriculum-types", nargs="+", type=_phase_types, default=[("direction",)],
                   help="question types of each phase, one value per phase, a phase's types joined by commas "
                        "(e.g. --curriculum-steps 500 500 --curriculum-types direction direction,identity)")
    p.add_argument("--train-size", type=int, default=16000)
    p.add_argument("--test-size", type=int, default=400)
    p.add_argument("--frames", nargs="+", type=int, default=[8],
                   help="frames per clip; several values: one run per length, and accuracy_vs_frames.png")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--vision-hidden", type=int, default=96)
    p.add_argument("--text-hidden", type=int, default=256)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=50, help="steps of linear learning-rate warm-up")
    p.add_argument("--objects", type=int, default=3, help="objects per clip (at least 2 move)")
    p.add_argument("--option-order", choices=["shuffled", "fixed"], default="fixed",
                   help="fixed: a letter always names the same answer for a question type")
    p.add_argument("--grid-objects", action=argparse.BooleanOptionalAction, default=True,
                   help="objects one patch in size, drawn on the patch grid")
    p.add_argument("--refer", choices=REFER, default="order",
                   help="identity and direction questions name their object by colour or by order of appearance")
    p.add_argument("--clear-motion", action=argparse.BooleanOptionalAction, default=True,
                   help="objects move one width per frame, with room to move; the first is alone for two frames")
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once, each in its own process on --device (small models leave a GPU idle)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/motionqa")
    p.add_argument("--from-results", nargs="+", metavar="RESULTS_JSON",
                   help="train nothing: write the report and plots of these results.json files (e.g. clip lengths "
                        "run separately) together into --out")
    return p


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_counts(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Counts at least 1; no repeated setting, seed or clip length (each value is one run)."""
    for dest in POSITIVE_FLAGS:
        low = min(getattr(a, dest)) if isinstance(getattr(a, dest), list) else getattr(a, dest)
        if low < 1:
            p.error(f"{_flag(dest)} must be at least 1, got {low}")
    for dest in RUN_FLAGS:
        values = [str(v) for v in getattr(a, dest)]
        twice = list(dict.fromkeys(v for v in values if values.count(v) > 1))
        if twice:
            p.error(f"{_flag(dest)} {' '.join(twice)} given twice (each value is one run)")


def _check_clips(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Clips the generator can draw and the vision tower can cut into patches."""
    if not 2 <= a.objects <= len(COLORS):
        p.error(f"--objects must be between 2 and {len(COLORS)} (one colour each), got {a.objects}")
    need = min_frames(a.objects)
    if min(a.frames) < need:
        p.error(f"--frames must be at least {need} with --objects {a.objects} (every moving object seen at two "
                f"positions), got {min(a.frames)}")
    if a.size % a.patch or a.size < MIN_PATCHES * a.patch:
        p.error(f"--size must be a multiple of --patch {a.patch} with at least {MIN_PATCHES} patches per side, "
                f"got {a.size}")
    width = object_size(a.size, a.patch if a.grid_objects else None)
    if a.size < MIN_PATCHES * width:
        p.error(f"--size {a.size} leaves an object ({width} px) no room to move: use at least {MIN_PATCHES * width}")
    for setting in a.compressors:
        try:
            CompressorConfig.from_dict(parse_setting(setting, a.num_tokens))
        except ValueError as e:
            p.error(f"--compressors {setting}: {e}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked in one line (exit 2): counts, clips the generator can draw, compressor
    settings, and the curriculum against --types."""
    p = build_parser()
    a = p.parse_args(argv)
    _check_counts(p, a)
    _check_clips(p, a)
    try:
        phases = curriculum_phases(a)
    except ValueError as e:
        p.error(str(e))
    for _, types in phases:
        if not set(types) <= set(a.types):
            p.error(f"--curriculum-types {','.join(types)} is not among --types {' '.join(a.types)}; "
                    "pass --curriculum-steps 0 to train without a curriculum")
    return a


def _check_inputs(paths: list[str], out: Path) -> None:
    """No file given twice, and none that --out's results.json would overwrite."""
    seen: dict[Path, str] = {}
    for path in paths:
        where = Path(path).resolve()
        if where in seen:
            raise ValueError(f"--from-results {path}: given twice (also as {seen[where]})")
        seen[where] = path
    target = (out / "results.json").resolve()
    if target in seen:
        raise ValueError(f"--out {out}: its results.json would overwrite the input {seen[target]}; report elsewhere")


def _read_runs(path: str) -> list[dict[str, Any]]:
    """The runs of one results.json; an unreadable file, an empty list or a run that is not one is a
    ValueError naming the file."""
    try:
        runs = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--from-results {path}: not a motionqa results.json ({e})") from None
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"--from-results {path}: not a motionqa results.json (no list of runs)")
    for i, run in enumerate(runs):
        missing = [k for k in RUN_KEYS if not isinstance(run, dict) or k not in run]
        if missing or not isinstance(run["by_steps"], dict):
            what = ", ".join(missing) or "by_steps dict"
            raise ValueError(f"--from-results {path}: run {i} is not a motionqa run (no {what})")
    return runs


def _check_settings(files: dict[str, list[dict[str, Any]]]) -> None:
    """Every run has the same ``settings`` (runs of files without any are accepted only together)."""
    recorded = [(path, r["settings"]) for path, runs in files.items() for r in runs if "settings" in r]
    if not recorded:
        return
    first, ref = recorded[0]
    for path, runs in files.items():
        for run in runs:
            if "settings" not in run:
                raise ValueError(f"--from-results {path}: its runs have no settings (an older motionqa), so they "
                                 f"cannot be checked against {first}'s; report them on their own")
            mine = run["settings"]
            for key in dict.fromkeys([*ref, *mine]):
                if ref.get(key) != mine.get(key):
                    raise ValueError(f"--from-results: {_flag(key)} is {ref.get(key)} in {first} but "
                                     f"{mine.get(key)} in {path}: runs of different settings do not report together")


def load_results(paths: list[str], out: Path) -> list[dict[str, Any]]:
    """The runs of several results.json files, in the order given, to report into ``out``; a file
    given twice or that ``out`` would overwrite, a missing or unreadable file, runs of different
    settings, or a run found twice, is a ValueError naming it."""
    _check_inputs(paths, out)
    files = {path: _read_runs(path) for path in paths}
    _check_settings(files)
    seen: dict[tuple, str] = {}
    for path, runs in files.items():
        for key in ((r["label"], r["seed"], r.get("frames")) for r in runs):
            if key in seen:  # the same run twice would count as two seeds
                raise ValueError(f"--from-results {path}: {key[0]} seed {key[1]} at {key[2]} frames is also in "
                                 f"{seen[key]}")
            seen[key] = path
    return [r for runs in files.values() for r in runs]


def report_results(paths: list[str], out: Path) -> int:
    """``--from-results``: one report of the runs of several results.json files (exit 2: refused)."""
    try:
        runs = load_results(paths, out)
    except ValueError as e:
        print(f"llava-vqtoken motionqa: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(runs, indent=1))
    print(report(runs, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    if a.from_results:
        return report_results(a.from_results, out)
    out.mkdir(parents=True, exist_ok=True)
    # seed-major: a cut-short run covers every setting and clip length
    jobs = [(s, seed, n) for seed in a.seeds for n in a.frames for s in a.compressors]
    order = {job: i for i, job in enumerate(jobs)}
    runs: dict[tuple, dict[str, Any]] = {}

    def keep(res: dict[str, Any]) -> None:  # a run's latest results; the file in job order
        runs[(res["label"], res["seed"], res["frames"])] = res
        done = [runs[k] for k in sorted(runs, key=order.__getitem__)]
        (out / "results.json").write_text(json.dumps(done, indent=1))

    for _ in tqdm(run_all(jobs, a, keep), total=len(jobs), desc="motionqa"):
        pass
    print(report([runs[k] for k in sorted(runs, key=order.__getitem__)], out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
