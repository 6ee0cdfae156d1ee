"""The `controls` config group (conf/controls/*.yaml), typed: keymap, window, HUD and autopilot.

The dataclasses live beside the classes they configure; this one gathers them so a typo in a YAML file
or an override (`controls.window.scale=abc`, `controls.keymap.keyz=...`) is an error naming the field,
not a silent default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from controls.autopilot import AutopilotConfig
from controls.errors import UsageError
from controls.hud import HudConfig
from controls.keymap import KeymapConfig
from controls.window import WindowConfig


@dataclass
class ControlsConfig:
    keymap: KeymapConfig = field(default_factory=KeymapConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    hud: HudConfig = field(default_factory=HudConfig)
    autopilot: AutopilotConfig = field(default_factory=AutopilotConfig)


def load_controls(node: Any) -> ControlsConfig:
    """Validate `cfg.controls` against ControlsConfig and return it as dataclasses."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ControlsConfig), node or {})
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        key = getattr(e, "full_key", None)
        raise UsageError(f"config field 'controls.{key}': {msg}" if key else f"config 'controls': {msg}") from None
