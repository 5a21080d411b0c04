"""Leftovers of the tidy-up (issue 15): explicit cache folders instead of an environment switch, and
one-line refusals of values the config does not know."""

import json
from pathlib import Path

import pytest

# ---------------------------------------------------------------- the cache folder is an argument


def test_the_default_cache_ignores_the_environment(monkeypatch, tmp_path):
    from llava_vqtoken.hosts.hf.tiny import default_cache

    monkeypatch.setenv("LLAVA_VQTOKEN_CACHE", str(tmp_path))
    assert default_cache() == Path.home() / ".cache" / "llava_vqtoken"


def test_the_tiny_model_goes_into_the_cache_dir_it_is_given(cache_dir, tiny_model):
    from llava_vqtoken.hosts.hf.tiny import build_tiny_llava_onevision, is_random

    again = build_tiny_llava_onevision(cache_dir=cache_dir)
    assert again == tiny_model and again.parent == cache_dir and is_random(again)


def test_compress_writes_the_demo_clip_and_the_model_into_cache_dir(capsys, cache_dir, tiny_model):
    from llava_vqtoken.cli import main

    code = main(["compress", "--cache-dir", str(cache_dir), "--frames", "4", "--num-tokens", "8", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out.strip().splitlines()[-1])
    assert d["model"] == str(tiny_model) and d["random_weights"] is True
    assert (cache_dir / "demo_moving_shapes.mp4").is_file()
    assert f"using the generated clip {cache_dir / 'demo_moving_shapes.mp4'}" in err


def test_train_builds_its_default_model_in_cache_dir(cache_dir, tiny_model):
    from llava_vqtoken.train.hf_train import build, parse_args

    model, _ = build(parse_args(["--cache-dir", str(cache_dir)]))
    assert Path(model.config._name_or_path) == tiny_model


def test_the_lmms_eval_model_takes_cache_dir_as_a_model_arg():
    from llava_vqtoken.hosts.lmms_eval.plugin import check_model_args

    check_model_args("hf", {"cache_dir": "/somewhere"})  # a named argument, not an unknown model_arg


# ---------------------------------------------------------------- one shape table


def test_the_shape_constants_are_the_real_geometry():
    from llava_vqtoken.benchmarks.clustering import REAL_DIM, REAL_TOKENS
    from llava_vqtoken.benchmarks.streaming import STOCK_PER_FRAME
    from llava_vqtoken.core.metrics import REFERENCE_TOKENS
    from llava_vqtoken.shapes import FRAME_TOKENS, GRID, VIDEO_FRAMES

    assert (GRID, FRAME_TOKENS, VIDEO_FRAMES) == (27, 729, 32)
    assert REAL_TOKENS == REFERENCE_TOKENS == 23_328 and REAL_DIM == 896 and STOCK_PER_FRAME == 14 * 14


# ---------------------------------------------------------------- VQ-Attention's footprint names


@pytest.mark.parametrize("footprint", ["Motion", "motion ", "joint", ""])
def test_vq_attention_refuses_an_unknown_footprint_in_one_line(footprint):
    from llava_vqtoken.config import FOOTPRINT
    from llava_vqtoken.core.vq_attention import VQAttention

    with pytest.raises(ValueError) as e:
        VQAttention(16, heads=2, footprint=footprint)
    assert str(e.value) == f"footprint {footprint!r} is not one of {', '.join(FOOTPRINT)}"
    assert "\n" not in str(e.value) and "marginal, motion" in str(e.value)


@pytest.mark.parametrize("footprint", ["marginal", "motion"])
def test_vq_attention_takes_every_footprint_of_the_config(footprint):
    from llava_vqtoken.core.vq_attention import VQAttention

    assert VQAttention(16, heads=2, footprint=footprint).motion is (footprint == "motion")
