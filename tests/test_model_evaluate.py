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
