"""Per-frame motion and collision of the maze player.

Motion per frame (the game runs at ~25 FPS):

    key / input        per frame                       notes
    turn_left/right    6.0 degrees exactly             60 frames = exactly 360 degrees
    mouse_dx = 1.0     15 degrees (positive = right)   scaled linearly in [-1, 1]
    forward / back     0.08 cell                       run: 0.16
    strafe left/right  0.06 cell                       run: 0.12; forward + strafe add as vectors

Why small steps: a video world model learns motion from consecutive frames; small per-frame changes keep
neighbouring frames similar enough to be predictable, and exact 6-degree turns make a full turn return the
identical view (a clean test of memory). Turning is applied before moving, so a frame with turn and forward
walks in the new direction.

Yaw is a float64 in degrees wrapped to [0, 360): adding 6.0 sixty times returns the exact starting value,
which radians could not. Collision: the player is a circle of radius 0.2; movement is resolved one axis at a
time against the circle's bounding square (which contains the circle, so the circle can never overlap a
wall), sliding along walls. A step moves at most 0.16 + 0.12 < 1 cell, and every cell the square enters is
checked, so no step can pass through a wall.
"""
from __future__ import annotations

import math

import numpy as np

TURN_DEG = 6.0          # per frame, turn keys
MOUSE_DEG = 15.0        # per frame at |mouse_dx| = 1
# degrees of yaw per unit of each action entry (engine.env layout: forward, back, strafe_left, strafe_right,
# turn_left, turn_right, run, mouse_dx): the world model's heading rotary integrates these (docs/MODEL.md)
HEADING_PER_ACTION = (0.0, 0.0, 0.0, 0.0, -TURN_DEG, TURN_DEG, 0.0, MOUSE_DEG)
WALK = 0.08             # cells per frame
STRAFE = 0.06
RUN_FACTOR = 2.0
RADIUS = 0.2            # player radius in cells
_EPS = 1e-6             # gap kept between the player square and a wall

Pose = tuple[float, float, float]   # (x, y, yaw_deg)


def wrap_yaw(yaw: float) -> float:
    """Wrap degrees to [0, 360) (Python's % can return 360.0 for tiny negatives; fold that to 0)."""
    y = float(yaw) % 360.0
    return 0.0 if y >= 360.0 else y


def _wall(walls: np.ndarray, cx: int, cy: int) -> bool:
    g = walls.shape[0]
    return not (0 <= cx < g and 0 <= cy < g) or bool(walls[cy, cx])


def square_free(walls: np.ndarray, x: float, y: float, r: float = RADIUS) -> bool:
    """True if the open square (x-r, x+r) x (y-r, y+r) touches no wall cell."""
    for cy in range(math.floor(y - r), math.ceil(y + r)):
        for cx in range(math.floor(x - r), math.ceil(x + r)):
            if _wall(walls, cx, cy):
                return False
    return True


def _move_axis(walls: np.ndarray, a: float, b: float, da: float, r: float, x_axis: bool) -> float:
    """Move coordinate `a` by `da` (the other coordinate is `b`), stopping short of the first wall column/row."""
    if da == 0.0:
        return a
    na = a + da
    lo, hi = math.floor(b - r), math.floor(b + r)       # rows (or columns) the square spans on the other axis

    def blocked(c: int) -> bool:
        return any(_wall(walls, c, o) if x_axis else _wall(walls, o, c) for o in range(lo, hi + 1))

    if da > 0:
        for c in range(math.floor(a + r) + 1, math.floor(na + r) + 1):
            if blocked(c):
                return max(a, c - r - _EPS)
    else:
        for c in range(math.floor(a - r) - 1, math.floor(na - r) - 1, -1):
            if blocked(c):
                return min(a, c + 1 + r + _EPS)
    return na


def controls(pose: Pose, action: np.ndarray) -> tuple[float, float, float]:
    """What one validated action (engine.env layout) asks of `pose`: (new yaw_deg, dx, dy) before walls."""
    x, y, yaw = pose
    fwd, back, sl, sr, tl, tr, run, mdx = (float(v) for v in action)
    yaw = wrap_yaw(yaw + TURN_DEG * (tr - tl) + MOUSE_DEG * mdx)
    mult = RUN_FACTOR if run > 0.5 else 1.0
    f = WALK * mult * (fwd - back)
    s = STRAFE * mult * (sr - sl)
    if f == 0.0 and s == 0.0:
        return yaw, 0.0, 0.0
    rad = math.radians(yaw)
    c, sn = math.cos(rad), math.sin(rad)
    # forward = (cos, sin); right = (-sin, cos) in this y-down frame (yaw grows clockwise seen from above)
    return yaw, c * f - sn * s, sn * f + c * s


def step_pose(walls: np.ndarray, pose: Pose, action: np.ndarray) -> Pose:
    """Apply one validated action (engine.env layout) to `pose`; returns the new (x, y, yaw_deg)."""
    x, y, _ = pose
    yaw, dx, dy = controls(pose, action)
    if dx == 0.0 and dy == 0.0:
        return x, y, yaw
    x = _move_axis(walls, x, y, dx, RADIUS, x_axis=True)
    y = _move_axis(walls, y, x, dy, RADIUS, x_axis=False)
    return x, y, yaw


def dead_reckon(pose: Pose, action: np.ndarray) -> Pose:
    """The pose the controls alone give, as if there were no walls: what an engine that sees only the actions
    can know of where the player is (engine/memory.py). Exact for turns; a step into a wall overshoots."""
    yaw, dx, dy = controls(pose, action)
    return pose[0] + dx, pose[1] + dy, yaw
