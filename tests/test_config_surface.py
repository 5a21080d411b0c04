"""One configuration surface (issue 15): every CompressorConfig field round-trips through every surface.

The cases are generated from the dataclass fields, so a new field is covered without touching this file:
each case sets one field to a non-default value (and every other field to its default, written out),
then the spec is sent through the Python dict / config.json, the command-line flags of ``compress``,
``export-remote`` and ``train.sh``, lmms-eval model_args, ``eval.sh --compressors`` and motion-QA settings,
and LLaVA-NeXT's ``--video_compressor`` JSON, and must come back equal.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import Any

import pytest

from llava_vqtoken.config import FIELD_CHOICES, CompressorConfig, ConfigError, field_type, string_fields
from llava_vqtoken.config_flags import flag_of, overrides_from_args
from llava_vqtoken.spec_rule import resolve_spec

DEFAULTS = CompressorConfig()
#: specs a one-field change cannot express (nullable values that need a companion change)
COMBINED = [
    {"adaptive": "silhouette", "num_tokens": None, "min_codes": 4, "max_codes": 12},
    {"name": "pool", "num_tokens": None},
    {"name": "none", "num_tokens": None},
]


def non_default(name: str) -> Any:
    """A valid value of a field that differs from its default, from the field's declared type."""
    default = getattr(DEFAULTS, name)
    if name in FIELD_CHOICES:
        return next(c for c in FIELD_CHOICES[name] if c != default and c is not None)
    base = field_type(name)[0]
    if base == "bool":
        return not default
    if base == "float":
        return default * 2
    return default + 1


def one_field_cases() -> list[dict[str, Any]]:
    return [{name: non_default(name)} for name in string_fields()]


CASES = one_field_cases() + COMBINED
IDS = [",".join(f"{k}={v}" for k, v in c.items()) for c in CASES]


def expected(change: dict[str, Any]) -> CompressorConfig:
    return DEFAULTS.replace(**change)


