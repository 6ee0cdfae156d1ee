"""A real window under Xvfb: the maze, the HUD, a screenshot (skipped where Xvfb is not installed)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from engine.episode import EpisodeReader
from fake_env import headless_env, run_play


@pytest.fixture
def xvfb() -> Iterator[str]:
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not on PATH (apt-get install xvfb)")
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("Xvfb did not start")
    try:
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_window_with_hud_and_screenshot(xvfb: str, tmp_path: Path) -> None:
    shot, out = tmp_path / "window.png", tmp_path / "s"
    env = headless_env({"DISPLAY": xvfb})
    r = run_play("world=maze", "engine=sim", "world.sim.height=64", "world.sim.width=64", "controls.window.scale=4",
                 "autopilot=true", "frames=30", "record=true", f"out={out}", f"screenshot={shot}", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no display" not in r.stdout           # a real window, not the headless fallback
    import pygame

    img = pygame.surfarray.array3d(pygame.image.load(str(shot))).swapaxes(0, 1)   # (H, W, 3)
    ep = EpisodeReader(out)
    assert len(ep) == 30 and img.shape == (256, 256, 3)
    last = np.repeat(np.repeat(ep.frame(29), 4, 0), 4, 1)   # the last frame, scaled like the window
    assert np.array_equal(img[200:], last[200:])            # below the HUD: exactly the frame
    assert (img[4:40, 4:120] != last[4:40, 4:120]).any(axis=2).mean() > 0.5   # the HUD box over it
