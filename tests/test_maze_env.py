"""MazeEnv: protocol, determinism, exact turns, action validation, config instantiation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.env import ActionError, Env, make_action
from worlds.maze.env import MazeConfig, MazeEnv

ROOT = Path(__file__).resolve().parents[1]


def _random_actions(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = (rng.random(8) < 0.3).astype(np.float32)
        a[7] = np.float32(rng.uniform(-1, 1)) if rng.random() < 0.4 else 0.0
        out.append(a)
    return out


def test_is_env_and_spec() -> None:
    env = MazeEnv()
    assert isinstance(env, Env)
    assert env.spec.world == "maze" and (env.spec.height, env.spec.width) == (128, 128) and env.spec.fps == 25.0
    assert env.attention_modes == ()
    with pytest.raises(ValueError):
        env.set_attention("window")


def test_same_seed_and_actions_bit_identical() -> None:
    actions = _random_actions(40, 1)
    runs = []
    for _ in range(2):
        env = MazeEnv(height=64, width=96)
        frames = [env.reset(7, "stone dusk haze")] + [env.step(a) for a in actions]
        runs.append((np.stack(frames), env.pose))
    assert runs[0][0].dtype == np.uint8 and runs[0][0].shape == (41, 64, 96, 3)
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_different_seeds_and_prompts_differ() -> None:
    env = MazeEnv(height=64, width=64)
    a = env.reset(0, "brick")
    b = env.reset(1, "brick")
    c = env.reset(0, "metal night")
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("key", ["turn_left", "turn_right"])
def test_sixty_turn_steps_return_identical_frame_and_pose(key: str) -> None:
    env = MazeEnv(height=64, width=64)
    f0 = env.reset(3, "wood")
    p0 = env.pose
    yaws = []
    for _ in range(60):
        f = env.step(make_action([key]))
        yaws.append(env.pose[2])
    assert env.pose == p0
    assert np.array_equal(f, f0)
    assert all(0.0 <= y < 360.0 for y in yaws)
    assert len(set(yaws)) == 60


def test_motion_amounts() -> None:
    env = MazeEnv(height=32, width=32)
    env.reset(5, "")
    # find a pose with open space ahead: teleport to a floor cell centre facing an open neighbour
    m = env.map
    assert m is not None
    for y in range(m.size):
        for x in range(m.size - 3):
            if not m.walls[y, x:x + 4].any():
                env.teleport(x + 0.5, y + 0.5, 0.0)
                break
        else:
            continue
        break
    x0, y0, _ = env.pose
    env.step(make_action(["forward"]))
    assert math.isclose(env.pose[0] - x0, 0.08, abs_tol=1e-12) and env.pose[1] == y0
    env.step(make_action(["forward", "run"]))
    assert math.isclose(env.pose[0] - x0, 0.24, abs_tol=1e-12)
    env.step(make_action([], mouse_dx=1.0))
    assert env.pose[2] == 15.0
    env.step(make_action([], mouse_dx=-1.0))
    env.step(make_action(["turn_left"]))
    assert env.pose[2] == 354.0


@pytest.mark.parametrize("bad, msg", [
    (np.zeros(7), "length 8"),
    (np.array([1, 0, 0, 0, 0, 0, 0, np.nan]), "non-finite"),
    (np.array([0.5, 0, 0, 0, 0, 0, 0, 0]), "forward"),
    (np.array([0, 0, 0, 0, 0, 0, 0, 1.5]), "mouse_dx"),
    ("forward", "expected"),
])
def test_step_rejects_bad_actions(bad: object, msg: str) -> None:
    env = MazeEnv(height=32, width=32)
    env.reset(0, "")
    pose = env.pose
    with pytest.raises(ActionError, match=msg):
        env.step(bad)  # type: ignore[arg-type]
    assert env.pose == pose


def test_info_and_teleport() -> None:
    env = MazeEnv(height=32, width=32)
    env.reset(2, "night brick")
    info = env.info()
    assert info["prompt"] == "brick checker red night clear" and info["seed"] == 2
    assert info["pose"] == list(env.pose)
    with pytest.raises(ValueError, match="inside a wall"):
        env.teleport(0.5, 0.5, 0.0)
    x, y, _ = env.pose
    env.teleport(x, y, 370.0)
    assert env.pose == (x, y, 10.0)


def test_config_mirrors_constructor_and_instantiates() -> None:
    import dataclasses
    import inspect

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "world" / "maze.yaml")
    assert cfg.name == "maze" and cfg.sim._target_ == "worlds.maze.env.MazeEnv"
    keys = {k for k in cfg.sim if k != "_target_"}
    params = set(inspect.signature(MazeEnv.__init__).parameters) - {"self"}
    assert keys == params == {f.name for f in dataclasses.fields(MazeConfig)}
    env = instantiate(cfg.sim)
    assert isinstance(env, MazeEnv) and env.default_prompt == cfg.default_prompt


def test_bad_constructor_args() -> None:
    with pytest.raises(ValueError, match="grid_size"):
        MazeEnv(grid_size=3)
    with pytest.raises(ValueError, match="accepted words"):
        MazeEnv(default_prompt="lava")
