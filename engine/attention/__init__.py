"""Attention modes behind one call (see base.py). `build_mode(name, **params)` makes one from config."""
from __future__ import annotations

from typing import Any, Callable

from engine.attention.base import AttentionMode, FrameAttention, SequenceAttention, StepInfo
from engine.attention.dense import DenseAttention, DenseConfig
from engine.attention.fastar import FASTAR_MODES, FastARAttention
from engine.attention.probe import ProbeAttention
from engine.attention.window import WindowAttention, WindowConfig

# name -> factory(**params). The FAST-AR modes register here too (engine/attention/fastar*.py).
MODES: dict[str, Callable[..., AttentionMode]] = {
    "dense": lambda **p: DenseAttention(DenseConfig(**p)),
    "window": lambda **p: WindowAttention(WindowConfig(**p)),
    "probe": lambda **p: ProbeAttention(**p),   # dense + per-layer sparsity, to choose the FAST-AR schedule
    **FASTAR_MODES,
}


def build_mode(name: str, **params: Any) -> AttentionMode:
    """Make the attention mode `name` with its config `params`; unknown names and fields are clear errors."""
    if name not in MODES:
        raise ValueError(f"unknown attention mode {name!r}; available: {sorted(MODES)}")
    try:
        return MODES[name](**(params or {}))
    except TypeError as e:
        raise ValueError(f"attention mode {name!r}: bad config field ({e})") from None


__all__ = ["AttentionMode", "FrameAttention", "SequenceAttention", "StepInfo", "MODES", "build_mode", "FastARAttention"]
