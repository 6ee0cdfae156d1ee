"""torch.compile as the engine uses it: static shapes and inductor's deterministic mode.

Why deterministic mode: by default inductor times several launch configurations of each reduction kernel
(block size along the reduced axis, warps) on first use and keeps the fastest. Those configurations sum in
different orders, so which one wins (a near tie, decided by timing noise, on a machine whose on-disk cache is
empty) changes the low bits of layer norms and softmaxes. An autoregressive rollout amplifies those bits: on
the H100, dense's frames differed between processes (frame 0 against the truth by ~1e-3 dB, and by thousands
of frames two dense rollouts were as far apart as two different samples). The engine promises the same frames
for the same seed, trace, device and mode, so inductor's deterministic mode is always on: reductions take a
configuration by heuristic, never by timing (pointwise kernels are still tuned: their numerics do not depend
on the configuration). Cost measured on the H100: docs/BENCHMARKS.md, session 23.
"""
from __future__ import annotations

from typing import Any, Callable

# inductor config keys applied to every compiled function of the engine (torch.compile(options=...)): the
# options enter inductor's cache key, so kernels compiled without them are never reused.
INDUCTOR_OPTIONS: dict[str, Any] = {"deterministic": True}


def compile_static(fn: Callable[..., Any], fullgraph: bool = False) -> Callable[..., Any]:
    """torch.compile(fn) with static shapes and INDUCTOR_OPTIONS (see the module docstring)."""
    import torch

    return torch.compile(fn, fullgraph=fullgraph, dynamic=False, options=dict(INDUCTOR_OPTIONS))
