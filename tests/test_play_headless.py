"""Headless play, record -> replay -> check, and regressions caught by the check (the real maze)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.episode import EpisodeReader
from fake_env import SMALL, run_play

MAZE = ["world=maze", "engine=sim", "world.sim.height=32", "world.sim.width=48", "world.sim.grid_size=10"] + SMALL


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("play") / "s1"
    r = run_play(*MAZE, "headless=true", "frames=24", f"out={out}", "seed=3")
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    return out


def test_headless_play_writes_a_session(session: Path) -> None:
    ep = EpisodeReader(session)
    assert len(ep) == 24 and not ep.truncated
    assert ep.meta["world"] == "maze" and ep.meta["seed"] == 3 and ep.meta["config_version"] == 2
    assert ep.meta["config"]["engine"]["name"] == "sim" and ep.meta["engine_version"]
    assert ep.meta["device"] == "cpu" and ep.meta["attention"] is None
    assert "checkpoint_sha256" in ep.meta
    assert ep.poses() is not None                     # the simulator's pose: dataset-ready
    assert all(isinstance(g, float) for g in ep.field("gen_ms")) and ep.field("t_wall")[0] > 0
    assert ep.actions()[1:].any()                     # the autopilot did something
    assert (session / "video.mp4").stat().st_size > 0


def test_autopilot_is_deterministic(session: Path, tmp_path: Path) -> None:
    r = run_play(*MAZE, "headless=true", "frames=24", f"out={tmp_path / 'again'}", "seed=3")
    assert r.returncode == 0, r.stderr
    a, b = EpisodeReader(session), EpisodeReader(tmp_path / "again")
    assert np.array_equal(a.actions(), b.actions()) and np.array_equal(a.frames(), b.frames())


def test_plain_play_without_display_falls_back_to_headless(tmp_path: Path) -> None:
    r = run_play(*MAZE, "frames=5", f"sessions_dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "no display" in r.stdout and "headless" in r.stdout
    (sess,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert str(sess) in r.stdout and len(EpisodeReader(sess)) == 5


def test_record_replay_check_passes(session: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s"
    shutil.copytree(session, copy)
    r = run_play(f"replay={copy}", "check=true", *SMALL)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((copy / "check_report.json").read_text())
    assert rep["passed"] and rep["frames_compared"] == 24 and rep["min_psnr_db"] == "inf"
    assert rep["first_below"] is None and rep["max_pose_error"] == 0.0 and rep["mismatches"] == []


def test_corrupted_frame_fails_the_check_and_is_named(session: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s"
    shutil.copytree(session, copy)
    chunk = copy / "frames" / "chunk_000000.npz"
    with np.load(chunk) as z:
        frames = z["frames"].copy()
    frames[17] = 255 - frames[17]
    np.savez_compressed(chunk, frames=frames)
    report = tmp_path / "report.json"
    r = run_play(f"replay={copy}", "check=true", f"report={report}", *SMALL)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "frame 17" in r.stdout and "Traceback" not in r.stderr
    rep = json.loads(report.read_text())
    assert not rep["passed"] and rep["first_below"]["frame"] == 17 and rep["frames_below"] == [17]
    assert (copy / "check_strip.png").exists()


def test_other_world_is_refused_unless_allowed(session: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s"
    shutil.copytree(session, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["world"] = "castle"
    (copy / "meta.json").write_text(json.dumps(meta))
    r = run_play(f"replay={copy}", "check=true", *SMALL)
    assert r.returncode == 2 and "world" in r.stderr and "castle" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_play(f"replay={copy}", "check=true", "allow_mismatch=true", *SMALL)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((copy / "check_report.json").read_text())
    assert rep["allow_mismatch"] and rep["mismatches"][0]["field"] == "world"


def test_other_config_version_is_refused(session: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s"
    shutil.copytree(session, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["config_version"] = 0
    (copy / "meta.json").write_text(json.dumps(meta))
    r = run_play(f"replay={copy}", *SMALL)
    assert r.returncode == 2 and "config_version" in r.stderr


def test_a_folder_of_sessions_is_a_suite(session: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        shutil.copytree(session, tmp_path / "suite" / name)
    bad = tmp_path / "suite" / "b" / "frames" / "chunk_000000.npz"
    with np.load(bad) as z:
        frames = z["frames"].copy()
    frames[5] //= 2
    np.savez_compressed(bad, frames=frames)
    r = run_play(f"replay={tmp_path / 'suite'}", "check=true", *SMALL)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 ok, 1 failed" in r.stdout


def test_a_recording_keeps_its_kernel_choices_and_a_replay_pins_them(tmp_path: Path) -> None:
    """The attention kernels a run chose by timing (env.info()["kernels_chosen"], growing as shapes appear) go to
    meta.json when the session closes, not to trace lines; a replay of a neural session pins them (the same
    kernels, the same frames on another GPU of the kind), unless the command line names its own."""
    from omegaconf import OmegaConf

    from controls.recorder import Recorder
    from controls.replay import replay_config
    rec = Recorder(tmp_path / "rec", fps=20, say=lambda m: None)
    frame = np.zeros((8, 8, 3), np.uint8)
    rec.start({"world": "maze", "seed": 0, "prompt": "", "config": {}}, frame, {"kernels_chosen": {"a": "x"}})
    rec.append(frame, np.zeros(8, np.float32), 1.0, {"kernels_chosen": {"a": "x", "b": "y"}, "cache_tokens": 3})
    path = rec.stop()
    ep = EpisodeReader(path)
    assert ep.meta["kernels_chosen"] == {"a": "x", "b": "y"}
    assert all("kernels_chosen" not in line for line in ep.trace) and ep.trace[1]["cache_tokens"] == 3

    cfg = OmegaConf.create({"seed": 0, "prompt": None, "device": "cpu", "engine": {"name": "model",
                                                                                   "kernel_choices": None}})
    meta = {"config": {"engine": {"name": "model", "kernel_choices": None}}, "seed": 1, "prompt": "p",
            "kernels_chosen": {"q256_kv16_d64_bfloat16": "sdpa_efficient"}}
    out, _, _ = replay_config(cfg, [], meta)
    assert out.engine.kernel_choices == {"q256_kv16_d64_bfloat16": "sdpa_efficient"}
    out, _, _ = replay_config(cfg, ["engine.kernel_choices=/tmp/k.json"], meta)
    assert out.engine.kernel_choices is None      # the command line's (this test's cfg stands for it)
    meta_sim = {"config": {"engine": {"name": "sim"}}, "seed": 1, "prompt": "p", "kernels_chosen": {}}
    out, _, _ = replay_config(OmegaConf.create({"seed": 0, "prompt": None, "engine": {"name": "sim"}}), [], meta_sim)
    assert "kernel_choices" not in out.engine
