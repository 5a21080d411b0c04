"""eval.sh checks every setting before it launches anything, and a failed run names its error (issue 14)."""

import pytest
import torch

from llava_vqtoken.eval.report import last_error_line
from llava_vqtoken.eval.run import main as run_main

BAD = [
    ("vqtoken:num_tokens=abc", "num_tokens"),
    ("vqtoken:num_tokens=0", "num_tokens"),
    ("vqtoken:attention=bogus", "attention"),
    ("vqtok:num_tokens=32", "name"),
    ("vqtoken:num_token=32", "num_token"),
    ("vqtoken:num_tokens", "key=value"),
    ("pool:adaptive=elbow", "adaptive"),
    ("vqtoken:min_codes=70,adaptive=elbow", "max_codes"),
    ("vqtoken:vqtoken_selection_method=kmeans", "vqtoken_selection_method"),
    ("vqtoken:apply_attention=maybe", "apply_attention"),
]


def never_launch(*args, **kwargs):
    raise AssertionError(f"launched {args}")


@pytest.mark.parametrize("setting,field", BAD)
def test_bad_setting_is_one_line_exit_2_nothing_launched(setting, field, tmp_path, capsys):
    rc = run_main(["--compressors", "vqtoken:num_tokens=32", setting, "--out", str(tmp_path / "ev"),
                   "--device", "cpu"], launch=never_launch)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("eval.sh: error: ") and repr(setting) in err and field in err
    assert not (tmp_path / "ev").exists()  # nothing generated, nothing launched


@pytest.mark.parametrize("argv,what", [
    (["--model-args", "bogus_arg=1"], "bogus_arg"),
    (["--model-args", "dtype=float8"], "dtype"),
    (["--frames", "0"], "--frames"),
    (["--batch-size", "0"], "--batch-size"),
    (["--compressors", "tome:num_tokens=8", "tome:num_tokens=8"], "twice"),
    (["--model", "/no/such/checkpoint"], "has no config.json"),
    (["--device", "tpu"], "must be cpu or cuda"),
    (["--compressors", "vqtoken:num_tokens=12,num_tokens=32"], "num_tokens given twice"),
])
def test_bad_flags_are_one_line_exit_2(argv, what, tmp_path, capsys):
    rc = run_main(["--device", "cpu", *argv, "--out", str(tmp_path / "ev")], launch=never_launch)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and what in err, err
    assert not (tmp_path / "ev").exists()


def test_plugin_only_model_args_are_accepted(tmp_path):
    """Keys the plugin knows (aliases, plugin kwargs, every compressor field) pass the check."""
    from llava_vqtoken.hosts.lmms_eval.plugin import check_model_args

    check_model_args("hf", {"compressor": "vqtoken", "vqtoken_selection_method": "elbow", "vqtoken_min_clusters": 12,
                            "vqtoken_max_clusters": 32, "max_frames_num": 16, "footprint": "motion",
                            "apply_attention": False, "tol": 0.001, "conv_template": "qwen_1_5", "dtype": "float32"})
    check_model_args("llava-next", {"compressor": "vqtoken", "released": True, "max_frames_num": 16})


LMMS_LOG = """\
2026-12-02 18:40:01.123 | WARNING  | lmms_eval.api.task:build_all_requests:432 - something harmless
Traceback (most recent call last):
  File "/x/lmms_eval/__main__.py", line 583, in cli_evaluate
    results, samples = cli_evaluate_single(args)
  File "/x/llava_vqtoken/core/compressor.py", line 80, in forward
    raise ValueError(f"num_tokens={k} exceeds the {n} input tokens")
ValueError: num_tokens=100000 exceeds the 1458 input tokens
2026-12-02 18:40:02.456 | ERROR    | lmms_eval.__main__:cli_evaluate:614 - Error during evaluation: num_tokens=100000 \
exceeds the 1458 input tokens. Please set `--verbosity=DEBUG` to get more information.
"""


def test_last_error_line_is_the_exception_line():
    assert last_error_line(LMMS_LOG) == "ValueError: num_tokens=100000 exceeds the 1458 input tokens"
    chained = LMMS_LOG.replace("ValueError: num", "KeyError: 'x'\n\nDuring handling of the above exception, another "
                               "exception occurred:\n\nTraceback (most recent call last):\n  File \"y\", line 1\n"
                               "llava_vqtoken.config.ConfigError: num")
    want = "llava_vqtoken.config.ConfigError: num_tokens=100000 exceeds the 1458 input tokens"
    assert last_error_line(chained) == want
    only_logger = "a\n2026 | ERROR    | lmms_eval:main:1 - Need to specify task to evaluate.\nbye\n"
    assert last_error_line(only_logger) == "Need to specify task to evaluate."
    assert last_error_line("all fine\n") is None


def test_failed_run_prints_the_logs_error_line(tmp_path, capsys):
    """lmms-eval exits 0 after a failed evaluation and writes no results: eval.sh says why, in one line per run."""
    def fail(cmd, env, log):
        log.write(LMMS_LOG)
        return 0

    rc = run_main(["--compressors", "vqtoken:num_tokens=100000", "--frames", "2", "--samples", "1",
                   "--out", str(tmp_path), "--device", "cpu"], launch=fail)
    err = capsys.readouterr().err
    assert rc == 1
    assert "[vqtoken-num_tokens=100000] failed: ValueError: num_tokens=100000 exceeds the 1458 input tokens" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_not_run_on_the_cpu(tmp_path, capsys):
    rc = run_main(["--device", "cuda", "--out", str(tmp_path / "ev")], launch=never_launch)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "eval.sh: error: --device cuda: no CUDA GPU is available here"
