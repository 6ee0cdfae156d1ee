"""The long-rollout benchmark (engine/bench.py) on the CPU: end to end on a tiny random model for a few frames,
the JSON holds every summary field for exactly the modes asked for, the plots open, an unknown mode is a clear
error; plus the pieces with numbers of their own (revisit pairs, the designed revisit, FPS windows, bars)."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.bench import BenchConfig, BarsConfig, mode_configs
from engine.bench_report import SUMMARY_FIELDS, bars, load, ms_at, report_text, summarise
from engine.bench_trace import explorer_trace, replay_truth, revisit_pairs, session_trace

REPO = Path(__file__).resolve().parent.parent
FRAMES = 8


def _bench(*overrides: str) -> subprocess.CompletedProcess:
    # One torch thread: on a shared 2-core machine, oversubscribed threads make the tiny model ~10x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "engine.bench", *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


def test_end_to_end_cpu_tiny(tmp_path: Path) -> None:
    out, res = tmp_path / "run", tmp_path / "results" / "bench_cpu.json"
    r = _bench(f"frames={FRAMES}", "modes=[dense,window]", "checkpoint=tiny-random", "device=cpu", "warmup=1",
               "sample_every=4", "+mode_params.window.window=4", "progress=false", f"out={out}",
               f"results_json={res}")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    assert set(doc["summary"]) == {"dense", "window"} and set(doc["modes"]) == {"dense", "window"}
    for name, s in doc["summary"].items():
        missing = [f for f in SUMMARY_FIELDS if f not in s]
        assert not missing, (name, missing)
        assert s["fps_at_300"] > 0 and s["fps_at_3000"] > 0 and s["mean_fps"] > 0
        assert s["psnr_vs_truth_db"] is not None and s["kernel"] in ("sdpa_flash_cpu", "sdpa_math_cpu")
        assert s["peak_mem_mib_at_300"] is None     # no CUDA memory statistics on the CPU: null, never 0
        series = doc["modes"][name]["series"]
        for key in ("gen_ms", "psnr_vs_dense", "ssim_vs_dense", "psnr_vs_truth"):
            assert len(series[key]) == FRAMES, key
        assert series["memory"]["frame"] == [1, 4, 8]
        digests = series["frame_digest"]
        assert len(digests) == FRAMES and all(re.fullmatch("[0-9a-f]{16}", d) for d in digests)
        assert re.fullmatch("[0-9a-f]{64}", s["frames_sha256"])
    assert doc["summary"]["dense"]["density"] == 1.0 and doc["summary"]["dense"]["psnr_vs_dense_db"] is None
    assert doc["summary"]["window"]["psnr_vs_dense_db"] is not None
    # one step on dense's history: the window (1 sink + 4) holds all of it for frames 1-5, so those equal dense
    # (on the CPU the window grows while it fills: the same keys, the same sums)
    one = doc["modes"]["window"]["series"]["psnr_vs_dense_1step"]
    assert len(one) == FRAMES and one[:4] == [100.0] * 4 and all(x is not None for x in one)
    assert doc["modes"]["dense"]["series"]["psnr_vs_dense_1step"] == [None] * FRAMES
    assert doc["summary"]["window"]["ssim_vs_dense_1step"] is not None
    assert doc["modes"]["window"]["params"] == {"sinks": 1, "window": 4, "fill": "auto"}
    assert doc["inductor_options"] == {"deterministic": True}
    assert doc["kernels"]["near_ties"] == {}    # nothing timed on the CPU, so no choice can sit near a tie
    for key in ("device", "commit", "dirty", "frames", "torch", "timer", "host"):
        assert key in doc, key
    assert doc["frames"] == FRAMES and doc["early_frame"] == 1 and doc["late_frame"] == FRAMES
    assert doc["device"].startswith("cpu") and "perf_counter" in doc["timer"]
    assert {b["status"] for b in doc["bars"]} <= {"PASS", "FAIL", "SKIP"} and len(doc["bars"]) == 7
    for png in ("fps_vs_frame.png", "memory_vs_frame.png", "psnr_vs_frame.png", "frames.png"):
        with Image.open(out / png) as im:
            im.load()
            assert im.width > 100 and im.height > 100, png
    table = (out / "table.txt").read_text()
    assert "dense" in table and "window" in table and "fastar" not in table.split("bars:")[0]
    assert "fps@1" in table and f"fps@{FRAMES}" in table
    short = json.loads(res.read_text())
    assert set(short["modes"]) == {"dense", "window"}          # modes left out are absent, not zeros
    assert all(set(v) == set(SUMMARY_FIELDS) for v in short["modes"].values())
    assert {"device", "commit", "frames"} <= set(short)
    assert "dense" in r.stdout and "bars:" in r.stdout
    # a saved run (plain or gzipped, as docs/results keeps them) prints the same table again
    gz = tmp_path / "bench.json.gz"
    gz.write_bytes(gzip.compress((out / "bench.json").read_bytes()))
    again = subprocess.run([sys.executable, "-m", "engine.bench_report", str(gz)], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout == table


def test_report_keeps_a_commit_label_and_names_a_bad_file(tmp_path: Path) -> None:
    doc = {"device": "cpu", "host": "h", "torch": "2", "commit": "4213dc5-run12", "dirty": None, "frames": 8,
           "timer": "t", "kernels": {"chosen": {}}, "trace": {"revisit_pairs": [], "revisit_min_gap": 4, "notes": []},
           "truth": {"revisit_psnr_db": None}, "summary": {}, "early_frame": 1, "late_frame": 8, "bars": []}
    assert "commit 4213dc5-run12," in report_text(doc)
    assert "commit 0123456789ab," in report_text({**doc, "commit": "0123456789ab" + "c" * 28})
    assert "memory guidance" not in report_text(doc)
    guided = report_text({**doc, "config": {"guidance": 3.0, "guide_attention": "window"}})
    assert "note: memory guidance 3.0 against window in every mode" in guided
    assert "spatial memory" not in report_text({**doc, "config": {"memory": None}})
    assert "note: spatial memory on in every mode" in report_text({**doc, "config": {"memory": {"enabled": True}}})
    bad = tmp_path / "bench.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bench.json: not a bench.json"):
        load(bad)


def test_commit_must_read_as_a_revision() -> None:
    """hydra reads an unquoted 81e1391 as a float (inf): the config refuses it before anything runs and says
    how to quote it; quoted, or with a note after the hash, it is kept as given."""
    from engine.bench import load_config
    from engine.evaluate import EvalConfig
    assert load_config(["commit='81e1391'"]).commit == "81e1391"
    assert load_config(["commit=5b5b687+run19"]).commit == "5b5b687+run19"
    with pytest.raises(ValueError, match="commit: 'inf' is not a git revision.*quote it"):
        load_config(["commit=81e1391"])
    with pytest.raises(ValueError, match="not a git revision"):
        EvalConfig(commit="latest")


def test_follow_on_its_own_history_reproduces_the_rollout() -> None:
    """NeuralEnv.follow with a dense rollout's committed latents, in dense mode, gives that rollout's frames bit
    for bit (same noise draws, same history): what the benchmark's one-step comparison rests on. With the
    history of another trajectory the frames differ."""
    from engine.bench_run import tiny_random_model
    from engine.env import make_action
    from engine.world_model import NeuralEnv
    model = tiny_random_model(0)
    acts = [make_action(("forward",)), make_action(("turn_left",)), make_action((), 0.4)] * 2
    env = NeuralEnv(model=model, device="cpu", steps=2)
    env.reset(5, "")
    frames, latents = [], []
    for a in acts:
        frames.append(env.step(a))
        latents.append(env.last_latent.clone())
    twin = NeuralEnv(model=model, device="cpu", steps=2)
    twin.reset(5, "")
    assert all(np.array_equal(twin.follow(a, z), f) for a, z, f in zip(acts, latents, frames))
    other = NeuralEnv(model=model, device="cpu", steps=2)
    other.reset(5, "")
    got = [other.follow(a, z.flip(-1)) for a, z in zip(acts, latents)]
    assert np.array_equal(got[0], frames[0]) and not np.array_equal(got[-1], frames[-1])


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown attention mode\(s\) \['nope'\]; available: .*'window'"):
        mode_configs(BenchConfig(modes=["dense", "nope"]))
    r = _bench("modes=[dense,nope]", "frames=4", "checkpoint=tiny-random", "device=cpu", "progress=false",
               "out=/nonexistent/never-written")
    assert r.returncode != 0
    assert "unknown attention mode(s) ['nope']; available:" in r.stderr + r.stdout


def test_mode_params_from_conf_and_overrides() -> None:
    m = mode_configs(BenchConfig(modes=["window", "dense"], mode_params={"window": {"window": 8}}))
    assert list(m) == ["window", "dense"] and m["window"] == {"sinks": 1, "window": 8, "fill": "auto"}
    assert m["dense"] == {"graph_frames": None, "bucket_frames": None, "decay_kernel": "auto", "bucket_kernel": "auto"}


def test_revisit_pairs_from_poses() -> None:
    poses = np.zeros((60, 3))
    poses[:, 0] = np.arange(60) * 0.5          # walking away...
    poses[50] = poses[5] + [0.01, 0.0, 0.5]    # ...and back to frame 5's pose (within tolerance)
    poses[51] = poses[50]                      # standing still there: the same revisit, not a second pair
    poses[52] = poses[40] + [0.0, 0.0, 3.0]    # yaw 3 degrees off: no pair
    assert revisit_pairs(poses, 20, 0.05, 1.0, 64) == [(5, 50)]
    assert revisit_pairs(poses, 46, 0.05, 1.0, 64) == []       # gaps 45 and 46 are not more than 46


def test_designed_revisit_returns_to_the_same_pose() -> None:
    from worlds.maze.env import MazeEnv

    t = explorer_trace(MazeEnv(), 0, "brick checker red day clear", 260, 0, True, 0.2, 33)
    seg = t.segment
    assert seg is not None and seg["return"] - seg["leave"] > 33
    assert seg["pos_err"] < 1e-6 and seg["yaw_err_deg"] < 1e-6
    assert t.truth.shape[0] == 261 and t.actions.shape == (260, 8)
    assert (seg["leave"], seg["return"]) in revisit_pairs(t.poses, 33, 0.05, 1.0, 64)


def test_session_trace_replays_its_truth(tmp_path: Path) -> None:
    from engine.env import make_action
    from engine.episode import EpisodeWriter
    from worlds.maze.env import MazeEnv

    sim = MazeEnv()
    acts = [make_action(["forward"]), make_action(["turn_left"]), make_action([], 0.5), make_action(["back"])]
    with EpisodeWriter(tmp_path / "s", {"world": "maze", "prompt": "stone night", "seed": 3}, 128, 128) as w:
        w.append(sim.reset(3, "stone night"), None, pose=sim.info()["pose"])
        for a in acts:
            w.append(sim.step(a), a, pose=sim.info()["pose"])
    t = replay_truth(MazeEnv(), session_trace(str(tmp_path / "s"), 10))
    assert t.seed == 3 and t.frames == 4 and "fewer than frames=10" in t.notes[0]
    np.testing.assert_array_equal(t.truth[-1], sim.render())
    np.testing.assert_allclose(t.poses[-1], sim.info()["pose"])


def _series(ms: list[float], mem: tuple[float, float], early: int, late: int) -> dict:
    return {"gen_ms": ms, "excluded": {}, "kernel": "k",
            "memory": {"frame": [early, late], "peak_alloc_mib": list(mem), "reserved_mib": list(mem)},
            "stats": {"density": [0.2], "recall": [0.9]}, "psnr_vs_dense": [30.0], "ssim_vs_dense": [0.8],
            "psnr_vs_truth": [20.0], "revisit_psnr": [25.0]}


def test_fps_window_ignores_one_slow_frame_and_flagged_frames() -> None:
    ms = [10.0] * 20
    ms[9] = 500.0                                  # one slow frame
    assert ms_at(ms, set(), 10, 5) == 10.0
    ms[10], ms[11] = 300.0, 300.0
    assert ms_at(ms, {11, 12}, 10, 5) == 10.0      # flagged frames left out of the window
    assert ms_at(ms, set(), 20, 5) == 10.0         # at the last frame the window trails


def test_bars_report_numbers() -> None:
    s = {"dense": summarise(_series([100.0] * 10, (1000.0, 1500.0), 1, 10), 1, 10, 3),
         "fastar": summarise(_series([8.0] * 10, (500.0, 510.0), 1, 10) | {"psnr_vs_dense": [24.0]}, 1, 10, 3),
         "window": summarise(_series([6.0] * 10, (400.0, 400.0), 1, 10) | {"revisit_psnr": [20.0]}, 1, 10, 3)}
    got = {b["bar"].split(" ")[0] + str(i): b for i, b in enumerate(bars(s, 1, 10, BarsConfig()))}
    status = [b["status"] for b in got.values()]
    assert status == ["PASS", "PASS", "PASS", "PASS", "FAIL", "PASS", "PASS"], got
    assert "12.50x" in got["fastar0"]["detail"]
    assert "+2.0%" in got["fastar3"]["detail"] and "+50.0%" in got["fastar3"]["detail"]      # dense's growth shown
    only = bars({"dense": s["dense"]}, 1, 10, BarsConfig())
    assert all(b["status"] == "SKIP" for b in only)


def test_motion_is_zero_for_a_frozen_rollout() -> None:
    from engine.bench_run import motion
    still = np.full((5, 4, 4, 3), 80, np.uint8)
    assert motion(still, still[0]) == [0.0] * 5
    moving = np.stack([np.full((4, 4, 3), 10 * i, np.uint8) for i in range(5)])
    assert motion(moving, np.zeros((4, 4, 3), np.uint8)) == [0.0, 10.0, 10.0, 10.0, 10.0]
    assert motion(moving, None)[0] is None


def test_dense_twin_row_only_when_asked(tmp_path: Path) -> None:
    """twin_params adds a `dense_twin` row (dense again with the overrides) compared with dense like any mode;
    on the CPU the same kernel runs, so the twin repeats dense bit for bit (determinism). Without dense it is an
    error, not a silent skip."""
    out = tmp_path / "run"
    r = _bench("frames=4", "modes=[dense]", "checkpoint=tiny-random", "device=cpu", "warmup=1", "progress=false",
               "plots=false", "+twin_params.bucket_kernel=channel", f"out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    assert set(doc["summary"]) == {"dense", "dense_twin"}
    assert doc["modes"]["dense_twin"]["params"]["bucket_kernel"] == "channel"
    assert doc["modes"]["dense_twin"]["series"]["psnr_vs_dense"] == [100.0] * 4
    assert doc["summary"]["dense_twin"]["ssim_vs_dense"] > 0.999
    assert doc["summary"]["dense_twin"]["frames_sha256"] == doc["summary"]["dense"]["frames_sha256"]
    assert doc["modes"]["dense_twin"]["series"]["frame_digest"] == doc["modes"]["dense"]["series"]["frame_digest"]
    assert "note: dense_twin is dense again, the same attention" in (out / "table.txt").read_text()
    bad = _bench("frames=4", "modes=[window]", "checkpoint=tiny-random", "device=cpu", "progress=false",
                 "+twin_params.bucket_kernel=channel", f"out={tmp_path / 'bad'}")
    assert bad.returncode != 0 and "twin_params is set but 'dense' is not among the modes" in bad.stderr


def test_revisit_bars_ask_for_more_than_noise() -> None:
    """Per-pair revisit PSNRs: margins that the pairs' spread covers are not "measurably worse" or "beats" (the
    same means without the pairs pass); steady ones are."""
    from engine.bench_report import paired

    def summary(revisit: dict[str, float]) -> dict[str, dict]:
        ms = {"dense": (100.0, (1000.0, 1500.0)), "fastar": (8.0, (500.0, 510.0)), "window": (6.0, (400.0, 400.0))}
        return {m: summarise(_series([t] * 10, mem, 1, 10) | {"revisit_psnr": [revisit[m]]}, 1, 10, 3)
                for m, (t, mem) in ms.items()}
    rng = np.random.default_rng(0)
    dense = 25.0 + rng.normal(0, 2, 64)
    window = dense - 1.0 + rng.normal(0, 6, 64)
    fastar = window + 0.2 + rng.normal(0, 2, 64)
    noisy = {"dense": list(dense), "window": list(window), "fastar": list(fastar)}
    s = summary({m: float(np.mean(v)) for m, v in noisy.items()})
    assert [b["status"] for b in bars(s, 1, 10, BarsConfig())[-2:]] == ["PASS", "PASS"]   # means alone pass
    got = bars(s, 1, 10, BarsConfig(), noisy)
    assert [b["status"] for b in got[-2:]] == ["FAIL", "FAIL"], got[-2:]
    assert "dense - window" in got[-2]["detail"] and "fastar - window" in got[-1]["detail"]
    steady = {"window": [20.0, 21.0] * 32, "dense": [25.0, 26.0] * 32, "fastar": [25.5, 26.5] * 32}
    s = summary({"window": 20.5, "dense": 25.5, "fastar": 26.0})
    assert [b["status"] for b in bars(s, 1, 10, BarsConfig(), steady)[-2:]] == ["PASS", "PASS"]
    assert paired([1.0, None, 3.0], [0.0, 5.0, 1.0]) == (1.5, 0.5, 2) and paired([1.0], [0.0]) is None


def test_quality_bars_name_dense_twin_without_changing_their_verdicts() -> None:
    """With a dense_twin row the quality and revisit bars quote its figures (the floor that rounding alone sets
    for free rollouts of this model); PASS/FAIL stay the issue's, decided by fastar, dense and window only."""
    def row(psnr: float | None, ssim: float | None, rev: float) -> dict:
        return {"fps_at_3000": 10.0, "mean_fps": 10.0, "ms_at_300": 1.0, "ms_at_3000": 1.0,
                "peak_mem_mib_at_300": 1.0, "peak_mem_mib_at_3000": 1.0, "psnr_vs_dense_db": psnr,
                "ssim_vs_dense": ssim, "revisit_psnr_db": rev}
    s = {"dense": row(None, None, 11.3), "fastar": row(13.8, 0.404, 11.2), "window": row(14.2, 0.42, 11.6)}
    plain = bars(s, 1, 10, BarsConfig())
    twin = bars(s | {"dense_twin": row(15.3, 0.482, 11.5)}, 1, 10, BarsConfig())
    assert [b["status"] for b in twin] == [b["status"] for b in plain]
    q = next(b for b in twin if b["bar"].startswith("fastar vs dense PSNR"))
    assert q["status"] == "FAIL" and "dense_twin, the same attention in other rounding: 15.30 dB, 0.482" in q["detail"]
    r = next(b for b in twin if b["bar"].startswith("revisit:"))
    assert "(dense_twin 11.50)" in r["detail"]
    assert not any("dense_twin" in b["detail"] for b in plain)


