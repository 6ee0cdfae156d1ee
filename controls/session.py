"""A play session from config to exit code: window or headless, autopilot or keyboard, recording, Ctrl-C.

Ctrl-C (SIGINT) asks the game to stop after the frame in hand, so the session closes like a normal exit
(last chunk sealed, meta.json final, video.mp4 finalised) and the process exits 130; a second Ctrl-C
stops at once (the session is still readable: that is the episode format's promise).
"""
from __future__ import annotations

import signal
from typing import Any

from omegaconf import DictConfig

from controls.autopilot import Autopilot
from controls.cli import PlayConfig, world_prompt
from controls.config import load_controls
from controls.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from controls.recorder import Recorder, default_session_dir
from controls.window import Window, display_available
from engine.factory import build_env


def play(cfg: DictConfig, opts: PlayConfig, game_cls: Any) -> int:
    """Play (windowed, or headless with the autopilot), recording as configured; returns the exit code."""
    headless = opts.headless
    if not headless and not display_available():
        print("notice: no display (DISPLAY/WAYLAND_DISPLAY unset): running headless with the autopilot", flush=True)
        headless = True
    controls = load_controls(cfg.controls)
    env = build_env(cfg)
    frames = opts.frames if opts.frames is not None else (opts.headless_frames if headless else None)
    record = opts.record if opts.record is not None else headless
    fps = float(controls.window.fps or env.spec.fps)
    recorder = Recorder(default_session_dir(opts.sessions_dir) if opts.out is None else opts.out,
                        fps=fps, video_scale=controls.window.video_scale)
    source = Autopilot(opts.seed, controls.autopilot) if headless or opts.autopilot else None
    window = Window(controls.window, env.spec.height, env.spec.width, headless)
    game = game_cls(env, cfg, controls, window, seed=opts.seed, prompt=world_prompt(cfg), source=source,
                    recorder=recorder, record=record, limit=frames, paced=not headless, interactive=True)
    recorder.say = game.say

    def on_sigint(*_: object) -> None:
        if game.quit:
            raise KeyboardInterrupt
        game.quit = game.interrupted = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        game.run()
        if opts.screenshot:
            print(f"screenshot: {game.screenshot(opts.screenshot)}")
    finally:
        signal.signal(signal.SIGINT, previous)
        window.close()
    where = f"; sessions: {', '.join(map(str, recorder.sessions))}" if recorder.sessions else ""
    print(f"played {game.produced} frames{where}", flush=True)
    if game.failed:
        return EXIT_FAILED
    return EXIT_INTERRUPTED if game.interrupted else EXIT_OK
