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
                              self.prompts[s], self.names[s])
        return part(0, end, slice(0, cut)), part(end, self.num_frames, slice(cut, None))


def make_dataset(out: str | Path, episodes: int, frames: int, workers: int, seed: int = 0,
                 progress: bool = True) -> Path:
    """Render `episodes` maze episodes with the scripted explorer into `out` (skips complete ones)."""
    from worlds.maze.dataset import DatasetConfig, generate_dataset

    generate_dataset(DatasetConfig(out=str(out), episodes=episodes, frames=frames, workers=workers, seed=seed,
                                   progress=progress))
    return Path(out)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    r = EpisodeReader(path)
    return r.frames(), r.actions(), str(r.meta.get("prompt", ""))


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
    length = np.asarray([len(f) for f, _, _ in parts], np.int64)
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    frames = np.concatenate([f for f, _, _ in parts])
    actions = np.concatenate([a for _, a, _ in parts])
    return FrameStore(frames, actions, start, length, [p for _, _, p in parts], [str(p) for p in paths])
