"""Spatial memory (engine/memory.py): dead-reckoned poses, which stored frame a new frame starts from, and the
sampler's anchored start, through NeuralEnv (the play/bench/evaluation path)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.env import make_action
from engine.memory import MemoryConfig, SpatialMemory
from engine.world_model import NeuralEnv
from tests.test_model_core import random_model
from worlds.maze.physics import dead_reckon, step_pose

TURN = make_action(("turn_right",))
STILL = make_action(())
LATENT = (2, 4, 4)


def _memory(**kw: object) -> SpatialMemory:
    return SpatialMemory(MemoryConfig(enabled=True, **kw), "maze", LATENT, torch.device("cpu"), torch.float32)


def _latent(k: int) -> torch.Tensor:
    return torch.full((1, *LATENT), float(k))


def test_dead_reckoning_is_the_physics_without_walls() -> None:
    """In the open the reckoned pose is the simulator's; into a wall it runs ahead (the documented limit)."""
    open_ = np.zeros((8, 8), bool)
    pose = (4.0, 4.0, 30.0)
    for keys, mdx in ((("forward",), 0.0), (("strafe_left", "run"), 0.3), (("back", "turn_left"), -0.2)):
        a = make_action(keys, mdx)
        assert np.allclose(dead_reckon(pose, a), step_pose(open_, pose, a))
        pose = step_pose(open_, pose, a)
    walled = np.zeros((8, 8), bool)
    walled[:, 5] = True                           # a wall column just east of x = 5
    at = (4.7, 4.5, 0.0)                          # facing east, 0.1 from the wall's face (radius 0.2)
    assert step_pose(walled, at, make_action(("forward",)))[0] < 4.8
    assert dead_reckon(at, make_action(("forward",)))[0] == pytest.approx(4.78)


def test_a_full_turn_finds_the_frame_a_turn_back() -> None:
    """60 turn-right frames return the exact yaw: frame 60 + k starts from frame k's latent, and a frame whose
    match is younger than min_gap starts from nothing."""
    mem = _memory(min_gap=16)
    mem.reset()
    for k in range(60):
        assert mem.anchor(TURN, k) is None        # first turn: every pose is new
        mem.commit(TURN, _latent(k), k)
    for k in range(60, 70):
        z = mem.anchor(TURN, k)
        assert z is not None and float(z[0, 0, 0, 0]) == k - 60
        mem.commit(TURN, _latent(k), k)
    assert mem.stats() == {"held": 60, "anchored": 10}   # each return replaced its pose's entry
    short = _memory(min_gap=61)
    for k in range(61):
        short.commit(TURN, _latent(k), k)
    assert short.anchor(TURN, 61) is None         # frame 1 is only 60 frames old


def test_standing_still_never_anchors_and_capacity_drops_the_oldest() -> None:
    mem = _memory(min_gap=4)
    for k in range(20):                           # one pose: each frame replaces the last, never 4 frames old
        assert mem.anchor(STILL, k) is None
        mem.commit(STILL, _latent(k), k)
    assert mem.stats()["held"] == 1
    small = _memory(min_gap=1, capacity=3)
    walk = make_action(("forward",))
    for k in range(5):
        small.commit(walk, _latent(k), k)
    assert sorted(small.frames.tolist()) == [2, 3, 4]


def test_disabled_memory_is_inert_and_config_errors_name_the_field() -> None:
    mem = SpatialMemory(MemoryConfig(), "maze", LATENT, torch.device("cpu"), torch.float32)
    mem.commit(TURN, _latent(0), 0)
    assert mem.anchor(TURN, 100) is None and mem.stats()["held"] == 0
    with pytest.raises(ValueError, match=r"engine.memory: unknown field\(s\) \['stepz'\]"):
        MemoryConfig.build({"enabled": True, "stepz": 2})
    with pytest.raises(ValueError, match="capacity"):
        MemoryConfig.build({"capacity": 0})
    with pytest.raises(ValueError, match="worlds/nowhere/physics.py"):
        SpatialMemory(MemoryConfig(enabled=True), "nowhere", LATENT, torch.device("cpu"), torch.float32)


