"""Profile one stream of NeuralEnv.step on this machine: where a frame's time goes.

    python tools/profile_step.py --attention dense --frames 60

Prints ms/frame for the whole step, then separately for the denoising passes, the commit pass and the decode
(each synchronised), then torch.profiler's top operators by device and by host time over a few frames.
Exploration tool for speed work; the benchmark (engine.bench) is what reports numbers.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.world_model import NeuralEnv
from worlds.maze.env import MazeEnv
from worlds.maze.explorer import Explorer


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _ms(fn, dev: torch.device, n: int) -> float:
    _sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(dev)
    return (time.perf_counter() - t) * 1e3 / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--attention", default="dense")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=1_000_003)
    a = p.parse_args()
    sim = MazeEnv()
    env = NeuralEnv(device=a.device, attention=a.attention, steps=a.steps, bootstrap=MazeEnv())
    dev = env.device
    sim.reset(a.seed, "brick day")
    env.reset(a.seed, "brick day")
    assert sim.map is not None
    ex = Explorer(sim.map, a.seed)
    acts = []
    for _ in range(a.frames + 40):
        acts.append(ex.act(sim.pose))
        sim.step(acts[-1])
    it = iter(acts)
    for _ in range(10):                                   # warm-up: kernel choice, allocator
        env.step(next(it))
    step_ms = _ms(lambda: env.step(next(it)), dev, a.frames)
    act = torch.as_tensor(acts[0][None])
    s = env.sampler
    sample_ms = _ms(lambda: s.sample(act), dev, 10)
    z = s.sample(act)
    commit_ms = _ms(lambda: s.commit(z, act), dev, 10)
    decode_ms = _ms(lambda: env.model.decode(z), dev, 10)
    print(f"device {dev} attention {a.attention} steps {a.steps} cache frames ~{s.frame}")
    print(f"step {step_ms:.2f} ms/frame ({1e3 / step_ms:.1f} fps) | sample({a.steps} passes) {sample_ms:.2f} | "
          f"commit pass {commit_ms:.2f} | decode {decode_ms:.2f}")
    acts_prof = [np.asarray(x) for x in acts[-5:]]
    kinds = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=kinds) as prof:
        for x in acts_prof:
            env.step(x)
        _sync(dev)
    if dev.type == "cuda":
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=22, max_name_column_width=60))


if __name__ == "__main__":
    main()
