"""The one rule for which compressor spec runs (llava_vqtoken.spec_rule), host-free, and the field
type checks it relies on."""

import dataclasses

import pytest

from llava_vqtoken.config import CheckpointError, CompressorConfig, ConfigError
from llava_vqtoken.spec_rule import PARAMETER_FIELDS, RUNTIME_FIELDS, resolve_spec

VQ32 = CompressorConfig(num_tokens=32).to_dict()
NONE_NORM = CompressorConfig(num_tokens=16, attention="none", codebook="normalized").to_dict()


def test_stock_checkpoint_takes_its_spec_from_the_flags():
    d = resolve_spec(None, {"num_tokens": 12, "attention": "none"})
    assert not d.from_checkpoint and d.line() is None
    assert d.spec == CompressorConfig(num_tokens=12, attention="none")
    assert resolve_spec(None, {}).spec == CompressorConfig()
    assert resolve_spec(None, {"name": "pool"}).spec.num_tokens is None  # stock 2x pooling
    assert resolve_spec(None, {"adaptive": "elbow"}).spec.num_tokens is None


def test_saved_spec_is_the_truth_without_flags():
    d = resolve_spec(VQ32, {})
    assert d.from_checkpoint and d.spec == CompressorConfig(num_tokens=32) and d.line() is None
    # a flag equal to the saved value is no change
    assert resolve_spec(NONE_NORM, {"num_tokens": 16, "attention": "none"}).line() is None


def test_runtime_fields_change_and_are_reported_in_one_line():
    d = resolve_spec(VQ32, {"iters": 3, "seed": 7, "compile": True})
    assert (d.spec.iters, d.spec.seed, d.spec.compile, d.spec.num_tokens) == (3, 7, True, 32)
    assert d.line() == "checkpoint spec changed by the flags: iters 10 -> 3; seed 0 -> 7; compile False -> True"


@pytest.mark.parametrize(
    "saved,flags,words",
    [
        (VQ32, {"num_tokens": 12}, "num_tokens=32; num_tokens=12 has no parameters of its own"),
        (NONE_NORM, {"num_tokens": 32}, "num_tokens=16; num_tokens=32 has no parameters"),
        (NONE_NORM, {"attention": "paper"}, "attention='none'; attention='paper' would drop its trained"),
        (NONE_NORM, {"codebook": "raw"}, "codebook='normalized'; codebook='raw' has no parameters"),
        (VQ32, {"name": "pool"}, "name='vqtoken', num_tokens=32; name='pool', num_tokens=None would drop"),
        (VQ32, {"adaptive": "elbow"}, "adaptive=None"),
    ],
)
def test_other_changes_are_refused_in_one_line_unless_asked(saved, flags, words):
    with pytest.raises(CheckpointError) as e:
        resolve_spec(saved, flags, where="VQ")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("VQ holds a compressor trained with") and words in msg, msg
    assert msg.endswith("pass --override-spec (compress, export-remote, train.sh) or override_spec=true "
                        "(eval.sh --model-args, lmms-eval model_args) to run it anyway")
    d = resolve_spec(saved, flags, allow_override=True)
    assert all(getattr(d.spec, k) == v for k, v in flags.items())
    assert "--override-spec" in d.line() and set(flags) <= set(d.overridden)


def test_every_field_is_classified_and_unknown_ones_are_guarded():
    names = {f.name for f in dataclasses.fields(CompressorConfig)}
    assert RUNTIME_FIELDS <= names and PARAMETER_FIELDS <= names and not RUNTIME_FIELDS & PARAMETER_FIELDS
    # fields with parameters are never runtime: a changed set of weights is never silent
    assert {"num_tokens", "codebook", "newline", "apply_attention", "hash", "adaptive"}.isdisjoint(RUNTIME_FIELDS)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"num_tokens": True}, "num_tokens=True must be int or null, not bool"),
        ({"iters": 2.5}, "iters=2.5 must be int, not float"),
        ({"compile": "yes"}, "compile='yes' must be bool, not str"),
        ({"tol": False}, "tol=False must be int or float, not bool"),
        ({"attention": 3}, "attention=3 must be str, not int"),
    ],
)
def test_field_types_are_checked(spec, message):
    with pytest.raises(ConfigError, match="^compressor config: ") as e:
        CompressorConfig.from_dict(spec)
    assert message in str(e.value)
    with pytest.raises(ConfigError):  # also through the rule, for flags on a saved spec
        resolve_spec(VQ32, spec, allow_override=True)


def test_a_json_string_spec_is_parsed_or_refused_clearly():
    assert CompressorConfig.from_dict('{"num_tokens": 12, "attention": "none"}') == CompressorConfig(
        num_tokens=12, attention="none"
    )
    with pytest.raises(ConfigError, match="is not a JSON object of fields"):
        CompressorConfig.from_dict('{"num_tokens": 12')
    with pytest.raises(ConfigError, match="is not a JSON object of fields"):
        CompressorConfig.from_dict("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object of fields, not int"):
        CompressorConfig.from_dict(3)


def test_a_setting_names_each_key_once_and_type_errors_read_well():
    from llava_vqtoken.config import CompressorConfig, ConfigError

    with pytest.raises(ConfigError, match="num_tokens is given twice"):
        CompressorConfig.parse_setting("vqtoken:num_tokens=12,num_tokens=32")
    with pytest.raises(ConfigError, match="is not an int$"):
        CompressorConfig.parse_setting("vqtoken:num_tokens=many")


def _readme_fields(marker: str) -> set[str]:
    """The backticked field names in the parentheses right after ``marker`` in README "Which spec runs"."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Which spec runs", 1)[1].split("\n## ", 1)[0]
    listed = section.split(marker, 1)[1].split("(", 1)[1].split(")", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", listed))


def test_readme_lists_the_same_fields_as_the_rule():
    """README's lists left out oversample (refused, as trained-with) and chunk_frames (runtime)."""
    names = {f.name for f in dataclasses.fields(CompressorConfig)} - {"extra"}
    assert _readme_fields("**runtime** field") == RUNTIME_FIELDS
    assert _readme_fields("**parameter** fields") == PARAMETER_FIELDS
    assert _readme_fields("**trained-with** fields") == names - RUNTIME_FIELDS - PARAMETER_FIELDS
