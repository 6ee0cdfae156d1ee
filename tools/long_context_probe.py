"""Does the model freeze with long context, and does length-scaled attention help? (an experiment, CPU or GPU)

The 3000-frame benchmark showed dense and TempCache rollouts freezing into a static texture well before frame
300, while the window mode (never more than 33 frames of context) keeps moving (docs/BENCHMARKS.md). One
explanation: training clips hold at most 16-32 frames, so at frame 300 each query spreads its softmax over ten
times more keys than it ever did in training, and the attention output flattens. If so, multiplying the logits
by log(L) / log(L_train) (L keys attended, L_train the training context; "log-n" scaling, which keeps the
attention entropy from growing with L) should delay the freeze.

    python tools/long_context_probe.py --frames 300 --mode dense                  # baseline
    python tools/long_context_probe.py --frames 300 --mode dense --log-scale 16   # logits x log(L)/log(16 x 256)
    python tools/long_context_probe.py --frames 400 --mode dense --fp32           # float32 on a GPU
    python tools/long_context_probe.py --frames 400 --mode window --window 128    # how much context holds?

Prints, every `--every` frames: PSNR against the true maze, and the motion (mean absolute difference between
consecutive frames, 0-255) of the model's frames and of the truth: a frozen rollout has motion near 0 while the
truth keeps moving. Writes the series as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from engine.attention import kernels
from engine.bench_trace import explorer_trace
from engine.metrics import psnr
from engine.world_model import NeuralEnv, _default_params, merge_params
from worlds.maze.env import MazeEnv


def log_scaled(train_keys: int):  # type: ignore[no-untyped-def]
    """kernels.attention with its softmax scale multiplied by max(1, log(L) / log(train_keys))."""
    plain = kernels.attention

    def attention(q, k, v, bias=None, scale=None):  # type: ignore[no-untyped-def]
        base = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        factor = max(1.0, math.log(max(k.shape[2], 2)) / math.log(train_keys))
        return plain(q, k, v, bias=bias, scale=base * factor)
    return attention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--mode", default="dense")
    p.add_argument("--log-scale", type=int, default=0, help="training context in frames (0: no scaling)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--out", default=None)
    p.add_argument("--fp32", action="store_true", help="keep the model in float32 on a GPU (bf16 is the default)")
    p.add_argument("--window", type=int, default=0, help="with --mode window: the window in frames (1 sink)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled one)")
    p.add_argument("--params", default="{}", help='JSON merged into conf/attention/<mode>.yaml params, e.g. '
                   '\'{"tempcache": {"capacity_frames": 16}}\'')
    a = p.parse_args()
    attention: str | dict = {"name": a.mode, **merge_params(_default_params(a.mode), json.loads(a.params))}
    if a.window:
        if a.mode != "window":
            raise SystemExit("--window N needs --mode window")
        attention = {"name": "window", "sinks": 1, "window": a.window}
    env = NeuralEnv(checkpoint=a.checkpoint, device=a.device, attention=attention, bootstrap=MazeEnv(),
                    bf16=False if a.fp32 else None)
    if a.log_scale:
        if a.mode != "dense":
            raise SystemExit("--log-scale is wired for --mode dense (its calls go through kernels.attention)")
        kernels.attention = log_scaled(a.log_scale * env.sampler.N)
    sim = MazeEnv()
    trace = explorer_trace(sim, a.seed, "", a.frames, 0, False, 0.5, 33)
    assert trace.truth is not None
    env.reset(trace.seed, trace.prompt)
    prev, prev_t = trace.truth[0], trace.truth[0]
    rows = []
    acc = {"psnr": [], "motion": [], "motion_truth": []}
    t0 = time.perf_counter()
    for i, act in enumerate(trace.actions, start=1):
        f = env.step(act)
        acc["psnr"].append(min(psnr(f, trace.truth[i]), 100.0))
        acc["motion"].append(float(np.abs(f.astype(np.int16) - prev.astype(np.int16)).mean()))
        acc["motion_truth"].append(float(np.abs(trace.truth[i].astype(np.int16) - prev_t.astype(np.int16)).mean()))
        prev, prev_t = f, trace.truth[i]
        if i % a.every == 0:
            row = {"frame": i, **{k: round(float(np.mean(v[-a.every:])), 2) for k, v in acc.items()}}
            st = env.sampler.mode.stats()
            if "merged_share" in st:   # TempCache modes: share of groups holding > 1 key, per layer
                row["merged_share_by_layer"] = [round(st["layers"][str(j)].get("merged_share", 0.0), 4)
                                                for j in range(len(st["layers"]))]
            rows.append(row)
            print(f"frames {i - a.every + 1:4d}-{i:4d}: PSNR {row['psnr']:5.2f} dB   motion {row['motion']:5.2f} "
                  f"(truth {row['motion_truth']:5.2f})   {time.perf_counter() - t0:6.0f} s"
                  + (f"   merged groups per layer {row['merged_share_by_layer']}" if "merged_share_by_layer" in row
                     else ""), flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"args": vars(a), "device": str(env.device), "checkpoint": env.checkpoint_sha256,
                       "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
