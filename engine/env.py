"""The env interface every engine implements, and the one action layout they all share.

The real maze simulator (worlds/maze) and the neural world model (engine/world_model.py) both implement
`Env`; the front end (play.py), the recorder and replayer (controls/), the trainer, the benchmark and the
evaluation talk to either through this interface alone.

Action layout (one float32 vector per frame, `ACTION_DIM` = 8 entries):

    index  name          values      meaning
    0      forward       0 or 1      walk forward
    1      back          0 or 1      walk backward
    2      strafe_left   0 or 1      step left without turning
    3      strafe_right  0 or 1      step right without turning
    4      turn_left     0 or 1      turn left in place
    5      turn_right    0 or 1      turn right
    6      run           0 or 1      doubles walking and strafing speed
    7      mouse_dx      [-1, 1]     horizontal mouse motion this frame, as a share of the world's largest
                                     mouse turn per frame (positive turns right)

The first seven entries are keys (multi-hot: several may be pressed at once); the last is continuous. There is
no pitch: the view stays level, which keeps the world easier to learn. How far one frame of each key moves or
turns is the world's choice and is documented beside it (worlds/maze/README.md for the maze).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

KEY_NAMES: tuple[str, ...] = ("forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right", "run")
ACTION_NAMES: tuple[str, ...] = KEY_NAMES + ("mouse_dx",)
NUM_KEYS: int = len(KEY_NAMES)
ACTION_DIM: int = len(ACTION_NAMES)
MOUSE_DX: int = ACTION_NAMES.index("mouse_dx")

Frame = np.ndarray  # uint8 (H, W, 3), RGB
Action = np.ndarray  # float32 (ACTION_DIM,)


class ActionError(ValueError):
    """An action vector that does not follow the layout above."""


def validate_action(action: Any, where: str = "action") -> Action:
    """Return `action` as a float32 (ACTION_DIM,) vector, or raise ActionError saying what is wrong.

    `where` names the source in the message (for example "trace.jsonl line 12"), so a bad trace line is
    reported where it stands.
    """
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ActionError(f"{where}: expected {ACTION_DIM} numbers {list(ACTION_NAMES)}, got {action!r} ({e})")
    if a.shape != (ACTION_DIM,):
        raise ActionError(f"{where}: expected a vector of length {ACTION_DIM} {list(ACTION_NAMES)}, "
                          f"got shape {a.shape}")
    bad = [ACTION_NAMES[i] for i in range(ACTION_DIM) if not math.isfinite(a[i])]
    if bad:
        raise ActionError(f"{where}: non-finite value in {bad}")
    for i in range(NUM_KEYS):
        if a[i] not in (0.0, 1.0):
            raise ActionError(f"{where}: key '{KEY_NAMES[i]}' must be 0 or 1, got {a[i]!r}")
    if not -1.0 <= a[MOUSE_DX] <= 1.0:
        raise ActionError(f"{where}: mouse_dx must be in [-1, 1], got {a[MOUSE_DX]!r}")
    return a.astype(np.float32)


def make_action(keys: Sequence[str] = (), mouse_dx: float = 0.0) -> Action:
    """Build an action from key names (see KEY_NAMES) and a mouse motion; unknown names are an error."""
    a = np.zeros(ACTION_DIM, dtype=np.float32)
    for k in keys:
        if k not in KEY_NAMES:
            raise ActionError(f"unknown key name {k!r}; expected one of {list(KEY_NAMES)}")
        a[KEY_NAMES.index(k)] = 1.0
    a[MOUSE_DX] = mouse_dx
    return validate_action(a)


def action_keys(action: Action) -> list[str]:
    """The names of the keys pressed in `action`."""
    return [KEY_NAMES[i] for i in range(NUM_KEYS) if action[i] > 0.5]


@dataclass(frozen=True)
class EnvSpec:
    """What a front end needs to know about an env before the first frame."""
    world: str          # world name, e.g. "maze"; sessions from another world are refused on replay
    height: int         # frame height in pixels
    width: int          # frame width in pixels
    fps: float          # the game rate the per-frame motion is tuned for (the front end's default target)


@runtime_checkable
class Env(Protocol):
    """A world that answers actions with frames, one frame at a time.

    Determinism contract: the same seed, prompt and action sequence give the same frames (bit-exact for the
    simulator; for the neural model on the same device, dtype and attention mode).
    """

    spec: EnvSpec

    def reset(self, seed: int, prompt: str) -> Frame:
        """Start a new episode in the world made from `seed`, styled by `prompt`; return its first frame."""
        ...

    def step(self, action: Action) -> Frame:
        """Apply one action (the layout above; validated) and return the next frame, uint8 (H, W, 3)."""
        ...

    def info(self) -> dict[str, Any]:
        """Per-frame facts for the HUD and the recorder, JSON-serialisable: e.g. the true pose for the
        simulator; cache tokens/MiB, attention mode, density and recall for the neural model."""
        ...

    @property
    def attention_modes(self) -> tuple[str, ...]:
        """Attention modes this env can switch between at run time (empty for the simulator)."""
        ...

    def set_attention(self, mode: str) -> None:
        """Switch the attention mode without restarting the episode (ValueError for an unknown mode)."""
        ...
