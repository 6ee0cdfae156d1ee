"""Maze map, prompt vocabulary and collision properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from worlds.maze.map import FLOOR, NUM_PANELS, PANEL0, generate_map
from worlds.maze.physics import RADIUS, step_pose
from worlds.maze.style import (PROMPT_VOCABULARY, PromptError, canonical_prompt, parse_prompt,
                               random_prompt)


# ------------------------------------------------------------------ prompts

def test_canonical_prompt_order_and_defaults() -> None:
    assert canonical_prompt("night stone") == "stone checker red night clear"
    assert canonical_prompt("") == "brick checker red day clear"
    assert canonical_prompt("FOG Metal") == "metal checker red day fog"
    assert parse_prompt("carpet blue").floor == "carpet"


def test_unknown_word_lists_accepted_words() -> None:
    with pytest.raises(PromptError) as e:
        parse_prompt("brick lava")
    msg = str(e.value)
    assert "'lava'" in msg
    for cat, words in PROMPT_VOCABULARY.items():
        assert cat in msg and all(w in msg for w in words)
    assert isinstance(e.value, ValueError)


def test_two_words_of_a_category_rejected() -> None:
    with pytest.raises(PromptError, match="two words of category 'wall'") as e:
        parse_prompt("brick stone")
    assert all(w in str(e.value) for w in PROMPT_VOCABULARY["wall"])


def test_random_prompt_is_canonical_and_covers_vocabulary() -> None:
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for _ in range(300):
        p = random_prompt(rng)
        assert canonical_prompt(p) == p
        seen.update(p.split())
    assert seen == {w for ws in PROMPT_VOCABULARY.values() for w in ws}


# ------------------------------------------------------------------ maps

@pytest.mark.parametrize("seed", range(12))
def test_map_connected_with_landmarks(seed: int) -> None:
    m = generate_map(seed, 24)
    assert m.kind.shape == (24, 24)
    assert (m.kind[0] != FLOOR).all() and (m.kind[-1] != FLOOR).all()
    assert (m.kind[:, 0] != FLOOR).all() and (m.kind[:, -1] != FLOOR).all()
    cells = m.floor_cells()
    dist = m.bfs((int(cells[0][0]), int(cells[0][1])))
    assert ((dist >= 0) == (m.kind == FLOOR)).all()
    assert len(m.rooms) >= 2
    panels = set(int(k) for k in np.unique(m.kind) if k >= PANEL0)
    assert len(panels) == NUM_PANELS
    assert m.lamps.any() and not (m.lamps & (m.kind != FLOOR)).any()


def test_map_deterministic_and_seed_dependent() -> None:
    assert np.array_equal(generate_map(4).kind, generate_map(4).kind)
    assert not np.array_equal(generate_map(4).kind, generate_map(5).kind)
    assert generate_map(4, 16).kind.shape == (16, 16)


# ------------------------------------------------------------------ collision

def _circle_overlaps_wall(walls: np.ndarray, x: float, y: float, r: float) -> bool:
    g = walls.shape[0]
    for cy in range(max(0, math.floor(y - r) - 1), min(g, math.floor(y + r) + 2)):
        for cx in range(max(0, math.floor(x - r) - 1), min(g, math.floor(x + r) + 2)):
            if walls[cy, cx]:
                nx, ny = min(max(x, cx), cx + 1), min(max(y, cy), cy + 1)
                if (x - nx) ** 2 + (y - ny) ** 2 < r * r:
                    return True
    return False


def _segment_crosses_wall(walls: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> bool:
    for t in np.linspace(0.0, 1.0, 33):
        x, y = a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t
        if walls[int(math.floor(y)), int(math.floor(x))]:
            return True
    return False


_key_vec = st.lists(st.sampled_from([0.0, 1.0]), min_size=7, max_size=7)
_mouse = st.one_of(st.just(0.0), st.floats(-1.0, 1.0, allow_nan=False))
_action = st.builds(lambda k, m: np.array(k + [m], np.float32), _key_vec, _mouse)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 50), actions=st.lists(_action, min_size=1, max_size=120),
       bias=st.floats(0.0, 1.0))
def test_never_crosses_or_touches_a_wall(seed: int, actions: list[np.ndarray], bias: float) -> None:
    m = generate_map(seed, 16)
    walls = m.walls
    pose = m.spawn(np.random.default_rng(seed))
    fwd = np.array([1, 0, 0, 0, 0, 0, 1, 0], np.float32)   # runs push hard against walls
    for i, a in enumerate(actions):
        act = fwd if (i * 0.37 + bias) % 1.0 < 0.3 else a
        new = step_pose(walls, pose, act)
        assert not _circle_overlaps_wall(walls, new[0], new[1], RADIUS), (pose, act, new)
        assert not _segment_crosses_wall(walls, pose[:2], new[:2]), (pose, act, new)
        assert math.hypot(new[0] - pose[0], new[1] - pose[1]) <= 0.2 + 1e-9
        assert 0.0 <= new[2] < 360.0
        pose = new


def test_slides_along_wall() -> None:
    walls = np.ones((5, 5), bool)
    walls[1:4, 1:4] = False                 # a 3x3 room
    pose = (2.5, 1.3, 300.0)                # near the north wall, facing north-east-ish (yaw 300 = up-right)
    for _ in range(30):
        pose = step_pose(walls, pose, np.array([1, 0, 0, 0, 0, 0, 0, 0], np.float32))
    assert pose[1] == pytest.approx(1.0 + RADIUS, abs=1e-5)   # pressed against the wall
    assert pose[0] > 3.5                                       # but slid east along it
