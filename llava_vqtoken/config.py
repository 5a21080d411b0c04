"""The one configuration object that describes a video-token compressor.

Field names are identical in Python, in a checkpoint's config.json (one nested key,
``video_compressor``), on the command line (every field but ``extra`` is a flag, generated in
``config_flags.py``: ``--num-tokens`` for ``num_tokens``, ``--compressor`` for ``name``) and in
``key=value`` strings (lmms-eval model_args, ``eval.sh --compressors`` and motion-QA settings, all read
by :meth:`CompressorConfig.parse_field`). Validation happens once, here, with messages that name the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

COMPRESSORS = ("vqtoken", "pool", "uniform", "prune", "tome", "temporal_merge", "random", "none")
ADAPTIVE = (None, "separation", "elbow", "silhouette", "elbow_released")
ATTENTION = ("paper", "none", "random", "released")
HASH = ("kmeans", "random")
CODEBOOK = ("raw", "normalized")
FOOTPRINT = ("marginal", "motion")

#: the allowed values of each field that has a fixed set (every surface checks against these)
FIELD_CHOICES: dict[str, tuple[str | None, ...]] = {
    "name": COMPRESSORS, "adaptive": ADAPTIVE, "attention": ATTENTION, "hash": HASH, "codebook": CODEBOOK,
    "footprint": FOOTPRINT,
}
#: the field no string surface (flags, model_args, settings) carries: a free-form JSON object
FREE_FORM_FIELD = "extra"
#: how a null is written in a string surface (only nullable fields accept it: for attention "none" is a mode)
NULL_WORDS = ("none", "null", "")

#: the config.json key under which hosts store the spec
CONFIG_KEY = "video_compressor"


class ConfigError(ValueError):
    """A compressor config field has a bad value."""


class CheckpointError(ValueError):
    """A checkpoint is not what the caller expects (stock vs VQToken, token-count mismatch)."""


@dataclass
class CompressorConfig:
    """Spec of a video-token compressor.

    name: which method (``vqtoken`` or a baseline: ``pool``, ``uniform``, ``prune``, ``tome``,
        ``temporal_merge``, ``random``, ``none``).
    num_tokens: token budget for the whole video (K codes for fixed-length VQToken). ``None`` for
        ``pool`` means LLaVA-OneVision's stock 2x bilinear pooling; ignored by ``none``.
    adaptive: ``None`` (fixed K), ``"separation"``, ``"elbow"`` or ``"silhouette"`` (K per video in
        [min_codes, max_codes]); ``separation`` counts the groups that a gap separates (docs/CLUSTERING.md)
        and is the one that follows the number of objects; ``elbow`` and ``silhouette`` as before;
        ``"elbow_released"`` is the authors' release's rule, K = max(j + 4, min_codes) with j the argmax
        of the second differences over min_codes..max_codes (off by two, K <= 22 over 12..32), which
        the released checkpoint was trained and evaluated with; ``released()`` uses it.
    attention: ``paper`` (VQ-Attention as in the paper: Q, K from the codebook, V from the key map's
        footprint), ``none`` (codebook only), ``random`` (random attention weights, ablation),
        ``released`` (the authors' released decoder layout: index-map rows as queries).
    hash: ``kmeans`` (the key map of the clustering) or ``random`` (random key map, ablation).
    codebook: code vectors as means of ``raw`` tokens (paper) or of L2-``normalized`` tokens (released code).
    footprint: what VQ-Attention's values see of each code's place in the key map. ``marginal``: the
        mean Fourier features of its (t, h, w) coordinates, their spread, its share of tokens and of
        frames. ``motion`` adds its first and last frame, its centroid in each of them and the
        displacement between the two, which the marginal statistics cannot express (a code moving
        right and one moving left have the same marginals), and adds each code's own embedded
        footprint to its token (in the paper form it reaches a code only through the attention mix).
    apply_attention: False builds the attention module (so checkpoints load with every key) but feeds
        the LLM the codebook only: the released code's behaviour with ``attention="released"``, and
        the "attention built, not applied" control for ``paper`` and ``random``.
    cuda_graphs: on CUDA, replay the clustering as a captured graph (same numbers, fewer launches).
    iters / refine_iters / tol: Lloyd budget of a fit and of the adaptive refinement, and the
        centroid-shift tolerance after which a video stops moving. 10 steps from greedy k-means++
        seeds matched 20 steps on structured features (docs/BENCHMARKS.md).
    oversample: a fit seeds ``oversample`` x K centres, fits them, merges them down to K by Ward's
        criterion and refines (docs/CLUSTERING.md); 1 is plain k-means++ + Lloyd (the fit before 2026-12-03).
    compile: run each Lloyd step through ``torch.compile`` (faster on GPU after a one-off compile).
    newline: the host appends its learned newline token after the video tokens (LLaVA-OneVision does).
    chunk_frames: 0 compresses the whole video at once; N > 0 streams it (VQToken only, at inference):
        frames are encoded and projected N at a time, kept on the CPU, and the codebook and key map
        are fitted block by block (``core.streaming``), so device memory is bounded by N frames.
    """

    name: str = "vqtoken"
    num_tokens: int | None = 32
    adaptive: str | None = None
    min_codes: int = 8
    max_codes: int = 64
    iters: int = 10
    refine_iters: int = 5
    tol: float = 1e-4
    oversample: int = 2
    seed: int = 0
    seed_sample: int = 2048
    silhouette_sample: int = 2048
    attention: str = "paper"
    hash: str = "kmeans"
    codebook: str = "raw"
    heads: int = 8
    footprint_freqs: int = 8
    footprint: str = "marginal"
    ffn_dim: int = 2048
    newline: bool = True
    apply_attention: bool = True
    cuda_graphs: bool = True
    compile: bool = False
    chunk_frames: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"compressor config: {name}={getattr(self, name)!r} {why}")

        self._check_types()
        if self.name not in COMPRESSORS:
            raise bad("name", f"is not one of {', '.join(COMPRESSORS)}")
        if self.adaptive not in ADAPTIVE:
            raise bad("adaptive", "must be null, 'separation', 'elbow', 'silhouette' or 'elbow_released'")
        if self.adaptive is not None and self.name != "vqtoken":
            raise bad("adaptive", f"is only supported by name='vqtoken', not {self.name!r}")
        if self.num_tokens is not None and (not isinstance(self.num_tokens, int) or self.num_tokens < 1):
            raise bad("num_tokens", "must be a positive integer (the video's token budget)")
        if self.name in ("vqtoken", "uniform", "prune", "tome", "temporal_merge", "random"):
            if self.adaptive is None and self.num_tokens is None:
                unless = " unless adaptive is set" if self.name == "vqtoken" else ""
                raise ConfigError(f"compressor config: num_tokens is required by name={self.name!r}{unless}")
        if self.min_codes < 1:
            raise bad("min_codes", "must be >= 1")
        if self.max_codes < self.min_codes:
            raise bad("max_codes", f"must be >= min_codes={self.min_codes}")
        if self.iters < 0 or self.refine_iters < 0:
            raise bad("iters", "and refine_iters must be >= 0")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise bad("tol", "must be a finite number >= 0 (the centroid shift after which a video stops)")
        if self.oversample < 1:
            raise bad("oversample", "must be >= 1 (1: plain k-means++ + Lloyd)")
        if self.seed_sample < 1:
            raise bad("seed_sample", "must be >= 1 (tokens in the k-means++ seeding pool)")
        if self.silhouette_sample < 1:
            raise bad("silhouette_sample", "must be >= 1 (tokens scored by the silhouette)")
        if self.attention not in ATTENTION:
            raise bad("attention", f"is not one of {', '.join(ATTENTION)}")
        if self.hash not in HASH:
            raise bad("hash", f"is not one of {', '.join(HASH)}")
        if self.codebook not in CODEBOOK:
            raise bad("codebook", f"is not one of {', '.join(CODEBOOK)}")
        if self.footprint not in FOOTPRINT:
            raise bad("footprint", f"is not one of {', '.join(FOOTPRINT)}")
        if self.heads < 1:
            raise bad("heads", "must be >= 1")
        if self.footprint_freqs < 1:
            raise bad("footprint_freqs", "must be >= 1 (octave frequencies of the footprint's Fourier features)")
        if self.ffn_dim < 1:
            raise bad("ffn_dim", "must be >= 1 (feed-forward width of the released decoder layer)")
        if self.chunk_frames < 0:
            raise bad("chunk_frames", "must be >= 0 (0: the whole video at once)")
        if self.chunk_frames and self.name != "vqtoken":
            raise bad("chunk_frames", f"streams name='vqtoken' only; {self.name!r} needs the whole video (use 0)")

    def _check_types(self) -> None:
        """Every field has its declared type (a bool is not an int: ``num_tokens=True`` is not K=1)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, nullable = _field_kind(f.type)
            if value is None and nullable:
                continue
            ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in kind)
            if not ok:
                names = " or ".join(k.__name__ for k in kind) + (" or null" if nullable else "")
                raise ConfigError(f"compressor config: {f.name}={value!r} must be {names}, not {type(value).__name__}")

    # ------------------------------------------------------------------ round trips
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | CompressorConfig | str | None) -> CompressorConfig:
        if d is None:
            return cls()
        if isinstance(d, CompressorConfig):
            return d
        if isinstance(d, str):  # a JSON object given as text (a command line, a config file)
            d = _parse_json_spec(d)
        if not isinstance(d, dict):
            raise ConfigError(f"compressor config must be a JSON object of fields, not {type(d).__name__}: {d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"compressor config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> CompressorConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse_field(cls, name: str, value: Any) -> Any:
        """A field's value from its string form in ``key=value`` settings (sweeps, lmms-eval model_args)
        and command-line flags, by the field's declared type. Only nullable fields (``int | None``,
        ``str | None``) read "none"/"null"/"" as null: for attention, "none" is a mode."""
        if not isinstance(value, str):
            return value
        if name not in string_fields():
            raise ConfigError(f"compressor config: unknown field {name!r}")
        base, nullable = field_type(name)
        if nullable and value.lower() in NULL_WORDS:
            return None
        if base == "bool":
            if value.lower() not in _BOOLS:
                raise ConfigError(f"compressor config: {name}={value!r} is not a boolean")
            return _BOOLS[value.lower()]
        if base in ("int", "float"):
            try:
                return int(value) if base == "int" else float(value)
            except ValueError:
                raise ConfigError(f"compressor config: {name}={value!r} is not {_article(base)} {base}") from None
        return value

    @classmethod
    def parse_setting(cls, setting: str) -> dict[str, Any]:
        """``NAME[:key=value,...]`` (e.g. ``vqtoken:num_tokens=32,attention=none``) -> typed field dict."""
        name, _, rest = setting.partition(":")
        spec: dict[str, Any] = {"name": name}
        twice = repeated_keys(setting)
        if twice:
            raise ConfigError(f"compressor setting {setting!r}: {', '.join(twice)} is given twice")
        for kv in filter(None, rest.split(",")):
            key, eq, value = kv.partition("=")
            if not eq:
                raise ConfigError(f"compressor setting {setting!r}: {kv!r} is not key=value")
            spec[key] = cls.parse_field(key, value)
        return spec

    @classmethod
    def released(cls, **changes: Any) -> CompressorConfig:
        """The authors' released checkpoint behaviour: normalised-mean codebook, centroids only,
        the release's own K selection over 12..32 (``adaptive="elbow_released"``, its off-by-two elbow), so
        the checkpoint sees the K it was trained and evaluated with; pass ``adaptive="elbow"`` for the
        correct elbow."""
        base = dict(
            name="vqtoken", num_tokens=None, adaptive="elbow_released", min_codes=12, max_codes=32,
            codebook="normalized", attention="released", apply_attention=False, newline=True, heads=8, ffn_dim=2048,
        )
        base.update(changes)
        return cls(**base)


#: declared field type (as written in the class) -> accepted Python types
_KINDS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _annotation_parts(annotation: Any) -> tuple[str, bool]:
    """(base type name, nullable) from an annotation string, e.g. ``"int | None"`` -> ``("int", True)``."""
    parts = [p.strip() for p in str(annotation).split("|")]
    return next(p for p in parts if p != "None"), "None" in parts


def _field_kind(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """(accepted types, nullable) of a field from its annotation string, e.g. ``"int | None"``."""
    base, nullable = _annotation_parts(annotation)
    return _KINDS.get(base, (dict,)), nullable


def field_type(name: str) -> tuple[str, bool]:
    """(declared base type: ``str``/``int``/``float``/``bool``, nullable) of a string-surface field."""
    return _annotation_parts(_FIELDS[name].type)


def string_fields() -> tuple[str, ...]:
    """The fields every string surface carries (flags, model_args, settings), in declaration order."""
    return tuple(n for n in _FIELDS if n != FREE_FORM_FIELD)


def _parse_json_spec(text: str) -> dict[str, Any]:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"compressor config: {text!r} is not a JSON object of fields ({e.msg})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"compressor config: {text!r} is not a JSON object of fields")
    return d


_FIELDS = {f.name: f for f in dataclasses.fields(CompressorConfig)}
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def repeated_keys(setting: str) -> list[str]:
    """Keys named more than once in ``NAME:key=value,...`` (the last value would silently win)."""
    keys = [kv.partition("=")[0] for kv in setting.partition(":")[2].split(",") if kv]
    return sorted({k for k in keys if keys.count(k) > 1})
