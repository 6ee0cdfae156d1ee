"""The whole trainer on the CPU with the tiny config: data -> AE -> latents -> DiT, loss goes down,
checkpoints load in NeuralEnv, a second run resumes, and fp16 bundle weights start a run with a fresh optimizer."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from engine.env import make_action
from engine.train import TrainConfig, train
from engine.world_model import NeuralEnv

CONF = Path(__file__).resolve().parent.parent / "conf" / "train"


def tiny_config(tmp: Path, **over: object) -> TrainConfig:
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        c = compose(config_name="tiny", overrides=[f"out={tmp / 'run'}", f"data.dir={tmp / 'data'}", "progress=false"]
                    + [f"{k}={v}" for k, v in over.items()])
    c = OmegaConf.merge(OmegaConf.structured(TrainConfig), {k: v for k, v in c.items() if k != "hydra"})
    return OmegaConf.to_object(c)  # type: ignore[return-value]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    state = train(tiny_config(tmp))
    assert state["dit_step"] == 12 and state["ae_step"] == 4
    return tmp


def test_tiny_training_decreases_loss(trained: Path) -> None:
    losses = [r["loss"] for r in _log(trained / "run") if r.get("phase") == "dit" and "loss" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert any("preview" in r for r in _log(trained / "run"))
    import cv2   # the preview video opens and holds frames, truth | model side by side
    videos = sorted((trained / "run" / "samples").glob("*.mp4"))
    assert videos, "no preview video"
    cap = cv2.VideoCapture(str(videos[-1]))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) > 0
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 2 * int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()


def test_checkpoint_plays_and_resume(trained: Path) -> None:
    for sub in ("ckpt", "export"):
        env = NeuralEnv(checkpoint=str(trained / "run" / sub), device="cpu", steps=1)
        env.reset(1_000_000, "night")
        assert env.step(make_action(("forward",))).shape == (128, 128, 3)
    state = train(tiny_config(trained, **{"dit.steps": 13}))
    assert state["dit_step"] == 13
    assert any(r.get("event") == "resume" for r in _log(trained / "run"))
    # fp16 export as init for a new run: fresh optimizer, AE and latent stats kept
    state = train(tiny_config(trained, out=trained / "run2", init=trained / "run" / "export", **{"dit.steps": 1}))
    assert state["dit_step"] == 1 and state["ae_step"] == 0


def test_fine_tune_switches_time_free_heads(trained: Path) -> None:
    """rope_time_free_heads may change on a fine-tune from `init` (no weights change shape) and travels in the
    export's config; resuming a run with another value is a clear error."""
    from engine.checkpoint import CheckpointError, read_manifest
    out = trained / "run_free"
    train(tiny_config(trained, out=out, init=trained / "run" / "export", rope_time_free_heads=1, **{"dit.steps": 1}))
    assert read_manifest(out / "export")["config"]["dit"]["rope_time_free_heads"] == 1
    env = NeuralEnv(checkpoint=str(out / "export"), device="cpu", steps=1)
    env.reset(1_000_000, "night")
    assert env.step(make_action(("turn_left",))).shape == (128, 128, 3)
    with pytest.raises(CheckpointError, match="model config differs"):
        train(tiny_config(trained, out=out, rope_time_free_heads=0, **{"dit.steps": 2}))


def test_fine_tune_switches_heading_heads(trained: Path) -> None:
    """rope_heading_heads on a fine-tune from `init`: the world's turn rates travel in the export's config, and
    the trained export plays (its sampler keeps a heading)."""
    from engine.checkpoint import read_manifest
    from worlds.maze.physics import HEADING_PER_ACTION
    out = trained / "run_heading"
    train(tiny_config(trained, out=out, init=trained / "run" / "export", rope_heading_heads=1, **{"dit.steps": 1}))
    dit = read_manifest(out / "export")["config"]["dit"]
    assert dit["rope_heading_heads"] == 1 and tuple(dit["heading_per_action"]) == HEADING_PER_ACTION
    env = NeuralEnv(checkpoint=str(out / "export"), device="cpu", steps=1)
    env.reset(1_000_000, "night")
    assert env.step(make_action(("turn_left",))).shape == (128, 128, 3)
    assert float(env.sampler.heading) < 0


