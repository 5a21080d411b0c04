"""Motion-QA benchmark: question generation is well-formed, and a reduced run works end to end on CPU."""

import json
import random

import numpy as np
import pytest
import torch

from llava_vqtoken.motionqa.bench import main, parse_setting
from llava_vqtoken.motionqa.data import TYPES, make_episode, make_question, make_split


def test_questions_are_answerable_from_the_episode():
    rng = random.Random(0)
    for _ in range(50):
        video, objs = make_episode(rng, frames=8, size=48, objects=3)
        assert video.shape == (8, 48, 48, 3) and sum(o.direction is not None for o in objs) >= 2
        for qtype in TYPES:
            q, opts, ans = make_question(rng, objs, qtype)
            assert len(opts) == 4 and len(set(opts)) == 4 and 0 <= ans < 4
            if qtype == "count":
                assert opts[ans] == str(sum(o.direction is not None for o in objs))
            if qtype == "order":
                assert opts[ans] == min(objs, key=lambda o: o.start).color
    split = make_split(8, 1, 4, 32)
    assert [s[1] for s in split] == list(TYPES) * 2  # balanced question types


def test_settings_share_one_budget():
    assert parse_setting("vqtoken:attention=none", 32) == {"name": "vqtoken", "num_tokens": 32, "attention": "none"}
    assert parse_setting("none", 32)["num_tokens"] is None


