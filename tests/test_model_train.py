"""The whole trainer on the CPU with the tiny config: data -> AE -> latents -> DiT, loss goes down,
checkpoints load in NeuralEnv, a second run resumes, and fp16 bundle weights start a run with a fresh optimizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
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
