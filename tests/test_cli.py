import json
import os
import subprocess
import sys

import pytest

from llava_vqtoken.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_json_fields(capsys, tiny_model, video_file, tmp_path):
    heat = tmp_path / "heat.png"
    code, out, err = run_cli(
        capsys, "compress", "--model", str(tiny_model), "--video", str(video_file), "--frames", "8",
        "--num-tokens", "16", "--heatmap", str(heat), "--json",
    )
    assert code == 0, err
    assert "RANDOM weights" in err
    d = json.loads(out.strip().splitlines()[-1])
    assert d["frames"] == 8 and d["grid"] == [27, 27]
    assert d["tokens_in"] == 8 * 729
    assert d["tokens_out"] == 17 and d["num_codes"] == 16  # 16 codes + newline
    assert d["key_map_shape"] == [8, 27, 27] and len(d["key_map_sha256"]) == 64
    assert d["ratio"] == pytest.approx(17 / (8 * 729))
    assert d["compress_ms"] > 0
    assert heat.exists() and heat.read_bytes()[:4] == b"\x89PNG"


def test_compress_is_deterministic(capsys, tiny_model, video_file):
    args = ("compress", "--model", str(tiny_model), "--video", str(video_file), "--frames", "4", "--num-tokens", "8",
            "--json")
    h = [json.loads(run_cli(capsys, *args)[1].strip().splitlines()[-1])["key_map_sha256"] for _ in range(2)]
    assert h[0] == h[1]


def test_adaptive_and_baseline(capsys, tiny_model, video_file):
    code, out, _ = run_cli(
        capsys, "compress", "--model", str(tiny_model), "--video", str(video_file), "--frames", "4",
        "--adaptive", "silhouette",
        "--min-codes", "4", "--max-codes", "12", "--json",
    )
    d = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and 4 <= d["num_codes"] <= 12 and d["tokens_out"] == d["num_codes"] + 1
    code, out, _ = run_cli(
        capsys, "compress", "--model", str(tiny_model), "--video", str(video_file), "--frames", "4",
        "--compressor", "pool", "--json",
    )
    d = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and d["tokens_out"] == 4 * 196 + 1 and d["num_codes"] is None


def _zero_frame_video(path):
    """A valid MP4 that holds audio but not a single video frame."""
    import av
    import numpy as np

    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        a = c.add_stream("aac", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        f.sample_rate = 8000
        for p in [*a.encode(f), *a.encode()]:
            c.mux(p)
    return path


@pytest.mark.parametrize(
    "case,args,message",
    [
        ("missing", ["--video", "/nonexistent/clip.mp4"], "video not found"),
        ("corrupt", ["--video", "{corrupt}"], "cannot decode video"),
        ("zero", ["--video", "{zero}"], "no frames"),
        ("frames0", ["--frames", "0"], "--frames must be >= 1"),
        ("k0", ["--num-tokens", "0"], "num_tokens"),
        ("ktoobig", ["--frames", "2", "--num-tokens", "5000"], "exceeds"),
        ("heads", ["--heads", "3"], "does not fit this model: hidden size 64 is not divisible by heads=3"),
    ],
)
def test_bad_input_exit_2_one_line(capsys, tiny_model, video_file, tmp_path, case, args, message):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    zero = _zero_frame_video(tmp_path / "zero.mp4")
    args = [a.format(corrupt=corrupt, zero=zero) for a in args]
    if "--video" not in args:
        args += ["--video", str(video_file)]
    code, out, err = run_cli(capsys, "compress", "--model", str(tiny_model), *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("llava-vqtoken: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_console_script_exit_code(tiny_model, tmp_path):
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "llava_vqtoken.cli", "compress", "--video", str(tmp_path / "nope.mp4")],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("llava-vqtoken: error: video not found")
    assert "Traceback" not in proc.stderr


def test_bench_compressor_times_vqtoken_and_the_same_budget_baselines_side_by_side(capsys, tmp_path):
    out = tmp_path / "bench.json"
    code, _, err = run_cli(capsys, "bench", "--device", "cpu", "--parts", "compressor", "--frames", "2",
                           "--grid", "6", "--width", "16", "--reps", "1", "--no-reference", "--out", str(out))
    assert code == 0, err
    timings = json.loads(out.read_text())["compressor"]["timings"]
    for name in ("pool", "prune", "tome", "temporal_merge"):
        assert timings[f"baseline {name} 32 tokens"]["ms"] > 0
        batch = timings[f"baseline {name} 32 tokens, batch 8"]
        assert batch["ms_per_video"] == pytest.approx(batch["ms"] / 8)
    assert "VQToken module K=32 (+attention)" in timings


# ---------------------------------------------------------------- which spec runs (README "Which spec runs")


@pytest.fixture(scope="module")
def vq12(tiny_model, tmp_path_factory):
    from transformers import AutoProcessor

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor

    d = tmp_path_factory.mktemp("VQ12")
    m = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model, video_compressor={"num_tokens": 12})
    m.save_pretrained(d)
    VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), m.config).save_pretrained(d)
    return d


