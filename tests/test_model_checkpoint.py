"""Checkpoint round trip, clear errors for corrupt / truncated / missing / mismatched files, bundled weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import BUNDLED, MANIFEST, CheckpointError, load_checkpoint, load_model, save_checkpoint
from engine.env import make_action
from engine.model import WorldModel, preset
from engine.world_model import NeuralEnv


def _save(tmp: Path, dtype: torch.dtype | None = None, shard_bytes: int = 256 * 1024) -> tuple[WorldModel, Path]:
    torch.manual_seed(0)
    m = WorldModel(preset("tiny"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp / "ckpt"
    save_checkpoint(path, m.state_dict(), m.cfg.to_dict(), meta={"step": 3}, dtype=dtype, shard_bytes=shard_bytes)
    return m, path


def test_round_trip_fp32_and_fp16(tmp_path: Path) -> None:
    m, path = _save(tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    assert len(manifest["shards"]) > 1 and all(e["bytes"] <= 256 * 1024 for e in manifest["shards"])
    loaded, mf = load_model(path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert mf["meta"]["step"] == 3 and len(mf["sha256"]) == 64
    _, path16 = _save(tmp_path / "h", dtype=torch.float16)
    loaded16, _ = load_model(path16)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(loaded16.state_dict()[k], v.half().float(), rtol=0, atol=0)


def test_optimizer_state_round_trip(tmp_path: Path) -> None:
    m = WorldModel(preset("tiny"))
    opt_state = {"exp_avg.x": torch.randn(10), "step.x": torch.tensor(5.0)}
    save_checkpoint(tmp_path / "c", m.state_dict(), m.cfg.to_dict(), optim_state=opt_state)
    _, model, optim = load_checkpoint(tmp_path / "c", optimizer=True)
    assert torch.equal(optim["exp_avg.x"], opt_state["exp_avg.x"]) and "latent_std" in model
    _, _, none = load_checkpoint(tmp_path / "c")
    assert none == {}


def test_corrupt_truncated_missing_mismatched(tmp_path: Path) -> None:
    _, path = _save(tmp_path)
    shard = path / "model-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model-00001.safetensors: sha256 does not match"):
        load_model(path)
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(CheckpointError, match="model-00001.safetensors has .* bytes.*truncated"):
        load_model(path)
    shard.unlink()
    with pytest.raises(CheckpointError, match="model-00001.safetensors is missing.*retrain"):
        load_model(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    # a manifest whose config does not fit the weights (files from two checkpoints)
    _, path2 = _save(tmp_path / "b")
    mf = json.loads((path2 / MANIFEST).read_text())
    mf["config"]["dit"]["width"] = 128
    mf["config"]["dit"]["heads"] = 2
    (path2 / MANIFEST).write_text(json.dumps(mf))
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_model(path2)
    (path2 / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        load_model(path2)


def test_neural_env_from_checkpoint(tmp_path: Path) -> None:
    _, path = _save(tmp_path, dtype=torch.float16)
    env = NeuralEnv(checkpoint=str(path), device="cpu", steps=1)
    env.reset(0, "")
    assert env.step(make_action(("forward",))).shape == (128, 128, 3)
    assert env.info()["checkpoint_sha256"] == json.loads((path / MANIFEST).read_text())["sha256"]


@pytest.mark.skipif(not (BUNDLED / MANIFEST).exists(),
                    reason="no bundled checkpoint yet in worlds/maze/weights (train one: docs/MODEL.md)")
def test_bundled_checkpoint_plays() -> None:
    env = NeuralEnv(device="cpu", steps=2)
    f0 = env.reset(1_000_001, "brick day")
    frames = [env.step(make_action(("forward",))) for _ in range(2)]
    for f in [f0] + frames:
        assert f.shape == (128, 128, 3) and f.dtype == np.uint8
    assert 5 < float(np.mean(frames[-1])) < 250
    total = sum(p.stat().st_size for p in BUNDLED.iterdir())
    assert total <= 40 * 2 ** 20 and all(p.stat().st_size <= 16 * 2 ** 20 for p in BUNDLED.iterdir())
