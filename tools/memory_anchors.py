"""Where would the spatial memory (engine/memory.py) anchor on an explorer trace, and are those true revisits?

Model-free: runs the memory's pose bookkeeping over the actions of the evaluation's long-rollout trace (an
unseen map, engine/evaluate.py Truth) with each frame's index as its "latent", and compares the simulator's
true poses of each anchored frame and its source. Seconds on a CPU.

    python tools/memory_anchors.py --episode 4 --frames 3000     # the evaluation's stability trace
    python tools/memory_anchors.py --bench --frames 3000         # the benchmark's trace and its revisit pairs

With --bench the trace is the benchmark's (conf/bench.yaml's defaults through engine.bench.trace_and_pairs: the
explorer with its designed revisit, and the revisit pairs the benchmark scores), and the output
adds, over the benchmark's revisit pairs (i, j), how many return frames j the memory anchors, and how many of
those to i itself or to a frame that truly shows i's pose: what the memory can do for the revisit column.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from engine.evaluate import Truth
from engine.memory import MemoryConfig, SpatialMemory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episode", type=int, default=4, help="Truth(k): 4 is the evaluation's stability trace")
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--memory", default="{}", help="MemoryConfig fields as JSON (enabled is implied)")
    p.add_argument("--bench", action="store_true", help="the benchmark's trace instead of an evaluation episode")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    pairs: list[tuple[int, int]] = []
    if a.bench:
        actions, poses, pairs = _bench_trace(a.frames)
    else:
        e = Truth(a.episode, 1)
        poses = [e.env.pose]
        for i in range(1, a.frames + 1):
            e.extend(i + 1)
            poses.append(e.env.pose)
            e.frames[i] = None   # type: ignore[call-overload]  # only the poses are needed
        actions = e.actions
    cfg = MemoryConfig.build({**json.loads(a.memory), "enabled": True})
    mem = SpatialMemory(cfg, "maze", (1, 1, 1), torch.device("cpu"), torch.float32)
    mem.commit(actions[0], torch.zeros(1, 1, 1, 1), 0)
    hits: list[tuple[int, int]] = []                     # (frame, the frame it starts from)
    for k in range(1, a.frames + 1):
        z = mem.anchor(actions[k], k)
        if z is not None:
            hits.append((k, int(z.item())))
        mem.commit(actions[k], torch.full((1, 1, 1, 1), float(k)), k)
    dist = np.array([math.hypot(poses[k][0] - poses[j][0], poses[k][1] - poses[j][1]) for k, j in hits])
    dyaw = np.array([abs((poses[k][2] - poses[j][2] + 180) % 360 - 180) for k, j in hits])
    x0, y0, _ = poses[0]
    true_end = (poses[-1][0] - x0, poses[-1][1] - y0)
    res = {"trace": "bench" if a.bench else f"episode {a.episode}", "frames": a.frames, "memory": cfg.__dict__,
           "anchored": len(hits),
           "anchored_per_100": np.bincount([k // 100 for k, _ in hits], minlength=(a.frames + 99) // 100).tolist(),
           "true_distance_median": round(float(np.median(dist)), 4) if hits else None,
           "share_beyond_0.3_cells": round(float(np.mean(dist > 0.3)), 3) if hits else None,
           "true_yaw_diff_median_deg": round(float(np.median(dyaw)), 2) if hits else None,
           "gap_median": float(np.median([k - j for k, j in hits])) if hits else None,
           "reckoning_error_at_end_cells": round(math.hypot(mem.pose[0] - true_end[0], mem.pose[1] - true_end[1]), 3)}
    if a.bench:
        src = dict(hits)
        on_pair = [(i, j, src[j]) for i, j in pairs if j in src]
        true_src = [math.hypot(poses[j][0] - poses[s_][0], poses[j][1] - poses[s_][1]) <= 0.05
                    and abs((poses[j][2] - poses[s_][2] + 180) % 360 - 180) <= 3.0 for _, j, s_ in on_pair]
        res["bench_pairs"] = len(pairs)
        res["bench_pairs_anchored"] = len(on_pair)
        res["bench_pairs_anchored_to_i"] = sum(s_ == i for i, _, s_ in on_pair)
        res["bench_pairs_anchored_to_a_true_view"] = int(sum(true_src))
    print(json.dumps(res))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


def _bench_trace(frames: int) -> tuple[list[np.ndarray], list[tuple[float, float, float]], list[tuple[int, int]]]:
    """The benchmark's default trace (conf/bench.yaml, engine.bench.trace_and_pairs): actions with a zero action
    for the reset frame first (as Truth has them), true poses of frames 0..frames, and its revisit pairs."""
    from engine.bench import load_config, mode_configs, trace_and_pairs
    cfg = load_config([f"frames={frames}"])
    tr, pairs, _, _ = trace_and_pairs(cfg, mode_configs(cfg))
    assert tr.poses is not None
    actions = [np.zeros_like(tr.actions[0]), *tr.actions]
    return actions, [tuple(p) for p in tr.poses], pairs


if __name__ == "__main__":
    main()
