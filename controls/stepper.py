"""Runs env calls off the display thread, so the window never freezes while a frame is generated.

One worker thread and a one-slot handoff: the game submits a job (reset, step or a call such as an
attention switch) only when the slot is free, and picks the result up with poll(). The display loop keeps
pumping events and redrawing the latest frame at its own rate meanwhile. Jobs run strictly one after the
other, in submission order, so the frame sequence is the same as a plain loop's: threading changes when a
frame appears, never which frame. `threaded=False` runs each job inline (headless runs, replay checks).
env.info() is read on the worker right after each job, so the env is never touched from two threads.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.env import Action, Env, Frame


@dataclass
class StepResult:
    kind: str                      # "reset" | "step" | "call"
    frame: Frame | None = None
    action: Action | None = None
    info: dict[str, Any] = field(default_factory=dict)
    gen_ms: float = 0.0
    tag: Any = None                # what the submitter passed along (the seed of a reset, a mode...)
    error: BaseException | None = None


class Stepper:
    def __init__(self, env: Env, threaded: bool = True) -> None:
        self.env = env
        self.threaded = threaded
        self._cond = threading.Condition()
        self._job: tuple[str, Callable[[], Frame | None], Action | None, Any] | None = None
        self._result: StepResult | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._worker, name="env-stepper", daemon=True)
            self._thread.start()

    @property
    def idle(self) -> bool:
        """True when no job is in flight and no result waits to be picked up."""
        with self._cond:
            return self._job is None and self._result is None

    def reset(self, seed: int, prompt: str) -> None:
        self._submit("reset", lambda: self.env.reset(seed, prompt), None, seed)

    def step(self, action: Action) -> None:
        self._submit("step", lambda: self.env.step(action), action, None)

    def call(self, fn: Callable[[], None], tag: Any = None) -> None:
        self._submit("call", fn, None, tag)

    def _submit(self, kind: str, fn: Callable[[], Frame | None], action: Action | None, tag: Any) -> None:
        with self._cond:
            if self._job is not None or self._result is not None:
                raise RuntimeError("Stepper: submit while busy (check .idle first)")
            self._job = (kind, fn, action, tag)
            self._cond.notify_all()
        if not self.threaded:
            self._run_job()

    def _run_job(self) -> None:
        with self._cond:
            kind, fn, action, tag = self._job  # type: ignore[misc]
        res = StepResult(kind=kind, action=action, tag=tag)
        t0 = time.perf_counter()
        try:
            res.frame = fn()
            res.gen_ms = (time.perf_counter() - t0) * 1000.0
            res.info = dict(self.env.info())
        except BaseException as e:  # handed to the game thread, which re-raises it
            res.error = e
        with self._cond:
            self._job, self._result = None, res
            self._cond.notify_all()

    def _worker(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closing:
                    self._cond.wait()
                if self._closing and self._job is None:
                    return
            self._run_job()

    def poll(self) -> StepResult | None:
        """The finished job's result, once; None while it runs (or when nothing was submitted)."""
        with self._cond:
            res, self._result = self._result, None
            return res

    def wait(self, timeout: float | None = None) -> StepResult | None:
        """Block until the in-flight job finishes (or `timeout`), then poll()."""
        with self._cond:
            self._cond.wait_for(lambda: self._job is None, timeout)
        return self.poll()

    def close(self, timeout: float = 10.0) -> None:
        """Let an in-flight job finish (up to `timeout`), then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
