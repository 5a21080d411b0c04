"""Fine-tune a VQToken LLaVA-OneVision (transformers host) with the HF Trainer, optionally under DeepSpeed.

``python -m llava_vqtoken.train.hf_train`` (what ``train.sh`` runs). With no arguments: the embedded
default, a tiny random model on a generated dataset, a few dozen CPU steps, then the checkpoint is
reloaded for one generate. Compressor flags are the core's (``--num-tokens``, ``--adaptive``...).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..config import CheckpointError, ConfigError
from ..config_flags import (
    EXIT_BAD_INPUT,
    OneLineParser,
    add_compressor_args,
    model_dir_problem,
    overrides_from_args,
)

log = logging.getLogger("llava_vqtoken.train")
PARTS = ("vision_tower", "projector", "compressor", "language_model")
DS_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
DEFAULT_EPOCHS = 1.0
ADAPTIVE_REFUSED = ("--adaptive cannot be trained: the processor must know each video's token count before the "
                    "model runs; train with a fixed --num-tokens")


def part_of(name: str) -> str:
    """Which trainable part a parameter belongs to (works with peft's name prefixes too)."""
    if "video_compressor" in name:
        return "compressor"
    if "multi_modal_projector" in name or "image_newline" in name:
        return "projector"
    if "vision_tower" in name:
        return "vision_tower"
    return "language_model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="train.sh", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="LLaVA-OneVision or VQToken checkpoint dir (default: a random model, --preset)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "0.5b"],
                   help="shape of the random default model: tiny (CPU) or 0.5b (SigLIP-so400m + Qwen2-0.5B)")
    p.add_argument("--cache-dir", help="folder of the random default model (default: ~/.cache/llava_vqtoken)")
    p.add_argument("--data", help="LLaVA-Video-178K-style JSON (default: a generated demo set)")
    p.add_argument("--output-dir", default="runs/train-demo")
    p.add_argument("--frames", type=int, default=8)
    add_compressor_args(p)
    p.add_argument("--deepspeed", default="none", help="zero2, zero3, a config path, or none")
    p.add_argument("--lora", action="store_true", help="LoRA on the LLM's attention (peft)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--freeze", default="vision_tower", help=f"comma list of parts to freeze: {', '.join(PARTS)}")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate of the LLM")
    p.add_argument("--compressor-lr", type=float, default=1e-3)
    p.add_argument("--projector-lr", type=float, default=5e-4)
    p.add_argument("--vision-lr", type=float, default=2e-6)
    p.add_argument("--epochs", type=float, default=None,
                   help=f"passes over the data (default {DEFAULT_EPOCHS}); give this or --max-steps, not both")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (instead of --epochs)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=10)
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--no-generate", action="store_true", help="skip the reload-and-generate check at the end")
    p.add_argument("--stop-after-steps", type=int, default=0,
                   help="stop as if interrupted after N optimizer steps (to test resumption)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.epochs is not None and a.max_steps is not None:
        p.error("give --epochs or --max-steps, not both (--max-steps would override --epochs)")
    if (a.epochs is not None and a.epochs <= 0) or (a.max_steps is not None and a.max_steps <= 0):
        p.error("--epochs and --max-steps must be > 0")
    if a.adaptive:
        p.error(ADAPTIVE_REFUSED)
    bad = set(filter(None, a.freeze.split(","))) - set(PARTS)
    if bad:
        p.error(f"--freeze: unknown part(s) {', '.join(sorted(bad))}; choose from {', '.join(PARTS)}")
    return a


def deepspeed_config(choice: str) -> str | None:
    if choice in ("", "none"):
        return None
    if choice in ("zero2", "zero3"):
        return str(DS_CONFIGS / f"{choice}.json")
    if not Path(choice).exists():
        raise SystemExit(f"train.sh: error: DeepSpeed config not found: {choice}")
    return choice


def build(args: argparse.Namespace):
    """Model and processor through the one load-or-convert path (README "Which spec runs")."""
    from ..hosts.hf.load import load_model
    from ..hosts.hf.tiny import build_tiny_llava_onevision, is_random

    preset = None if args.preset == "tiny" else args.preset
    model_dir = args.model or str(build_tiny_llava_onevision(preset=preset, cache_dir=args.cache_dir))
    if is_random(model_dir):
        log.warning("model %s has RANDOM weights (tiny built-in default)", model_dir)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    try:
        loaded = load_model(model_dir, overrides_from_args(args), args.override_spec, dtype=dtype, note=log.warning)
    except (CheckpointError, ConfigError) as e:  # bad input: one line, exit status 2
        fail(str(e))
    return loaded.model, loaded.processor


def apply_freezing_and_lora(model, args: argparse.Namespace):
    frozen = set(filter(None, args.freeze.split(",")))
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name) not in frozen)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)",
            modules_to_save=[m for m in ("video_compressor", "multi_modal_projector") if m not in frozen
                             and ("compressor" if m == "video_compressor" else "projector") not in frozen],
        )
        model = get_peft_model(model, lora)
    return model


