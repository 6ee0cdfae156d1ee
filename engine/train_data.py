"""Trainer phase 1: make (or find) a dataset of episodes and hold all of it in RAM.

Why RAM and not a streaming loader: the maze at 128x128 is 48 KiB a frame, so 250k frames are 12 GiB, which
the GPU box (128 GiB) holds easily; random access to any frame of any episode then costs nothing, which the
long-gap clips need, and the frames are encoded to latents once (phase 3) instead of every epoch.
"""
from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.episode import EpisodeReader, iter_episodes


@dataclass
class FrameStore:
    """Every episode's frames back to back. Episode e is rows [start[e], start[e] + length[e])."""
    frames: np.ndarray      # uint8 (F, H, W, 3)
    actions: np.ndarray     # float32 (F, 8): row i is the action that produced frame i (zeros at episode starts)
    start: np.ndarray       # int64 (E,)
    length: np.ndarray      # int64 (E,)
    prompts: list[str]      # (E,) canonical prompts
    names: list[str]        # (E,) episode directories
    poses: np.ndarray | None = None  # float64 (F, 3) true (x, y, yaw_deg) where every episode has them, else None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def split(self, holdout: int) -> tuple["FrameStore", "FrameStore"]:
        """(train, held-out): the last `holdout` episodes are kept for previews and validation."""
        holdout = min(holdout, len(self.start) - 1) if len(self.start) > 1 else 0
        cut = len(self.start) - holdout
        end = int(self.start[cut]) if holdout else self.num_frames

        def part(a: int, b: int, s: slice) -> FrameStore:
            return FrameStore(self.frames[a:b], self.actions[a:b], self.start[s] - a, self.length[s],
                              self.prompts[s], self.names[s], None if self.poses is None else self.poses[a:b])
        return part(0, end, slice(0, cut)), part(end, self.num_frames, slice(cut, None))


def make_dataset(out: str | Path, episodes: int, frames: int, workers: int, seed: int = 0,
                 progress: bool = True) -> Path:
    """Render `episodes` maze episodes with the scripted explorer into `out` (skips complete ones)."""
    from worlds.maze.dataset import DatasetConfig, generate_dataset

    generate_dataset(DatasetConfig(out=str(out), episodes=episodes, frames=frames, workers=workers, seed=seed,
                                   progress=progress))
    return Path(out)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None]:
    r = EpisodeReader(path)
    return r.frames(), r.actions(), str(r.meta.get("prompt", "")), r.poses()


def load_store(root: str | Path, workers: int = 1, max_episodes: int | None = None) -> FrameStore:
    """Read every episode under `root` into one FrameStore (decompression in `workers` processes)."""
    paths = list(iter_episodes(root))[:max_episodes]
    if not paths:
        raise FileNotFoundError(f"{root}: no episodes (directories with meta.json); make data first with "
                                f"`python -m worlds.maze.dataset out={root}` or set data.make=true")
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_read, paths)
    else:
        parts = [_read(p) for p in paths]
    length = np.asarray([len(f) for f, _, _, _ in parts], np.int64)
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    frames = np.concatenate([f for f, _, _, _ in parts])
    actions = np.concatenate([a for _, a, _, _ in parts])
    poses = None if any(q is None for *_, q in parts) else np.concatenate([q for *_, q in parts])
    return FrameStore(frames, actions, start, length, [p for _, _, p, _ in parts], [str(p) for p in paths], poses)


def revisit_pairs(store: FrameStore, min_gap: int, pos_tol: float, yaw_tol_deg: float) -> np.ndarray:
    """int64 (P, 3) rows (episode, i, j): frame j (>= i + min_gap) of an episode sees the place frame i saw
    (position within pos_tol cells, yaw within yaw_tol_deg). Training clips built around such pairs
    (revisit_clip) are the signal that teaches the model to look far back in its context and redraw what it
    saw there, which the evaluation's revisit row and play need; contiguous clips almost never contain one."""
    if store.poses is None:
        raise ValueError(f"revisit clips need true poses in every episode's trace ('pose' on each line); "
                         f"{len(store.names)} episodes under {Path(store.names[0]).parent if store.names else '?'} "
                         f"lack them: set dit.revisit_prob=0 or train on simulator episodes")
    out = []
    for e, (s0, n) in enumerate(zip(store.start, store.length)):
        p = store.poses[s0:s0 + n]                                              # (n, 3)
        d = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])
        dyaw = np.abs((p[:, None, 2] - p[None, :, 2] + 180.0) % 360.0 - 180.0)
        k = np.arange(n)
        i, j = np.nonzero((d < pos_tol) & (dyaw < yaw_tol_deg) & (k[None, :] - k[:, None] >= min_gap))
        out.append(np.stack([np.full_like(i, e), i, j], 1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 3), np.int64)


def revisit_clip(n: int, T: int, i: int, j: int, lead: float = 0.75, contiguous: bool = False) -> np.ndarray:
    """Frame indices (T,), increasing, within [0, n), containing i and j (i < j): a first half around i,
    then a second half in which `lead` of the frames before the end lead up to j (0.75, the default: 11 of
    16, then j and 4 more; 0: the second half opens with j, so the returning view has no recent frames that
    show it and can only come from far back). Halves that would overlap become one contiguous clip around j.
    contiguous (needs j - i < T): every frame from i to j, with a quarter of the spare frames before i and the
    rest after j. Why: the cut between two halves drops the actions that carry the view from i to j, so the
    model cannot tell that j is a return; a whole spin (60 frames) in a 64-frame clip keeps them, and its
    last frames show edges last seen 50-60 frames back, beyond the 32-frame window."""
    if contiguous:
        spare = T - (j - i + 1)
        if spare < 0:
            raise ValueError(f"a contiguous revisit clip of {T} frames cannot hold frames {i} and {j}")
        s = min(max(0, i - spare // 4), n - T)
        return np.arange(s, s + T)
    h = T // 2
    before = int(round(lead * (T - h - 1)))                # second-half frames before j
    tail = T - h - 1 - before                               # and after it
    a0 = min(max(0, i - h // 2), n - h)                   # [a0, a0 + h) holds i
    b0 = min(max(0, j + tail + 1 - (T - h)), n - (T - h))  # [b0, b0 + T - h) holds j
    if b0 < a0 + h:
        s = min(max(0, j + tail + 1 - T), n - T)
        return np.arange(s, s + T)
    return np.concatenate([np.arange(a0, a0 + h), np.arange(b0, b0 + T - h)])
