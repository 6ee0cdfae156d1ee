"""Controllability alone, on any device (the evaluation's check, engine/evaluate.py `controllability`):

    python tools/control_probe.py --device cpu --starts 4 --out docs/results/controllability_cpu/bundle.json
    python tools/control_probe.py --checkpoint runs/base9/export --device cpu --out ...

Each key and mouse direction is held for --frames frames from --starts known views of unseen episodes, in
dense mode, against the simulator and against repeating the last true frame. Prints a table (mean over the
starts, the margin over copy, the starts where the model is below copy) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from engine.evaluate import controllability, controllability_pass, direction_pass
from engine.world_model import NeuralEnv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="export folder (default: the bundled weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=None, help="JSON file to write")
    a = ap.parse_args()
    if a.starts < 1 or a.frames < 1 or a.context < 1:
        ap.error(f"--starts, --frames and --context must be >= 1, got {a.starts}, {a.frames}, {a.context}")
    env = NeuralEnv(checkpoint=a.checkpoint, device=a.device, steps=a.steps)
    t0 = time.time()
    res = controllability(env, a.starts, a.context, a.frames)
    print(f"{'action':<13} {'model dB':>9} {'copy dB':>8} {'margin':>7}  {'starts below copy':<18} direction (starts)")
    for name, r in res.items():
        below = [i for i, (g, c) in enumerate(zip(r["per_start_psnr_db"], r["per_start_copy_psnr_db"])) if g <= c]
        print(f"{name:<13} {r['psnr_db']:9.2f} {r['copy_psnr_db']:8.2f} {r['margin_db']:+7.2f}  "
              f"{str(below or '-'):<18} {r['direction_agrees']} ({r['direction_starts']}), "
              f"x{r['motion_ratio']} of the truth's motion")
    ok, moves = controllability_pass(res), direction_pass(res)
    print(f"every action above copy: {ok}; every action moves the view the truth's way: {moves}  "
          f"({time.time() - t0:.0f} s, {env.device}, {torch.get_num_threads()} threads)")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"checkpoint": a.checkpoint or "bundled", "sha256": env.checkpoint_sha256,
                                           "device": str(env.device), "starts": a.starts, "frames": a.frames,
                                           "context": a.context, "steps": a.steps, "pass": ok, "direction_pass": moves,
                                           "controllability": res}, indent=1))


if __name__ == "__main__":
    main()