def test_fine_tune_switches_the_decay_on(trained: Path) -> None:
    """temporal_decay=true on a fine-tune from an init without it: the slopes start at DECAY_INIT (the init's
    function), train, travel in the export, and the export plays."""
    from engine.checkpoint import read_manifest
    from engine.model.dit import DECAY_INIT
    out = trained / "run_decay"
    train(tiny_config(trained, out=out, init=trained / "run" / "export", temporal_decay=True, **{"dit.steps": 2}))
    assert read_manifest(out / "export")["config"]["dit"]["temporal_decay"] is True
    env = NeuralEnv(checkpoint=str(out / "export"), device="cpu", steps=1)
    slopes = env.sampler.model.dit.decay_slopes()
    assert slopes is not None and float((slopes - DECAY_INIT).abs().max()) > 0   # moved by the two steps
    env.reset(1_000_000, "night")
    assert env.step(make_action(("forward",))).shape == (128, 128, 3)
    assert env.sampler.cache.decay is not None


def test_fixed_decay_slopes_stay_frozen_and_travel(trained: Path) -> None:
    """train.decay_slopes sets every layer's slopes after loading the init, keeps them through training (no
    gradient: FlexAttention's slope gradient is the slow path) and exports them; a wrong count is a clear error."""
    from engine.checkpoint import read_manifest
    out = trained / "run_fixed_decay"
    train(tiny_config(trained, out=out, init=trained / "run" / "export", decay_slopes="[0.25]", **{"dit.steps": 2}))
    assert read_manifest(out / "export")["config"]["dit"]["temporal_decay"] is True
    env = NeuralEnv(checkpoint=str(out / "export"), device="cpu", steps=1)
    slopes = env.sampler.model.dit.decay_slopes()
    assert slopes is not None and torch.equal(slopes, torch.full_like(slopes, 0.25))
    assert any(r.get("event") == "decay_fixed" for r in _log(out))
    with pytest.raises(ValueError, match="train.decay_slopes: expected 1 finite slopes"):
        train(tiny_config(trained, out=trained / "run_bad_decay", init=trained / "run" / "export",
                          decay_slopes="[0.1,0.1]", **{"dit.steps": 1}))


def test_slow_steps_stop_the_run_after_saving(trained: Path) -> None:
    """max_step_s: DiT steps 3..7 timed, and a run slower than the bar saves, logs why and stops with an error."""
    out = trained / "run_slow"
    with pytest.raises(RuntimeError, match="train.max_step_s"):
        train(tiny_config(trained, out=out, init=trained / "run" / "export", max_step_s=1e-9, **{"dit.steps": 20}))
    log = _log(out)
    assert [r["s_per_step"] > 0 for r in log if r.get("event") == "step_time"] == [True]
    assert any(r.get("event") == "too_slow" for r in log) and (out / "ckpt" / "manifest.json").exists()
    assert max(r.get("dit_step", 0) for r in log if r.get("event") == "save") == 8


def test_episode_headings_run_per_episode() -> None:
    """Each row's heading is the running turn over its own episode from that episode's first frame."""
    from types import SimpleNamespace

    from engine.train import episode_headings
    from tests.test_model_core import heading_model, random_model
    acts = np.zeros((5, 8), np.float32)
    acts[[0, 1], 5] = 1.0        # episode 0 (rows 0-1): two turn_right frames
    acts[[2, 4], 7] = -1.0       # episode 1 (rows 2-4): mouse left, nothing, mouse left
    h = episode_headings(heading_model(torch.float32).dit, SimpleNamespace(actions=acts, start=np.array([0, 2]),
                                                                           length=np.array([2, 3])))
    want = [math.radians(x) for x in (6, 12, -15, -15, -30)]
    assert h is not None and np.allclose(h.numpy(), want)
    assert episode_headings(random_model(torch.float32).dit, SimpleNamespace(actions=acts, start=np.array([0]),
                                                                             length=np.array([5]))) is None


