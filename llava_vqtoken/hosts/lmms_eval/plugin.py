"""lmms-eval (0.7.3) model plugin for the transformers host, registered through the
``lmms_eval.models`` entry-point group (no edits to lmms-eval).

``--model vqtoken_hf --model_args pretrained=DIR,num_tokens=32`` (or ``compressor=pool``,
``adaptive=elbow,min_codes=8,max_codes=64``, ``frames=32``...). The model_args of lmms-eval's own
``vqtoken`` wrapper are accepted as aliases: ``vqtoken_selection_method`` (fixed|elbow|silhouette|elbow_released),
``vqtoken_min_clusters``, ``vqtoken_max_clusters``, ``max_frames_num``.
Per-sample visual-token counts and timings go to ``stats_file`` (JSON lines) for eval.sh's report.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch

from ...config import ADAPTIVE, CompressorConfig, ConfigError
from ...spec_rule import resolve_spec

#: lmms-eval `vqtoken` wrapper's model_args -> ours
ALIASES = {"vqtoken_min_clusters": "min_codes", "vqtoken_max_clusters": "max_codes", "max_frames_num": "frames"}
#: compressor fields that model_args may set (the method itself is ``compressor=NAME``)
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(CompressorConfig) if f.name not in ("name", "extra"))
#: vqtoken_hf's ``dtype`` model_arg -> torch dtype (None: bfloat16 on CUDA, float32 on CPU)
DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: model_args of lmms-eval's wrappers that vqtoken_hf accepts and ignores (its chat template is the processor's)
IGNORED_HF_ARGS = ("conv_template", "model_name")
#: model_args that must be positive integers
POSITIVE_INT_ARGS = ("frames", "max_frames_num", "batch_size", "max_new_tokens")


def manifests():
    """Entry-point payload: the models this package adds to lmms-eval."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(
            model_id="vqtoken_hf",
            simple_class_path="llava_vqtoken.hosts.lmms_eval.plugin.VQTokenHF",
            aliases=("llava_onevision_vqtoken_hf",),
        ),
        ModelManifest(  # resolved lazily: importing it needs LLaVA-NeXT, only when this model is asked for
            model_id="vqtoken_llava_next",
            simple_class_path="llava_vqtoken.hosts.lmms_eval.llava_next.VQTokenLlavaNext",
            aliases=("llava_onevision_vqtoken_next",),
        ),
    ]


def compressor_from_model_args(args: dict[str, Any]) -> tuple[CompressorConfig | None, dict[str, Any]]:
    """Split lmms-eval model_args into a compressor spec (or None: keep the checkpoint's) and the rest."""
    spec, rest = spec_fields_from_model_args(args)
    return (CompressorConfig.from_dict(spec) if spec else None), rest


#: lmms-eval's ``vqtoken_selection_method`` values: fixed K, or one of the config's adaptive rules
SELECTION_METHODS = ("fixed", *(a for a in ADAPTIVE if a is not None))


