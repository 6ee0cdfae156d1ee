"""Spatial memory: start a frame from the latent of a frame seen before at the same pose (SDEdit from memory).

Why: the network alone does not copy a view back from 60 frames earlier, even with the exact view in its
dense cache (docs/MODEL.md, "Memory on run 16"): a full turn in place redraws the second turn at ~18 dB
against the first. What the engine does know is the pose the actions imply: every action is the player's
input, and a world's controls say how far each one turns and moves (worlds/<world>/physics.py `dead_reckon`).
So the engine keeps, per committed frame, its dead-reckoned pose and its clean latent, and when the frame to
be generated lands (within a tolerance) on a pose it holds from at least `min_gap` frames ago, the sampler
starts that frame at noise level sigma_k of its schedule from (1 - sigma_k) x stored latent + sigma_k x noise
instead of from pure noise (the noise is the frame's usual draw, so the rollout stays repeatable) and runs the
remaining steps. The network still draws the frame from its context and action; the memory only fixes its
starting point, the way SDEdit edits an image from a noised guide. Measured on the revisit test with run 17:
17.9 dB without it (H100), 19.4 starting at sigma 0.9, 22.8 at 0.75, 27.2 at 0.5 (CPU; 27.4 on the H100;
docs/MODEL.md, "Spatial memory").

What it is not: the attention's memory. It works the same under every attention mode and is reported beside,
never inside, the attention comparisons (engine.bench runs with it off unless told).

Limits, and why they are acceptable:
- dead reckoning ignores walls, so after the player pushes into one the reckoned position runs ahead of the
  true one; turns are exact. A wrong anchor costs the frame's start, not the rollout: the remaining steps
  still denoise toward what the context and action say.
- the store is bounded (`capacity` frames, preallocated, so memory is flat from the first frame): a new frame
  at a pose already held replaces that entry (the newest view of a place wins, as TempCache keeps the newest
  key of a group); when full, the oldest entry goes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Pose = tuple[float, float, float]   # (x, y, yaw_deg), the world's units


@dataclass(frozen=True)
class MemoryConfig:
    """conf/engine/model.yaml `memory` (NeuralEnv(memory=...)); enabled false: the sampler never anchors."""
    enabled: bool = False
    step: int = 3            # start at this step of the sampler's schedule (4 steps, shift 3: 1: 0.9, 2: 0.75, 3: 0.5)
    yaw_tol: float = 3.0     # degrees: a pose within this of the new frame's counts (turn keys move 6 a frame)
    pos_tol: float = 0.05    # world units (maze cells; walking moves 0.08 a frame)
    min_gap: int = 16        # only frames at least this many frames old: recent ones the attention has anyway
    capacity: int = 2048     # stored frames (latents on the device, preallocated)

    @staticmethod
    def build(node: "MemoryConfig | dict | bool | None") -> "MemoryConfig":
        if node is None or node is False:
            return MemoryConfig()
        if node is True:
            return MemoryConfig(enabled=True)
        if isinstance(node, MemoryConfig):
            return node
        known = set(MemoryConfig.__dataclass_fields__)
        bad = sorted(set(node) - known)
        if bad:
            raise ValueError(f"engine.memory: unknown field(s) {bad}; expected some of {sorted(known)}")
        cfg = MemoryConfig(**dict(node))
        if cfg.capacity < 1 or cfg.min_gap < 1 or cfg.yaw_tol < 0 or cfg.pos_tol < 0:
            raise ValueError(f"engine.memory: capacity and min_gap must be >= 1, tolerances >= 0; got {cfg}")
        return cfg


def world_dead_reckon(world: str) -> Callable[[Pose, np.ndarray], Pose]:
    """worlds/<world>/physics.py `dead_reckon(pose, action) -> pose`; ValueError naming the file if absent."""
    try:
        return importlib.import_module(f"worlds.{world}.physics").dead_reckon
    except (ImportError, AttributeError) as e:
        raise ValueError(f"engine.memory: world {world!r} defines no dead_reckon(pose, action) in "
                         f"worlds/{world}/physics.py ({e}); the spatial memory needs the world's controls, "
                         f"or set engine.memory.enabled=false") from e


class SpatialMemory:
    """Dead-reckoned pose + clean latent per committed frame (one stream); anchor() finds the new frame's."""

    def __init__(self, cfg: MemoryConfig, world: str, latent_shape: tuple[int, int, int],
                 device: torch.device, dtype: torch.dtype) -> None:
        self.cfg = cfg
        self.reckon = world_dead_reckon(world)
        slots = cfg.capacity if cfg.enabled else 0               # off: no store (16 MiB at the defaults in bf16)
        self.latents = torch.zeros((slots, *latent_shape), dtype=dtype, device=device)   # (S, C, h, w)
        self.poses = np.zeros((slots, 3), np.float64)            # (S, 3) x, y, yaw_deg
        self.frames = np.full(slots, -1, np.int64)               # (S,) frame index held, -1 empty
        self.pose: Pose = (0.0, 0.0, 0.0)
        self.hits = 0                                            # frames anchored since reset

    def reset(self) -> None:
        self.frames.fill(-1)
        self.pose = (0.0, 0.0, 0.0)   # every episode starts at the origin: only differences matter
        self.hits = 0

    def _near(self, pose: Pose, before: int) -> np.ndarray:
        """Slots holding a frame < `before` within the tolerances of `pose`, nearest first."""
        ok = (self.frames >= 0) & (self.frames < before)
        dyaw = np.abs((self.poses[:, 2] - pose[2] + 180.0) % 360.0 - 180.0)
        dpos = np.hypot(self.poses[:, 0] - pose[0], self.poses[:, 1] - pose[1])
        ok &= (dyaw <= self.cfg.yaw_tol) & (dpos <= self.cfg.pos_tol)
        idx = np.flatnonzero(ok)
        # nearest pose first (each tolerance counts as one unit), then the newest frame
        score = dyaw[idx] / max(self.cfg.yaw_tol, 1e-9) + dpos[idx] / max(self.cfg.pos_tol, 1e-9)
        return idx[np.lexsort((-self.frames[idx], score))]

    def anchor(self, action: np.ndarray, frame: int) -> torch.Tensor | None:
        """The stored latent (1, C, h, w) to start frame `frame` from, made by `action`, or None. Host only."""
        if not self.cfg.enabled:
            return None
        near = self._near(self.reckon(self.pose, action), frame - self.cfg.min_gap + 1)
        if near.size == 0:
            return None
        self.hits += 1
        return self.latents[int(near[0])][None]

    def commit(self, action: np.ndarray, latent: torch.Tensor, frame: int) -> None:
        """Frame `frame` (latent (1, C, h, w), normalised) was committed after `action`: advance the pose, store it."""
        self.pose = self.reckon(self.pose, action)
        if not self.cfg.enabled:
            return
        same = self._near(self.pose, frame + 1)
        if same.size:                                 # a pose already held: the newest view replaces it
            slot = int(same[0])
        elif (self.frames < 0).any():
            slot = int(np.flatnonzero(self.frames < 0)[0])
        else:                                         # full: the oldest entry goes
            slot = int(np.argmin(self.frames))
        self.latents[slot].copy_(latent[0])
        self.poses[slot] = self.pose
        self.frames[slot] = frame

    def stats(self) -> dict[str, float | int]:
        return {"held": int((self.frames >= 0).sum()), "anchored": self.hits}
