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

ENGINE_INDUCTOR_DETERMINISTIC=0 in the environment turns it off (to measure what it costs, or what it fixes);
the process then warns once, and the benchmark's JSON records the options it ran with (`inductor_options`).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

# inductor config keys applied to every compiled function of the engine (torch.compile(options=...)): the
# options enter inductor's cache key, so kernels compiled without them are never reused.
INDUCTOR_OPTIONS: dict[str, Any] = {"deterministic": True}
OFF_VAR = "ENGINE_INDUCTOR_DETERMINISTIC"
_warned = False


def inductor_options() -> dict[str, Any]:
    """INDUCTOR_OPTIONS, or none when OFF_VAR=0 (with a warning, once per process)."""
    global _warned
    value = os.environ.get(OFF_VAR, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{OFF_VAR}={value!r}: expected 1 (default: inductor's deterministic mode) or 0 (off)")
    if value == "1":
        return dict(INDUCTOR_OPTIONS)
    if not _warned:
        warnings.warn(f"{OFF_VAR}=0: inductor times reduction configurations again; frames may differ between "
                      "processes (same seed, trace, device and mode)", stacklevel=2)
        _warned = True
    return {}


def compile_static(fn: Callable[..., Any], fullgraph: bool = False) -> Callable[..., Any]:
    """torch.compile(fn) with static shapes and inductor_options() (see the module docstring)."""
    import torch

    return torch.compile(fn, fullgraph=fullgraph, dynamic=False, options=inductor_options())
