"""Rolling rates and percentiles over the last few seconds, for the HUD.

A window in seconds rather than in frames, so a stall shows up at once and fades after it ends whatever
the frame rate is.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np


class Rolling:
    """Timestamps (and optionally a value per event) kept for `seconds`."""

    def __init__(self, seconds: float = 3.0) -> None:
        self.seconds = seconds
        self._events: deque[tuple[float, float]] = deque()

    def add(self, value: float = 0.0, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self._events.append((now, value))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and now - self._events[0][0] > self.seconds:
            self._events.popleft()

    def __len__(self) -> int:
        return len(self._events)

    def rate(self, now: float | None = None) -> float:
        """Events per second over the window (0 when fewer than two events)."""
        now = time.perf_counter() if now is None else now
        self._trim(now)
        if len(self._events) < 2:
            return 0.0
        span = self._events[-1][0] - self._events[0][0]
        return (len(self._events) - 1) / span if span > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        if not self._events:
            return None
        return float(np.percentile([v for _, v in self._events], q))