def test_reduced_run_on_cpu(tmp_path):
    assert main(["--compressors", "vqtoken", "pool", "--steps", "2", "4", "--seeds", "0", "--train-size", "16",
                 "--test-size", "8", "--frames", "4", "--size", "32", "--batch", "4", "--device", "cpu",
                 "--option-order", "fixed", "--grid-objects",
                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())
    assert {(r["run"], r["steps"]) for r in rows} == {("vqtoken", 2), ("vqtoken", 4), ("pool", 2), ("pool", 4)}
    assert all(r["visual_tokens"] == 33 and 0 <= r["all"] <= 100 for r in rows)
    for plot in ("accuracy_vs_tokens.png", "accuracy_by_type.png", "accuracy_vs_steps.png"):
        assert (tmp_path / plot).stat().st_size > 0


def test_fixed_option_order_names_the_same_answer_with_the_same_letter():
    rng = random.Random(1)
    for _ in range(30):
        _, objs = make_episode(rng, frames=8, size=48, objects=3)
        assert make_question(rng, objs, "identity", shuffle=False)[1] == ["square", "circle", "triangle", "cross"]
        assert make_question(rng, objs, "direction", shuffle=False)[1] == ["left", "right", "up", "down"]
        q, opts, ans = make_question(rng, objs, "count", shuffle=False)
        assert opts == ["1", "2", "3", "4"] and opts[ans] == str(sum(o.direction is not None for o in objs))


def test_grid_objects_stay_inside_one_patch():
    from llava_vqtoken.motionqa.data import COLORS

    rng = random.Random(2)
    for _ in range(10):
        video, objs = make_episode(rng, frames=8, size=48, objects=3, cell=8)
        for t in range(8):
            for o in objs:
                ys, xs = (video[t] == COLORS[o.color]).all(-1).nonzero()
                if len(ys):
                    assert len(set(ys // 8)) == 1 and len(set(xs // 8)) == 1


def test_questions_can_name_the_object_by_order_of_appearance():
    rng = random.Random(3)
    for _ in range(40):
        _, objs = make_episode(rng, frames=8, size=32, objects=3, cell=8)
        first = min(objs, key=lambda o: o.start)
        assert first.direction is not None  # the object that appears first always moves
        q, opts, ans = make_question(rng, objs, "direction", shuffle=False, refer="order")
        assert "appears first" in q and opts[ans] == first.direction
        q, opts, ans = make_question(rng, objs, "identity", shuffle=False, refer="order")
        assert opts[ans] == first.shape


def test_clear_motion_shows_the_first_objects_direction_in_its_two_solo_frames():
    from llava_vqtoken.motionqa.data import COLORS, DIRECTIONS

    rng = random.Random(4)
    for _ in range(40):
        video, objs = make_episode(rng, frames=8, size=32, objects=3, cell=8, clear_motion=True)
        first = min(objs, key=lambda o: o.start)
        s0 = first.start
        assert all(o.start >= s0 + 2 for o in objs if o is not first)
        cells = []
        for t in (s0, s0 + 1):
            ys, xs = (video[t] != 110).any(-1).nonzero()
            assert (video[t][ys, xs] == COLORS[first.color]).all()  # it is alone
            cells.append((ys.min() // 8, xs.min() // 8))
        dy, dx = DIRECTIONS[first.direction]
        assert (cells[1][0] - cells[0][0], cells[1][1] - cells[0][1]) == (dy, dx)  # one cell its way


def test_parallel_workers_give_the_same_numbers_as_one_process(tmp_path):
    common = ["--compressors", "vqtoken", "pool", "--steps", "3", "--seeds", "0", "--train-size", "16",
              "--test-size", "8", "--frames", "4", "--size", "32", "--batch", "4", "--device", "cpu",
              "--text-layers", "1", "--text-hidden", "64", "--clear-motion", "--refer", "color"]
    assert main([*common, "--workers", "2", "--out", str(tmp_path / "par")]) == 0
    assert main([*common, "--out", str(tmp_path / "seq")]) == 0
    par, seq = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("par", "seq"))
    assert [r["label"] for r in par] == [r["label"] for r in seq] == ["vqtoken", "pool"]  # job order, not finish order
    for a, b in zip(par, seq):
        assert a["by_steps"]["3"]["accuracy"] == b["by_steps"]["3"]["accuracy"]
        # the workers run with fewer threads, so float sums may round differently
        assert a["by_steps"]["3"]["last_loss"] == pytest.approx(b["by_steps"]["3"]["last_loss"], rel=1e-2)


def test_curriculum_first_phase_samples_only_its_question_types(tmp_path):
    from llava_vqtoken.motionqa.bench import curriculum_rows

    train = make_split(12, 0, 4, 32, cell=8, refer="order")
    rows = curriculum_rows(train, ["direction"])
    assert rows.tolist() == [i for i in range(12) if i % 4 == 1]  # types are balanced in TYPES order
    with pytest.raises(ValueError, match="curriculum"):
        curriculum_rows(make_split(4, 0, 4, 32, cell=8, types=("order",)), ["direction"])
    assert main(["--compressors", "pool", "--steps", "2", "4", "--seeds", "0", "--train-size", "16",
                 "--test-size", "8", "--frames", "4", "--size", "32", "--batch", "4", "--device", "cpu",
                 "--text-layers", "1", "--text-hidden", "64", "--curriculum-steps", "2",
                 "--out", str(tmp_path)]) == 0


def test_report_pools_seeds_that_stopped_at_different_budgets_and_counts_learned_runs(tmp_path):
    from llava_vqtoken.motionqa.bench import report

    def run(seed, by_steps):
        return {"label": "pool", "seed": seed, "frames": 8, "visual_tokens": 33, "by_steps": {
            str(b): {"accuracy": {"direction": d, "all": d}} for b, d in by_steps.items()}}

    text = report([run(0, {1000: 50.0}), run(1, {1000: 100.0, 4000: 95.0}), run(2, {1000: 90.0, 4000: 25.0})],
                  tmp_path)
    rows = {r["steps"]: r for r in json.loads((tmp_path / "report.json").read_text())}
    assert rows[1000]["seeds"] == 3 and rows[1000]["direction"] == pytest.approx(80.0)
    assert rows[4000]["seeds"] == 2 and rows[4000]["direction"] == pytest.approx(60.0)
    assert rows[1000]["learned"]["direction"] == 2 and rows[4000]["learned"]["direction"] == 1  # >= 90%
    assert "| pool | 8 | 4000 | 33 | 2 | 60.0±35.0 (1/2) |" in text


def test_a_curriculum_outside_the_trained_question_types_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--types", "order", "--curriculum-types", "direction", "--device", "cpu"])
    assert "pass --curriculum-steps 0" in capsys.readouterr().err


def test_curriculum_phases_run_in_turn_then_the_whole_split():
    import argparse

    from llava_vqtoken.motionqa.bench import batch_rows, curriculum_phases, curriculum_schedule

    train = make_split(40, 0, 4, 32, cell=8, refer="order")
    a = argparse.Namespace(curriculum_steps=[3, 2], curriculum_types=[("direction",), ("direction", "identity")])
    assert curriculum_phases(a) == [(3, ("direction",)), (2, ("direction", "identity"))]
    ends = curriculum_schedule(train, a)
    assert [end for end, _ in ends] == [3, 5]
    gen = torch.Generator().manual_seed(0)
    seen = [{train[i][1] for i in batch_rows(step, ends, len(train), 64, gen).tolist()} for step in range(6)]
    assert seen[:3] == [{"direction"}] * 3
    assert seen[3] == seen[4] == {"direction", "identity"}
    assert seen[5] == set(TYPES)  # every phase over: the whole split
    assert curriculum_phases(argparse.Namespace(curriculum_steps=[0], curriculum_types=[("direction",)])) == []


def test_curriculum_flags_are_checked_in_one_line(capsys):
    with pytest.raises(SystemExit):  # one steps value, two phases: the old one-phase-of-two-types spelling
        main(["--curriculum-steps", "500", "--curriculum-types", "direction", "identity", "--device", "cpu"])
    assert "one of each per phase" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--curriculum-types", "direction,speed", "--device", "cpu"])
    assert "unknown question type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--types", "order", "direction", "--curriculum-steps", "5", "5",
              "--curriculum-types", "direction", "direction,count", "--device", "cpu"])
    assert "direction,count is not among --types" in capsys.readouterr().err


def test_a_runner_owns_its_caches_and_shares_one_copy_of_the_pixels_between_settings():
    import llava_vqtoken.motionqa.bench as bench

    args = bench.parse_args(["--compressors", "pool", "none", "--steps", "1", "--train-size", "8", "--test-size", "4",
                             "--frames", "4", "--size", "32", "--batch", "4", "--device", "cpu", "--text-layers", "1",
                             "--text-hidden", "64", "--vision-layers", "1", "--curriculum-steps", "0"])
    runner = bench.Runner(args)
    assert [runner.run(s, 0, 4)["label"] for s in ("pool", "none")] == ["pool", "none"]
    assert sorted(runner.pixels[4]) == ["pixels_test", "pixels_train"]
    assert sorted(runner.encoded) == [("none", 4), ("pool", 4)]
    for split in ("train", "test"):
        for key in bench.PIXEL_KEYS:
            assert runner.encoded[("pool", 4)][split][key] is runner.pixels[4][f"pixels_{split}"][key]
            assert runner.encoded[("none", 4)][split][key] is runner.pixels[4][f"pixels_{split}"][key]
    assert runner.run("pool", 0, 5)["frames"] == 5  # another clip length: its own splits and pixels
    assert sorted(runner.pixels) == [4, 5] and len(runner.splits[5][0][0][0]) == 5
    assert bench.Runner(args).pixels == {}  # a second runner starts empty: no module-level cache
    assert not any(name in vars(bench) for name in ("_PIXELS", "_WORKER"))


# sha256 (first 16 hex digits) of the clips of seeds 0, 1, 2 drawn by the frame-by-frame generator of
# eb6cf60, before make_clip drew each distinct frame once: the clips must not change.
KNOWN_CLIPS = {
    (8, 48, 3, None, False): "f4de415e0b446856",
    (8, 32, 3, 8, True): "c342618bdb2e3096",
    (64, 32, 3, 8, True): "6bc5fc3b4c04f156",
    (256, 32, 4, 8, True): "cbffbc18691e4a73",
    (16, 64, 3, None, False): "d02be5257e6eff6a",
    (1024, 32, 3, 8, True): "b91200fce412bc39",
}


@pytest.mark.parametrize("case", list(KNOWN_CLIPS))
def test_clips_are_the_frame_by_frame_generators(case):
    import hashlib

    h = hashlib.sha256()
    for seed in range(3):
        h.update(make_episode(random.Random(seed), *case)[0].tobytes())
    assert h.hexdigest()[:16] == KNOWN_CLIPS[case]


def test_a_long_clip_is_kept_as_its_few_distinct_frames():
    from llava_vqtoken.motionqa.data import make_clip

    clip, objs = make_clip(random.Random(5), frames=1024, size=32, objects=3, cell=8, clear_motion=True)
    full = clip.full()
    assert len(clip) == 1024 and full.shape == (1024, 32, 32, 3) and len(clip.frames) <= 16
    assert len(np.unique(full.reshape(1024, -1), axis=0)) == len(clip.frames)  # each distinct frame once
    assert clip.index[0] == 0 and (np.diff(np.maximum.accumulate(clip.index)) >= 0).all()  # first-appearance order
    assert max(o.start for o in objs) < 1024 // 2 + 2  # events in the first half (+2: the first one's solo frames)


@pytest.mark.parametrize("setting", ["pool", "vqtoken"])
def test_encoded_distinct_frames_draw_out_to_what_the_processor_gives_for_the_whole_clip(setting):
    import llava_vqtoken.motionqa.bench as bench

    model, proc = bench.build(parse_setting(setting, 8), 32, 8, 32, 32, 0, 1, 1)
    split = make_split(3, 0, 40, 32, cell=8, clear_motion=True, refer="order")
    data = bench.encode_all(proc, split, "cpu")
    assert data["pixel_frames"].shape[1] < 40  # distinct frames only
    got = bench.take(data, torch.tensor([2, 0]))
    texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}],
                                      add_generation_prompt=True) for _, _, q, _ in (split[2], split[0])]
    whole = proc(text=texts, videos=[split[2][0].full(), split[0][0].full()], return_tensors="pt", padding=True)
    assert torch.equal(got["input_ids"], whole["input_ids"])  # pool's count depends on T: 8 frames x 1 token here
    assert torch.equal(got["pixel_values_videos"], whole["pixel_values_videos"])
    assert got["pixel_values_videos"].shape == (2, 40, 3, 32, 32)