def make_trainer_class():
    from transformers import Trainer

    class VQTrainer(Trainer):
        """Trainer whose AdamW has one parameter group per part, each with its own learning rate."""

        part_lrs: dict[str, float] = {}

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                groups: dict[str, list[torch.nn.Parameter]] = {}
                for name, p in self.model.named_parameters():
                    if p.requires_grad:
                        groups.setdefault(part_of(name), []).append(p)
                params = [
                    {"params": ps, "lr": self.part_lrs.get(part, self.args.learning_rate), "name": part,
                     "weight_decay": self.args.weight_decay}
                    for part, ps in groups.items()
                ]
                self.optimizer = torch.optim.AdamW(params, betas=(0.9, 0.999), eps=1e-8)
                self.group_summary = [
                    {"name": g["name"], "lr": g["lr"], "params": sum(_numel(p) for p in g["params"])} for g in params
                ]
            return self.optimizer

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            """Every weight of a full-model checkpoint, or an error naming those that do not fit.

            transformers saves LLaVA-OneVision in the legacy key layout and the stock resume loads it with
            ``strict=False``, which leaves all but the compressor at the base weights, with a warning only."""
            target = model if model is not None else self.model
            if self.is_deepspeed_enabled or self.is_fsdp_enabled or not has_full_weights(resume_from_checkpoint):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            load_full_checkpoint(target, resume_from_checkpoint)

    return VQTrainer


class ResumeError(RuntimeError):
    """A checkpoint's weights do not match the model being resumed."""


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
KEYS_SHOWN = 8


def has_full_weights(checkpoint: str) -> bool:
    return any((Path(checkpoint) / f).exists() for f in WEIGHT_FILES)


def _read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = checkpoint / WEIGHT_FILES[1]
    if not index.exists():
        return load_file(str(checkpoint / WEIGHT_FILES[0]), device="cpu")
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        out.update(load_file(str(checkpoint / shard), device="cpu"))
    return out


def saved_names(model: torch.nn.Module) -> dict[str, str]:
    """Map the name each parameter/buffer gets in ``save_pretrained``'s file to its name in ``model``,
    using transformers' own save-time renaming (one placeholder tensor per key identifies it)."""
    from transformers.core_model_loading import revert_weight_conversion

    runtime = list(model.state_dict())
    marks = {k: torch.empty(0) for k in runtime}
    by_id = {id(t): k for k, t in marks.items()}
    reverted = revert_weight_conversion(model, dict(marks))
    out = {}
    for saved, t in reverted.items():
        if id(t) not in by_id:
            raise ResumeError(f"cannot map checkpoint key {saved} to the model (a weight conversion, not a rename)")
        out[saved] = by_id[id(t)]
    return out


def load_full_checkpoint(model: torch.nn.Module, checkpoint: str) -> None:
    """Load all of ``checkpoint``'s weights into ``model``; raise :class:`ResumeError` naming the keys
    that are missing from it or that the model does not have (tied copies, saved once, count as loaded)."""
    names = saved_names(model)
    state = _read_weights(Path(checkpoint))
    unexpected = sorted(k for k in state if k not in names)
    mapped = {names[k]: v for k, v in state.items() if k in names}
    result = model.load_state_dict(mapped, strict=False)
    current = model.state_dict()
    loaded = {current[k].data_ptr() for k in mapped}
    missing = sorted(k for k in result.missing_keys if current[k].data_ptr() not in loaded)
    if missing or unexpected:
        raise ResumeError(
            f"cannot resume from {checkpoint}: "
            + "; ".join(([f"{len(missing)} weight(s) missing: {show(missing)}"] if missing else [])
                        + ([f"{len(unexpected)} unknown key(s): {show(unexpected)}"] if unexpected else []))
        )
    log.info("resumed all %d weights from %s", len(mapped), checkpoint)


