"""A tiny deterministic env implementing engine.env.Env, for front-end tests that need no real world.

Frames are a pure function of the pose (x, y, yaw) and the prompt, so replays are bit-exact. With
`modes` it plays a neural model's part too: attention modes, KV cache and checkpoint facts in info().
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from engine.env import Action, EnvSpec, Frame, validate_action


class FakeEnv:
    def __init__(self, height: int = 24, width: int = 32, fps: float = 20.0, delay_ms: float = 0.0,
                 modes: tuple[str, ...] | list[str] = (), checkpoint_sha256: str | None = None,
                 world: str = "fake", default_prompt: str = "a fake world") -> None:
        self.spec = EnvSpec(world=world, height=height, width=width, fps=fps)
        self.delay_ms = delay_ms
        self._modes = tuple(modes)
        self._mode = self._modes[0] if self._modes else None
        self.sha = checkpoint_sha256
        self.pose = np.zeros(3)
        self.t = 0
        self.tint = 0

    def reset(self, seed: int, prompt: str) -> Frame:
        rng = np.random.default_rng(seed)
        self.pose = np.array([rng.uniform(0, 8), rng.uniform(0, 8), rng.uniform(0, 360)])
        self.tint = sum(prompt.encode()) % 64
        self.t = 0
        return self._render()

    def step(self, action: Action) -> Frame:
        a = validate_action(action)
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000.0)
        speed = 0.2 * (2.0 if a[6] else 1.0)
        yaw = self.pose[2] + 6.0 * (a[5] - a[4]) + 10.0 * a[7]
        r = math.radians(yaw)
        fwd, side = a[0] - a[1], a[3] - a[2]
        self.pose = np.array([self.pose[0] + speed * (fwd * math.cos(r) - side * math.sin(r)),
                              self.pose[1] + speed * (fwd * math.sin(r) + side * math.cos(r)), yaw % 360.0])
        self.t += 1
        return self._render()

    def _render(self) -> Frame:
        h, w = self.spec.height, self.spec.width
        yy, xx = np.mgrid[0:h, 0:w]
        x, y, yaw = self.pose
        f = np.empty((h, w, 3), np.uint8)
        f[..., 0] = (xx * 5 + x * 20 + yaw) % 256
        f[..., 1] = (yy * 7 + y * 20 + self.tint) % 256
        f[..., 2] = ((xx + yy) * 3 + yaw * 2) % 256
        return f

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pose": [round(float(v), 6) for v in self.pose]}
        if self._modes:
            out.update(attention_mode=self._mode, mode_stats={"density": 0.25, "recall": 0.99},
                       cache_tokens=16 * (self.t + 1),
                       cache_mib=round(0.01 * (self.t + 1), 3), checkpoint_sha256=self.sha)
        return out

    @property
    def attention_modes(self) -> tuple[str, ...]:
        return self._modes

    def set_attention(self, mode: str) -> None:
        if mode not in self._modes:
            raise ValueError(f"unknown attention mode {mode!r}")
        self._mode = mode


# ---------------------------------------------------------------- helpers shared by tests/test_play_*.py
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAKE = [f"hydra.searchpath=[file://{REPO}/tests/conf]", "world=fake", "engine=sim"]   # the fake world has no model
SMALL = ["controls.window.scale=1", "controls.window.video_scale=1"]


def headless_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a play.py subprocess with no display at all."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    # the repository first, then whatever the parent had (a GPU machine's carried wheels live on PYTHONPATH)
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
               **(extra or {}))
    return env


def run_play(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python play.py ARGS` from the repository root, output captured."""
    return subprocess.run([sys.executable, "play.py", *args], cwd=REPO, env=env or headless_env(),
                          capture_output=True, text=True, timeout=timeout)
