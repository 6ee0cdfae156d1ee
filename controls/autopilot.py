"""A seeded scripted player: drives headless runs, demos and tests without knowing anything about the world.

It only uses the action layout: it holds a random combination of movement keys for a random number of
frames, sometimes turns with a key or sweeps the mouse, sometimes runs, sometimes stands still. The whole
sequence is a function of the seed (numpy's PCG64), so `headless=true` sessions are reproducible and a
recorded session can be checked against a fresh run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.env import ACTION_DIM, KEY_NAMES, MOUSE_DX, Action, validate_action


@dataclass
class AutopilotConfig:
    min_hold: int = 4          # frames a key combination is held, at least
    max_hold: int = 30         # ... and at most
    p_forward: float = 0.6     # chance a segment walks forward
    p_turn: float = 0.35       # chance a segment turns with a key
    p_mouse: float = 0.35      # chance a segment sweeps the mouse
    p_strafe: float = 0.2
    p_run: float = 0.25
    p_idle: float = 0.05       # chance a segment stands still


class Autopilot:
    """`next_action()` once per generated frame; deterministic from `seed`."""

    def __init__(self, seed: int, cfg: AutopilotConfig | None = None) -> None:
        self.cfg = cfg or AutopilotConfig()
        self.rng = np.random.default_rng(seed)
        self._left = 0
        self._keys: list[str] = []
        self._mouse = 0.0

    def _new_segment(self) -> None:
        c, r = self.cfg, self.rng
        self._left = int(r.integers(c.min_hold, c.max_hold + 1))
        keys: list[str] = []
        self._mouse = 0.0
        if r.random() >= c.p_idle:
            if r.random() < c.p_forward:
                keys.append("forward")
            elif r.random() < 0.3:
                keys.append("back")
            if r.random() < c.p_strafe:
                keys.append(str(r.choice(["strafe_left", "strafe_right"])))
            if r.random() < c.p_turn:
                keys.append(str(r.choice(["turn_left", "turn_right"])))
            elif r.random() < c.p_mouse:
                self._mouse = float(r.uniform(-1.0, 1.0))
            if keys and r.random() < c.p_run:
                keys.append("run")
        self._keys = keys

    def next_action(self) -> Action:
        if self._left <= 0:
            self._new_segment()
        self._left -= 1
        a = np.zeros(ACTION_DIM, np.float32)
        for k in self._keys:
            a[KEY_NAMES.index(k)] = 1.0
        # a little jitter on the mouse sweep, like a hand
        if self._mouse:
            a[MOUSE_DX] = float(np.clip(self._mouse + self.rng.normal(0.0, 0.05), -1.0, 1.0))
        return validate_action(a)
