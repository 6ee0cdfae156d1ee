"""Hotkeys, mouse, attention switching, pacing and the HUD, driven in-process on SDL's dummy display."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pygame
import pytest

from controls.autopilot import Autopilot
from controls.cli import compose
from controls.config import load_controls
from controls.keymap import Keymap, KeymapConfig
from controls.recorder import Recorder
from controls.stepper import Stepper
from controls.window import Window
from engine.env import MOUSE_DX
from engine.episode import EpisodeReader
from engine.factory import build_env
from fake_env import FAKE, SMALL, FakeEnv


@pytest.fixture(autouse=True)
def dummy_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")


def make_game(tmp_path: Path, *extra: str, paced: bool = False, limit: int | None = None) -> "object":
    import play

    cfg = compose([*FAKE, *SMALL, f"sessions_dir={tmp_path}", *extra])
    controls = load_controls(cfg.controls)
    env = build_env(cfg)
    window = Window(controls.window, env.spec.height, env.spec.width, headless=True)
    return play.Game(env, cfg, controls, window, seed=0, prompt="p", recorder=Recorder(tmp_path / "rec", fps=20),
                     limit=limit, paced=paced)


@pytest.fixture
def game(tmp_path: Path) -> Iterator["object"]:
    g = make_game(tmp_path, "+world.sim.modes=[dense,window]", "attention=dense")
    yield g
    g.stepper.close()
    g.window.close()


def press(game: "object", key: int, ticks: int = 1) -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode="", scancode=0))
    for _ in range(ticks):
        game.tick()


def test_pause_step_hud_help_screenshot(game, tmp_path: Path) -> None:
    for _ in range(5):
        game.tick()
    assert game.frame_index == 4
    press(game, pygame.K_p, 3)
    assert game.paused and game.frame_index == 4
    press(game, pygame.K_n, 3)
    assert game.frame_index == 5                      # N: exactly one frame
    press(game, pygame.K_h)
    assert not game.hud.visible
    press(game, pygame.K_TAB)
    assert game.hud.help
    press(game, pygame.K_F12)
    shots = list((tmp_path / "screenshots").glob("*.png"))
    assert len(shots) == 1 and pygame.image.load(str(shots[0])).get_size() == game.window.size
    press(game, pygame.K_ESCAPE)
    assert game.quit


def test_window_close_quits(game) -> None:
    game.tick()
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    game.run()                                        # returns: the QUIT event ends the loop
    assert game.quit and game.frame_index >= 0


def test_attention_switch_live(game) -> None:
    game.tick()
    assert game.attention == "dense"
    press(game, pygame.K_F2, 3)
    assert game.attention == "window" and game.env.info()["attention_mode"] == "window"
    press(game, pygame.K_F3, 1)
    assert "no attention mode F3" in game.message
    lines = " | ".join(t for t, _ in game.hud.lines(game_state(game)))
    assert "attention window" in lines and "KV cache" in lines and "density 0.250  recall 0.990" in lines


def game_state(game):
    from controls.hud import HudState

    return HudState(attention=game.attention, attention_modes=game.env.attention_modes, info=game.info)


def test_simulator_says_it_has_no_attention(tmp_path: Path) -> None:
    g = make_game(tmp_path)
    g.tick()
    press(g, pygame.K_F1)
    assert "no attention modes" in g.message
    assert ("attention: none (simulator)", (235, 235, 235)) in g.hud.lines(game_state(g))
    g.window.close()


def test_record_restarts_the_episode_and_reset_starts_a_new_session(game, tmp_path: Path) -> None:
    for _ in range(6):
        game.tick()
    press(game, pygame.K_r, 5)                 # recording starts at a reset with the same seed
    assert game.recorder.active
    press(game, pygame.K_BACKSPACE, 4)         # new seed: a new session
    press(game, pygame.K_r, 1)
    assert not game.recorder.active
    first, second = game.recorder.sessions
    a, b = EpisodeReader(first), EpisodeReader(second)
    assert a.meta["seed"] == 0 and b.meta["seed"] == 1 and a.trace[0]["action"] is None
    assert len(a) >= 4 and len(b) >= 3
    assert a.meta["attention"] == "dense" and a.trace[1]["attention_mode"] == "dense"


def test_keymap_mouse_is_accumulated_and_clamped() -> None:
    pygame.display.init()
    km = Keymap(KeymapConfig())
    pressed = {c: False for c in range(1024)} | {pygame.K_w: True, pygame.K_LSHIFT: True}

    class Pressed(dict):
        def __getitem__(self, k):
            return self.get(k, False)

    km.add_mouse(10)
    km.add_mouse(5)
    a = km.action(Pressed(pressed))
    assert a[0] == 1 and a[6] == 1 and a[MOUSE_DX] == pytest.approx(0.3)
    km.add_mouse(-10_000)
    assert km.action(Pressed())[MOUSE_DX] == -1.0
    assert km.action(Pressed())[MOUSE_DX] == 0.0    # consumed


def test_threaded_stepper_gives_the_same_frames_as_inline() -> None:
    actions = [Autopilot(7).next_action() for _ in range(30)]
    runs = []
    for threaded in (False, True):
        st, frames = Stepper(FakeEnv(), threaded=threaded), []
        st.reset(3, "p")
        frames.append(st.wait(5).frame)
        for a in actions:
            st.step(a)
            frames.append(st.wait(5).frame)
        st.close()
        runs.append(np.stack(frames))
    assert np.array_equal(*runs)


def test_slow_generation_never_freezes_the_window_and_the_hud_says_so(tmp_path: Path) -> None:
    g = make_game(tmp_path, "+world.sim.delay_ms=120", paced=True)   # ~8 fps generation, 20 fps target
    clock, t0, slow_seen = pygame.time.Clock(), time.perf_counter(), False
    while time.perf_counter() - t0 < 2.0:
        g.tick()
        clock.tick(g.fps)
        slow_seen |= g.slow_now()
    display_fps, gen_fps = g.display.rate(), g.gen.rate()
    g.stepper.close()
    g.window.close()
    assert display_fps > 12 and gen_fps < 10 and slow_seen


def test_hud_shows_what_tempcache_merged() -> None:
    from controls.hud import Hud, HudConfig, HudState
    pygame.font.init()
    hud = Hud(HudConfig())
    info = {"attention": "fastar", "mode_stats": {"merged_share": 0.0054, "overflow": "evict"}}
    lines = [t for t, _ in hud.lines(HudState(attention="fastar", attention_modes=["fastar"], info=info))]
    assert "TempCache groups holding > 1 key 0.5%   overflow evict" in lines
    plain = [t for t, _ in hud.lines(HudState(attention="window", attention_modes=["window"], info={}))]
    assert not any("TempCache" in t for t in plain)
    mem = {"memory": {"held": 60, "anchored": 7}}
    assert "spatial memory: 60 places held, 7 frames anchored" in [
        t for t, _ in hud.lines(HudState(attention="window", attention_modes=["window"], info=mem))]
    assert not any("spatial memory" in t for t in plain)