def test_neural_env_anchors_the_second_turn_repeatably() -> None:
    """Through NeuralEnv with a tiny model: a turn of 60 frames and 4 more; the first turn's frames equal those
    of an env without memory (nothing to anchor), the frames after it differ (anchored), two runs with memory
    give the same frames, and info() counts the anchored frames."""
    m = random_model(torch.float32)

    def roll(memory: dict | None) -> tuple[list[np.ndarray], NeuralEnv]:
        env = NeuralEnv(model=m, device="cpu", attention="dense", steps=4, memory=memory)
        env.reset(3, "")
        return [env.step(TURN) for _ in range(64)], env
    on, env = roll({"enabled": True, "min_gap": 16})
    again, _ = roll({"enabled": True, "min_gap": 16})
    off, plain = roll(None)
    assert all(np.array_equal(a, b) for a, b in zip(on, again))
    # frame 0 (reset) is at yaw 0; step k lands on yaw 6k, so step 60 is the first return (to frame 0's pose)
    assert all(np.array_equal(a, b) for a, b in zip(on[:59], off[:59]))
    assert not any(np.array_equal(a, b) for a, b in zip(on[59:], off[59:]))
    assert env.info()["memory"] == {"held": 60, "anchored": 5}
    assert plain.info()["memory"] is None


def test_anchored_sample_starts_from_the_stored_latent() -> None:
    """Sampler.sample with an anchor is (1 - s) anchor + s noise at step k, then the remaining Euler steps."""
    m = random_model(torch.float64)
    env = NeuralEnv(model=m, device="cpu", attention="dense", steps=4)
    s = env.sampler
    s.reset(1, "")
    a = torch.as_tensor(TURN[None], dtype=torch.float64)
    z0 = torch.randn(1, s.C, s.size, s.size, dtype=torch.float64)
    s.commit(z0, a)
    state = s.gen.get_state()
    got = s.sample(a, None, z0, 2)
    s.gen.set_state(state)
    f = s.frame_inputs(a)
    x = torch.randn((1, s.C, s.size, s.size), generator=s.gen).to(torch.float64)
    x = (1 - s.sigmas[2].double()) * z0 + s.sigmas[2].double() * x
    for i in (2, 3):
        x = x + s.dts[i] * s._pass(x, i, f, commit=False)
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="anchor_step must be in 1..3"):
        s.sample(a, None, z0, 4)


def test_any_sampler_reset_empties_the_memory() -> None:
    """The evaluation resets env.sampler directly between rollouts: the memory must not carry one episode's
    latents into the next (it would anchor a new rollout to another rollout's frames)."""
    env = NeuralEnv(model=random_model(torch.float32), device="cpu", attention="dense", steps=4, memory=True)
    env.reset(0, "")
    env.step(TURN)
    assert env.info()["memory"]["held"] == 2
    env.sampler.reset(1, "")
    assert env.info()["memory"] == {"held": 0, "anchored": 0}


def test_memory_off_holds_no_store() -> None:
    """Off (the benchmark's default) it allocates nothing: the attention modes' memory figures are theirs."""
    mem = SpatialMemory(MemoryConfig(capacity=2048), "maze", LATENT, torch.device("cpu"), torch.float32)
    assert mem.latents.numel() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("attention", ["dense", "window", "fastar"])
def test_cuda_graphs_anchor_repeatably(attention: str) -> None:
    """On CUDA with graphs (whole-pass graphs for window and fastar once their shapes settle): an anchored frame
    skips the first passes of the schedule, and two rollouts still give the same frames."""
    m = random_model(torch.float32)

    def roll() -> tuple[list[np.ndarray], NeuralEnv]:
        env = NeuralEnv(model=m, device="cuda", attention=attention, memory={"enabled": True, "min_gap": 16})
        env.reset(3, "")
        return [env.step(TURN) for _ in range(66)], env
    a, env = roll()
    b, _ = roll()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert env.info()["memory"] == {"held": 60, "anchored": 7} and env.info()["cuda_graphs"]
