"""Where does a long rollout freeze, and does a temporal decay on chosen heads prevent it? (an experiment)

Runs the evaluation's stability rollout (engine/evaluate.py `_stability`: one true frame of unseen episode 4,
then the explorer's actions for `--frames` frames) in one attention mode, printing each 100-frame chunk as it
is done, so a run cut short by a time limit still says how far it held. With `--decay` the slopes replace the
checkpoint's own at inference (Sampler.set_decay), as in tools/recall_probe.py: e.g. run 11 trained with 0.1
on heads 0-3 and none on its two heading heads, which are time-free and so, over thousands of frames, spread
their softmax over every frame seen from a similar heading; a small slope there bounds that crowd.

    python tools/stability_probe.py --checkpoint runs/base11/export --frames 2000
    python tools/stability_probe.py --checkpoint runs/base11/export --decay 0.1,0.1,0.1,0.1,0.01,0.01

A chunk is `collapsed` by the evaluation's rule (colour std, motion or layout far below the truth's).
Writes the chunks and the first collapsed one as JSON (--out), rewritten after every chunk. With --sheets DIR,
every flagged chunk and the chunk before it are saved as PNG contact sheets (every 10th frame, generated above,
true below), to see what a flagged chunk is: a fade, a frozen view, or a wall the open-loop actions walk into.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.evaluate import EvalConfig, _stability
from engine.world_model import NeuralEnv, _default_params, merge_params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="export folder (default: the bundled weights)")
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--mode", default="dense")
    p.add_argument("--decay", default=None, help="comma-separated logit slope per head (every layer), replacing "
                   "the checkpoint's own at inference")
    p.add_argument("--noise-scale", type=float, default=1.0, help="scale of each frame's initial noise (a "
                   "sampling temperature, Sampler.noise_scale): does a steadier sampler still move over 3000 frames?")
    p.add_argument("--noise-corr", type=float, default=0.0, help="correlation of consecutive frames' initial "
                   "noise (Sampler.noise_corr; each draw stays a standard normal): less redrawn detail per frame?")
    p.add_argument("--params", default="{}", help='JSON merged into conf/attention/<mode>.yaml params, e.g. '
                   '\'{"window": 12}\' (a shorter window: faster on a CPU; does the rollout still hold?)')
    p.add_argument("--memory", default=None, help='spatial memory (engine/memory.py) as JSON, e.g. \'{"enabled": '
                   'true}\'; default off')
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.add_argument("--sheets", default=None, help="folder for PNG contact sheets of each flagged chunk and the "
                   "chunk before it (every 10th frame; generated above, true below)")
    a = p.parse_args()
    if a.frames < 1:
        p.error(f"--frames must be >= 1, got {a.frames}")
    if not a.noise_scale >= 0:
        p.error(f"--noise-scale must be >= 0, got {a.noise_scale}")
    over = json.loads(a.params)
    attention: str | dict = {"name": a.mode, **merge_params(_default_params(a.mode), over)} if over else a.mode
    env = NeuralEnv(checkpoint=a.checkpoint, device=a.device, attention=attention, noise_scale=a.noise_scale,
                    noise_corr=a.noise_corr, memory=json.loads(a.memory) if a.memory else None)
    if a.decay is not None:
        try:
            env.set_decay(a.decay)
        except ValueError as e:
            p.error(f"--{e}")
    cfg = EvalConfig(checkpoint=a.checkpoint, device=a.device, stability_frames=a.frames, noise_scale=a.noise_scale)
    res: dict[str, Any] = {"checkpoint": env.checkpoint_sha256, "mode": a.mode, "params": over,
                           "memory": env.memory_cfg.__dict__ if env.memory_cfg.enabled else None, "decay": a.decay,
                           "noise_scale": a.noise_scale, "noise_corr": a.noise_corr,
                           "frames": a.frames, "device": str(env.device), "chunks": [], "first_collapse": None}
    t0 = time.perf_counter()
    shots: list[tuple[np.ndarray, np.ndarray]] = []      # this chunk's every 10th (generated, true) frame
    before: list[tuple[np.ndarray, np.ndarray]] = []     # the previous chunk's
    sheets = Path(a.sheets) if a.sheets else None
    if sheets is not None:
        sheets.mkdir(parents=True, exist_ok=True)

    def frame(i: int, gen: np.ndarray, true: np.ndarray) -> None:
        if i % 10 == 0:
            shots.append((gen.copy(), true.copy()))

    def sheet(name: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        img = np.concatenate([np.concatenate([g for g, _ in pairs], 1), np.concatenate([t for _, t in pairs], 1)], 0)
        cv2.imwrite(str(sheets / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))   # type: ignore[operator]

    def chunk(c: dict[str, Any]) -> None:
        nonlocal shots, before
        res["chunks"].append(c)
        if c["collapsed"] and res["first_collapse"] is None:
            res["first_collapse"] = c["frames_to"]
        res["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"frames to {c['frames_to']:5d}: motion {c['gen_motion']:6.2f} (truth {c['true_motion']:6.2f})  "
              f"layout {c['layout_corr']:.3f}  {'COLLAPSED' if c['collapsed'] else 'ok':9s} {res['seconds']:6.1f} s",
              flush=True)
        if sheets is not None and c["collapsed"] and shots:
            to = c["frames_to"]
            sheet(f"{a.mode}_{to:05d}_flagged.png", shots)
            if before:
                sheet(f"{a.mode}_{to - 100:05d}_before.png", before)
        before, shots = shots, []
        if a.out:   # after every chunk: a run killed by a time limit keeps what it measured
            with open(a.out, "w") as fh:
                json.dump(res, fh, indent=1)

    _stability(env, cfg, a.mode, on_chunk=chunk, on_frame=frame if sheets is not None else None)
    print(json.dumps({k: res[k] for k in ("mode", "decay", "noise_scale", "frames", "first_collapse", "seconds")}))


if __name__ == "__main__":
    main()
