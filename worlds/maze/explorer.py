"""A scripted explorer that plays the maze roughly like a person, for training data.

Why these behaviours: a world model learns what it sees. Walking corridors teaches forward motion and
parallax; turning in place (including full 360-degree turns) and smooth mouse sweeps teach rotation; backing
up and strafing cover the other keys; pauses teach that nothing changes without input; and coming back to
places seen a while ago (revisits) is the only way a model can learn to keep the world consistent over time.

The explorer reads the true pose (it has the map), plans on the grid with BFS and steers toward cell
centres. It is deterministic from its seed: same map, seed and pose sequence give the same actions.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from engine.env import ACTION_DIM, validate_action
from worlds.maze.map import MazeMap
from worlds.maze.physics import Pose

# behaviour -> weight when choosing what to do next
BEHAVIOURS: dict[str, float] = {
    "explore": 0.34,     # walk to a new place
    "revisit": 0.20,     # walk back to a cell visited a while ago
    "spin": 0.12,        # a full 360-degree turn in place (keys, exact)
    "look": 0.12,        # smooth mouse sweep left and right
    "pause": 0.07,       # stand still
    "backup": 0.07,      # walk backwards
    "strafe": 0.08,      # side-step (sometimes while walking)
}
REVISIT_AFTER = 80       # frames: a cell seen at least this long ago may be revisited


def _wrap180(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


def _act(keys: tuple[int, ...] = (), mouse: float = 0.0) -> np.ndarray:
    a = np.zeros(ACTION_DIM, np.float32)
    for k in keys:
        a[k] = 1.0
    a[7] = np.float32(max(-1.0, min(1.0, mouse)))
    return a


FWD, BACK, SL, SR, TL, TR, RUN = range(7)


class Explorer:
    """Call `act(pose)` once per frame with the current true pose; returns a valid float32 (8,) action.

    `mode` names the behaviour that produced the last action; `stats` counts behaviours started and
    completed revisits, spins and so on (tests and dataset metadata use them)."""

    def __init__(self, m: MazeMap, seed: int) -> None:
        self.map = m
        self.rng = np.random.Generator(np.random.PCG64([int(seed), 7]))
        self.pose: Pose = (0.0, 0.0, 0.0)
        self.frame = 0
        self.mode = "start"
        self.visited: dict[tuple[int, int], int] = {}     # cell -> last frame the player was in it
        self.stats: dict[str, int] = {name: 0 for name in BEHAVIOURS} | {"revisits_done": 0, "spins_done": 0}
        self._plan: Iterator[np.ndarray] | None = None
        names = list(BEHAVIOURS)
        w = np.asarray([BEHAVIOURS[n] for n in names])
        self._names, self._weights = names, w / w.sum()

    # ------------------------------------------------------------------ driver
    def act(self, pose: Pose) -> np.ndarray:
        self.pose = pose
        cell = (int(math.floor(pose[0])), int(math.floor(pose[1])))
        self.visited[cell] = self.frame
        self.frame += 1
        for _ in range(20):
            if self._plan is None:
                self._plan = self._choose()
            try:
                return validate_action(next(self._plan), "explorer action")
            except StopIteration:
                self._plan = None
        self.mode = "pause"
        return _act()

    def _choose(self) -> Iterator[np.ndarray]:
        name = str(self._names[int(self.rng.choice(len(self._names), p=self._weights))])
        if name == "revisit" and not self._old_cells():
            name = "explore"
        self.mode = name
        self.stats[name] += 1
        return getattr(self, "_" + name)()

    # ------------------------------------------------------------------ helpers
    @property
    def cell(self) -> tuple[int, int]:
        return int(math.floor(self.pose[0])), int(math.floor(self.pose[1]))

    def _old_cells(self) -> list[tuple[int, int]]:
        return [c for c, f in self.visited.items() if self.frame - f >= REVISIT_AFTER]

    def _goto(self, goal: tuple[int, int], label: str) -> Iterator[np.ndarray]:
        """Follow the BFS path to `goal`, turning toward each next cell centre; keys or mouse per trip."""
        path = self.map.path(self.cell, goal)
        if len(path) < 2:
            return
        use_mouse = self.rng.random() < 0.4
        run = self.rng.random() < 0.3
        budget = 25 * len(path) + 60
        best, stall = math.inf, 0
        i = 1
        for _ in range(budget):
            x, y, yaw = self.pose
            while i < len(path) - 1 and math.hypot(path[i][0] + 0.5 - x, path[i][1] + 0.5 - y) < 0.35:
                i += 1
                best, stall = math.inf, 0                   # progress is measured toward the new waypoint
            tx, ty = path[i][0] + 0.5, path[i][1] + 0.5
            dist = math.hypot(tx - x, ty - y)
            if i == len(path) - 1 and dist < 0.3:
                if label == "revisit":
                    self.stats["revisits_done"] += 1
                return
            err = _wrap180(math.degrees(math.atan2(ty - y, tx - x)) - yaw)
            if dist < best - 0.02:
                best, stall = dist, 0
            else:
                stall += 1
                if stall > 45:                              # stuck on a corner: back off and give up
                    for _ in range(int(self.rng.integers(4, 10))):
                        yield _act((BACK,))
                    return
            if abs(err) > 35.0:                             # turn in place first, like a person would
                if use_mouse:
                    yield _act(mouse=max(-1.0, min(1.0, err / 30.0)))
                else:
                    yield _act((TR,) if err > 0 else (TL,))
                continue
            keys: list[int] = [FWD]
            if run and dist > 0.6:
                keys.append(RUN)
            mouse = 0.0
            if use_mouse:
                mouse = max(-0.6, min(0.6, err / 20.0)) if abs(err) > 1.5 else 0.0
            elif abs(err) > 5.0:
                keys.append(TR if err > 0 else TL)
            yield _act(tuple(keys), mouse)
        return

    # ------------------------------------------------------------------ behaviours
    def _explore(self) -> Iterator[np.ndarray]:
        dist = self.map.bfs(self.cell)
        ok = np.argwhere((dist >= 3) & (dist <= 10))
        if len(ok) == 0:
            ok = np.argwhere(dist >= 1)
        if len(ok) == 0:
            return
        # Prefer cells not visited yet: that is what exploring means.
        fresh = [tuple(int(v) for v in c[::-1]) for c in ok if (int(c[1]), int(c[0])) not in self.visited]
        pool = fresh if fresh and self.rng.random() < 0.8 else [tuple(int(v) for v in c[::-1]) for c in ok]
        goal = pool[int(self.rng.integers(len(pool)))]
        yield from self._goto(goal, "explore")  # type: ignore[arg-type]

    def _revisit(self) -> Iterator[np.ndarray]:
        old = self._old_cells()
        if not old:
            return
        # Favour the oldest memories: those are the hard ones for a world model to keep.
        old.sort(key=lambda c: self.visited[c])
        goal = old[int(self.rng.integers(max(1, len(old) // 2)))]
        yield from self._goto(goal, "revisit")

    def _spin(self) -> Iterator[np.ndarray]:
        key = TL if self.rng.random() < 0.5 else TR
        for _ in range(60):                                   # 60 x 6 degrees = exactly 360
            yield _act((key,))
        self.stats["spins_done"] += 1

    def _look(self) -> Iterator[np.ndarray]:
        n = int(self.rng.integers(16, 48))
        amp = float(self.rng.uniform(0.2, 0.7))
        sign = 1.0 if self.rng.random() < 0.5 else -1.0
        for t in range(n):                                    # one smooth left-right sweep
            yield _act(mouse=sign * amp * math.sin(2.0 * math.pi * (t + 0.5) / n))

    def _pause(self) -> Iterator[np.ndarray]:
        for _ in range(int(self.rng.integers(4, 25))):
            yield _act()

    def _backup(self) -> Iterator[np.ndarray]:
        turn = int(self.rng.choice([-1, 0, 0, 1]))
        for _ in range(int(self.rng.integers(5, 20))):
            keys = (BACK,) + ((TL,) if turn < 0 else (TR,) if turn > 0 else ())
            yield _act(keys)

    def _strafe(self) -> Iterator[np.ndarray]:
        key = SL if self.rng.random() < 0.5 else SR
        fwd = self.rng.random() < 0.4
        for _ in range(int(self.rng.integers(5, 20))):
            yield _act((key, FWD) if fwd else (key,))
