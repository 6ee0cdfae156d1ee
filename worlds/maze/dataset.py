"""Training data: the scripted explorer playing the maze, written in the shared episode format.

    python -m worlds.maze.dataset out=data/maze episodes=64 frames=512 workers=2 seed=0

Config: conf/dataset/maze.yaml (every key is a hydra override). Episode i draws its map seed, explorer
seed and prompt (random_prompt, canonical) from PCG64([seed, i]), so any episode can be regenerated alone
and a dataset is reproducible bit for bit. Each worker runs `batch` episodes in lockstep and renders them in
one batched call. Episodes already complete in `out` are skipped (a cut run resumes where it stopped).

Output: out/ep_NNNNNN/ episode directories (engine.episode format: meta world="maze", prompt, seed = the
map seed to pass to MazeEnv.reset, plus a "generator" block; trace lines carry "pose" and "behaviour"),
and out/dataset.json with the config and the measured throughput.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.episode import EpisodeWriter
from worlds.maze.env import MazeEnv
from worlds.maze.explorer import Explorer
from worlds.maze.render import tune_malloc
from worlds.maze.style import canonical_prompt, random_prompt


@dataclass
class DatasetConfig:
    """Mirrors conf/dataset/maze.yaml."""
    out: str = "data/maze"
    episodes: int = 64
    frames: int = 512          # frames per episode, including the reset frame
    workers: int = 2           # processes; 0 or 1 runs in this process
    seed: int = 0
    height: int = 128
    width: int = 128
    grid_size: int = 24
    batch: int = 4             # episodes rendered together per worker
    prompt: str | None = None  # fixed prompt for every episode; None draws one per episode
    progress: bool = True


def episode_plan(cfg: DatasetConfig, index: int) -> dict[str, Any]:
    """What episode `index` is: map seed, explorer seed, canonical prompt (deterministic from cfg.seed)."""
    rng = np.random.Generator(np.random.PCG64([int(cfg.seed), int(index)]))
    map_seed = int(rng.integers(2 ** 31))
    explorer_seed = int(rng.integers(2 ** 31))
    prompt = canonical_prompt(cfg.prompt) if cfg.prompt else random_prompt(rng)
    return {"index": index, "map_seed": map_seed, "explorer_seed": explorer_seed, "prompt": prompt}


def episode_dir(out: str | Path, index: int) -> Path:
    return Path(out) / f"ep_{index:06d}"


def _is_complete(path: Path) -> bool:
    try:
        return bool(json.loads((path / "meta.json").read_text()).get("closed"))
    except (OSError, json.JSONDecodeError):
        return False


def _run_group(job: tuple[DatasetConfig, list[dict[str, Any]]]) -> tuple[int, int]:
    """Play and write a group of episodes in lockstep; returns (episodes, frames) written."""
    cfg, plans = job
    envs = [MazeEnv(cfg.height, cfg.width, cfg.grid_size) for _ in plans]
    renderer = envs[0].renderer
    writers, explorers = [], []
    for env, plan in zip(envs, plans):
        frame = env.reset(plan["map_seed"], plan["prompt"])
        assert env.map is not None
        explorers.append(Explorer(env.map, plan["explorer_seed"]))
        meta = {"world": "maze", "prompt": env.prompt, "seed": plan["map_seed"],
                "generator": {"name": "worlds.maze.dataset", "explorer": "worlds.maze.explorer.Explorer",
                              "explorer_seed": plan["explorer_seed"], "episode_index": plan["index"],
                              "dataset_seed": cfg.seed, "grid_size": cfg.grid_size, "fps": env.spec.fps}}
        path = episode_dir(cfg.out, plan["index"])
        if path.exists() and not _is_complete(path):   # a cut-short earlier attempt: start it again
            import shutil
            shutil.rmtree(path)
        w = EpisodeWriter(path, meta, cfg.height, cfg.width)
        w.append(frame, None, pose=env.info()["pose"], behaviour="reset")
        writers.append(w)
    for _ in range(cfg.frames - 1):
        actions = []
        for env, ex in zip(envs, explorers):
            a = ex.act(env.pose)
            env.move(a)
            actions.append(a)
        frames = renderer.render([e.assets for e in envs], np.asarray([e.pose for e in envs], np.float64))
        for w, env, ex, a, f in zip(writers, envs, explorers, actions, frames):
            w.append(f, a, pose=[float(v) for v in env.pose], behaviour=ex.mode)
    for w, ex in zip(writers, explorers):
        w.close(explorer_stats=ex.stats)
    return len(plans), len(plans) * cfg.frames


def _init_worker() -> None:
    tune_malloc()


def generate_dataset(cfg: DatasetConfig) -> dict[str, Any]:
    """Write cfg.episodes episodes to cfg.out; returns stats (frames written, seconds, frames/s)."""
    for name in ("episodes", "frames", "batch", "height", "width"):
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"dataset config: {name} must be >= 1, got {getattr(cfg, name)!r}")
    if cfg.prompt:
        canonical_prompt(cfg.prompt)   # fail early, listing the vocabulary
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [episode_plan(cfg, i) for i in range(cfg.episodes) if not _is_complete(episode_dir(out, i))]
    groups = [todo[i:i + cfg.batch] for i in range(0, len(todo), cfg.batch)]
    # Spread groups evenly over workers: shrink the batch when there are fewer episodes than worker x batch.
    if cfg.workers > 1 and len(groups) < cfg.workers and len(todo) > 1:
        per = -(-len(todo) // cfg.workers)
        groups = [todo[i:i + per] for i in range(0, len(todo), per)]
    from tqdm import tqdm
    bar = tqdm(total=len(todo) * cfg.frames, unit="frame", disable=not cfg.progress, desc=f"maze -> {out}")
    t0 = time.perf_counter()
    written = 0
    jobs = [(cfg, g) for g in groups]
    if cfg.workers <= 1:
        _init_worker()
        for job in jobs:
            _, n = _run_group(job)
            written += n
            bar.update(n)
    else:
        with mp.get_context("spawn").Pool(cfg.workers, initializer=_init_worker) as pool:
            for _, n in pool.imap_unordered(_run_group, jobs):
                written += n
                bar.update(n)
    bar.close()
    secs = time.perf_counter() - t0
    stats = {"episodes_written": len(todo), "episodes_skipped": cfg.episodes - len(todo), "frames": written,
             "seconds": round(secs, 3), "frames_per_s": round(written / secs, 1) if secs > 0 else None}
    (out / "dataset.json").write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=1))
    return stats


def _main() -> None:
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path="../../conf/dataset", config_name="maze")
    def run(cfg: Any) -> None:
        c = DatasetConfig(**OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        stats = generate_dataset(c)
        print(json.dumps(stats))

    run()


if __name__ == "__main__":
    _main()
