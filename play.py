"""Play a world in a Pygame window, record the session, replay traces as regression tests.

    python play.py                                   # window (or headless autopilot run with no display)
    python play.py world=maze engine=sim attention=window
    python play.py headless=true frames=300 out=sessions/run1
    python play.py replay=sessions/run1 check=true   # exit 1 on a regression

The game talks to the world only through engine.env.Env (built by engine.factory from the config) and
writes sessions in the episode format of engine/episode.py; the pieces (keymap, autopilot, stepper, HUD,
recorder, replay check) live in controls/.
"""
from __future__ import annotations

import datetime as _dt
import sys
import time
from typing import Any, Callable, Protocol

from omegaconf import DictConfig

import controls  # noqa: F401  (quiets pygame's banner before pygame is imported)
import pygame
from controls.cli import PlayConfig, run_main
from controls.config import ControlsConfig
from controls.hud import Hud, HudState
from controls.keymap import Keymap
from controls.recorder import Recorder, current_attention, session_meta
from controls.stats import Rolling
from controls.stepper import StepResult, Stepper
from controls.window import Window
from engine.env import Action, Env, Frame


class ActionSource(Protocol):
    def next_action(self) -> Action | None: ...   # None: nothing more to play (end of a trace)


class Game:
    """The display loop: events every display frame, one env job at a time on the stepper, redraw.

    `paced` (a window) runs env jobs on a worker thread and ticks at the target FPS; unpaced (headless,
    replay checks) runs them inline as fast as they come. `interactive=False` (replay) disables reset and
    record, which would break the trace. `on_frame(index, frame, info)` sees every frame."""

    def __init__(self, env: Env, cfg: DictConfig, controls: ControlsConfig, window: Window, *,
                 seed: int, prompt: str, source: ActionSource | None = None, recorder: Recorder | None = None,
                 record: bool = False, limit: int | None = None, paced: bool = True, interactive: bool = True,
                 on_frame: Callable[[int, Frame, dict[str, Any]], None] | None = None) -> None:
        self.env, self.cfg, self.window, self.source, self.recorder = env, cfg, window, source, recorder
        self.seed, self.prompt, self.limit, self.paced, self.interactive = seed, prompt, limit, paced, interactive
        self.on_frame, self.record_wanted = on_frame, record and recorder is not None
        self.keymap, self.hud = Keymap(controls.keymap), Hud(controls.hud)
        self.fps = float(controls.window.fps or env.spec.fps)
        self.stepper = Stepper(env, threaded=paced)
        self.display, self.gen = Rolling(controls.hud.seconds), Rolling(controls.hud.seconds)
        self.pending: list[tuple[str, Any]] = [("reset", seed)]
        self.attention = current_attention(env, {}, cfg.attention.name if "attention" in cfg else None)
        self.frame_index, self.produced, self.latest, self.info = -1, 0, None, {}
        self.paused = self.step_once = self.quit = self.interrupted = False
        self.failed: str | None = None
        self.message, self.message_until = "", 0.0

    def say(self, text: str) -> None:
        """Console and HUD (for a few seconds)."""
        print(text, flush=True)
        self.message, self.message_until = text, time.perf_counter() + 4.0

    def run(self) -> None:
        clock = pygame.time.Clock()
        try:
            while not self.quit:
                self.tick()
                if self.paced:
                    clock.tick(self.fps)
        finally:
            self.stepper.close()
            if self.recorder is not None:
                self.recorder.stop()

    def tick(self) -> None:
        """One display frame: input, pick up a finished frame, hand over the next job, redraw."""
        self.handle_events()
        self.collect()
        self.feed()
        self.collect()  # inline (unpaced) jobs finish within feed(): show their frame now
        self.draw()

    def done(self) -> bool:
        return self.limit is not None and self.produced >= self.limit

    def feed(self) -> None:
        """Hand the stepper its next job if its slot is free: a pending reset/switch, else one step."""
        if not self.stepper.idle:
            return
        if self.pending:
            kind, arg = self.pending.pop(0)
            if kind == "reset":
                self.stepper.reset(arg, self.prompt)
            else:
                self.stepper.call(lambda: self.env.set_attention(arg), arg)
            return
        if self.done():
            self.quit = True
            return
        if self.paused and not self.step_once:
            return
        mode = getattr(self.source, "attention_for_next", lambda: None)()
        if mode is not None and mode != self.attention:
            self.pending.append(("attention", mode))
            return
        action = self.keymap.action(pygame.key.get_pressed()) if self.source is None else self.source.next_action()
        if action is None:
            self.quit = True
            return
        self.step_once = False
        self.stepper.step(action)

    def collect(self) -> None:
        res = self.stepper.poll()
        if res is None:
            return
        if res.kind == "call":  # an attention switch the env refused is a message, not a crash
            self.attention = res.tag if res.error is None else self.attention
            self.say(f"attention: {res.tag}" if res.error is None else f"attention switch failed: {res.error}")
            return
        if res.error is not None:
            raise res.error
        self.latest, self.info = res.frame, res.info
        self.attention = current_attention(self.env, res.info, self.attention)
        self.frame_index = 0 if res.kind == "reset" else self.frame_index + 1
        self.produced += 1
        if res.kind == "step":
            self.gen.add(res.gen_ms)
        self.record(res)
        if self.on_frame is not None:
            self.on_frame(self.frame_index, res.frame, res.info)

    def record(self, res: StepResult) -> None:
        rec = self.recorder
        if rec is None or not self.record_wanted:
            return
        if res.kind == "reset":
            rec.start(session_meta(self.cfg, self.env, int(res.tag), self.prompt, res.info), res.frame, res.info)
        else:
            rec.append(res.frame, res.action, res.gen_ms, res.info)
        if rec.error:
            self.record_wanted, self.failed = False, rec.error
            if not self.interactive:
                self.quit = True

    def handle_events(self) -> None:
        for ev in pygame.event.get():
            if ev.type == pygame.QUIT:
                self.quit = True
            elif ev.type == pygame.MOUSEBUTTONDOWN and not self.window.mouse_captured:
                self.window.capture_mouse(True)
            elif ev.type == pygame.MOUSEMOTION and self.window.mouse_captured:
                self.keymap.add_mouse(ev.rel[0])
            elif ev.type == pygame.KEYDOWN:
                self.hotkey(ev.key)

    def hotkey(self, key: int) -> None:
        if key in self.keymap.attention:
            i, modes = self.keymap.attention[key], self.env.attention_modes
            if i < len(modes):
                self.pending.append(("attention", modes[i]))
            else:
                self.say("this env has no attention modes (simulator)" if not modes else
                         f"no attention mode F{i + 1}; modes: {', '.join(modes)}")
            return
        name = self.keymap.hotkeys.get(key)
        if name == "quit":
            if self.window.mouse_captured:
                self.window.capture_mouse(False)
            else:
                self.quit = True
        elif name in ("pause", "step", "hud", "help"):
            self.paused ^= name == "pause"
            self.step_once = self.paused and name == "step"
            self.hud.visible ^= name == "hud"
            self.hud.help ^= name == "help"
        elif name == "screenshot":
            self.say(f"screenshot: {self.screenshot()}")
        elif name in ("reset", "record") and not self.interactive:
            self.say(f"{name} is off during replay")
        elif name == "reset":
            self.seed += 1
            self.pending.append(("reset", self.seed))
        elif name == "record" and self.recorder is not None:
            if self.recorder.active:
                self.record_wanted = False
                self.recorder.stop()
            else:  # a session starts at a reset frame, so it replays from its seed
                self.record_wanted = True
                self.pending.append(("reset", self.seed))

    def screenshot(self, path: str | None = None) -> str:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return str(self.window.screenshot(path or f"{self.cfg.sessions_dir}/screenshots/{stamp}.png"))

    def slow_now(self) -> bool:
        """Generation is behind the target rate: by throughput, or by median time per frame."""
        if not self.paced or self.paused or len(self.gen) < 4:
            return False
        p50 = self.gen.percentile(50) or 0.0
        return self.gen.rate() < 0.9 * self.fps or p50 > 1000.0 / self.fps

    def draw(self) -> None:
        now = time.perf_counter()
        self.display.add(now=now)
        if self.latest is not None:
            self.window.blit_frame(self.latest)
        gen_fps = self.gen.rate(now)
        state = HudState(
            display_fps=self.display.rate(now), gen_fps=gen_fps, target_fps=self.fps,
            gen_p50=self.gen.percentile(50), gen_p99=self.gen.percentile(99), frame=self.frame_index,
            seed=self.seed, prompt=self.prompt, attention=self.attention, attention_modes=self.env.attention_modes,
            info=self.info, recording=bool(self.recorder and self.recorder.active), paused=self.paused,
            slow=self.slow_now(), mouse_captured=self.window.mouse_captured,
            message=self.message if now < self.message_until else "")
        self.hud.draw(self.window.surface, state)
        self.window.flip()


def main(argv: list[str] | None = None) -> int:
    def body(cfg: DictConfig, opts: PlayConfig, overrides: list[str]) -> int:
        # controls/ never imports this entry point: it is handed the Game class
        if opts.replay:
            from controls.replay import run_replays

            return run_replays(cfg, opts, overrides, Game)
        from controls.session import play

        return play(cfg, opts, Game)

    return run_main(argv, body)


if __name__ == "__main__":
    sys.exit(main())