def test_compress_runs_a_vqtoken_checkpoints_own_spec(capsys, vq12, video_file):
    code, out, err = run_cli(capsys, "compress", "--model", str(vq12), "--video", str(video_file), "--frames", "4",
                             "--json")
    assert code == 0, err
    d = json.loads(out.strip().splitlines()[-1])
    assert d["compressor"]["num_tokens"] == 12 and d["num_codes"] == 12 and d["tokens_out"] == 13
    assert "changed by the flags" not in err


def test_compress_flag_on_a_vqtoken_checkpoint_refused_or_reported(capsys, vq12, video_file):
    base = ("compress", "--model", str(vq12), "--video", str(video_file), "--frames", "4", "--json")
    code, _, err = run_cli(capsys, *base, "--num-tokens", "32")
    lines = [x for x in err.splitlines() if x.startswith("llava-vqtoken: error:")]
    assert code == 2 and len(lines) == 1 and "trained with num_tokens=12; num_tokens=32" in lines[0], err
    code, out, err = run_cli(capsys, *base, "--num-tokens", "32", "--override-spec")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["num_codes"] == 32
    assert [x for x in err.splitlines() if "changed by the flags" in x] == [
        f"[llava-vqtoken] {vq12}: checkpoint spec changed by the flags (--override-spec, not as trained: num_tokens): "
        "num_tokens 12 -> 32"
    ]
    code, out, err = run_cli(capsys, *base, "--iters", "3")  # a runtime field: allowed, said in one line
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["compressor"]["iters"] == 3
    assert "checkpoint spec changed by the flags: iters 10 -> 3" in err


def test_export_remote_keeps_or_refuses_or_overrides_the_saved_spec(capsys, vq12, tmp_path):
    def exported(*flags):
        out = tmp_path / "-".join(flags or ("plain",))
        code, _, err = run_cli(capsys, "export-remote", "--model", str(vq12), "--out", str(out), *flags)
        cfg = json.loads((out / "config.json").read_text()) if code == 0 else None
        return code, err, cfg

    code, _, cfg = exported()
    assert code == 0 and cfg["video_compressor"]["num_tokens"] == 12
    code, err, _ = exported("--num-tokens", "32")
    assert code == 2 and "trained with num_tokens=12" in err
    code, _, cfg = exported("--num-tokens", "32", "--override-spec")
    assert code == 0 and cfg["video_compressor"]["num_tokens"] == 32


def test_compress_says_when_the_clip_is_shorter_than_frames(capsys, tiny_model, tmp_path):
    from llava_vqtoken.video import make_video

    clip = make_video(tmp_path / "six.mp4", frames=6, height=32, width=32)
    code, out, err = run_cli(capsys, "compress", "--model", str(tiny_model), "--video", str(clip), "--frames", "8",
                             "--num-tokens", "8", "--json")
    assert code == 0, err
    d = json.loads(out.strip().splitlines()[-1])
    assert (d["frames"], d["frames_asked"], d["clip_frames"]) == (6, 8, 6)  # all 6, none repeated
    assert d["tokens_in"] == 6 * 729 and d["key_map_shape"] == [6, 27, 27]
    assert f"{clip} has 6 frames, fewer than --frames 8: all 6 are used, none repeated" in err


def test_export_of_a_random_model_stays_marked_random(capsys, tiny_model, tmp_path):
    """export-remote of the embedded random model wrote a checkpoint that every later command (compress
    --json's random_weights, eval reports) took for trained weights."""
    from llava_vqtoken.hosts.hf.tiny import is_random

    assert is_random(tiny_model)
    out = tmp_path / "vq"
    code, _, err = run_cli(capsys, "export-remote", "--model", str(tiny_model), "--out", str(out), "--num-tokens", "8")
    assert code == 0, err
    assert is_random(out)


