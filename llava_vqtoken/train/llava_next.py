"""``python -m llava_vqtoken.train.llava_next ...``: LLaVA-NeXT's own ``train()`` with VQToken added.

Adds ``--video_compressor '{"num_tokens": 32}'`` (the compressor spec, stored in the model config),
``--video_compressor_lr`` (its own optimizer group) and the ``video_compressor`` entry of
``--mm_tunable_parts``. Use this package's DeepSpeed configs (``configs/deepspeed/zero2.json``): the
``scripts/zero2.json`` shipped with LLaVA-NeXT holds an optimizer block, with which DeepSpeed
silently ignores every per-module learning rate.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..hosts.llava_next import compressor_parameters, install

_PATCHED = False


def _rank_check_class():
    from transformers import TrainerCallback

    class RankCheck(TrainerCallback):
        """At the end of training: compressor checksum on every rank (gathered under ZeRO-3), peak
        memory and steady-state samples/s, written to <output_dir>/vqtoken_ranks.json by rank 0."""

        def __init__(self) -> None:
            from ..dist import step_timer

            self.timer = step_timer()

        def on_step_end(self, args, state, control, **kw):
            self.timer.on_step_end(args, state, control, **kw)

        def on_train_end(self, args, state, control, model=None, **kw):
            from ..dist import rank_report

            out = rank_report(compressor_parameters(model))
            if state.is_world_process_zero:
                Path(args.output_dir).mkdir(parents=True, exist_ok=True)
                out["log_history"] = state.log_history
                out["steady_samples_per_second"] = self.timer.steady(args)
                (Path(args.output_dir) / "vqtoken_ranks.json").write_text(json.dumps(out, indent=1))
                print(f"[llava-vqtoken] compressor parameters identical across {len(out['per_rank'])} rank(s): "
                      f"{out['compressor_identical']}")

    return RankCheck


def _RankCheck():  # noqa: N802 - a factory that reads like the class it returns
    return _rank_check_class()()


def patch_training() -> None:
    """Extend LLaVA-NeXT's argument classes and trainer (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    install()
    import llava.train.llava_trainer as lt
    import llava.train.train as tr

    _add_arguments(tr)
    _patch_trainer(lt.LLaVATrainer)
    _patch_final_save(tr)
    _PATCHED = True


def _add_arguments(tr) -> None:
    """``--video_compressor`` on LLaVA-NeXT's ModelArguments, ``--video_compressor_lr`` on its TrainingArguments."""

    @dataclass
    class VQModelArguments(tr.ModelArguments):
        video_compressor: str | None = field(
            default=None, metadata={"help": 'VQToken compressor spec as JSON, e.g. {"num_tokens": 32}'}
        )

    @dataclass
    class VQTrainingArguments(tr.TrainingArguments):
        video_compressor_lr: float | None = field(default=None, metadata={"help": "learning rate of the compressor"})

    for cls in (VQModelArguments, VQTrainingArguments):  # importable by name, so checkpoints can pickle them
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        globals()[cls.__name__] = cls
    tr.ModelArguments = VQModelArguments
    tr.TrainingArguments = VQTrainingArguments


def _compressor_trainable(model, args) -> bool:
    """Whether the compressor trains: ``video_compressor`` in ``--mm_tunable_parts`` when that is given
    (mm_language_model would otherwise sweep the compressor in), else unless only the projector is tuned
    without a compressor learning rate."""
    parts = getattr(args, "mm_tunable_parts", None)
    if parts is not None:
        return "video_compressor" in parts.split(",")
    return not getattr(model.config, "tune_mm_mlp_adapter", False) or args.video_compressor_lr is not None


def _move_to_compressor_group(opt, params: set[int], lr: float) -> None:
    """Take the compressor's parameters (``params``: their ids) out of ``opt``'s groups into a group of their own."""
    inner = getattr(opt, "optimizer", opt)
    moved = []
    for g in inner.param_groups:
        keep = [p for p in g["params"] if id(p) not in params]
        moved += [p for p in g["params"] if id(p) in params]
        g["params"] = keep
    inner.param_groups = [g for g in inner.param_groups if g["params"]]
    inner.add_param_group({"params": moved, "lr": lr, "weight_decay": 0.0, "name": "video_compressor"})


