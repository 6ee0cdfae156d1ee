"""Command line of play.py: hydra overrides in, a typed config out, and bad input as exit code 2.

play.py composes the config with hydra's compose API rather than @hydra.main: the same override syntax
(`python play.py world=maze engine=sim attention=window`), but no working-directory change, no outputs/
folder, and the process keeps control of its exit codes and of the one-line error messages.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from controls.errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

USAGE = """usage: python play.py [override ...]     (hydra overrides; --cfg prints the composed config)

  world=maze engine=sim|model attention=dense|window device=auto seed=0 prompt="..."
  headless=true frames=N out=DIR          play without a display (the autopilot plays), write the session
  autopilot=true record=true screenshot=PATH controls.window.scale=4 controls.window.fps=20
  replay=DIR [check=true threshold_db=40 report=PATH allow_mismatch=true]
                                          replay a session (or every session under DIR) and compare frames
exit codes: 0 ok, 1 regression or failed recording, 2 bad input, 130 interrupted
"""


@dataclass
class PlayConfig:
    """The root options of conf/config.yaml (the groups world/engine/attention/controls are typed apart)."""
    config_version: int = 2
    seed: int = 0
    prompt: Optional[str] = None
    device: str = "auto"
    cpu_window: Optional[int] = 12
    headless: bool = False
    autopilot: bool = False
    frames: Optional[int] = None
    headless_frames: int = 300
    record: Optional[bool] = None
    out: Optional[str] = None
    sessions_dir: str = "sessions"
    screenshot: Optional[str] = None
    replay: Optional[str] = None
    check: bool = False
    threshold_db: float = 40.0
    report: Optional[str] = None
    worst: int = 4
    allow_mismatch: bool = False


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise UsageError("config: " + " ".join(str(e).strip().splitlines()[:2])) from None


def options(cfg: DictConfig) -> PlayConfig:
    """The root options, type-checked (frames=abc is an error naming 'frames')."""
    names = [f.name for f in fields(PlayConfig)]
    try:
        node = OmegaConf.merge(OmegaConf.structured(PlayConfig),
                               {k: cfg[k] for k in names if k in cfg})
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise UsageError(f"config field '{getattr(e, 'full_key', '?')}': {str(e).splitlines()[0]}") from None


def overridden(overrides: list[str]) -> set[str]:
    """Top-level names the command line sets (`engine=model` and `engine.checkpoint=x` both give 'engine')."""
    return {o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] for o in overrides if "=" in o}


def world_prompt(cfg: DictConfig) -> str:
    """The prompt to play: the `prompt` option, else the world's default prompt, else empty."""
    if cfg.get("prompt") is not None:
        return str(cfg.prompt)
    for key in ("world.default_prompt", "world.sim.default_prompt"):
        p = OmegaConf.select(cfg, key, default=None)
        if p is not None:
            return str(p)
    return ""


def run_main(argv: list[str] | None, body: Callable[[DictConfig, PlayConfig, list[str]], int]) -> int:
    """Parse argv, compose, call `body`; bad input of any known kind becomes one line and EXIT_USAGE."""
    from engine.env import ActionError
    from engine.episode import EpisodeError
    from engine.factory import FactoryError

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    show_cfg = "--cfg" in args
    overrides = [a for a in args if a != "--cfg"]
    try:
        cfg = compose(overrides)
        if show_cfg:
            print(OmegaConf.to_yaml(cfg))
            return 0
        return body(cfg, options(cfg), overrides)
    except (UsageError, EpisodeError, ActionError, FactoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C, or one during a replay: sessions are closed by then
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