def test_own_context_off_takes_no_path(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """own_context_prob=0 (the default): the prediction pass never runs and training is bit-identical."""
    import engine.train as tr

    def boom(*_: object, **__: object) -> None:
        raise AssertionError("predict_clip called with own_context_prob=0")
    monkeypatch.setattr(tr, "predict_clip", boom)
    train(tiny_config(trained, out=trained / "run_off", **{"dit.own_context_prob": 0.0}))
    off = [r for r in _log(trained / "run_off") if r.get("phase") == "dit" and "loss" in r]
    ref = [r for r in _log(trained / "run") if r.get("phase") == "dit" and "loss" in r][:len(off)]
    assert [r["loss"] for r in off] == [r["loss"] for r in ref]
    assert all(r["own_share"] == 0.0 for r in off)


def test_own_context_on_trains(trained: Path) -> None:
    train(tiny_config(trained, out=trained / "run_own", **{"dit.own_context_prob": 1.0, "dit.steps": 4,
                                                          "dit.own_context_rounds": 2, "dit.own_context_steps": 1}))
    recs = [r for r in _log(trained / "run_own") if r.get("phase") == "dit" and "loss" in r]
    assert recs and all(math.isfinite(r["loss"]) and r["own_share"] == 1.0 and r["own_ms_per_step"] > 0
                        for r in recs)


def test_own_context_picks_kept_samples_last() -> None:
    """pick(last=...): the same random draw, the flagged samples moved to the end; no flag, the old order."""
    from engine.train_own_context import pick
    torch.manual_seed(0)
    plain = pick(6, 0.5, torch.device("cpu"))
    torch.manual_seed(0)
    last = torch.tensor([True, False, True, False, True, True])
    got = pick(6, 0.5, torch.device("cpu"), last=last)
    assert len(got) == len(plain) == 3 and not bool(last[got[:2]].any())   # the two unflagged ones first
    torch.manual_seed(0)
    assert torch.equal(pick(6, 0.5, torch.device("cpu"), last=torch.ones(6, dtype=torch.bool)), plain)


def test_own_context_leaves_revisit_clips_true(trained: Path) -> None:
    """dit.own_context_revisits=false with every clip a revisit clip and every sample picked: the pass runs
    (one batch size) but no sample's context is replaced, so the log's own_share is 0; with true it is 1."""
    over = {"dit.own_context_prob": 1.0, "dit.own_context_steps": 1, "dit.revisit_prob": 1.0, "dit.steps": 2,
            "dit.revisit_min_gap": 4, "dit.revisit_pos_tol": 0.5, "dit.revisit_yaw_tol": 30.0}
    shares = {}
    for flag in (False, True):
        out = trained / f"run_own_rev_{flag}"
        train(tiny_config(trained, out=out, **over, **{"dit.own_context_revisits": flag}))
        recs = [r for r in _log(out) if r.get("phase") == "dit" and "loss" in r]
        assert recs and all(math.isfinite(r["loss"]) for r in recs)
        shares[flag] = {r["own_share"] for r in recs}
    assert shares == {False: {0.0}, True: {1.0}}


def test_own_context_prediction_has_no_grad() -> None:
    import torch

    from engine.model import WorldModel, preset
    from engine.train_attention import TrainAttention
    from engine.train_own_context import predict_clip
    torch.manual_seed(0)
    m = WorldModel(preset("tiny")).train()
    for p in m.dit.parameters():   # zero-init output layers would make every prediction 0
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    B, T, C, s = 2, 3, m.cfg.ae.latent_ch, m.cfg.ae.latent_size
    z = torch.randn(B, T, C, s, s)
    acts, frames = torch.zeros(B, T, 8), torch.arange(T).repeat(B, 1)
    prompt = m.prompt(m.prompt.tokenize(["night", "day"]))
    order = torch.arange(T).repeat(2)
    attn = TrainAttention(torch.arange(2 * T) < T, order, m.tokens_per_frame, use_flex=False)
    x_hat = predict_clip(m.dit, z, acts, frames, prompt, attn, steps=2, shift=3.0, context_sigma=0.02, rounds=2)
    assert x_hat.shape == z.shape and not x_hat.requires_grad and x_hat.grad_fn is None
    assert torch.equal(x_hat[:, 0], z[:, 0]) and not torch.allclose(x_hat[:, 1:], z[:, 1:])
    assert m.dit.training and all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("field,value", [("own_context_prob", 1.5), ("own_context_prob", -0.1),
                                         ("own_context_steps", 0), ("own_context_steps", 5),
                                         ("own_context_rounds", 3)])
def test_own_context_config_validated(tmp_path: Path, field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"dit.{field}"):
        train(tiny_config(tmp_path, **{f"dit.{field}": value}))


def test_revisit_clip_holds_both_visits() -> None:
    from engine.train_data import revisit_clip
    rng = np.random.default_rng(0)
    for _ in range(3000):
        T = int(rng.choice([4, 8, 16, 32]))
        n = int(rng.integers(T, 400))
        i = int(rng.integers(0, n - 1))
        j = int(rng.integers(i + 1, n))
        c = revisit_clip(n, T, i, j)
        assert len(c) == T and (np.diff(c) > 0).all() and c[0] >= 0 and c[-1] < n and i in c and j in c
    c = revisit_clip(1000, 32, 100, 600)          # far apart: two halves, j a quarter-half from the end
    assert list(c[:16]) == list(range(92, 108)) and list(c[16:]) == list(range(589, 605))


def _store(poses: np.ndarray | None, lengths: list[int]):
    from engine.train_data import FrameStore
    F = sum(lengths)
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return FrameStore(np.zeros((F, 2, 2, 3), np.uint8), np.zeros((F, 8), np.float32), start,
                      np.asarray(lengths, np.int64), ["p"] * len(lengths), [f"/d/ep{k}" for k in range(len(lengths))],
                      poses)


def test_revisit_pairs_match_place_and_heading() -> None:
    from engine.train_data import revisit_pairs
    n = 40
    p = np.zeros((2 * n, 3))
    p[:, 0] = np.arange(2 * n) * 1.0                 # walking: no place seen twice...
    p[30] = [5.05, 0.0, 359.0]                       # ...except frame 30 back at frame 5 (yaw wraps: 359 ~ 1)
    p[5] = [5.0, 0.0, 1.0]
    p[35] = [10.0, 0.0, 90.0]                        # frame 10's place, wrong heading: no pair
    p[n + 30] = p[n + 2]                             # episode 2: frame 30 revisits frame 2
    pairs = revisit_pairs(_store(p, [n, n]), min_gap=20, pos_tol=0.15, yaw_tol_deg=6.0)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 5, 30), (1, 2, 30)]
    assert len(revisit_pairs(_store(p, [n, n]), min_gap=26, pos_tol=0.15, yaw_tol_deg=6.0)) == 1
    with pytest.raises(ValueError, match="revisit_prob=0"):
        revisit_pairs(_store(None, [n]), 20, 0.15, 6.0)