def numpy_rng_state_types() -> list:
    """The numpy classes pickled in a Trainer's ``rng_state*.pth`` (numpy's legacy RNG state: a uint32
    array in a tuple)."""
    import numpy as np

    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _patch_trainer(trainer_cls) -> None:
    """LLaVATrainer: the compressor's parameters trainable or frozen as asked, its own optimizer group
    (``--video_compressor_lr``), and the rank check at the end of training."""
    orig_init, orig_opt = trainer_cls.__init__, trainer_cls.create_optimizer

    def __init__(self, model=None, args=None, *a, **kw):
        params = compressor_parameters(model) if model is not None else []
        trainable = _compressor_trainable(model, args)
        for p in params:
            p.requires_grad_(trainable)
        orig_init(self, model, args, *a, **kw)
        self.add_callback(_RankCheck())

    def create_optimizer(self):
        opt = orig_opt(self)
        lr = getattr(self.args, "video_compressor_lr", None)
        mine = {id(p) for p in compressor_parameters(self.model) if p.requires_grad}
        if lr is None or not mine or getattr(self, "_vq_group_added", False):
            return opt
        _move_to_compressor_group(opt, mine, lr)
        self._vq_group_added = True
        return opt

    orig_rng = trainer_cls._load_rng_state

    def _load_rng_state(self, checkpoint):
        """transformers 4.45 reads ``rng_state*.pth`` with torch.load's default, which torch >= 2.6 made
        ``weights_only``: numpy's RNG state inside is refused and every resume stopped there. Allow
        exactly the numpy types that file holds, for this one load."""
        import torch

        with torch.serialization.safe_globals(numpy_rng_state_types()):
            return orig_rng(self, checkpoint)

    trainer_cls.__init__ = __init__
    trainer_cls.create_optimizer = create_optimizer
    trainer_cls._load_rng_state = _load_rng_state


@contextmanager
def cuda_sync_skipped() -> Iterator[None]:
    """``torch.cuda.synchronize`` does nothing inside the block (it raises on a machine without CUDA);
    the real one is back on exit, also when the block raises. Without CUDA there is nothing to wait for."""
    import torch

    sync = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.synchronize = sync


def _patch_final_save(tr) -> None:
    """LLaVA-NeXT's final save calls torch.cuda.synchronize(), which fails on CPU-only runs: skip it there,
    for the save only."""
    orig_save = tr.safe_save_model_for_hf_trainer

    def safe_save_model_for_hf_trainer(trainer, output_dir):
        import torch

        if torch.cuda.is_available():
            return orig_save(trainer=trainer, output_dir=output_dir)
        with cuda_sync_skipped():
            return orig_save(trainer=trainer, output_dir=output_dir)

    tr.safe_save_model_for_hf_trainer = safe_save_model_for_hf_trainer


def check_video_reader(data_path: str) -> None:
    """LLaVA-NeXT reads videos with decord, which ``llava/utils.py`` imports in one ``try`` together with
    ``av``: without either, every video fails, the dataset silently skips it, and training later dies
    with an IndexError far from the cause. Fail at launch instead, naming the missing package."""
    import llava.utils as lu

    if hasattr(lu, "VideoReader"):
        return
    paths = [p for p in data_path.split(",") if p.endswith(".json") and Path(p).exists()]
    videos = [r["video"] for p in paths for r in json.loads(Path(p).read_text()) if "video" in r]
    if any("shareVideoGPTV" not in v for v in videos):  # those are frame folders, read with PIL
        missing = [m for m in ("av", "decord") if importlib.util.find_spec(m) is None]
        raise SystemExit(
            f"llava-vqtoken: LLaVA-NeXT cannot read videos: llava/utils.py imports av and decord together and "
            f"{' and '.join(missing) or 'one of them'} failed to import (pip install av decord)"
        )


