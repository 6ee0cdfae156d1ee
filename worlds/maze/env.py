"""MazeEnv: the procedural first-person maze, implementing engine.env.Env (the ground truth the world model
learns to imitate).

    env = MazeEnv()                       # or hydra.utils.instantiate(cfg.world.sim)
    frame = env.reset(seed=3, prompt="stone night fog")
    frame = env.step(make_action(["forward"]))
    env.info()   # {"pose": [x, y, yaw_deg], "prompt": canonical prompt, "seed": 3, ...}

Same seed, prompt and actions give bit-identical frames on any machine (see render.py and physics.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.env import Action, EnvSpec, Frame, validate_action
from worlds.maze.map import MazeMap, generate_map
from worlds.maze.physics import RADIUS, Pose, square_free, step_pose, wrap_yaw
from worlds.maze.render import RenderAssets, Renderer, build_assets
from worlds.maze.style import Style, canonical_prompt, parse_prompt

DEFAULT_PROMPT = "brick checker red day clear"
FPS = 25.0


@dataclass
class MazeConfig:
    """Mirrors the `sim:` node of conf/world/maze.yaml (the keyword arguments of MazeEnv)."""
    height: int = 128
    width: int = 128
    grid_size: int = 24
    default_prompt: str = DEFAULT_PROMPT


class MazeEnv:
    """The maze simulator. `pose` is (x, y, yaw_deg) in cell units; yaw 0 looks along +x, 90 along +y."""

    def __init__(self, height: int = 128, width: int = 128, grid_size: int = 24,
                 default_prompt: str = DEFAULT_PROMPT) -> None:
        for name, v, lo in (("height", height, 2), ("width", width, 2), ("grid_size", grid_size, 8)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"MazeEnv: {name} must be an integer >= {lo}, got {v!r}")
        if height % 2:
            raise ValueError(f"MazeEnv: height must be even (the horizon sits between two rows), got {height}")
        parse_prompt(default_prompt)   # fail early, listing the vocabulary, if the default is bad
        self.spec = EnvSpec(world="maze", height=int(height), width=int(width), fps=FPS)
        self.grid_size = int(grid_size)
        self.default_prompt = default_prompt
        self.renderer = Renderer(int(height), int(width))
        self.map: MazeMap | None = None
        self.style: Style | None = None
        self.prompt: str = canonical_prompt(default_prompt)
        self.seed: int | None = None
        self.pose: Pose = (0.0, 0.0, 0.0)
        self.frame_index = 0
        self._assets: RenderAssets | None = None

    # ------------------------------------------------------------------ Env protocol
    def reset(self, seed: int, prompt: str | None = None) -> Frame:
        """New episode: the map of `seed`, the style of `prompt` (None: the default prompt), spawn from the seed."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"MazeEnv.reset: seed must be a non-negative integer, got {seed!r}")
        self.style = parse_prompt(self.default_prompt if prompt is None else prompt)
        self.prompt = self.style.prompt()
        self.seed = int(seed)
        self.map = generate_map(self.seed, self.grid_size)
        self._assets = build_assets(self.map, self.style)
        spawn_rng = np.random.Generator(np.random.PCG64([self.seed, 1]))
        self.pose = self.map.spawn(spawn_rng)
        self.frame_index = 0
        return self.render()

    def step(self, action: Action) -> Frame:
        """Validate the action (ActionError names the problem), move, return the new frame."""
        if self.map is None:
            raise RuntimeError("MazeEnv.step: call reset(seed, prompt) first")
        self.move(action)
        return self.render()

    def info(self) -> dict[str, Any]:
        return {"pose": [float(v) for v in self.pose], "prompt": self.prompt, "seed": self.seed,
                "frame": self.frame_index, "world": "maze"}

    @property
    def attention_modes(self) -> tuple[str, ...]:
        return ()

    def set_attention(self, mode: str) -> None:
        raise ValueError(f"MazeEnv has no attention modes (it is the simulator); got {mode!r}")

    # ------------------------------------------------------------------ extras for evaluation and tools
    @property
    def assets(self) -> RenderAssets:
        """The render assets of the current episode (for batch rendering several envs in one call)."""
        if self._assets is None:
            raise RuntimeError("MazeEnv.assets: call reset(seed, prompt) first")
        return self._assets

    def move(self, action: Action) -> Pose:
        """step() without rendering: validate and apply the action, return the new pose (batch renderers
        call this on several envs, then render them together with Renderer.render)."""
        if self.map is None:
            raise RuntimeError("MazeEnv.move: call reset(seed, prompt) first")
        a = validate_action(action, "MazeEnv.step action")
        self.pose = step_pose(self.map.walls, self.pose, a)
        self.frame_index += 1
        return self.pose

    def render(self) -> Frame:
        """The frame at the current pose, uint8 (H, W, 3)."""
        if self._assets is None:
            raise RuntimeError("MazeEnv.render: call reset(seed, prompt) first")
        return self.renderer.render([self._assets], np.asarray([self.pose], np.float64))[0]

    def teleport(self, x: float, y: float, yaw: float) -> Frame:
        """Put the player at (x, y, yaw_deg) (yaw wrapped to [0, 360)); ValueError if that spot is inside a wall."""
        if self.map is None:
            raise RuntimeError("MazeEnv.teleport: call reset(seed, prompt) first")
        x, y = float(x), float(y)
        if not square_free(self.map.walls, x, y, RADIUS):
            raise ValueError(f"MazeEnv.teleport: ({x}, {y}) puts the player (radius {RADIUS}) inside a wall")
        self.pose = (x, y, wrap_yaw(yaw))
        return self.render()
