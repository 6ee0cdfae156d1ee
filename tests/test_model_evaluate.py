"""engine.evaluate end to end on the CPU with a tiny random model: every required key, finite numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from engine.evaluate import EvalConfig, evaluate
from engine.model import WorldModel, preset
from engine.world_model import NeuralEnv

KEYS = ("ae_psnr_db", "teacher_forced_psnr_db", "rollout16_psnr_db", "rollout64_psnr_curve",
        "copy_baseline_teacher_forced_psnr_db", "copy_baseline_rollout16_psnr_db", "revisit_psnr_db_dense",
        "revisit_psnr_db_window", "stability", "controllability", "fps_gpu_short_context", "fps_cpu",
        "checkpoint_mib", "device", "commit")


def test_evaluate_quick(tmp_path: Path) -> None:
    torch.manual_seed(0)
    env = NeuralEnv(model=WorldModel(preset("tiny")), device="cpu", steps=1)
    res = evaluate(EvalConfig(quick=True, steps=1, window=2), env=env)
    for k in KEYS:
        assert k in res, k
    for k in ("ae_psnr_db", "teacher_forced_psnr_db", "rollout16_psnr_db", "revisit_psnr_db_dense", "fps_cpu"):
        assert math.isfinite(res[k]) and res[k] > 0, (k, res[k])
    assert len(res["rollout64_psnr_curve"]) == 8 and res["stability"][-1]["frames_to"] == 20
    assert res["stability"][-1]["true_motion"] > 0 and res["stability"][-1]["gen_motion"] >= 0
    assert set(res["stability_by_mode"]) == {"dense", "window", "fastar"} and res["stability"] == res["stability_by_mode"]["dense"]
    assert all(isinstance(c["collapsed"], bool) and -1 <= c["layout_corr"] <= 1
               for rows in res["stability_by_mode"].values() for c in rows)
    assert set(res["stability_first_collapse"]) == set(res["stability_by_mode"])
    assert {"forward", "turn_left", "mouse_right"} <= set(res["controllability"])
    for r in res["controllability"].values():   # quick: one start, whose figures are the means
        assert r["per_start_psnr_db"] == [round(r["psnr_db"], 3)] and len(r["per_start_copy_psnr_db"]) == 1
        assert r["margin_db"] == round(r["psnr_db"] - r["copy_psnr_db"], 3)
    assert res["controllability_pass"] is all(r["psnr_db"] > r["copy_psnr_db"] for r in res["controllability"].values())
    for r in res["controllability"].values():   # flow per start, a direction verdict where the truth tells
        assert len(r["per_start_flow"]) == len(r["per_start_true_flow"]) == 1 and r["flow_axis"] in ("dx", "div")
        assert r["direction_agrees"] in (True, False, None) and r["direction_starts"] in (0, 1)
        assert (r["motion_ratio"] is None) == (r["direction_starts"] == 0)
    assert res["controllability_direction_pass"] in (True, False, None)
    for mode in ("dense", "window"):   # per turn; a random model's frames do change
        m = res[f"revisit_motion_{mode}"]
        assert len(m) == 2 and all(math.isfinite(x) and x > 0 for x in m), m
    json.dumps(res)


def test_layout_corr_separates_a_view_from_a_texture() -> None:
    """The collapse measure's layout term: true maze frames agree with other true frames of the same map
    (ceiling above, floor below) and not with a flat texture."""
    import numpy as np

    from engine.evaluate import Truth
    from engine.metrics import corr as _corr
    f = np.stack(Truth(4, 240).frames).astype(np.float64)
    a, b = f[:100].mean((0, 2)), f[140:240].mean((0, 2))
    texture = np.tile(np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)), (100, 16, 16, 1)).mean((0, 2))
    assert _corr(a, b) > 0.5 and _corr(a, texture) < 0.3 and _corr(a, np.zeros_like(a)) == 0.0


def test_view_flow_reads_the_true_maze_s_motion() -> None:
    """engine.metrics.view_flow on the simulator from a lit, open view (episode 0's 16th frame): each action's
    motion has the sign the docstring promises, and standing still gives ~0. This is what the evaluation's
    direction check compares a model against."""
    import copy

    import numpy as np

    from engine.evaluate import CONTROL_ACTIONS, FLOW_AXIS, FLOW_MIN, FLOW_SIGN, Truth
    from engine.metrics import view_flow
    sim = Truth(0, 16)
    assert set(FLOW_SIGN) == set(CONTROL_ACTIONS)
    for name, sign in FLOW_SIGN.items():
        twin = copy.deepcopy(sim.env)
        flow = view_flow(np.stack([twin.step(CONTROL_ACTIONS[name]) for _ in range(8)]), sim.frames[-1])
        axis = FLOW_AXIS.get(name, "dx")
        v = flow[0 if axis == "dx" else 1]
        assert v * sign >= FLOW_MIN[axis], (name, flow)
    still = view_flow(np.stack([sim.frames[-1]] * 3), sim.frames[-1])   # the flow's own noise: well under the bar
    assert abs(still[0]) < FLOW_MIN["dx"] / 2 and abs(still[1]) < FLOW_MIN["div"] / 2, still


def test_direction_leaves_out_starts_where_the_truth_s_flow_has_the_wrong_sign() -> None:
    """A right turn moves the picture left (dx < 0). Session 20's start 15 measured +1.1 px on the truth (a tile
    wall aliasing under a 15-degree turn): that start is unreliable, not a disagreement; a start where the truth
    moves the right way and the model the other is one; a truth that barely moves tells nothing."""
    import numpy as np

    from engine.evaluate import direction
    gen = [(-5.0, 0.0), (-5.7, 0.0), (2.0, 0.0), (-3.0, 0.0)]
    true = [(-6.0, 0.0), (1.1, 0.0), (-4.0, 0.0), (-0.1, 0.0)]
    r = direction("mouse_right", gen, true)
    assert r["unreliable_starts"] == [1] and r["direction_disagree_starts"] == [2]
    assert r["direction_starts"] == 2 and r["direction_agrees"] is False
    assert r["motion_ratio"] == round(float(np.median([-5.0 / -6.0, 2.0 / -4.0])), 3)
    r = direction("forward", [(0.0, 0.02)], [(0.0, 0.03)])          # forward: divergence, expanding
    assert r["direction_agrees"] is True and r["unreliable_starts"] == []
    assert direction("forward", [(0.0, 0.02)], [(0.0, 0.001)])["direction_agrees"] is None
