"""Evaluate a world-model checkpoint against the real maze; writes docs/results/world_model.json.

    python -m engine.evaluate                                   # bundled weights, GPU if there is one
    python -m engine.evaluate checkpoint=runs/base/export stability_frames=3000
    python -m engine.evaluate quick=true                        # CPU-sized numbers (tests use a tiny model)

Every episode is new: map seeds >= 1_000_000 (the dataset draws map seeds from PCG64, so a collision with a
training map is a ~1e-4 chance per episode), played by the scripted explorer; truth is the simulator's frame
for the same action. All generation goes through NeuralEnv (the one sampling loop).

Metrics (PSNR in dB over uint8 frames, engine.metrics):
  ae_psnr_db                       encode -> decode of held-out frames
  teacher_forced_psnr_db           next frame from true context (sample, then commit the TRUE frame)
  copy_baseline_*                  repeating the last true frame instead
  rollout16_psnr_db / curve        16 true frames primed, then 16 (64) generated frames with the true actions
  revisit_psnr_db_{dense,window}   two full turns in place (120 x turn_right): second turn vs first turn,
                                   both generated; memory shows as a high number, forgetting as a low one
  revisit_motion_{dense,window}    mean change between consecutive frames in each turn: a rollout that froze
                                   (~0) also scores high on revisit, without any memory
  stability_by_mode                per mode, per 100 frames of a long rollout: colour mean/std of generated vs
                                   true, motion (mean change between frames: ~0 when the rollout froze) and
                                   `collapsed` (std, motion or layout far below the truth's); `stability` is
                                   the first mode's (dense),
                                   stability_first_collapse the first collapsed chunk per mode (null: none)
  controllability                  per key and mouse direction: 8 frames of one action from each of 4 primed
                                   views, against the simulator and against repeating the last frame;
                                   controllability_pass: every action above its copy baseline; the view's
                                   optical flow, generated and true; controllability_direction_pass: every
                                   action moves the view the truth's way (flow sign) wherever the truth's
                                   motion is large enough to tell
"""
from __future__ import annotations

import copy
import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engine.env import ACTION_DIM, KEY_NAMES, make_action
from engine.metrics import corr, mean_psnr, row_profile, view_flow
from engine.world_model import NeuralEnv

SEED0 = 1_000_000


@dataclass
class EvalConfig:
    checkpoint: str | None = None     # None: the bundled weights
    device: str = "auto"
    steps: int = 4
    noise_scale: float = 1.0          # each frame's initial noise scale (Sampler.noise_scale; 1: as trained)
    guidance: float = 0.0             # memory guidance weight (Sampler; 0: off) against guide_attention
    guide_attention: str = "window"
    # spatial memory (engine/memory.py), on as play has it (conf/engine/model.yaml); memory.enabled=false
    # measures the network alone
    memory: dict[str, Any] | None = field(default_factory=lambda: {"enabled": True})
    out: str = "docs/results/world_model.json"
    episodes: int = 4
    context: int = 16
    teacher_forced: int = 32          # frames per episode
    rollout: int = 64
    stability_frames: int = 3000
    stability_modes: tuple[str, ...] = ("dense", "window", "fastar")  # one long rollout each; the first is "stability"
    collapse_std: float = 0.5         # a 100-frame chunk collapsed: generated colour std < this x the truth's...
    collapse_motion: float = 0.25     # ... or generated motion < this x the truth's (frozen)
    collapse_layout: float = 0.3      # ... or the row-profile correlation with the truth below this (_stability)
    control_frames: int = 8
    control_starts: int = 16          # known views (unseen episodes) each action is tried from; mean reported.
                                      # 16, not 4 (session 20): at 4 one featureless start (a fogged wall that a
                                      # true turn barely changes) decided mouse_right's sign (-7.7 dB there)
    window: int = 32
    fps_frames: int = 100
    fps_warmup: int = 80              # frames stepped before timing (graph captures, window ring filled)
    fps_modes: tuple[str, ...] = ("dense", "window", "fastar")   # GPU speed per mode (dense is the headline)
    fps_compiled: bool = True         # on CUDA also time an env with engine.compile (fps_gpu_by_mode_compiled)
    cpu_fps_frames: int = 5
    quick: bool = False               # CPU-sized: 2 episodes, short rollouts, 200-frame stability
    commit: str | None = None         # reported as given (a GPU machine's copy of the tree may carry a stale .git)

    def __post_init__(self) -> None:
        from engine.bench_run import check_commit
        check_commit(self.commit)


