"""Known answers for config.py that the mutation run (scripts/mutation.sh) found unpinned: every refusal's
exact message, each bound at its edge, and the string parsers' answers."""

import dataclasses
import json

import pytest

from llava_vqtoken.config import (
    CONFIG_KEY,
    FIELD_CHOICES,
    FREE_FORM_FIELD,
    NULL_WORDS,
    CompressorConfig,
    ConfigError,
    _annotation_parts,
    _article,
    _field_kind,
    field_type,
    repeated_keys,
    string_fields,
)

P = "compressor config: "


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(name="x"), "name='x' is not one of vqtoken, pool, uniform, prune, tome, temporal_merge, random, none"),
        (dict(adaptive="x"), "adaptive='x' must be null, 'separation', 'elbow', 'silhouette' or 'elbow_released'"),
        (dict(name="pool", adaptive="elbow"), "adaptive='elbow' is only supported by name='vqtoken', not 'pool'"),
        (dict(num_tokens=0), "num_tokens=0 must be a positive integer (the video's token budget)"),
        (dict(num_tokens=-3), "num_tokens=-3 must be a positive integer (the video's token budget)"),
        (dict(name="prune", num_tokens=None), "num_tokens is required by name='prune'"),
        (dict(num_tokens=None), "num_tokens is required by name='vqtoken' unless adaptive is set"),
        (dict(min_codes=0), "min_codes=0 must be >= 1"),
        (dict(max_codes=7), "max_codes=7 must be >= min_codes=8"),
        (dict(iters=-1), "iters=-1 and refine_iters must be >= 0"),
        (dict(refine_iters=-1), "iters=10 and refine_iters must be >= 0"),
        (dict(tol=-1e-9), "tol=-1e-09 must be a finite number >= 0 (the centroid shift after which a video stops)"),
        (dict(tol=float("inf")), "tol=inf must be a finite number >= 0 (the centroid shift after which a video stops)"),
        (dict(tol=float("nan")), "tol=nan must be a finite number >= 0 (the centroid shift after which a video stops)"),
        (dict(oversample=0), "oversample=0 must be >= 1 (1: plain k-means++ + Lloyd)"),
        (dict(seed_sample=0), "seed_sample=0 must be >= 1 (tokens in the k-means++ seeding pool)"),
        (dict(silhouette_sample=0), "silhouette_sample=0 must be >= 1 (tokens scored by the silhouette)"),
        (dict(attention="x"), "attention='x' is not one of paper, none, random, released"),
        (dict(hash="x"), "hash='x' is not one of kmeans, random"),
        (dict(codebook="x"), "codebook='x' is not one of raw, normalized"),
        (dict(footprint="x"), "footprint='x' is not one of marginal, motion"),
        (dict(heads=0), "heads=0 must be >= 1"),
        (
            dict(footprint_freqs=0),
            "footprint_freqs=0 must be >= 1 (octave frequencies of the footprint's Fourier features)",
        ),
        (dict(ffn_dim=0), "ffn_dim=0 must be >= 1 (feed-forward width of the released decoder layer)"),
        (dict(ffn_dim=-4), "ffn_dim=-4 must be >= 1 (feed-forward width of the released decoder layer)"),
        (dict(chunk_frames=-1), "chunk_frames=-1 must be >= 0 (0: the whole video at once)"),
        (
            dict(name="pool", chunk_frames=2),
            "chunk_frames=2 streams name='vqtoken' only; 'pool' needs the whole video (use 0)",
        ),
        (dict(num_tokens=True), "num_tokens=True must be int or null, not bool"),
        (dict(tol="a"), "tol='a' must be int or float, not str"),
        (dict(extra=[]), "extra=[] must be dict, not list"),
        (dict(newline=1), "newline=1 must be bool, not int"),
        (dict(adaptive=3), "adaptive=3 must be str or null, not int"),
        (dict(name=None), "name=None must be str, not NoneType"),
    ],
)
def test_each_refusal_names_its_field(change, message):
    with pytest.raises(ConfigError) as e:
        CompressorConfig(**change)
    assert str(e.value) == P + message


