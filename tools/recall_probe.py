"""Does the model redraw a place it saw if the place is put back into a short context? (an experiment)

The model holds together with ~32 frames of context and collapses with more (docs/MODEL.md), so memory by
"keep everything" (dense) or "keep the last 32 frames" (window, TempCache at capacity 32) cannot pass the
revisit test: a full turn is 60 frames. This probe tries retrieval instead, the shape of the training's
revisit clips (engine/train_data.py revisit_clip): the context of each frame is the first frame (sink), the
last `--recent` frames, and a block of `--block` frames retrieved from further back, centred on the
successor of the past frame that looks most like the newest one (cosine similarity of layer 0's values,
2x2-pooled over the token grid: values carry no rotary, so the same view at another time still matches).
Keys keep their true frame positions. The cache keeps everything (like dense); only what each frame
attends to is bounded.

    python tools/recall_probe.py --checkpoint runs/base5_export --mode recall   # the evaluation's revisit test
    python tools/recall_probe.py --mode window                                   # the same test, window mode

Runs the evaluation's revisit protocol (engine/evaluate.py: one true frame, then 120 x turn_right; the second
turn's frames against the first turn's) and prints the PSNR and, for recall, which frames were retrieved.

Memory guidance (`--guidance G`, session 14; since session 15 the engine's own, engine/sampler.py): each
denoising step runs the model twice, once in `--mode` (the memory: dense) and once in `--guide-mode` (a short
window, no memory), and steps along v_mode + G (v_mode - v_guide), as classifier-free guidance does with a
condition: it amplifies whatever the older frames pull the frame toward. Both caches commit the guided frame.
G = 0 is plain `--mode`.

    python tools/recall_probe.py --checkpoint runs/base12/export --mode dense --guidance 1 --device cpu

Spatial memory (`--memory JSON`, session 19; engine/memory.py): a frame at a dead-reckoned pose seen before
starts its denoising from that frame's latent; `"step"` picks the start level (docs/MODEL.md, "Spatial memory").

    python tools/recall_probe.py --mode dense --device cpu --memory '{"enabled": true, "step": 3}'
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from engine.attention import MODES, kernels
from engine.bench_run import motion
from engine.attention.base import AttentionMode, StepInfo
from engine.cache import KVCache
from engine.env import make_action
from engine.evaluate import SEED0, Truth
from engine.metrics import mean_psnr, psnr
from engine.world_model import NeuralEnv, _default_params, merge_params


class RecallAttention(AttentionMode):
    """Dense cache; each frame attends to sinks + the last `recent` frames + a retrieved block."""

    name = "recall"

    def __init__(self, recent: int = 16, block: int = 16, sinks: int = 1, grid: int = 16, oracle: int = 0,
                 boost: float = 0.0) -> None:
        self.recent, self.block, self.sinks, self.grid = recent, block, sinks, grid
        self.oracle = oracle                        # > 0: the matched frame is simply now - 1 - oracle
        self.boost = boost                          # logit bias on the retrieved block's keys (0: none)
        self.desc: list[torch.Tensor] = []          # per committed frame: unit descriptor (B, d)
        self.chosen: list[int] = []                 # frames of the current block
        self.log: list[tuple[int, int, float]] = []  # (frame, matched frame, similarity)

    def reset(self) -> None:
        self.desc, self.chosen, self.log = [], [], []

    def _descriptor(self, v: torch.Tensor) -> torch.Tensor:
        B, H, n, D = v.shape
        g = self.grid
        x = v.float().permute(0, 1, 3, 2).reshape(B, H * D, g, g)          # token grid
        x = F.avg_pool2d(x, 2).reshape(B, -1)
        return F.normalize(x, dim=-1)

    def _frames_to_attend(self, now: int) -> list[int]:
        frames = list(range(min(self.sinks, now)))
        frames += [f for f in range(max(0, now - self.recent), now) if f not in frames]
        frames += [f for f in self.chosen if f not in frames and f < now]
        return sorted(frames)

    def _retrieve(self, now: int) -> None:
        """After frame now-1 is committed: pick the block for frame `now`."""
        newest = now - 1
        last = newest - self.recent       # candidates end before the recent window
        if last <= self.sinks:
            self.chosen = []
            return
        d = torch.stack(self.desc[self.sinks:last])                         # (C, B, d)
        sim = (d * self.desc[newest][None]).sum(-1).mean(-1)                # (C,)
        j = int(sim.argmax()) + self.sinks
        if self.oracle:   # upper bound: the frame a full turn back, where the test's view really repeats
            if newest - self.oracle < self.sinks:
                self.chosen = []
                return
            j = newest - self.oracle
        centre = j + 1                                                      # the successor of the match
        lo = max(self.sinks, centre - self.block // 2)
        hi = min(last, lo + self.block)
        self.chosen = list(range(lo, hi))
        self.log.append((now, j, round(float(sim[j - self.sinks]), 4)))

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                       info: StepInfo) -> torch.Tensor:
        n = k.shape[2]
        end = cache.write_scratch(layer, k, v)
        frames = self._frames_to_attend(info.frame)
        idx = torch.cat([torch.arange(f * n, (f + 1) * n) for f in frames] + [torch.arange(end - n, end)])
        idx = idx.to(q.device)
        K, V = cache.k[layer][:, :, idx], cache.v[layer][:, :, idx]
        bias = None
        if self.boost and self.chosen:   # push attention toward the retrieved place: does the model copy then?
            older = max(0, info.frame - self.recent)                        # frames before the recent window
            per_frame = [self.boost if (f in self.chosen and f < older) else 0.0 for f in frames]
            b = torch.cat([torch.tensor(per_frame).repeat_interleave(n), torch.zeros(n)])   # + the frame itself
            bias = b.to(q.device)[None, None].expand(q.shape[0], q.shape[1], -1)
        out = kernels.attention(q, K, V, bias=bias)
        if info.commit:
            assert cache.length[layer] == info.frame * n, "recall_probe expects frame f at slots [f*n, (f+1)*n)"
            cache.commit_scratch(layer, n, info.frame)
            if layer == 0:
                self.desc.append(self._descriptor(v))
            if layer == cache.n_layers - 1:
                self._retrieve(info.frame + 1)
        return out


def _motion(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames (uint8 (T, H, W, 3)): the benchmark's motion, averaged."""
    return round(float(np.mean(motion(frames, None)[1:])), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--mode", default="recall", help="recall, or any engine mode (dense, window, fastar...)")
    p.add_argument("--recent", type=int, default=16)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--turns", type=int, default=120, help="turn_right steps (60 = one full turn)")
    p.add_argument("--oracle", type=int, default=0, help="recall: retrieve the frame this many back instead of "
                   "searching (60: a full turn; the upper bound of retrieval for this test)")
    p.add_argument("--boost", type=float, default=0.0, help="recall: add this to the logits of the retrieved "
                   "block's keys in every layer (does the model copy the place when pushed to look at it?)")
    p.add_argument("--true-first-turn", action="store_true", help="prime the first turn with the simulator's "
                   "true frames, generate only the second, and score it against them: can the model redraw a "
                   "place it saw exactly (no drift in a generated first turn to copy)?")
    p.add_argument("--decay", default=None, help="comma-separated logit slope per head (every layer), applied at "
                   "inference only (KVCache.set_decay), over any checkpoint's own: what would a temporal decay "
                   "do to this model untrained? e.g. 0.05,0.05,0.05,0.05,0,0")
    p.add_argument("--params", default="{}", help='JSON merged into conf/attention/<mode>.yaml params, e.g. '
                   '\'{"tempcache": {"capacity_frames": 64}}\' (how much cache keeps a view through the gap?)')
    p.add_argument("--noise-scale", type=float, default=1.0, help="scale of each frame's initial noise (a "
                   "sampling temperature, Sampler.noise_scale): does a steadier sampler redraw a view better?")
    p.add_argument("--noise-corr", type=float, default=0.0, help="correlation of consecutive frames' initial "
                   "noise (Sampler.noise_corr; each draw stays a standard normal): less redrawn detail per frame?")
    p.add_argument("--guidance", type=float, default=0.0, help="memory guidance weight G (module docstring)")
    p.add_argument("--guide-mode", default="window", help="the no-memory condition of --guidance")
    p.add_argument("--memory", default=None, help='spatial memory (engine/memory.py) as JSON, e.g. '
                   '\'{"enabled": true, "step": 3}\'; default off')
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not a.noise_scale >= 0:
        p.error(f"--noise-scale must be >= 0, got {a.noise_scale}")
    if a.mode == "recall":
        MODES["recall"] = lambda **kw: RecallAttention(recent=a.recent, block=a.block, oracle=a.oracle,
                                                       boost=a.boost)
    over = json.loads(a.params)
    attention: str | dict = {"name": a.mode, **merge_params(_default_params(a.mode), over)} if over else a.mode
    env = NeuralEnv(checkpoint=a.checkpoint, device=a.device, attention=attention, noise_scale=a.noise_scale,
                    noise_corr=a.noise_corr, guidance=a.guidance, guide_attention=a.guide_mode,
                    memory=json.loads(a.memory) if a.memory else None)
    if a.decay is not None:
        try:
            env.set_decay(a.decay)
        except ValueError as e:
            p.error(f"--{e}")
    e = Truth(0, 1)
    env.sampler.reset(0, e.prompt)
    env.prime(e.frames[:1], e.actions[:1])
    step = env.step
    t0 = time.perf_counter()
    half = a.turns // 2
    turn = make_action(("turn_right",))
    true_turn = np.stack([e.env.step(turn) for _ in range(half)])   # the simulator's turn from the same start
    if a.true_first_turn:   # ... as context
        env.prime(list(true_turn), [turn] * half)   # (with guidance, into the guide's cache too)
        gen = np.concatenate([true_turn, np.stack([step(turn) for _ in range(a.turns - half)])])
    else:
        gen = np.stack([step(turn) for _ in range(a.turns)])
    res = {"mode": a.mode, "checkpoint": env.checkpoint_sha256, "seed": SEED0, "turns": a.turns,
           "true_first_turn": a.true_first_turn, "decay": a.decay, "params": over, "noise_scale": a.noise_scale,
           "noise_corr": a.noise_corr, "guidance": a.guidance, "guide_mode": a.guide_mode if a.guidance else None,
           "revisit_psnr_db": round(mean_psnr(gen[half:], gen[:half]), 3),
           # per frame of the second turn: does memory hold each view, or does the error grow from the start?
           "revisit_psnr_curve": [round(min(psnr(b, a), 100.0), 2) for a, b in zip(gen[:half], gen[half:])],
           "first_turn_motion": _motion(gen[:half]),
           "true_turn_motion": _motion(true_turn),   # what a turn moves in the truth: a frozen turn scores high
           "memory": env.info()["memory"], "seconds": round(time.perf_counter() - t0, 1)}
    mode = env.sampler.mode
    if isinstance(mode, RecallAttention):
        res["recent"], res["block"], res["oracle"], res["boost"] = a.recent, a.block, a.oracle, a.boost
        res["matches"] = mode.log[half - 1:half + 11]          # around the start of the second turn
        res["match_offsets_second_turn"] = [now - j for now, j, _ in mode.log if now > half]
    print(json.dumps({k: v for k, v in res.items() if k != "match_offsets_second_turn"}))
    if "match_offsets_second_turn" in res:
        off = res["match_offsets_second_turn"]
        print(f"second turn: frames back to the match, median {int(np.median(off))} (a full turn: 60), "
              f"share within 60 +- 3: {np.mean([abs(o - 60) <= 3 for o in off]):.2f}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
