"""Streaming training clips from a folder of episodes (engine.episode format: datasets and recorded sessions).

    ds = ClipDataset("data/maze", clip_len=16, seed=0, gap_prob=0.25)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    for batch in loader: batch["frames"]  # uint8 (B, T, H, W, 3); the model converts to float itself

A clip is a dict:
    frames       uint8 (T, H, W, 3)
    actions      float32 (T, 8)   row t is the action that produced frame t (zeros for an episode's frame 0)
    poses        float64 (T, 3)   true (x, y, yaw_deg) where the episode has them, else NaN
    frame_index  int64 (T,)       frame numbers in the episode: consecutive, or with one jump for a gap clip
    prompt       str              the episode's prompt (canonical for datasets written by worlds/*/dataset.py)
    episode      str              the episode directory

Long-gap clips (probability `gap_prob`): the first T - gap_tail frames are consecutive, then gap_tail
consecutive frames from at least `min_gap` frames later in the same episode. Why: teaching a model to stay
consistent with what it saw long ago needs examples where the past is far back; frame_index tells the model
how far. Actions between the two parts are not in the clip (the model sees the jump through frame_index).

Order: the clip list is shuffled by (seed, epoch) (call set_epoch each epoch) and dealt round-robin over
`rank`/`world_size` (distributed processes) and DataLoader workers, so every clip goes to exactly one shard.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from engine.env import ACTION_DIM
from engine.episode import EpisodeReader, iter_episodes

try:  # torch is a dependency, but keep this importable (and testable) without it
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError:  # pragma: no cover
    IterableDataset = object  # type: ignore[misc,assignment]

    def get_worker_info() -> None:  # type: ignore[misc]
        return None


def _episode_length(path: Path) -> int:
    """Frames in an episode; from meta.json when it was closed cleanly (cheap), else by reading it."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("closed") and isinstance(meta.get("frames"), int):
            return int(meta["frames"])
    except (OSError, json.JSONDecodeError):
        pass
    return len(EpisodeReader(path))


class ClipDataset(IterableDataset):  # type: ignore[misc]
    """Clips of `clip_len` frames from every episode under `root`, in a seeded shuffled order."""

    def __init__(self, root: str | Path, clip_len: int = 16, stride: int | None = None, seed: int = 0,
                 shuffle: bool = True, gap_prob: float = 0.0, gap_tail: int = 4, min_gap: int = 32,
                 max_gap: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        if clip_len < 1:
            raise ValueError(f"clip_len: expected >= 1, got {clip_len}")
        if not 0.0 <= gap_prob <= 1.0:
            raise ValueError(f"gap_prob: expected a probability in [0, 1], got {gap_prob}")
        if gap_prob > 0 and not 1 <= gap_tail < clip_len:
            raise ValueError(f"gap_tail: expected 1 <= gap_tail < clip_len ({clip_len}), got {gap_tail}")
        if min_gap < 1 or (max_gap is not None and max_gap < min_gap):
            raise ValueError(f"min_gap/max_gap: expected 1 <= min_gap <= max_gap, got {min_gap}/{max_gap}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size ({world_size}), got {rank}")
        self.root = Path(root)
        self.clip_len, self.stride = clip_len, stride or clip_len
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.gap_prob, self.gap_tail, self.min_gap, self.max_gap = gap_prob, gap_tail, min_gap, max_gap
        self.rank, self.world_size = rank, world_size
        self.episodes = list(iter_episodes(self.root))
        if not self.episodes:
            raise ValueError(f"{self.root}: no episodes found (expected directories with meta.json)")
        self.lengths = [_episode_length(p) for p in self.episodes]
        # (episode number, start frame) of every clip
        self.items: list[tuple[int, int]] = [
            (e, s) for e, n in enumerate(self.lengths) for s in range(0, n - clip_len + 1, self.stride)]

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch (same seed and epoch give the same order)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Clips per epoch over all shards."""
        return len(self.items)

    def _order(self) -> list[int]:
        order = np.arange(len(self.items))
        if self.shuffle:
            np.random.Generator(np.random.PCG64([self.seed, self.epoch])).shuffle(order)
        worker = get_worker_info()
        n_workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        shard, n_shards = self.rank * n_workers + worker_id, self.world_size * n_workers
        return [int(i) for i in order[shard::n_shards]]

    def _indices(self, item: int, n: int, start: int) -> np.ndarray:
        """Frame numbers of clip `item`: consecutive, or head + far tail for a gap clip."""
        t = self.clip_len
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch, item]))
        if self.gap_prob > 0 and rng.random() < self.gap_prob:
            head = t - self.gap_tail
            last_head = start + head - 1
            hi = n - self.gap_tail - last_head          # largest possible gap (tail start - last head frame)
            if self.max_gap is not None:
                hi = min(hi, self.max_gap)
            if hi >= self.min_gap:
                gap = int(rng.integers(self.min_gap, hi + 1))
                tail0 = last_head + gap
                return np.concatenate([np.arange(start, start + head), np.arange(tail0, tail0 + self.gap_tail)])
        return np.arange(start, start + t)

    def clip(self, item: int, reader: EpisodeReader | None = None) -> dict[str, Any]:
        """Clip number `item` (in self.items order) for the current epoch."""
        e, start = self.items[item]
        reader = reader or EpisodeReader(self.episodes[e])
        idx = self._indices(item, len(reader), start)
        frames = np.stack([reader.frame(int(i)) for i in idx])                       # (T, H, W, 3) uint8
        actions = np.zeros((len(idx), ACTION_DIM), np.float32)
        for j, i in enumerate(idx):
            if i > 0:
                actions[j] = reader.trace[int(i)]["action"]
        poses = np.full((len(idx), 3), np.nan)
        for j, i in enumerate(idx):
            p = reader.trace[int(i)].get("pose")
            if p is not None:
                poses[j] = p
        return {"frames": frames, "actions": actions, "poses": poses, "frame_index": idx.astype(np.int64),
                "prompt": str(reader.meta.get("prompt", "")), "episode": str(self.episodes[e])}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        reader: EpisodeReader | None = None
        for item in self._order():
            e = self.items[item][0]
            if reader is None or reader.path != self.episodes[e]:
                reader = EpisodeReader(self.episodes[e])
            yield self.clip(item, reader)