@pytest.mark.parametrize("name", ["vqtoken", "uniform", "prune", "tome", "temporal_merge", "random"])
def test_a_budget_is_required_by_every_budgeted_method(name):
    unless = " unless adaptive is set" if name == "vqtoken" else ""  # adaptive is vqtoken's alone
    with pytest.raises(ConfigError, match=f"^{P}num_tokens is required by name='{name}'{unless}$"):
        CompressorConfig(name=name, num_tokens=None)


@pytest.mark.parametrize(
    "ok",
    [
        dict(name="pool", num_tokens=None),  # stock pooling
        dict(name="none", num_tokens=None),
        dict(num_tokens=None, adaptive="elbow"),  # adaptive K needs no budget
        dict(num_tokens=1),
        dict(min_codes=1, max_codes=1),
        dict(iters=0, refine_iters=0),
        dict(heads=1),
        dict(chunk_frames=0, name="pool"),
        dict(chunk_frames=4),
        dict(tol=0),  # an int is a float
        dict(tol=0.0, oversample=1, seed_sample=1, silhouette_sample=1),
        dict(adaptive="separation"),
        dict(adaptive="silhouette"),
        dict(adaptive="elbow_released"),
        dict(attention="released", hash="random", codebook="normalized", footprint="motion"),
    ],
)
def test_edges_that_are_accepted(ok):
    cfg = CompressorConfig(**ok)
    assert all(getattr(cfg, k) == v for k, v in ok.items())


def test_round_trips_and_json():
    cfg = CompressorConfig(num_tokens=7, footprint="motion", extra={"a": 1})
    assert cfg.to_dict()["num_tokens"] == 7 and cfg.to_dict()["extra"] == {"a": 1}
    text = cfg.to_json()
    assert text == json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert CompressorConfig.from_dict(text) == cfg
    assert CompressorConfig.from_dict(cfg.to_dict()) == cfg
    assert CompressorConfig.from_dict(cfg) is cfg
    assert CompressorConfig.from_dict(None) == CompressorConfig()
    assert cfg.replace(heads=2) == CompressorConfig(num_tokens=7, footprint="motion", extra={"a": 1}, heads=2)
    assert cfg.heads == 8


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ('{"a": 1, "b": 2, "name": "pool"}', "unknown field(s) a, b"),
        ("[1]", "'[1]' is not a JSON object of fields"),
        ("{x", "'{x' is not a JSON object of fields (Expecting property name enclosed in double quotes)"),
    ],
)
def test_from_dict_refusals(given, message):
    with pytest.raises(ConfigError) as e:
        CompressorConfig.from_dict(given)
    assert str(e.value) == P + message


def test_from_dict_refuses_a_list():
    with pytest.raises(ConfigError) as e:
        CompressorConfig.from_dict([1])
    assert str(e.value) == "compressor config must be a JSON object of fields, not list: [1]"


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("num_tokens", "none", None),
        ("num_tokens", "NULL", None),
        ("num_tokens", "", None),
        ("num_tokens", "12", 12),
        ("adaptive", "None", None),
        ("adaptive", "elbow", "elbow"),
        ("attention", "none", "none"),  # not nullable: a mode
        ("newline", "Yes", True),
        ("newline", "1", True),
        ("newline", "true", True),
        ("newline", "NO", False),
        ("newline", "0", False),
        ("newline", "false", False),
        ("tol", "1e-3", 0.001),
        ("tol", "2", 2.0),
        ("seed", 5, 5),  # not a string: as given
        ("name", "pool", "pool"),
    ],
)
def test_parse_field_answers(name, text, value):
    got = CompressorConfig.parse_field(name, text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("newline", "maybe", "newline='maybe' is not a boolean"),
        ("iters", "1.5", "iters='1.5' is not an int"),
        ("tol", "x", "tol='x' is not a float"),
        ("zz", "1", "unknown field 'zz'"),
        ("extra", "{}", "unknown field 'extra'"),
        ("iters", "none", "iters='none' is not an int"),  # iters is not nullable
    ],
)
def test_parse_field_refusals(name, text, message):
    with pytest.raises(ConfigError) as e:
        CompressorConfig.parse_field(name, text)
    assert str(e.value) == P + message