FRAME_FOLDER_MARK = "shareVideoGPTV"  # LLaVA-NeXT reads these "videos" as folders of frames, with PIL
CHECKED_DATA = "vqtoken_data.rank{rank}.json"
SKIPPED_REPORT = "vqtoken_skipped_videos.json"
REASONS_SHOWN = 3


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def _unusable(path: str) -> str | None:
    """Why LLaVA-NeXT could not train on this video (None when it can)."""
    from ..video import VideoError, load_video

    if FRAME_FOLDER_MARK in path:
        return None if os.path.isdir(path) and os.listdir(path) else f"frame folder missing or empty: {path}"
    try:
        load_video(path, 1)
    except VideoError as e:
        return str(e)
    return None


def drop_unusable_videos(data_path: str, video_folder: str | None, output_dir: str | None) -> str:
    """Check every video of a ``.json`` training set at launch; report, skip and count the unusable ones.

    LLaVA-NeXT's dataset replaces a sample whose video fails with the next row, silently, and crashes
    with an IndexError when it is the last row. Rows whose video cannot be read are left out instead:
    the checked data is written to ``<output_dir>/vqtoken_data.rank<R>.json`` (the path returned), the
    skipped videos with their reasons to ``<output_dir>/vqtoken_skipped_videos.json``."""
    rank = int(os.environ.get("RANK", "0"))
    if not (data_path.endswith(".json") and Path(data_path).is_file()):
        if rank == 0:
            print(f"[llava-vqtoken] videos not checked at launch (only a single .json --data_path is): {data_path}")
        return data_path
    records = json.loads(Path(data_path).read_text())
    reasons: dict[str, str] = {}
    for name in dict.fromkeys(r["video"] for r in records if r.get("video")):
        why = _unusable(os.path.join(video_folder or "", name))
        if why is not None:
            reasons[name] = why
    if not reasons:
        return data_path
    kept = [r for r in records if r.get("video") not in reasons]
    if not kept:
        raise SystemExit(f"llava-vqtoken: no usable sample in {data_path}: all {len(records)} rows have unusable "
                         f"videos, e.g. {next(iter(reasons.values()))}")
    out = Path(output_dir or ".")
    out.mkdir(parents=True, exist_ok=True)
    checked = out / CHECKED_DATA.format(rank=rank)
    checked.write_text(json.dumps(kept))
    if rank == 0:
        report = {"data_path": data_path, "samples": len(records), "samples_skipped": len(records) - len(kept),
                  "skipped_videos": reasons}
        (out / SKIPPED_REPORT).write_text(json.dumps(report, indent=1))
        shown = "; ".join(list(reasons.values())[:REASONS_SHOWN])
        print(f"[llava-vqtoken] skipping {len(records) - len(kept)} of {len(records)} sample(s): {len(reasons)} "
              f"unusable video(s) (all listed in {out / SKIPPED_REPORT}): {shown}", file=sys.stderr)
    return str(checked)


def main(argv: list[str] | None = None) -> None:
    patch_training()
    import llava.train.train as tr

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = sys.argv[1:]
    if "--deepspeed" in args:
        ds = args[args.index("--deepspeed") + 1]
        if Path(ds).exists() and "optimizer" in json.loads(Path(ds).read_text()):
            raise SystemExit(
                f"llava-vqtoken: {ds} has an 'optimizer' block, with which DeepSpeed ignores per-module learning "
                "rates (mm_projector_lr, mm_vision_tower_lr, video_compressor_lr); use configs/deepspeed/zero2.json"
            )
    if "--data_path" in args:
        at = args.index("--data_path") + 1
        check_video_reader(args[at])
        args[at] = drop_unusable_videos(args[at], _flag(args, "--video_folder"), _flag(args, "--output_dir"))
        sys.argv = [sys.argv[0], *args]
    attn = "sdpa"
    if "--attn_implementation" in args:
        attn = args[args.index("--attn_implementation") + 1]
    tr.train(attn_implementation=attn)


if __name__ == "__main__":
    main()