def text(value: Any) -> str:
    """A value as the string surfaces write it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def full(change: dict[str, Any]) -> dict[str, Any]:
    """Every string-surface field: the change over the defaults."""
    spec = expected(change)
    return {k: getattr(spec, k) for k in string_fields()}


def flags(change: dict[str, Any]) -> list[str]:
    return [arg for k, v in full(change).items() for arg in (flag_of(k), text(v))]


def key_values(change: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    return ",".join(f"{k}={text(v)}" for k, v in full(change).items() if k not in skip)


def test_every_field_is_covered():
    """The generated cases touch every field but the free-form one (checked in the JSON round trip)."""
    touched = {k for c in CASES for k in c}
    assert touched == set(string_fields())
    assert {f.name for f in dataclasses.fields(CompressorConfig)} - touched == {"extra"}
    for case in one_field_cases():
        ((name, value),) = case.items()
        assert getattr(expected(case), name) == value != getattr(DEFAULTS, name)


@pytest.mark.parametrize("change", CASES, ids=IDS)
def test_dict_and_config_json(change):
    spec = expected({**change, "extra": {"note": "kept"}})
    assert CompressorConfig.from_dict(json.loads(spec.to_json())) == spec
    assert CompressorConfig.from_dict(spec.to_dict()) == spec


def _cli_parser(command: str):
    from llava_vqtoken.cli import _parser

    return _parser(), {"compress": [], "export-remote": ["--model", "m", "--out", "o"]}[command]


@pytest.mark.parametrize("command", ["compress", "export-remote"])
@pytest.mark.parametrize("change", CASES, ids=IDS)
def test_cli_flags(command, change):
    parser, required = _cli_parser(command)
    a = parser.parse_args([command, *required, *flags(change)])
    spec = expected(change)
    if spec.adaptive is not None and spec.num_tokens is not None:  # a K typed with a rule that picks K
        with pytest.raises(ConfigError, match="--num-tokens 32 with --adaptive"):
            overrides_from_args(a)
        return
    given = overrides_from_args(a)
    assert given == full(change)  # every flag typed is given, a typed "none" included
    assert resolve_spec(None, given).spec == expected(change)


@pytest.mark.parametrize("change", CASES, ids=IDS)
def test_train_sh_flags(change):
    from llava_vqtoken.train.hf_train import parse_args

    if expected(change).adaptive is not None:  # refused by train.sh (README "Training"), in one line
        with pytest.raises(SystemExit) as e:
            parse_args(flags(change))
        assert e.value.code == 2
        return
    a = parse_args(flags(change))
    assert resolve_spec(None, overrides_from_args(a)).spec == expected(change)


@pytest.mark.parametrize("change", CASES, ids=IDS)
def test_one_flag_alone(change):
    """Only the typed flags are given (the spec rule's "not given" is kept): the rest stay unset."""
    parser, _ = _cli_parser("compress")
    argv = [arg for k, v in change.items() for arg in (flag_of(k), text(v))]
    assert overrides_from_args(parser.parse_args(["compress", *argv])) == change
    assert overrides_from_args(parser.parse_args(["compress"])) == {}


@pytest.mark.parametrize("change", CASES, ids=IDS)
def test_lmms_eval_model_args(change):
    from llava_vqtoken.eval.run import parse_model_args
    from llava_vqtoken.hosts.lmms_eval.plugin import compressor_from_model_args

    name = full(change)["name"]
    args = parse_model_args(f"compressor={name}," + key_values(change, skip=("name",)), "test")
    spec, rest = compressor_from_model_args(args)
    assert spec == expected(change) and rest == {}


@pytest.mark.parametrize("change", CASES, ids=IDS)
def test_eval_sh_and_motionqa_settings(change):
    from llava_vqtoken.eval.run import model_args, parse_model_args
    from llava_vqtoken.hosts.lmms_eval.plugin import check_model_args, spec_fields_from_model_args
    from llava_vqtoken.motionqa.bench import parse_setting

    setting = f"{full(change)['name']}:" + key_values(change, skip=("name",))
    assert CompressorConfig.from_dict(CompressorConfig.parse_setting(setting)) == expected(change)
    assert CompressorConfig.from_dict(parse_setting(setting, budget=99)) == expected(change)
    args = parse_model_args(model_args(setting, None, 4, SimpleNamespace(), ""), "test")  # what eval.sh launches
    check_model_args("hf", dict(args))
    assert CompressorConfig.from_dict(spec_fields_from_model_args(args)[0]) == expected(change)


@pytest.mark.parametrize("change", CASES, ids=IDS)
def test_llava_next_video_compressor_json(change):
    from llava_vqtoken.hosts.llava_next import decide

    spec = expected({**change, "extra": {"note": "kept"}})
    decision = decide(SimpleNamespace(video_compressor=spec.to_json()))  # the flag's JSON, as LLaVA-NeXT stores it
    assert decision is not None and decision.spec == spec and not decision.from_checkpoint


def test_lmms_eval_aliases_are_kept():
    from llava_vqtoken.hosts.lmms_eval.plugin import spec_fields_from_model_args

    spec, rest = spec_fields_from_model_args({"vqtoken_selection_method": "elbow", "vqtoken_min_clusters": "12",
                                              "vqtoken_max_clusters": "32", "max_frames_num": 16})
    assert spec == {"adaptive": "elbow", "min_codes": 12, "max_codes": 32, "num_tokens": None}
    assert rest == {"frames": 16}


@pytest.mark.parametrize("argv,what", [
    (["--footprint", "sideways"], "--footprint"),
    (["--adaptive", "kmeans"], "--adaptive"),
    (["--newline", "maybe"], "--newline"),
    (["--tol", "small"], "--tol"),
    (["--heads", "none"], "--heads"),  # not nullable: "none" is not an int
    (["--attention", "null"], "--attention"),  # "none" is a mode of attention, "null" is nothing
])
def test_bad_flag_value_names_the_flag(argv, what, capsys):
    parser, _ = _cli_parser("compress")
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["compress", *argv])
    assert e.value.code == 2 and what in capsys.readouterr().err


def test_bare_bool_flag_is_true_and_attention_none_is_a_mode():
    parser, _ = _cli_parser("compress")
    a = parser.parse_args(["compress", "--compile", "--attention", "none", "--cuda-graphs", "false"])
    assert overrides_from_args(a) == {"compile": True, "attention": "none", "cuda_graphs": False}


def test_readme_spells_the_released_k_selection_as_released_sets_it():
    """README named --adaptive elbow_released without its range: with the defaults (8..64) it is not the release's K."""
    from pathlib import Path

    spelling = "--adaptive elbow_released --min-codes 12 --max-codes 32"
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert f"`{spelling}`" in readme and "adaptive=elbow_released,min_codes=12,max_codes=32" in readme
    parser, _ = _cli_parser("compress")
    spec = resolve_spec(None, overrides_from_args(parser.parse_args(["compress", *spelling.split()]))).spec
    released = CompressorConfig.released()
    assert (spec.adaptive, spec.min_codes, spec.max_codes) == (released.adaptive, released.min_codes,
                                                                released.max_codes)
    settings = CompressorConfig.parse_setting("vqtoken:adaptive=elbow_released,min_codes=12,max_codes=32")
    assert {k: settings[k] for k in ("adaptive", "min_codes", "max_codes")} == {
        "adaptive": released.adaptive, "min_codes": released.min_codes, "max_codes": released.max_codes}
