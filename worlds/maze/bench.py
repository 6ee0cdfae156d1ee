"""Measure maze throughput and write docs/results/maze_throughput.json.

    python -m worlds.maze.bench [--out docs/results/maze_throughput.json] [--episodes 8] [--frames 512]

Measures: MazeEnv.step frames/s (one env, physics + render, as play.py uses it), batched Renderer.render
frames/s for several batch sizes (with the malloc tuning the dataset workers use), and end-to-end dataset
generation frames/s (explorer + physics + render + compressed episode writing) with 2 workers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.env import make_action
from worlds.maze.dataset import DatasetConfig, generate_dataset
from worlds.maze.env import MazeEnv
from worlds.maze.render import tune_malloc


def _env_fps(n: int = 600) -> float:
    env = MazeEnv()
    env.reset(0, "brick checker red day clear")
    acts = [make_action(["forward"]), make_action(["turn_left"]), make_action(["forward", "strafe_left"]),
            make_action([], mouse_dx=0.5)]
    for i in range(20):
        env.step(acts[i % 4])
    t = time.perf_counter()
    for i in range(n):
        env.step(acts[(i // 10) % 4])
    return n / (time.perf_counter() - t)


def _batched_fps(batch: int, frames: int = 512) -> float:
    envs = [MazeEnv() for _ in range(batch)]
    for i, e in enumerate(envs):
        e.reset(i, "stone cobble orange dusk haze")
    r = envs[0].renderer
    assets = [e.assets for e in envs]
    poses = np.asarray([e.pose for e in envs])
    r.render(assets, poses)
    steps = max(2, frames // batch)
    t = time.perf_counter()
    for _ in range(steps):
        r.render(assets, poses)
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description="maze throughput benchmark")
    ap.add_argument("--out", default="docs/results/maze_throughput.json")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--frames", type=int, default=512)
    args = ap.parse_args()
    res: dict = {
        "command": "python -m worlds.maze.bench " + f"--episodes {args.episodes} --frames {args.frames}",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "frame_size": [128, 128],
    }
    res["env_step_fps_single"] = round(_env_fps(), 1)            # default malloc, as in play.py
    tuned = tune_malloc()
    res["malloc_tuned"] = tuned
    res["env_step_fps_single_tuned"] = round(_env_fps(), 1)
    res["render_fps_batched"] = {str(b): round(_batched_fps(b), 1) for b in (1, 4, 8, 16)}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DatasetConfig(out=str(Path(tmp) / "ds"), episodes=args.episodes, frames=args.frames, workers=2,
                            seed=0, batch=4, progress=False)
        stats = generate_dataset(cfg)
        size = sum(f.stat().st_size for f in Path(cfg.out).rglob("*") if f.is_file())
    res["dataset"] = {"command": f"python -m worlds.maze.dataset out=... episodes={args.episodes} "
                                 f"frames={args.frames} workers=2 seed=0 batch=4",
                      **stats, "bytes_per_frame": round(size / max(1, stats["frames"]), 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