def test_frame_digests_change_from_the_first_frame_that_differs() -> None:
    """The per-frame digests say from which frame two rollouts part; the whole digest, whether they do at all."""
    from engine.bench_run import frame_digests

    a = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    b = a.copy()
    b[2, 3, 3, 1] ^= 1                                   # one low bit of one pixel
    (pa, wa), (pb, wb) = frame_digests(a), frame_digests(b)
    assert pa[:2] == pb[:2] and pa[2] != pb[2] and pa[3] == pb[3] and wa != wb
    assert frame_digests(a.copy()) == (pa, wa)


def test_compare_runs_names_the_first_differing_frame(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """tools/compare_runs.py: identical rollouts pass, a rollout that parts at frame 3 fails and says so, and
    runs without digests are an error rather than 'identical'."""
    from tools import compare_runs

    def run(name: str, digests: list[str], sha: str, gz: bool = False) -> Path:
        doc = {"modes": {"dense": {"series": {"frame_digest": digests, "frames_sha256": sha}}}}
        p = tmp_path / (name + (".json.gz" if gz else ".json"))
        raw = json.dumps(doc).encode()
        p.write_bytes(gzip.compress(raw) if gz else raw)
        return p

    a, b = run("a", ["1", "2", "3", "4"], "x"), run("b", ["1", "2", "3", "4"], "x", gz=True)
    c = run("c", ["1", "2", "9", "4"], "y")
    assert compare_runs.main([str(a), str(b)]) == 0 and "dense: identical (4 frames" in capsys.readouterr().out
    assert compare_runs.main([str(a), str(b), str(c)]) == 1
    assert "first differing frame 3" in capsys.readouterr().out
    short = run("short", ["1", "2"], "z")
    assert compare_runs.main([str(a), str(short)]) == 1
    assert "the same first 2 frames, then 4 against 2" in capsys.readouterr().out
    kd = [json.loads(p.read_bytes() if p.suffix == ".json" else gzip.decompress(p.read_bytes())) for p in (a, c)]
    kd[0]["kernels"], kd[1]["kernels"] = {"chosen": {"q256_kv16": "sdpa_cudnn"}}, {"chosen": {"q256_kv16": "sdpa_x"}}
    assert compare_runs.kernel_differences(kd, ["a", "c"]) == ["kernel choices differ, a vs c: q256_kv16 sdpa_cudnn "
                                                               "vs sdpa_x"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"modes": {"dense": {"series": {}}}}))
    with pytest.raises(SystemExit, match="no frame_digest"):
        compare_runs.main([str(a), str(old)])


def test_kernel_choices_are_pinned_from_a_file_or_refused_before_the_run(tmp_path: Path) -> None:
    """kernel_choices=<file>: every env of the run pins those kernels (bench.json says from where, the table
    too); a file that holds no choices stops the run before anything runs, naming the file."""
    choices = tmp_path / "choices.json"
    choices.write_text(json.dumps({"q256_kv16_d64_bfloat16": "sdpa_efficient"}))
    out = tmp_path / "run"
    r = _bench("frames=2", "modes=[dense]", "checkpoint=tiny-random", "device=cpu", "warmup=1", "progress=false",
               "plots=false", "one_step=false", f"kernel_choices={choices}", f"out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    assert doc["kernels"]["pinned_from"] == str(choices)
    assert f"dense kernels pinned from {choices}" in (out / "table.txt").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kernels": {}}))
    r = _bench("frames=2", "modes=[dense]", "checkpoint=tiny-random", "device=cpu", f"kernel_choices={bad}",
               f"out={tmp_path / 'bad_run'}")
    assert r.returncode != 0 and "bad.json holds no kernel choices" in r.stderr
    assert not (tmp_path / "bad_run" / "bench.json").exists()
