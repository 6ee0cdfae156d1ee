"""The benchmark's action trace and its ground truth: what every attention mode is asked to play.

A trace is a fixed action sequence plus what the real simulator shows for it (true frames and poses). It comes
from the scripted explorer with a fixed seed, or from a recorded session (engine/episode.py). Either way the
simulator replays it from the same seed and prompt, so every mode, and the truth, see the same inputs.

Why a designed revisit segment: the quality a window cannot have is memory of a place it left. The explorer
revisits cells, but seldom at the exact same pose, so the trace also contains one revisit by construction:
at frame A turn (around, or sideways, or not: whichever way is free longest), walk straight ahead while the
way is free, spin a full turn there, wait if needed, turn around, walk the same steps back and turn back to
the first heading. Turns are exactly 6 degrees and the walk is
the same straight line, so the return frame B has the pose of frame A (to float rounding), and B - A exceeds
the number of frames a window mode holds. Revisit pairs are then found generically from the true poses
(`revisit_pairs`), so a session trace gets them too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.env import ACTION_DIM, Env, make_action

TURN_FRAMES = 30          # 30 x 6 degrees = exactly 180 degrees (worlds/maze/physics.py)
SPIN_FRAMES = 60          # exactly 360 degrees
MAX_WALK = 25             # steps walked away from A (0.08 cell each)


@dataclass
class Trace:
    """actions[i] produces frame i + 1; frame 0 is the reset frame. poses/truth cover frames 0..len(actions)."""
    actions: np.ndarray                    # float32 (T, ACTION_DIM)
    seed: int
    prompt: str
    source: str                            # "explorer" or the session directory
    poses: np.ndarray | None = None        # float64 (T + 1, 3): x, y, yaw_deg
    truth: np.ndarray | None = None        # uint8 (T + 1, H, W, 3)
    segment: dict[str, Any] | None = None  # the designed revisit: {"leave": A, "return": B, ...}
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.actions)


def _pose(sim: Env) -> tuple[float, float, float]:
    x, y, yaw = sim.info()["pose"]
    return float(x), float(y), float(yaw)


def _revisit_segment(sim: Any, pose: tuple[float, float, float], gap: int) -> list[np.ndarray]:
    """Actions that leave `pose` and come back to it exactly after more than `gap` frames (see module doc).

    Turn by a (180, 90, -90 or 0 degrees: whichever way has the longest free straight walk, 180 first on
    ties), walk k steps, spin 360, wait if needed, turn 180, walk the k steps back, turn by 180 - a: the turns
    add up to whole circles of exact 6-degree steps, so the yaw comes back exactly. The walk is planned with the
    world's own physics and stops before the first step a wall would block or bend (which would not reverse)."""
    from worlds.maze.physics import WALK, step_pose

    left, right, fwd = make_action(["turn_left"]), make_action(["turn_right"]), make_action(["forward"])

    def turn(deg: int) -> list[np.ndarray]:          # turn_left / turn_right: 6.0 degrees a frame, exactly
        return [left if deg > 0 else right] * (abs(deg) // 6)

    def walk(p: tuple[float, float, float]) -> int:
        k = 0
        while k < MAX_WALK:
            q = step_pose(sim.map.walls, p, fwd)
            if abs(math.hypot(q[0] - p[0], q[1] - p[1]) - WALK) > 1e-9:   # blocked or sliding: not reversible
                break
            p, k = q, k + 1
        return k

    def after(p: tuple[float, float, float], acts: list[np.ndarray]) -> tuple[float, float, float]:
        for a in acts:
            p = step_pose(sim.map.walls, p, a)
        return p

    a, k = max(((d, walk(after(pose, turn(d)))) for d in (180, 90, -90, 0)), key=lambda t: t[1])
    out = turn(a) + [fwd] * k + [left] * SPIN_FRAMES
    back = (180 - a + 180) % 360 - 180                 # a + 360 + 180 + back is a whole number of turns
    tail = turn(180) + [fwd] * k + turn(back)
    wait = max(0, gap + 1 - (len(out) + len(tail)))   # return frame - leave frame > gap
    return out + [make_action()] * wait + tail


def explorer_trace(sim: Any, seed: int, prompt: str, frames: int, explorer_seed: int, revisit: bool,
                   revisit_at: float, gap: int) -> Trace:
    """Play the scripted explorer for `frames` steps, with one designed revisit (leave at about
    `revisit_at` of the run, return after more than `gap` frames) when it fits in the run."""
    from worlds.maze.explorer import Explorer

    if not hasattr(sim, "map"):
        raise ValueError(f"trace.source=explorer needs the maze simulator (it plans on the map); "
                         f"{type(sim).__name__} has none: use trace.source=<session directory>")
    frames_out = [np.asarray(sim.reset(seed, prompt), np.uint8)]
    poses, actions = [_pose(sim)], []
    ex = Explorer(sim.map, explorer_seed)
    # Upper bound of the segment's length, to decide where it fits.
    seg_max = 2 * TURN_FRAMES + 2 * MAX_WALK + SPIN_FRAMES + max(0, gap + 1 - (2 * TURN_FRAMES + SPIN_FRAMES))
    leave = min(int(frames * revisit_at), frames - seg_max - 1) if revisit else -1
    notes: list[str] = []
    if revisit and leave < 1:
        notes.append(f"designed revisit skipped: {frames} frames cannot hold a segment of up to {seg_max} frames")
    segment: dict[str, Any] | None = None
    pending: list[np.ndarray] = []
    while len(actions) < frames:
        if len(actions) == leave and leave >= 1:
            pending = _revisit_segment(sim, poses[-1], gap)
            segment = {"leave": leave, "return": leave + len(pending), "gap": len(pending),
                       "pose": list(poses[-1])}
        a = pending.pop(0) if pending else ex.act(poses[-1])
        frames_out.append(np.asarray(sim.step(a), np.uint8))
        poses.append(_pose(sim))
        actions.append(a)
    if segment is not None:
        back = poses[segment["return"]]
        segment["pos_err"] = math.hypot(back[0] - segment["pose"][0], back[1] - segment["pose"][1])
        segment["yaw_err_deg"] = abs((back[2] - segment["pose"][2] + 180.0) % 360.0 - 180.0)
    return Trace(np.asarray(actions, np.float32).reshape(-1, ACTION_DIM), seed, prompt, "explorer",
                 np.asarray(poses), np.stack(frames_out), segment, notes)


def replay_truth(sim: Env, trace: Trace) -> Trace:
    """Fill in the true frames and poses of a trace by replaying it on the simulator (same seed, prompt)."""
    frames_out = [np.asarray(sim.reset(trace.seed, trace.prompt), np.uint8)]
    poses = [_pose(sim)] if "pose" in sim.info() else None
    for a in trace.actions:
        frames_out.append(np.asarray(sim.step(a), np.uint8))
        if poses is not None:
            poses.append(_pose(sim))
    trace.truth = np.stack(frames_out)
    trace.poses = np.asarray(poses) if poses is not None else None
    return trace


def session_trace(path: str, frames: int) -> Trace:
    """The actions, seed and prompt of a recorded session (its first `frames` steps)."""
    from engine.episode import EpisodeReader

    ep = EpisodeReader(path)
    acts = ep.actions()[1:frames + 1]                    # row 0 is the reset frame's (no action)
    notes = [] if len(acts) == frames else [f"session holds {len(acts)} steps, fewer than frames={frames}"]
    return Trace(acts, int(ep.meta["seed"]), str(ep.meta["prompt"]), str(path), notes=notes)


def revisit_pairs(poses: np.ndarray | None, min_gap: int, pos_tol: float, yaw_tol_deg: float,
                  max_pairs: int, must: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Frames (i, j), 1 <= i, j - i > min_gap, whose true poses match within pos_tol cells and yaw_tol_deg.

    For each return frame j the earliest matching i is kept (the longest memory); a j that stands still at
    the pose of j - 1 is the same revisit and is skipped. Frame 0 is left out: a bootstrapped env shows the
    true frame there, not a generated one. At most `max_pairs`, evenly spaced, always keeping `must`."""
    if poses is None or len(poses) < min_gap + 3:
        return [must] if must else []
    xy, yaw = poses[:, :2], poses[:, 2]
    found: list[tuple[int, int]] = []
    prev_hit = False
    for j in range(min_gap + 2, len(poses)):
        cand = np.arange(1, j - min_gap)
        near = np.hypot(*(xy[cand] - xy[j]).T) <= pos_tol
        dyaw = np.abs((yaw[cand] - yaw[j] + 180.0) % 360.0 - 180.0) <= yaw_tol_deg
        hit = np.flatnonzero(near & dyaw)
        still = bool(np.allclose(poses[j], poses[j - 1]))
        if hit.size and not (still and prev_hit):
            found.append((int(cand[hit[0]]), j))
        prev_hit = bool(hit.size)
    if len(found) > max_pairs:
        keep = np.linspace(0, len(found) - 1, max_pairs).round().astype(int)
        found = [found[k] for k in sorted(set(keep.tolist()))]
    if must and must not in found:
        found = sorted(found[:max(0, max_pairs - 1)] + [must], key=lambda p: p[1])
    return found