def test_revisit_clips_train(trained: Path) -> None:
    train(tiny_config(trained, out=trained / "run_rev", **{"dit.revisit_prob": 1.0, "dit.steps": 2,
                                                          "dit.revisit_min_gap": 4, "dit.revisit_pos_tol": 0.5,
                                                          "dit.revisit_yaw_tol": 30.0}))
    data = [r for r in _log(trained / "run_rev") if r.get("event") == "data"]
    assert data and data[-1]["revisit_pairs"] > 0
    losses = [r["loss"] for r in _log(trained / "run_rev") if r.get("phase") == "dit" and "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)


def test_revisit_clip_lead_zero_returns_at_once() -> None:
    from engine.train_data import revisit_clip
    c = revisit_clip(1000, 32, 100, 600, lead=0.0)
    assert list(c[16:]) == list(range(600, 616)) and 100 in c


def test_contiguous_revisit_clip_keeps_every_frame_between_the_visits() -> None:
    from engine.train_data import revisit_clip
    c = revisit_clip(1000, 64, 100, 160, contiguous=True)     # a spin: 3 spare frames, none before i
    assert list(c) == list(range(100, 164))
    c = revisit_clip(1000, 64, 100, 140, contiguous=True)     # 23 spare: 5 before i, 18 after j
    assert list(c) == list(range(95, 159))
    assert list(revisit_clip(150, 64, 100, 140, contiguous=True)) == list(range(86, 150))   # the episode's end
    with pytest.raises(ValueError, match="cannot hold"):
        revisit_clip(1000, 64, 100, 170, contiguous=True)


def test_revisit_clips_train_contiguous(trained: Path) -> None:
    train(tiny_config(trained, out=trained / "run_rev_c", **{"dit.revisit_prob": 1.0, "dit.steps": 2,
                                                            "dit.revisit_min_gap": 4, "dit.revisit_max_gap": 6, "dit.clip": 8,
                                                            "dit.revisit_pos_tol": 0.5, "dit.revisit_yaw_tol": 30.0}))
    data = [r for r in _log(trained / "run_rev_c") if r.get("event") == "data"]
    train(tiny_config(trained, out=trained / "run_rev_all", **{"dit.revisit_prob": 1.0, "dit.steps": 1, "dit.clip": 8,
                                                              "dit.revisit_min_gap": 4, "dit.revisit_pos_tol": 0.5,
                                                              "dit.revisit_yaw_tol": 30.0}))
    every = [r for r in _log(trained / "run_rev_all") if r.get("event") == "data"][-1]["revisit_pairs"]
    assert data and 0 < data[-1]["revisit_pairs"] < every      # the far pairs are left out
    with pytest.raises(ValueError, match="dit.revisit_max_gap"):
        train(tiny_config(trained, out=trained / "run_rev_x", **{"dit.revisit_prob": 1.0, "dit.revisit_min_gap": 4,
                                                                "dit.revisit_max_gap": 64}))


def test_novelty_weights_follow_what_the_previous_frame_does_not_explain() -> None:
    import types

    import torch

    from engine.train import Trainer
    lat = torch.zeros(6, 2, 2, 2)
    lat[3, 0, 0, 0] = 4.0                       # frame 3 differs from frame 2 in one latent only
    fake = types.SimpleNamespace(latents=lat)
    rows = torch.tensor([[2, 3]])
    frames = torch.tensor([[0, 3]])             # frame index 0: an episode start, no previous frame
    z = lat[rows].float()
    w = Trainer.novelty(fake, z, rows, frames, 2.0)
    assert torch.equal(w[0, 0], torch.ones(2, 2, 2))           # episode start: weight 1 everywhere
    assert float(w[0, 1, 0, 0, 0]) == 1.0 + 2.0 * 8.0          # the one new latent: 8x the frame's mean change
    assert float(w[0, 1].sum()) == 8 + 2.0 * 8.0


def test_revisit_lead_and_novelty_train(trained: Path) -> None:
    train(tiny_config(trained, out=trained / "run_nov", **{"dit.revisit_prob": 0.5, "dit.revisit_lead": 0.0,
                                                          "dit.novelty_weight": 2.0, "dit.steps": 2,
                                                          "dit.revisit_min_gap": 4, "dit.revisit_pos_tol": 0.5,
                                                          "dit.revisit_yaw_tol": 30.0}))
    losses = [r["loss"] for r in _log(trained / "run_nov") if r.get("phase") == "dit" and "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    with pytest.raises(ValueError, match="novelty_weight"):
        train(tiny_config(trained, out=trained / "run_bad", **{"dit.novelty_weight": -1.0}))


def test_keep_memory_keeps_each_samples_leading_frames_true() -> None:
    """train_own_context.keep_memory: frames [0, memory[b]) from the true latents, the rest predicted."""
    import torch

    from engine.train_own_context import keep_memory
    z, x_hat = torch.zeros(3, 5, 2, 1, 1), torch.ones(3, 5, 2, 1, 1)
    got = keep_memory(x_hat, z, torch.tensor([0, 2, 5]))
    assert got[:, :, 0, 0, 0].tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]]


def test_own_context_memory_trains_and_needs_own_context_revisits(trained: Path) -> None:
    """dit.own_context_memory=true: every clip a revisit clip, every sample picked: training runs with own
    context applied (own_share 1); with dit.own_context_revisits=false it is a clear error naming both."""
    over = {"dit.own_context_prob": 1.0, "dit.own_context_steps": 1, "dit.revisit_prob": 1.0, "dit.steps": 2,
            "dit.revisit_min_gap": 4, "dit.revisit_pos_tol": 0.5, "dit.revisit_yaw_tol": 30.0,
            "dit.own_context_memory": True}
    out = trained / "run_own_memory"
    train(tiny_config(trained, out=out, **over))
    recs = [r for r in _log(out) if r.get("phase") == "dit" and "loss" in r]
    assert recs and all(math.isfinite(r["loss"]) for r in recs) and {r["own_share"] for r in recs} == {1.0}
    with pytest.raises(ValueError, match="own_context_memory=true needs dit.own_context_revisits=true"):
        train(tiny_config(trained, out=trained / "run_own_memory_bad", **over, **{"dit.own_context_revisits": False}))