def test_parse_setting():
    assert CompressorConfig.parse_setting("vqtoken:num_tokens=32,attention=none,newline=no") == {
        "name": "vqtoken", "num_tokens": 32, "attention": "none", "newline": False,
    }
    assert CompressorConfig.parse_setting("pool") == {"name": "pool"}
    assert CompressorConfig.parse_setting("pool:,num_tokens=none,") == {"name": "pool", "num_tokens": None}
    # the first '=' splits: the value may hold more
    assert CompressorConfig.parse_setting("x:name=a=b") == {"name": "a=b"}
    with pytest.raises(ConfigError) as e:
        CompressorConfig.parse_setting("tome:num_tokens")
    assert str(e.value) == "compressor setting 'tome:num_tokens': 'num_tokens' is not key=value"
    with pytest.raises(ConfigError) as e:
        CompressorConfig.parse_setting("tome:seed=1,heads=2,seed=3,heads=4")
    assert str(e.value) == "compressor setting 'tome:seed=1,heads=2,seed=3,heads=4': heads, seed is given twice"


def test_repeated_keys():
    assert repeated_keys("a:x=1,y=2,x=3") == ["x"]
    assert repeated_keys("a:y=1,x=2,y=3,x=4,z=0") == ["x", "y"]
    assert repeated_keys("a:x=1,,y=2") == []
    assert repeated_keys("x=1,x=2") == []  # no ':' -> no keys
    assert repeated_keys("a:x,x") == ["x"]


def test_released():
    cfg = CompressorConfig.released()
    assert cfg == CompressorConfig(
        name="vqtoken", num_tokens=None, adaptive="elbow_released", min_codes=12, max_codes=32,
        codebook="normalized", attention="released", apply_attention=False, newline=True, heads=8, ffn_dim=2048,
    )
    assert CompressorConfig.released(adaptive="elbow", max_codes=40).to_dict() == {
        **cfg.to_dict(), "adaptive": "elbow", "max_codes": 40,
    }


def test_field_types_and_helpers():
    assert _annotation_parts("int | None") == ("int", True)
    assert _annotation_parts("None | str") == ("str", True)
    assert _annotation_parts("float") == ("float", False)
    assert _field_kind("int | None") == ((int,), True)
    assert _field_kind("float") == ((int, float), False)
    assert _field_kind("bool") == ((bool,), False)
    assert _field_kind("str") == ((str,), False)
    assert _field_kind("dict[str, Any]") == ((dict,), False)
    assert field_type("num_tokens") == ("int", True)
    assert field_type("tol") == ("float", False)
    assert field_type("newline") == ("bool", False)
    assert string_fields() == tuple(f.name for f in dataclasses.fields(CompressorConfig) if f.name != "extra")
    assert string_fields()[:3] == ("name", "num_tokens", "adaptive")
    assert _article("int") == "an" and _article("float") == "a"
    assert FREE_FORM_FIELD == "extra" and CONFIG_KEY == "video_compressor"
    assert NULL_WORDS == ("none", "null", "")
    assert FIELD_CHOICES["footprint"] == ("marginal", "motion")
    assert FIELD_CHOICES["adaptive"] == (None, "separation", "elbow", "silhouette", "elbow_released")


def test_defaults():
    assert CompressorConfig().to_dict() == {
        "name": "vqtoken", "num_tokens": 32, "adaptive": None, "min_codes": 8, "max_codes": 64, "iters": 10,
        "refine_iters": 5, "tol": 1e-4, "oversample": 2, "seed": 0, "seed_sample": 2048, "silhouette_sample": 2048,
        "attention": "paper", "hash": "kmeans", "codebook": "raw", "heads": 8, "footprint_freqs": 8,
        "footprint": "marginal", "ffn_dim": 2048, "newline": True, "apply_attention": True, "cuda_graphs": True,
        "compile": False, "chunk_frames": 0, "extra": {},
    }