def spec_fields_from_model_args(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split lmms-eval model_args into the compressor fields they set (typed) and the rest."""
    args = {ALIASES.get(k, k): v for k, v in args.items()}
    spec: dict[str, Any] = {}
    method = args.pop("vqtoken_selection_method", None)
    if method is not None:
        if method not in SELECTION_METHODS:
            raise ConfigError(f"vqtoken_selection_method={method!r} must be one of {', '.join(SELECTION_METHODS)}")
        spec["adaptive"] = None if method == "fixed" else method
        if method == "fixed" and "num_tokens" not in args and "max_codes" in args:
            spec["num_tokens"] = int(args["max_codes"])  # the wrapper's fixed K is its max_clusters
    if "compressor" in args:
        spec["name"] = args.pop("compressor")
    for key in SPEC_FIELDS:
        if key in args:
            spec[key] = CompressorConfig.parse_field(key, str(args.pop(key)))
    if spec.get("adaptive"):
        spec.setdefault("num_tokens", None)
    return spec, args


def split_hf_model_args(model_args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """vqtoken_hf's model_args beyond its named ones -> (the compressor fields they set, ``{"frames": N}``
    if given); ConfigError naming any key it does not know or a bad field value."""
    spec, rest = spec_fields_from_model_args(model_args)
    resolve_spec(None, spec)  # the values alone are valid (a checkpoint's saved spec is checked at load)
    for key in IGNORED_HF_ARGS:
        rest.pop(key, None)
    unknown = sorted(set(rest) - {"frames"})
    if unknown:
        raise ConfigError(f"vqtoken_hf: unknown model_args: {', '.join(unknown)}")
    return spec, rest


def check_model_args(host: str, args: dict[str, Any]) -> None:
    """Raise ConfigError naming what the host's lmms-eval model would refuse in these model_args (as
    lmms-eval parses them), without loading anything: eval.sh checks every setting before it launches."""
    from .llava_next import VQTokenLlavaNext, overwrite_for

    cls = VQTokenHF if host == "hf" else VQTokenLlavaNext
    check_spec_against_checkpoint(host, args)
    for key in POSITIVE_INT_ARGS:
        if key in args and not (str(args[key]).isdigit() and int(str(args[key])) > 0):
            raise ConfigError(f"{cls.plugin_name}: {key}={args[key]!r} must be a positive integer")
    named = set(inspect.signature(cls.__init__).parameters) - {"self", "model_args"}
    rest = {k: v for k, v in args.items() if k not in named}
    if host == "hf":
        if "dtype" in args and args["dtype"] not in DTYPES:
            raise ConfigError(f"vqtoken_hf: dtype={args['dtype']!r} is not one of {', '.join(DTYPES)}")
        split_hf_model_args(rest)
        return
    _, left = overwrite_for(rest)
    left.pop("max_frames_num", None)
    if left:
        raise ConfigError(f"vqtoken_llava_next: unknown model_args: {', '.join(sorted(left))}")


def check_spec_against_checkpoint(host: str, args: dict[str, Any]) -> None:
    """The spec rule for model_args on a local ``pretrained`` checkpoint, without loading a model: what
    the load would refuse is a ConfigError here (eval.sh checks before it launches lmms-eval)."""
    from ...config import CheckpointError
    from .llava_next import OVERRIDE_KEY, overwrite_for

    path = args.get("pretrained")
    if not path or not Path(str(path)).is_dir():
        return
    rest = {k: v for k, v in args.items() if k != "pretrained"}
    try:
        if host == "hf":
            from ..hf.load import saved_spec

            given = spec_fields_from_model_args(rest)[0]
            allow = parse_bool("override_spec", rest.get("override_spec", False))
        else:
            from ..llava_next import saved_spec

            overwrite = overwrite_for(rest)[0]
            given, allow = overwrite["video_compressor"], bool(overwrite.get(OVERRIDE_KEY))
        resolve_spec(saved_spec(str(path)), given, allow, where=str(path))
    except CheckpointError as e:
        raise ConfigError(str(e)) from None


def parse_bool(name: str, value: bool | str) -> bool:
    """A boolean model_arg (lmms-eval passes strings)."""
    if isinstance(value, bool):
        return value
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if str(value).lower() not in words:
        raise ConfigError(f"{name}={value!r} is not a boolean (true or false)")
    return words[str(value).lower()]


def _lmms_base():
    from lmms_eval.api.model import lmms

    return lmms


class VideoLmms(_lmms_base()):
    """What both hosts' lmms-eval models share: rank properties, unsupported request types, and the
    per-sample stats (visual tokens, seconds) that eval.sh's report reads."""

    is_simple = True
    plugin_name = "vqtoken"
    stats_file: str | None = None
    random_weights: bool | None = None
    untrained_compressor: bool | None = None  # None: the host does not say
    overridden: list[str] | None = None  # spec fields changed against the checkpoint's training

    def _setup_device(self, device: str | None) -> torch.device:
        """Data parallelism through accelerate: this process's rank, world size and device. No device
        given: CUDA when there is a GPU, else the CPU. ``cuda`` asked for without a GPU is refused (it
        used to run on the CPU without a word); one GPU per process when several run."""
        from accelerate import Accelerator

        acc = Accelerator()
        self._rank, self._world_size = acc.local_process_index, acc.num_processes
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device}: no CUDA GPU is available here (use device=cpu)")
        if device.startswith("cuda") and acc.num_processes > 1:
            torch.cuda.set_device(acc.local_process_index)
            device = f"cuda:{acc.local_process_index}"
        return torch.device(device)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{self.plugin_name}: loglikelihood is not supported; use generate_until tasks")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.plugin_name}: multi-round generation is not supported")

    def log_stats(
        self, task: str, doc_id: int, tokens: int, seconds: float, frames: int, spec: CompressorConfig,
        input_tokens: int | None = None,
    ) -> None:
        """One JSON line per sample: visual tokens fed to the LLM, the input tokens the compressor got
        (frames x grid; None where the host does not say), whether the weights are random (None: not checked)."""
        if not self.stats_file:
            return
        rec = {"task": task, "doc_id": doc_id, "visual_tokens": int(tokens), "seconds": seconds, "frames": frames,
               "input_tokens": input_tokens, "random_weights": self.random_weights, "compressor": spec.to_dict(),
               "untrained_compressor": self.untrained_compressor, "overridden": self.overridden}
        with open(self.stats_file, "a") as f:
            f.write(json.dumps(rec) + "\n")