def test_a_checkpoint_folder_without_a_processor_is_one_line(capsys, tiny_model, video_file, tmp_path):
    """A stock model saved without its processor ended in a 32-line OSError traceback from AutoProcessor."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, bare / name)
    code, _, err = run_cli(capsys, "compress", "--model", str(bare), "--video", str(video_file), "--frames", "4")
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        f"llava-vqtoken: error: {bare} has no processor (processor_config.json or preprocessor_config.json, and "
        "tokenizer files) and a checkpoint needs one: save the one of the model it came from next to its "
        "config.json, e.g. AutoProcessor.from_pretrained(HUB_ID).save_pretrained(FOLDER) (export-remote then "
        "writes it into --out)"
    ]


def test_override_of_a_parameter_field_reinitialises_what_no_longer_fits(capsys, vq12, tiny_model, video_file):
    """--override-spec --footprint motion on a checkpoint trained with marginal crashed in transformers
    (footprint_mlp.0.weight MISMATCH, ignore_mismatched_sizes) instead of README's drop-and-seed, said once."""
    import torch

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration
    from llava_vqtoken.hosts.hf.load import load_model

    code, out, err = run_cli(capsys, "compress", "--model", str(vq12), "--video", str(video_file), "--frames", "4",
                             "--footprint", "motion", "--override-spec", "--json")
    assert code == 0 and "Traceback" not in err and "MISMATCH" not in err, err
    assert json.loads(out.strip().splitlines()[-1])["compressor"]["footprint"] == "motion"
    assert [x for x in err.splitlines() if "re-initialised" in x] == [
        f"[llava-vqtoken] {vq12}: 1 trained compressor tensor(s) no longer fit the overridden spec and were "
        "re-initialised (seed 0): attention.footprint_mlp.0.weight"
    ]
    loaded = load_model(str(vq12), {"footprint": "motion"}, allow_override=True, note=lambda _: None)
    fresh = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_model, video_compressor={"num_tokens": 12, "footprint": "motion"})
    name = "model.video_compressor.attention.footprint_mlp.0.weight"
    assert torch.equal(loaded.model.state_dict()[name], fresh.state_dict()[name])  # seeded, not left empty
    kept = "model.video_compressor.attention.footprint_mlp.2.weight"
    trained = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(vq12)
    assert torch.equal(loaded.model.state_dict()[kept], trained.state_dict()[kept])  # what fits is kept


@pytest.mark.parametrize("command", ["compress", "export-remote"])
def test_num_tokens_with_adaptive_is_refused(capsys, tiny_model, video_file, tmp_path, command):
    """--adaptive elbow --num-tokens 16 ran 8 codes while --json said num_tokens 16: the K typed was ignored."""
    where = ["--video", str(video_file), "--frames", "4"] if command == "compress" else ["--out", str(tmp_path / "o")]
    code, _, err = run_cli(capsys, command, "--model", str(tiny_model), *where, "--adaptive", "elbow",
                           "--num-tokens", "16")
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        "llava-vqtoken: error: --num-tokens 16 with --adaptive elbow: the rule picks K per video within "
        "--min-codes..--max-codes, so a fixed K would be ignored; drop --num-tokens (or use --adaptive none for "
        "a fixed K)"
    ]


def test_json_claims_no_fixed_k_for_an_adaptive_spec(capsys, tiny_model, video_file, tmp_path):
    """A saved adaptive spec keeps a num_tokens the rule never uses: --json must not report it as the K."""
    from transformers import AutoProcessor

    from llava_vqtoken.hosts.hf import VQTokenLlavaOnevisionForConditionalGeneration, VQTokenLlavaOnevisionProcessor

    spec = {"num_tokens": 16, "adaptive": "elbow", "min_codes": 4, "max_codes": 12}
    m = VQTokenLlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model, video_compressor=spec)
    m.save_pretrained(tmp_path)
    VQTokenLlavaOnevisionProcessor.from_stock(AutoProcessor.from_pretrained(tiny_model), m.config).save_pretrained(
        tmp_path)
    code, out, err = run_cli(capsys, "compress", "--model", str(tmp_path), "--video", str(video_file), "--frames", "4",
                             "--json")
    assert code == 0, err
    d = json.loads(out.strip().splitlines()[-1])
    assert d["compressor"]["adaptive"] == "elbow" and d["compressor"]["num_tokens"] is None
    assert 4 <= d["num_codes"] <= 12


def test_help_says_a_long_vqtoken_clip_streams_by_default(capsys):
    """--help said '--chunk-frames ... (default 0)' while a 64-frame VQToken run streamed 32 at a time."""
    from llava_vqtoken.hosts.hf.modeling import STREAM_CHUNK

    with pytest.raises(SystemExit) as e:
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "(default 0)" not in text.split("--chunk-frames INT", 2)[-1].split("--override")[0]
    assert (f"Not given: a VQToken clip of more than {STREAM_CHUNK} frames is streamed {STREAM_CHUNK} at a time"
            in text) and "0: always all at once" in text
