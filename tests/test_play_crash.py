"""Crash safety: Ctrl-C, a hard kill and a full disk all leave a readable session."""
from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.episode import EpisodeReader
from fake_env import FAKE, REPO, SMALL, headless_env

SLOW = ["+world.sim.delay_ms=5", "frames=100000"]


def _start_recording(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "play.py", *FAKE, *SMALL, *SLOW, "headless=true", f"out={out}"],
                            cwd=REPO, env=headless_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(out: Path, n: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        trace = out / "trace.jsonl"
        if trace.exists() and trace.read_text().count("\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {n} trace lines in {timeout}s")


def test_sigint_closes_the_session_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = _start_recording(out)
    _wait_for_lines(out, 80, proc)          # past the first 64-frame chunk
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and str(out) in stdout
    ep = EpisodeReader(out)
    lines = (out / "trace.jsonl").read_text().count("\n")
    assert not ep.truncated and len(ep) == lines == ep.meta["frames"] >= 80
    import cv2

    cap = cv2.VideoCapture(str(out / "video.mp4"))   # finalised: it opens and holds every frame
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(ep)


def test_hard_kill_leaves_every_complete_frame(tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = _start_recording(out)
    _wait_for_lines(out, 70, proc)
    proc.kill()
    proc.communicate(timeout=30)
    ep = EpisodeReader(out)
    assert ep.truncated and len(ep) >= 70 and ep.frames().shape[0] == len(ep)
    # the cut session still replays and checks as far as it goes
    r = subprocess.run([sys.executable, "play.py", *SMALL, f"replay={out}", "check=true"], cwd=REPO,
                       env=headless_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_full_disk_stops_the_recording_and_keeps_what_was_written(tmp_path: Path, monkeypatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    from engine import episode

    real_append = episode.EpisodeWriter.append

    def append(self, frame, action, **fields):  # the disk fills up at frame 30
        if self.frames == 30:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, frame, action, **fields)

    monkeypatch.setattr(episode.EpisodeWriter, "append", append)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.chdir(REPO)
    import play

    out = tmp_path / "s"
    code = play.main([*FAKE, *SMALL, "headless=true", "frames=50", f"out={out}"])
    captured = capsys.readouterr()
    assert code == 1
    assert "recording stopped" in captured.out and "No space left" in captured.out
    ep = EpisodeReader(out)
    assert len(ep) == 30 and ep.meta["closed"]