class VQTokenHF(VideoLmms):
    plugin_name = "vqtoken_hf"

    def __init__(
        self,
        pretrained: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        frames: int | str = 32,
        max_new_tokens: int | str = 32,
        stats_file: str | None = None,
        attn_implementation: str | None = None,
        override_spec: bool | str = False,
        cache_dir: str | None = None,
        **model_args: Any,
    ) -> None:
        super().__init__()
        from ..hf.load import load_model
        from ..hf.tiny import build_tiny_llava_onevision, is_random

        spec, rest = split_hf_model_args(model_args)
        frames = int(rest.get("frames", frames))
        self._device = self._setup_device(device)
        torch_dtype = DTYPES[dtype]
        if torch_dtype is None:
            torch_dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        path = pretrained or str(build_tiny_llava_onevision(cache_dir=cache_dir))
        loaded = load_model(path, spec, parse_bool("override_spec", override_spec), dtype=torch_dtype,
                            attn_implementation=attn_implementation)
        self.model = loaded.model.to(self._device).eval()
        proc = loaded.processor
        proc.tokenizer.padding_side = "left"
        self.processor = proc
        self.frames = frames
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.stats_file = stats_file
        self.spec = self.model.config.compressor
        self.random_weights = pretrained is None or is_random(pretrained)
        params = any(True for _ in self.model.model.video_compressor.parameters())
        self.untrained_compressor = loaded.decision.untrained(params)
        self.overridden = list(loaded.decision.overridden)

    def _grid_tokens(self) -> int:
        """Post-projector tokens per frame before any compression (27 x 27 = 729 at 384 px, patch 14)."""
        vision = self.model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def generate_until(self, requests) -> list[str]:
        from tqdm import tqdm

        from ...video import load_video
        from ..hf import generate_adaptive

        out: list[str] = []
        bs = self.batch_size_per_gpu
        for start in tqdm(range(0, len(requests), bs), disable=self.rank != 0, desc="vqtoken_hf"):
            chunk = requests[start : start + bs]
            t0 = time.perf_counter()
            prompts, videos, untils, max_new = [], [], [], self.max_new_tokens
            for req in chunk:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                if not visuals:
                    raise ValueError(f"vqtoken_hf: {task} doc {doc_id} has no video")
                videos.append(load_video(visuals[0], self.frames))
                msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": context}]}]
                prompts.append(self.processor.apply_chat_template(msgs, add_generation_prompt=True))
                until = gen_kwargs.get("until") or []
                untils.append([until] if isinstance(until, str) else list(until))
                max_new = int(gen_kwargs.get("max_new_tokens", max_new))
            gen = dict(max_new_tokens=max_new, do_sample=False, num_beams=1)
            with torch.no_grad():
                if self.spec.adaptive is not None:
                    ids, inputs = generate_adaptive(self.model, self.processor, videos, prompts, **gen)
                else:
                    inputs = self.processor(text=prompts, videos=videos, return_tensors="pt", padding=True)
                    inputs = {k: v.to(self._device) for k, v in inputs.items()}
                    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self.model.dtype)
                    ids = self.model.generate(**inputs, **gen)
            counts = (inputs["input_ids"] == self.model.config.video_token_id).sum(1).tolist()
            new_ids = ids[:, inputs["input_ids"].shape[1] :]
            texts = self.processor.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
            secs = (time.perf_counter() - t0) / len(chunk)
            for req, text, until, n, video in zip(chunk, texts, untils, counts, videos):
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                out.append(text)
                self.log_stats(req.args[4], req.args[3], n, secs, self.frames, self.spec,
                               input_tokens=len(video) * self._grid_tokens())
        return out
