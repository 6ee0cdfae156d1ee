"""Keyboard and mouse to the action layout of engine/env.py, driven by config (conf/controls/default.yaml).

Movement keys are *held* state (read from pygame.key.get_pressed() when an action is taken), the mouse is
*accumulated* relative motion since the last action, so a slow generator still sees every pixel the mouse
moved, scaled by `mouse.sensitivity` and clamped to mouse_dx in [-1, 1]. The mouse only counts while it is
captured (relative mode, after a click); Esc releases it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from controls.errors import UsageError
from engine.env import KEY_NAMES, MOUSE_DX, Action, validate_action


def _default_keys() -> dict[str, list[str]]:
    return {"forward": ["w", "up"], "back": ["s", "down"], "strafe_left": ["a"], "strafe_right": ["d"],
            "turn_left": ["left", "q"], "turn_right": ["right", "e"], "run": ["left shift", "right shift"]}


def _default_hotkeys() -> dict[str, list[str]]:
    return {"pause": ["p"], "step": ["n"], "reset": ["backspace"], "record": ["r"], "screenshot": ["f12"],
            "hud": ["h"], "help": ["tab", "/"], "quit": ["escape"]}


@dataclass
class MouseConfig:
    sensitivity: float = 0.02   # mouse_dx per pixel of horizontal motion (1.0 = the world's largest turn)
    invert: bool = False


@dataclass
class KeymapConfig:
    """Action key name (engine.env.KEY_NAMES) -> pygame key names; hotkey name -> pygame key names."""
    keys: dict[str, list[str]] = field(default_factory=_default_keys)
    hotkeys: dict[str, list[str]] = field(default_factory=_default_hotkeys)
    attention: list[str] = field(default_factory=lambda: ["f1", "f2", "f3", "f4"])  # env.attention_modes[i]
    mouse: MouseConfig = field(default_factory=MouseConfig)


HOTKEYS = tuple(_default_hotkeys())


def _codes(names: list[str], where: str) -> list[int]:
    import pygame

    out = []
    for n in names:
        try:
            out.append(pygame.key.key_code(n))
        except ValueError:
            raise UsageError(f"{where}: unknown key name {n!r} (use pygame key names: 'w', 'left shift', "
                             f"'up', 'f12'...)") from None
    return out


class Keymap:
    """Compiled keymap: pygame key codes per action key and per hotkey, plus the mouse accumulator."""

    def __init__(self, cfg: KeymapConfig) -> None:
        unknown = [k for k in cfg.keys if k not in KEY_NAMES]
        if unknown:
            raise UsageError(f"controls.keymap.keys: unknown action key name(s) {unknown}; "
                             f"expected names from {list(KEY_NAMES)}")
        bad = [k for k in cfg.hotkeys if k not in HOTKEYS]
        if bad:
            raise UsageError(f"controls.keymap.hotkeys: unknown hotkey(s) {bad}; expected {list(HOTKEYS)}")
        self.keys = {k: _codes(v, f"controls.keymap.keys.{k}") for k, v in cfg.keys.items()}
        self.hotkeys = {code: name for name, v in cfg.hotkeys.items()
                        for code in _codes(v, f"controls.keymap.hotkeys.{name}")}
        self.attention = {code: i for i, code in enumerate(_codes(cfg.attention, "controls.keymap.attention"))}
        self.sensitivity = float(cfg.mouse.sensitivity) * (-1.0 if cfg.mouse.invert else 1.0)
        self._mouse_px = 0.0

    def add_mouse(self, dx_pixels: float) -> None:
        """Accumulate captured relative motion until the next action is taken."""
        self._mouse_px += dx_pixels

    def action(self, pressed: "object") -> Action:
        """The action for the next frame: held keys from `pressed` (pygame.key.get_pressed()) and the mouse
        motion since the last call (which this call consumes)."""
        a = np.zeros(len(KEY_NAMES) + 1, np.float32)
        for name, codes in self.keys.items():
            if any(pressed[c] for c in codes):
                a[KEY_NAMES.index(name)] = 1.0
        a[MOUSE_DX] = float(np.clip(self._mouse_px * self.sensitivity, -1.0, 1.0))
        self._mouse_px = 0.0
        return validate_action(a)