def show(keys: list[str]) -> str:
    """The first few of ``keys``, and how many more there are."""
    more = len(keys) - KEYS_SHOWN
    return ", ".join(keys[:KEYS_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 partitions parameters to size 0


def fail(message: str) -> NoReturn:
    """Stop with one line on stderr and exit status 2 (bad input or a setting that cannot be honoured)."""
    print(f"train.sh: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def check_inputs(args: argparse.Namespace) -> None:
    """Flags and files that can be checked before any model is loaded: one line and exit 2 if bad."""
    if args.frames < 1:
        fail(f"--frames must be >= 1, got {args.frames}")
    why = None if args.model is None else model_dir_problem(args.model)
    if why:
        fail(why)
    if args.data is not None:
        try:
            rows = json.loads(Path(args.data).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            fail(f"--data {args.data} is not a readable JSON file: {e}")
        if not isinstance(rows, list) or not rows:
            fail(f"--data {args.data} must hold a non-empty JSON list of records")


def check_resume_spec(checkpoint: str, running) -> None:
    """A resumed run keeps the compressor spec its checkpoint was trained with: any other change (the
    flags of this run differ from the interrupted one's) is refused in one line, never silently mixed."""
    from ..config import CONFIG_KEY, CompressorConfig

    config = Path(checkpoint) / "config.json"
    if not config.is_file():  # a LoRA checkpoint holds adapters only: its spec is the base model's
        return
    saved = json.loads(config.read_text()).get(CONFIG_KEY)
    if saved is None:
        return
    old = CompressorConfig.from_dict(saved)
    diff = [k for k in old.to_dict() if k != "extra" and getattr(old, k) != getattr(running, k)]
    if diff:
        shown = ", ".join(f"{k} {getattr(old, k)!r} -> {getattr(running, k)!r}" for k in diff)
        fail(f"cannot resume from {checkpoint}: it was trained with another compressor spec ({shown}); "
             "use the interrupted run's flags, or --no-resume / another --output-dir to start over")


def last_checkpoint(output_dir: str) -> str | None:
    found = sorted(glob.glob(os.path.join(output_dir, "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> int:
    """Train; the process environment is restored afterwards (see :func:`train`)."""
    saved = dict(os.environ)
    try:
        return train(argv)
    finally:  # a DeepSpeed run sets RANK..., and accelerate sets ACCELERATE_USE_DEEPSPEED=true for good,
        os.environ.clear()  # which would turn the next run in this process into a DeepSpeed run
        os.environ.update(saved)


def train(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args = parse_args(argv)
    from ..dist import quiet_deepspeed_accelerator

    quiet_deepspeed_accelerator()
    from transformers.utils import logging as hf_logging

    from ..dist import step_timer
    from ..synthetic import make_demo_dataset
    from .data import VideoQADataset, collate

    hf_logging.set_verbosity_error()
    ds_cfg = deepspeed_config(args.deepspeed)
    if ds_cfg and "RANK" not in os.environ:  # started without a launcher: a one-process group
        _one_process_group()
    targs = training_arguments(args, ds_cfg)  # first, so ZeRO-3 can partition weights while they load
    check_inputs(args)
    model, proc = build(args)
    spec = model.config.compressor  # what this run trains (a resume must match it)
    if model.config.compressor.adaptive:
        fail(f"{args.model} has an adaptive-K compressor; {ADAPTIVE_REFUSED}")
    model = apply_freezing_and_lora(model, args)
    data_path = args.data or str(make_demo_dataset(Path(args.output_dir) / "demo_data"))
    dataset = VideoQADataset(data_path, proc, args.frames)
    trainer_cls = make_trainer_class()
    trainer_cls.part_lrs = {"compressor": args.compressor_lr, "projector": args.projector_lr,
                            "vision_tower": args.vision_lr, "language_model": args.lr}
    record, timer = make_recorder(args.stop_after_steps), step_timer()
    trainer = trainer_cls(
        model=model, args=targs, train_dataset=dataset, callbacks=[record, timer],
        processing_class=proc,  # saved into every checkpoint-N, so each one loads and evaluates on its own
        data_collator=partial(collate, pad_id=proc.tokenizer.pad_token_id),
    )
    record.trainer = trainer
    resume = None if args.no_resume else last_checkpoint(args.output_dir)
    if resume:
        check_resume_spec(resume, spec)
        log.info("resuming from %s (optimizer, scheduler and data position)", resume)
    try:
        train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    except ResumeError as e:
        fail(str(e))
    warn_about_videos(dataset, args.frames)
    ranks = rank_report(trainer)
    final = Path(args.output_dir) / "final"
    zero3 = bool(ds_cfg) and json.loads(Path(ds_cfg).read_text())["zero_optimization"]["stage"] == 3
    save_final(trainer, final, merge_lora=args.lora and not zero3)
    if trainer.is_world_process_zero():
        proc.save_pretrained(final)
        summary = {"losses": record.losses, "skipped_videos": sorted(dataset.skipped),
                   "truncated_samples": dataset.truncated, "final": str(final),
                   "param_groups": record.groups, "resumed_from": resume, "ranks": ranks,
                   "frames": args.frames, "short_videos": dataset.short_videos,
                   "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
                   "train_samples_per_second": train_metrics.get("train_samples_per_second"),
                   "steady_samples_per_second": timer.steady(targs),
                   "world_size": targs.world_size}
        (Path(args.output_dir) / "train_summary.json").write_text(json.dumps(summary, indent=1))
        log.info("losses: %s", " ".join(f"{x:.3f}" for x in record.losses))
        if not args.no_generate and not (args.lora and zero3):
            reload_and_generate(final, dataset)
    return 0


def _one_process_group() -> None:
    """The environment of a one-process distributed group on a free local port (DeepSpeed without a launcher)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def training_arguments(args: argparse.Namespace, ds_cfg: str | None):
    """The HF ``TrainingArguments`` of this run."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        num_train_epochs=DEFAULT_EPOCHS if args.epochs is None else args.epochs,
        max_steps=-1 if args.max_steps is None else args.max_steps,
        save_steps=args.save_steps, logging_steps=args.logging_steps,
        save_total_limit=2, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
        bf16=args.bf16, deepspeed=ds_cfg, remove_unused_columns=False, report_to=[],
        dataloader_num_workers=0, seed=0 if args.seed is None else args.seed, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False, save_only_model=False, ddp_find_unused_parameters=False,
    )


def make_recorder(stop_after_steps: int | None):
    """A ``TrainerCallback`` that records the optimizer's groups (as it holds them: names and learning
    rates; set ``.trainer`` for the parameter counts) and the logged losses, and stops the run after
    ``stop_after_steps`` steps when given."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.trainer = None
            self.losses: list[float] = []
            self.groups: list[dict[str, Any]] = []

        def on_train_begin(self, _args, state, control, optimizer=None, **kw):
            # the groups as the (possibly DeepSpeed-wrapped) optimizer holds them: names and LRs it will use
            opt = getattr(optimizer, "optimizer", optimizer)
            built = {g["name"]: g["params"] for g in getattr(self.trainer, "group_summary", [])}
            for g in getattr(opt, "param_groups", []):
                self.groups.append({"name": g.get("name"), "lr": g["lr"], "params": built.get(g.get("name"))})
            log.info("optimizer groups: %s", ", ".join(f"{g['name']} lr={g['lr']:g}" for g in self.groups))

        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_step_end(self, _args, state, control, **kw):
            if stop_after_steps and state.global_step >= stop_after_steps:
                raise KeyboardInterrupt(f"stopped after {state.global_step} steps (--stop-after-steps)")

    return Recorder()


def warn_about_videos(dataset, frames: int) -> None:
    """One warning each for the skipped videos and the clips shorter than ``frames``."""
    if dataset.skipped:
        log.warning("skipped %d sample(s) with unusable videos: %s", len(dataset.skipped), sorted(dataset.skipped))
    if dataset.short_videos:
        log.warning("%d clip(s) have fewer frames than --frames %d (frames repeated): %s", len(dataset.short_videos),
                    frames, dataset.short_videos)


def save_final(trainer, final: Path, merge_lora: bool) -> None:
    """The final model: LoRA merged into a plain VQToken checkpoint (``merge_lora``, rank 0), else the
    trainer's own save (which gathers ZeRO-3 shards: stage3_gather_16bit_weights_on_model_save)."""
    if merge_lora:
        if trainer.is_world_process_zero():
            trainer.model.merge_and_unload().save_pretrained(final)
    else:
        trainer.save_model(str(final))


def rank_report(trainer) -> dict[str, Any]:
    """Per-rank peak memory and compressor checksum (see :mod:`.ranks`), logged."""
    from ..dist import rank_report as report

    out = report([p for n, p in trainer.model.named_parameters() if "video_compressor" in n])
    log.info("compressor parameters identical across %d rank(s): %s", len(out["per_rank"]),
             out["compressor_identical"])
    return out


def reload_and_generate(final: Path, dataset) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..hosts import hf  # noqa: F401  (registers the VQToken classes)

    try:  # load plainly, not partitioned, even if a ZeRO-3 config is still active in this process
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    except ImportError:  # pragma: no cover
        pass

    model = AutoModelForImageTextToText.from_pretrained(final).eval()
    proc = AutoProcessor.from_pretrained(final)
    rec = next(r for r in dataset.records if r.get("video") and dataset._video_path(r) not in dataset.skipped)
    from ..video import load_video
    from .data import _messages

    frames = load_video(dataset._video_path(rec), dataset.frames)
    msgs = _messages(rec["conversations"][:1], True)
    inputs = proc(text=proc.apply_chat_template(msgs, add_generation_prompt=True), videos=[frames], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    answer = proc.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    log.info("reloaded %s and generated: %r (expected %r)", final, answer.strip(), rec["conversations"][1]["value"])


if __name__ == "__main__":
    sys.exit(main())