def _quick(c: EvalConfig) -> EvalConfig:
    return EvalConfig(**{**asdict(c), "episodes": 1, "teacher_forced": 4, "rollout": 8, "stability_frames": 20,
                         "control_frames": 2, "control_starts": 1, "fps_frames": 3, "cpu_fps_frames": 2, "context": 4,
                         "fps_warmup": 1})


class Truth:
    """A held-out maze episode played by the explorer: frames, actions, and the live simulator."""

    def __init__(self, k: int, frames: int) -> None:
        from worlds.maze.env import MazeEnv
        from worlds.maze.explorer import Explorer
        from worlds.maze.style import random_prompt
        rng = np.random.default_rng(SEED0 + k)
        self.seed, self.prompt = SEED0 + k, random_prompt(rng)
        self.env = MazeEnv()
        self.frames = [self.env.reset(self.seed, self.prompt)]
        self.actions = [np.zeros(ACTION_DIM, np.float32)]
        assert self.env.map is not None
        self.explorer = Explorer(self.env.map, SEED0 + k)
        self.extend(frames)

    def extend(self, n: int) -> None:
        while len(self.frames) < n:
            a = self.explorer.act(self.env.pose)
            self.frames.append(self.env.step(a))
            self.actions.append(a)


def _stability(env: NeuralEnv, cfg: EvalConfig, mode: str,
               on_chunk: Callable[[dict[str, Any]], None] | None = None,
               on_frame: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> list[dict[str, Any]]:
    """`cfg.stability_frames` generated frames in attention `mode` from one true frame, under the explorer's
    actions on an unseen map; per 100 frames the colour statistics of generated and true frames, motion, and
    `collapsed`: the generated colour std below `collapse_std` x the truth's (faded to flat colour), the
    motion below `collapse_motion` x the truth's (frozen), or the layout correlation below `collapse_layout`
    (a texture that has lost the first-person view: ceiling above, floor below). The two rollouts drift
    apart in place (actions only, no feedback), so colour means differ without any collapse; std, motion
    and layout are what a collapse destroys. layout_corr: correlation of the chunk's mean row profile
    (mean colour per image row, (H, 3)) with the truth's; between 100-frame chunks of the same true episode
    it is 0.47-0.96 (median 0.81-0.96 on five unseen maps), ~0 for a flat texture. Not every collapse trips
    the rule: the benchmark's capacity-32 merge rollout (a pink texture) kept layout 0.38 and motion 0.40
    of the truth's (docs/MODEL.md). on_chunk: called with each chunk as it is done (progress in probes);
    on_frame: called with (index, generated, true) uint8 frames as each is made (a probe's contact sheets)."""
    env.set_attention(mode)
    e = Truth(cfg.episodes, 1)
    env.sampler.reset(99, e.prompt)
    env.prime(e.frames[:1], e.actions[:1])
    chunks: list[dict[str, Any]] = []
    g_acc, t_acc, g_mov, t_mov, g_row, t_row = [], [], [], [], [], []
    g_prev = t_prev = e.frames[0].astype(np.float64)
    anchored = 0    # spatial memory (engine/memory.py): frames of the chunk that started from a stored latent
    for i in range(1, cfg.stability_frames + 1):
        e.extend(i + 1)
        g_u8 = env.step(e.actions[i])
        if on_frame is not None:
            on_frame(i, g_u8, e.frames[i])
        g_i, t_i = g_u8.astype(np.float64), e.frames[i].astype(np.float64)
        g_acc.append(g_i.reshape(-1, 3))
        t_acc.append(t_i.reshape(-1, 3))
        g_row.append(row_profile(g_i[None]))                                       # (H, 3)
        t_row.append(row_profile(t_i[None]))
        # motion: mean absolute change from the previous frame (a frozen rollout: ~0 where the truth moves)
        g_mov.append(float(np.abs(g_i - g_prev).mean()))
        t_mov.append(float(np.abs(t_i - t_prev).mean()))
        g_prev, t_prev = g_i, t_i
        e.frames[i] = None  # type: ignore[call-overload]  # keep memory flat over 3000 frames
        if i % 100 == 0 or i == cfg.stability_frames:
            g, t = np.concatenate(g_acc), np.concatenate(t_acc)
            gs, ts, gm, tm = g.std(0), t.std(0), float(np.mean(g_mov)), float(np.mean(t_mov))
            lc = corr(np.mean(g_row, 0), np.mean(t_row, 0))
            chunks.append({"frames_to": i, "gen_mean": g.mean(0).round(2).tolist(), "true_mean": t.mean(0).round(2).tolist(),
                           "gen_std": gs.round(2).tolist(), "true_std": ts.round(2).tolist(),
                           "mean_abs_diff": round(float(np.abs(g.mean(0) - t.mean(0)).mean()), 3),
                           "gen_motion": round(gm, 2), "true_motion": round(tm, 2), "layout_corr": round(lc, 3),
                           "collapsed": bool(gs.mean() < cfg.collapse_std * ts.mean() or gm < cfg.collapse_motion * tm
                                             or lc < cfg.collapse_layout)})
            mem = env.info()["memory"]
            if mem is not None:
                chunks[-1]["memory_anchored"] = mem["anchored"] - anchored
                anchored = mem["anchored"]
            if on_chunk is not None:
                on_chunk(chunks[-1])
            g_acc, t_acc, g_mov, t_mov, g_row, t_row = [], [], [], [], [], []
    return chunks


CONTROL_ACTIONS = {**{k: make_action((k,)) for k in KEY_NAMES if k != "run"},
                   "mouse_right": make_action((), 1.0), "mouse_left": make_action((), -1.0),
                   "run_forward": make_action(("forward", "run"))}


# The flow component each action moves (engine.metrics.view_flow), and how large the truth's must be for a
# start to say anything about the direction (a dark wall in fog barely moves in any direction).
FLOW_AXIS = {"forward": "div", "back": "div", "run_forward": "div"}    # every other action: "dx"
FLOW_MIN = {"dx": 0.5, "div": 0.005}
# The sign each action's motion has on its axis in the true maze (view_flow's docstring; checked on the simulator
# in tests/test_model_evaluate.py). A start whose TRUE flow has the other sign is one where the flow estimate
# failed on that view, not a motion: a periodic tile wall under a 15-degree turn a frame aliases (session 20,
# start 15 of mouse_right: the truth turned right by 120 degrees and measured +1.1 px). Such a start cannot
# tell the model's direction, so it is left out of the check and listed as `unreliable_starts`.
FLOW_SIGN = {"forward": 1, "back": -1, "run_forward": 1, "strafe_left": 1, "strafe_right": -1, "turn_left": 1,
             "turn_right": -1, "mouse_left": 1, "mouse_right": -1}


def controllability(env: NeuralEnv, starts: int, context: int, frames: int) -> dict[str, dict[str, Any]]:
    """Each key and mouse direction held for `frames` frames from `starts` known views (the end of the first
    `context` frames of unseen episodes 0..starts-1, primed with them), against the simulator doing the same
    from the same state. Per action: PSNR of generated vs true frames and of repeating the last true frame
    (copy), each a mean over the starts, their difference (margin_db), and the per-start figures: one view
    alone says more about that view (a wall to one side) than about the action. Also the view's motion
    (engine.metrics.view_flow) of generated and true frames: per start (dx, divergence) of each, and on the
    action's axis (FLOW_AXIS) whether the generated motion has the truth's sign at each start where the truth
    moves enough to tell (FLOW_MIN) and its flow has the sign its own motion has (FLOW_SIGN; the others are
    `unreliable_starts`): `direction_agrees` (None where no start tells), the starts that disagree, and
    `motion_ratio`, the median of generated over true motion there (1: as far as the truth; a model that
    under-turns: < 1)."""
    out: dict[str, dict[str, Any]] = {}
    sims = [Truth(k, context) for k in range(starts)]   # each stopped after its context
    for name, a in CONTROL_ACTIONS.items():
        gen_db, copy_db, gen_flow, true_flow = [], [], [], []
        for sim in sims:
            twin = copy.deepcopy(sim.env)
            true = np.stack([twin.step(a) for _ in range(frames)])
            env.sampler.reset(7, sim.prompt)
            env.prime(sim.frames[:context], sim.actions[:context])
            gen = np.stack([env.step(a) for _ in range(frames)])
            gen_db.append(mean_psnr(gen, true))
            copy_db.append(mean_psnr(np.broadcast_to(sim.frames[-1], true.shape), true))
            gen_flow.append(view_flow(gen, sim.frames[-1]))
            true_flow.append(view_flow(true, sim.frames[-1]))
        g, c = float(np.mean(gen_db)), float(np.mean(copy_db))
        out[name] = {"psnr_db": g, "copy_psnr_db": c, "margin_db": round(g - c, 3),
                     "per_start_psnr_db": [round(x, 3) for x in gen_db],
                     "per_start_copy_psnr_db": [round(x, 3) for x in copy_db],
                     "flow_axis": FLOW_AXIS.get(name, "dx"),
                     "per_start_flow": [[round(x, 4) for x in f] for f in gen_flow],
                     "per_start_true_flow": [[round(x, 4) for x in f] for f in true_flow],
                     **direction(name, gen_flow, true_flow)}
    return out


def direction(name: str, gen_flow: list[tuple[float, float]],
              true_flow: list[tuple[float, float]]) -> dict[str, Any]:
    """The direction verdict of one action from per-start (dx, divergence) flows, generated and true. A start
    tells where the truth moves at least FLOW_MIN on the action's axis with the sign its motion has (FLOW_SIGN);
    one that moves the other way is `unreliable` (the estimate failed on that view) and is left out."""
    axis = FLOW_AXIS.get(name, "dx")
    i = 0 if axis == "dx" else 1
    moved = [k for k, tf in enumerate(true_flow) if abs(tf[i]) >= FLOW_MIN[axis]]
    unreliable = [k for k in moved if true_flow[k][i] * FLOW_SIGN[name] < 0]
    tells = [k for k in moved if k not in unreliable]
    told = [(gen_flow[k][i] > 0) == (true_flow[k][i] > 0) for k in tells]
    return {"direction_agrees": all(told) if told else None, "direction_starts": len(told),
            "direction_disagree_starts": [k for k, ok in zip(tells, told) if not ok],
            "unreliable_starts": unreliable,
            # how far, against the truth: median over those starts of generated / true on the axis
            "motion_ratio": round(float(np.median([gen_flow[k][i] / true_flow[k][i] for k in tells])), 3)
            if tells else None}


def direction_pass(ctrl: dict[str, dict[str, Any]]) -> bool | None:
    """Every action moves the view the truth's way at every start that tells (None: some action had none)."""
    flags = [r.get("direction_agrees") for r in ctrl.values()]
    return None if any(f is None for f in flags) else all(flags)


def controllability_pass(ctrl: dict[str, dict[str, Any]]) -> bool:
    """The bar: every action's mean PSNR above its copy baseline's."""
    return all(r["psnr_db"] > r["copy_psnr_db"] for r in ctrl.values())


def _sampling(cfg: EvalConfig) -> dict[str, Any]:
    """The sampler settings every env of the evaluation shares."""
    return {"steps": cfg.steps, "noise_scale": cfg.noise_scale, "guidance": cfg.guidance,
            "guide_attention": cfg.guide_attention, "memory": cfg.memory}


def _env(cfg: EvalConfig, attention: Any = "dense") -> NeuralEnv:
    return NeuralEnv(checkpoint=cfg.checkpoint, device=cfg.device, attention=attention, **_sampling(cfg))


def evaluate(cfg: EvalConfig, env: NeuralEnv | None = None) -> dict[str, Any]:
    if cfg.quick:
        cfg = _quick(cfg)
    env = env or _env(cfg)
    dev = env.device
    n_ep = cfg.context + max(cfg.teacher_forced, cfg.rollout)
    eps = [Truth(k, n_ep) for k in range(cfg.episodes)]
    res: dict[str, Any] = {"config": asdict(cfg)}

    # autoencoder
    frames = np.stack([f for e in eps for f in e.frames])
    with torch.no_grad():
        rec = np.concatenate([env.model.decode(env.model.encode(torch.as_tensor(frames[i:i + 64], device=dev)))
                              .cpu().numpy() for i in range(0, len(frames), 64)])
    res["ae_psnr_db"] = mean_psnr(rec, frames)

    # teacher forced, rollouts
    tf, tf_copy, r16, r16_copy, curve = [], [], [], [], []
    for k, e in enumerate(eps):
        env.sampler.reset(k, e.prompt)
        env.prime(e.frames[:cfg.context], e.actions[:cfg.context])
        for i in range(cfg.context, cfg.context + cfg.teacher_forced):
            tf.append(mean_psnr(env.predict(e.actions[i])[None], e.frames[i][None]))
            tf_copy.append(mean_psnr(e.frames[i - 1][None], e.frames[i][None]))
            env.prime([e.frames[i]], [e.actions[i]])
        env.sampler.reset(k, e.prompt)
        env.prime(e.frames[:cfg.context], e.actions[:cfg.context])
        gen = np.stack([env.step(e.actions[i]) for i in range(cfg.context, cfg.context + cfg.rollout)])
        true = np.stack(e.frames[cfg.context:cfg.context + cfg.rollout])
        curve.append([mean_psnr(g[None], t[None]) for g, t in zip(gen, true)])
        r16.append(mean_psnr(gen[:16], true[:16]))
        r16_copy.append(mean_psnr(np.broadcast_to(e.frames[cfg.context - 1], true[:16].shape), true[:16]))
    res.update(teacher_forced_psnr_db=float(np.mean(tf)), copy_baseline_teacher_forced_psnr_db=float(np.mean(tf_copy)),
               rollout16_psnr_db=float(np.mean(r16)), copy_baseline_rollout16_psnr_db=float(np.mean(r16_copy)),
               rollout64_psnr_curve=[round(float(x), 3) for x in np.mean(curve, 0)])

    # revisit: two full turns in place from a true first frame
    turns = 120 if not cfg.quick else 8
    for mode, att in (("dense", "dense"), ("window", {"name": "window", "sinks": 1, "window": cfg.window})):
        env.set_attention(att)
        e = eps[0]
        env.sampler.reset(0, e.prompt)
        env.prime(e.frames[:1], e.actions[:1])
        gen = np.stack([env.step(make_action(("turn_right",))) for _ in range(turns)])
        res[f"revisit_psnr_db_{mode}"] = mean_psnr(gen[turns // 2:], gen[:turns // 2])
        # the view turns 6 degrees a frame, so a rollout that stops moving matches its own first turn: its
        # motion per turn says whether a high revisit number is memory or a still image
        step = np.abs(np.diff(gen.astype(np.float64), axis=0)).mean((1, 2, 3))
        res[f"revisit_motion_{mode}"] = [round(float(step[:turns // 2 - 1].mean()), 2),
                                         round(float(step[turns // 2 - 1:].mean()), 2)]
    env.set_attention("dense")

    # stability: a long rollout per mode, driven by the explorer on the true simulator (same actions, prompt)
    res["stability_by_mode"] = {m: _stability(env, cfg, m) for m in cfg.stability_modes}
    env.set_attention("dense")
    res["stability"] = res["stability_by_mode"][cfg.stability_modes[0]]
    res["stability_first_collapse"] = {m: next((c["frames_to"] for c in rows if c["collapsed"]), None)
                                       for m, rows in res["stability_by_mode"].items()}

    # controllability: one action held for a few frames from a primed context, vs the simulator from there
    res["controllability"] = controllability(env, cfg.control_starts, cfg.context, cfg.control_frames)
    res["controllability_pass"] = controllability_pass(res["controllability"])
    res["controllability_direction_pass"] = direction_pass(res["controllability"])

    # speed (short context: 16 frames primed, `fps_warmup` frames stepped, then `fps_frames` timed; wall
    # clock around env.step, which ends with the decoded frame on the host: all steps, commit and decode)
    def fps(e_: NeuralEnv, n: int, warm: int) -> float:
        ctx = min(16, len(eps[0].frames) - 1)
        acts = eps[0].actions[ctx:]
        e_.sampler.reset(0, eps[0].prompt)
        e_.prime(eps[0].frames[:ctx], eps[0].actions[:ctx])
        for i in range(max(1, warm)):   # kernel choice, allocation, CUDA graph captures
            e_.step(acts[i % len(acts)])
        if e_.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(n):
            e_.step(acts[i % len(acts)])
        return n / (time.perf_counter() - t0)
    if dev.type == "cuda":
        by_mode = {}
        for m in cfg.fps_modes:
            env.set_attention(m)
            by_mode[m] = round(fps(env, cfg.fps_frames, cfg.fps_warmup), 2)
        env.set_attention("dense")
        res["fps_gpu_short_context"] = by_mode.get("dense")
        res["fps_gpu_by_mode"] = by_mode
        res["cuda_graphs"] = env.info()["cuda_graphs"]
        if cfg.fps_compiled:   # the same rows with the graph pieces compiled (engine.compile; off in play)
            c_env = NeuralEnv(checkpoint=cfg.checkpoint, device=cfg.device, compile=True, **_sampling(cfg))
            res["fps_gpu_by_mode_compiled"] = {}
            for m in cfg.fps_modes:
                c_env.set_attention(m)
                res["fps_gpu_by_mode_compiled"][m] = round(fps(c_env, cfg.fps_frames, cfg.fps_warmup), 2)
    else:
        res["fps_gpu_short_context"] = None
    cpu_env = env if dev.type == "cpu" else NeuralEnv(checkpoint=cfg.checkpoint, device="cpu", **_sampling(cfg))
    res["fps_cpu"] = fps(cpu_env, cfg.cpu_fps_frames, 1)
    res["cpu_threads"] = torch.get_num_threads()
    ck = Path(cfg.checkpoint) if cfg.checkpoint else None
    from engine.checkpoint import BUNDLED
    ck = ck or BUNDLED
    res["checkpoint_mib"] = round(sum(p.stat().st_size for p in ck.iterdir()) / 2 ** 20, 2) if ck.is_dir() else None
    res["checkpoint_sha256"] = env.checkpoint_sha256
    res["device"] = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    try:
        res["commit"] = cfg.commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                                     text=True).stdout.strip()
    except OSError:
        res["commit"] = None
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys
    from omegaconf import OmegaConf
    cli = OmegaConf.from_cli(argv if argv is not None else sys.argv[1:])
    cfg: EvalConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), cli))  # type: ignore
    res = evaluate(cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    summary = {k: v for k, v in res.items() if isinstance(v, (int, float)) or v is None}
    print(json.dumps(summary, indent=1))
    return res


if __name__ == "__main__":
    main()