def test_several_clip_lengths_give_one_row_each_and_a_plot_against_frames(tmp_path):
    assert main(["--compressors", "pool", "--steps", "1", "--seeds", "0", "--train-size", "8", "--test-size", "4",
                 "--frames", "4", "5", "--size", "32", "--batch", "4", "--device", "cpu", "--text-layers", "1",
                 "--text-hidden", "64", "--vision-layers", "1", "--curriculum-steps", "0",
                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "report.json").read_text())
    assert [(r["run"], r["setting"], r["frames"]) for r in rows] == [("pool @4f", "pool", 4), ("pool @5f", "pool", 5)]
    assert (tmp_path / "accuracy_vs_frames.png").stat().st_size > 0
    assert "| pool | 5 | 1 |" in (tmp_path / "report.md").read_text()


def test_zero_frames_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--frames", "8", "0", "--device", "cpu"])
    assert e.value.code == 2 and "--frames must be at least 4 with --objects 3" in capsys.readouterr().err


def test_results_of_separate_invocations_report_together(tmp_path, capsys):
    def run(frames, acc):
        return {"label": "pool", "seed": 0, "frames": frames, "visual_tokens": 33,
                "by_steps": {"10": {"accuracy": {"direction": acc, "all": acc}}}}

    (tmp_path / "a.json").write_text(json.dumps([run(8, 90.0)]))
    (tmp_path / "b.json").write_text(json.dumps([run(1024, 30.0)]))
    assert main(["--from-results", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out",
                 str(tmp_path / "all")]) == 0
    rows = json.loads((tmp_path / "all" / "report.json").read_text())
    assert [(r["frames"], r["all"]) for r in rows] == [(8, 90.0), (1024, 30.0)]
    assert (tmp_path / "all" / "accuracy_vs_frames.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "all" / "results.json").read_text())) == 2
    assert main(["--from-results", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--from-results" in err and "missing.json" in err and "Traceback" not in err
    assert main(["--from-results", str(tmp_path / "a.json"), str(tmp_path / "all" / "results.json"), "--out",
                 str(tmp_path / "y")]) == 2  # a run given twice would count as two seeds
    assert "pool seed 0 at 8 frames is also in" in capsys.readouterr().err


def test_a_run_cut_short_keeps_the_budgets_it_reached(tmp_path, monkeypatch):
    import llava_vqtoken.motionqa.bench as bench

    args = bench.parse_args(["--compressors", "pool", "--steps", "1", "2", "--train-size", "8", "--test-size", "4",
                             "--frames", "4", "--size", "32", "--batch", "4", "--device", "cpu", "--text-layers", "1",
                             "--text-hidden", "64", "--vision-layers", "1", "--curriculum-steps", "0"])
    seen: list[dict] = []
    final = bench.Runner(args).run("pool", 0, 4, seen.append)
    assert [(r["label"], r["frames"], r["complete"], sorted(r["by_steps"])) for r in seen] == [("pool", 4, False, [1])]
    assert final["complete"] and sorted(final["by_steps"]) == [1, 2]
    assert seen[0]["by_steps"][1] == final["by_steps"][1] and seen[0]["visual_tokens"] == final["visual_tokens"] == 33

    real_run = bench.Runner.run

    def killed_after_first_budget(self, setting, seed, frames, progress=None):
        def stop(res):
            progress(res)
            raise KeyboardInterrupt  # the device's time limit, say
        return real_run(self, setting, seed, frames, stop)

    monkeypatch.setattr(bench.Runner, "run", killed_after_first_budget)
    with pytest.raises(KeyboardInterrupt):
        main(["--compressors", "pool", "--steps", "1", "2", "--train-size", "8", "--test-size", "4", "--frames", "4",
              "--size", "32", "--batch", "4", "--device", "cpu", "--text-layers", "1", "--text-hidden", "64",
              "--vision-layers", "1", "--curriculum-steps", "0", "--out", str(tmp_path)])
    kept = json.loads((tmp_path / "results.json").read_text())
    assert [(r["label"], r["complete"], list(r["by_steps"])) for r in kept] == [("pool", False, ["1"])]


TINY = ["--device", "cpu", "--train-size", "8", "--test-size", "4", "--steps", "1", "--batch", "4", "--text-layers",
        "1", "--text-hidden", "64", "--vision-layers", "1", "--curriculum-steps", "0", "--size", "32"]


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_every_moving_object_is_seen_at_two_positions_from_the_shortest_clip_allowed():
    from llava_vqtoken.motionqa.data import _positions, make_clip, min_frames, object_size

    def moves(frames, size, objects, cell, seed):
        clip, objs = make_clip(random.Random(seed), frames, size, objects, cell, clear_motion=True)
        width = object_size(size, cell)
        return all(len({tuple(s) for s in _positions(o, frames, size, width, float(width), cell) if s[0]}) >= 2
                   for o in objs if o.direction)

    for objects in range(2, 7):
        shortest = min_frames(objects)
        for size, cell in ((32, 8), (16, 8), (12, None)):
            assert all(moves(shortest, size, objects, cell, seed) for seed in range(150)), (objects, size, cell)
        assert not all(moves(shortest - 1, 32, objects, 8, seed) for seed in range(150))  # the rule is tight


def test_count_questions_with_more_than_four_moving_objects_keep_the_fixed_option_order():
    split = make_split(60, 0, 7, 32, objects=6, shuffle_options=False, cell=8, types=("count",), clear_motion=True)
    options = [[int(line[3:]) for line in prompt.splitlines()[1:5]] for _, _, prompt, _ in split]
    assert all(counts == sorted(counts) and counts[:3] == [1, 2, 3] for counts in options)
    assert {counts[-1] for counts in options} == {4, 5, 6}  # five or six moving objects: the last option


@pytest.mark.parametrize("argv, message", [
    (["--frames", "8", "3"], "--frames must be at least 4 with --objects 3"),
    (["--frames", "1"], "--frames must be at least 4"),
    (["--objects", "4", "--frames", "4"], "--frames must be at least 5 with --objects 4"),
    (["--objects", "1"], "--objects must be between 2 and 6"),
    (["--objects", "7", "--frames", "8"], "--objects must be between 2 and 6"),
    (["--train-size", "0"], "--train-size must be at least 1, got 0"),
    (["--test-size", "0"], "--test-size must be at least 1"),
    (["--steps", "10", "0"], "--steps must be at least 1, got 0"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--num-tokens", "0"], "--num-tokens must be at least 1"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--patch", "0"], "--patch must be at least 1"),
    (["--size", "4"], "--size must be a multiple of --patch 8 with at least 2 patches per side, got 4"),
    (["--size", "36"], "--size must be a multiple of --patch 8"),
    (["--size", "8"], "with at least 2 patches per side, got 8"),
    (["--size", "8", "--patch", "4", "--no-grid-objects"], "--size 8 leaves an object (6 px) no room to move"),
    (["--compressors", "pool", "tome", "pool"], "--compressors pool given twice"),
    (["--seeds", "0", "1", "0"], "--seeds 0 given twice"),
    (["--frames", "8", "16", "8"], "--frames 8 given twice"),
    (["--compressors", "pool:bogus=1"], "--compressors pool:bogus=1: compressor config"),
])
def test_bad_flags_are_refused_up_front_in_one_line(argv, message, capsys):
    from llava_vqtoken.motionqa.bench import parse_args

    with pytest.raises(SystemExit) as e:  # parse_args, not main: the old code would start training
        parse_args([*argv, "--device", "cpu"])
    line = _last_error(capsys)
    assert e.value.code == 2 and line.startswith("llava-vqtoken motionqa: error:") and message in line


def test_a_run_records_every_flag_that_changes_its_numbers(tmp_path):
    from llava_vqtoken.motionqa.bench import UNRECORDED_FLAGS, build_parser

    assert main(["--compressors", "pool", "--frames", "4", *TINY, "--out", str(tmp_path)]) == 0
    settings = json.loads((tmp_path / "results.json").read_text())[0]["settings"]
    flags = {a.dest for a in build_parser()._actions} - {"help"}
    assert set(settings) == flags - UNRECORDED_FLAGS
    assert UNRECORDED_FLAGS == {"compressors", "seeds", "frames", "steps", "workers", "device", "out", "from_results"}
    assert settings["num_tokens"] == 32 and settings["types"] == list(TYPES)
    assert settings["curriculum_types"] == [["direction"]] and settings["grid_objects"] is True


def _results(path, runs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs))
    return str(path)


def _run(frames=8, seed=0, **settings):
    run = {"label": "pool", "seed": seed, "frames": frames, "visual_tokens": 33, "complete": True,
           "by_steps": {"10": {"accuracy": {"direction": 50.0, "all": 50.0}}}}
    return {**run, "settings": {"num_tokens": 32, "types": list(TYPES), **settings}} if settings else run


def test_from_results_refuses_runs_of_different_settings_in_one_line(tmp_path, capsys):
    a = _results(tmp_path / "a.json", [_run(8, num_tokens=32)])
    b = _results(tmp_path / "b.json", [_run(64, num_tokens=8)])
    assert main(["--from-results", a, b, "--out", str(tmp_path / "all")]) == 2
    line = _last_error(capsys)
    assert f"--num-tokens is 32 in {a} but 8 in {b}" in line and not (tmp_path / "all").exists()
    c = _results(tmp_path / "c.json", [_run(64, types=["direction"])])
    assert main(["--from-results", a, c, "--out", str(tmp_path / "all")]) == 2
    assert "--types is ['identity', 'direction', 'order', 'count'] in" in _last_error(capsys)
    old = _results(tmp_path / "old.json", [_run(64)])  # written before runs recorded their settings
    assert main(["--from-results", a, old, "--out", str(tmp_path / "all")]) == 2
    assert f"{old}: its runs have no settings" in _last_error(capsys)
    older = _results(tmp_path / "older.json", [_run(16)])
    assert main(["--from-results", old, older, "--out", str(tmp_path / "old")]) == 0  # none has settings
    same = _results(tmp_path / "same.json", [_run(64, num_tokens=32)])
    assert main(["--from-results", a, same, "--out", str(tmp_path / "all")]) == 0


def test_from_results_refuses_to_overwrite_an_input_or_read_one_twice(tmp_path, capsys):
    a = _results(tmp_path / "a" / "results.json", [_run(8, num_tokens=32)])
    b = _results(tmp_path / "b" / "results.json", [_run(64, num_tokens=32)])
    before = (tmp_path / "a" / "results.json").read_text()
    assert main(["--from-results", a, b, "--out", str(tmp_path / "b" / ".." / "a")]) == 2
    assert f"its results.json would overwrite the input {a}" in _last_error(capsys)
    assert (tmp_path / "a" / "results.json").read_text() == before
    assert main(["--from-results", a, str(tmp_path / "b" / ".." / "a" / "results.json"), "--out",
                 str(tmp_path / "c")]) == 2
    assert "given twice" in _last_error(capsys)


@pytest.mark.parametrize("content, message", [
    ([], "no list of runs"),
    ({"label": "pool"}, "no list of runs"),
    ([{"label": "pool", "seed": 0}], "run 0 is not a motionqa run (no by_steps)"),
    ([{"seed": 0, "by_steps": {}}], "run 0 is not a motionqa run (no label)"),
    ([{"label": "pool", "by_steps": {}}], "(no seed)"),
])
def test_from_results_refuses_a_file_that_holds_no_runs_in_one_line(content, message, tmp_path, capsys):
    bad = _results(tmp_path / "bad.json", content)
    assert main(["--from-results", bad, "--out", str(tmp_path / "out")]) == 2
    line = _last_error(capsys)
    assert f"--from-results {bad}: " in line and message in line


def test_a_failed_run_does_not_lose_the_runs_of_other_workers(tmp_path):
    # heads=5 passes the config's checks but does not divide the model's width: it fails in its worker
    with pytest.raises(RuntimeError) as e:
        main(["--compressors", "vqtoken:heads=5", "pool", "--frames", "4", *TINY, "--workers", "2",
              "--out", str(tmp_path)])
    kept = json.loads((tmp_path / "results.json").read_text()) if (tmp_path / "results.json").exists() else []
    assert [(r["label"], r["complete"]) for r in kept] == [("pool", True)]  # it finished after the failure
    first = str(e.value).splitlines()[0]
    assert "vqtoken:heads=5 seed 0 at 4 frames failed" in first and "pool" not in first


def test_a_report_removes_plots_it_does_not_draw_and_counts_runs_cut_short(tmp_path):
    from llava_vqtoken.motionqa.bench import report

    report([_run(8), _run(64)], tmp_path)
    assert (tmp_path / "accuracy_vs_frames.png").exists()
    cut = {**_run(8, seed=1), "complete": False}
    text = report([_run(8), cut, _run(8, seed=2)], tmp_path)  # one clip length now
    assert not (tmp_path / "accuracy_vs_frames.png").exists()
    assert (tmp_path / "accuracy_vs_tokens.png").exists()
    assert "1 of 3 runs stopped before their last budget" in text
    assert "stopped before" not in report([_run(8)], tmp_path)


def test_plots_of_several_lengths_keep_settings_apart(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import llava_vqtoken.motionqa.bench as bench

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    runs = [{**_run(n), "label": s} for s in ("pool", "tome", "none") for n in (8, 64)]
    rows = bench.report_rows(runs, ["direction"])
    bench.plot_by_tokens(rows, tmp_path / "t.png", plt)
    bench.plot_by_steps(rows, ["direction"], tmp_path / "s.png", plt)
    bench.plot_by_frames(rows, tmp_path / "f.png", plt)
    tokens, steps, frames = (f.axes for f in figs)
    assert not tokens[0].texts and tokens[0].get_ylim() == (0, 105) and tokens[0].get_title()
    legend = [t.get_text() for t in tokens[0].get_legend().get_texts()]
    assert legend == ["pool (33 tok)", "tome (33 tok)", "none (33 tok)", "8 frames", "64 frames", "chance (25%)"]
    assert [t.get_text() for t in steps[-1].get_legend().get_texts()] == legend  # one entry per setting and length
    dashed = {line.get_label().lstrip("_").split(" ")[0] for line in steps[0].lines if line.get_linestyle() == "--"}
    assert dashed == {"none"}  # the ceiling, though its runs are labelled "none @8f", "none @64f"
    assert frames[0].get_ylabel() == "accuracy (%), mean over question types and seeds"
    lines = [line for line in frames[0].lines if line.get_linestyle() != "None" and line.get_label() != "chance"]
    assert len({(line.get_marker(), line.get_linestyle()) for line in lines}) == len(lines) == 3  # not caps


def test_frames_plot_legend_names_every_setting_and_all_its_token_counts(tmp_path, monkeypatch):
    """The legend came from the last panel only, with that panel's token counts: a setting that
    stopped before the last budget was missing, and `none` read 129 tokens although it had 1025 at 64
    frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import llava_vqtoken.motionqa.bench as bench

    def row(setting, frames, steps, tokens):
        return {"setting": setting, "frames": frames, "steps": steps, "visual_tokens": tokens, "all": 50.0,
                "all_sd": 0.0}

    rows = [row("none", 8, 500, 129), row("none", 64, 500, 1025), row("none", 8, 1000, 129),
            row("vqtoken", 8, 500, 33), row("vqtoken", 64, 500, 33)]
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    bench.plot_by_frames(rows, tmp_path / "f.png", plt)
    labels = [t.get_text() for t in figs[0].axes[-1].get_legend().get_texts()]
    assert sorted(labels) == ["chance", "none (129/1025 tok)", "vqtoken (33 tok)"]
