"""The Pygame window: the frame scaled up (nearest neighbour, crisp pixels), the HUD over it, mouse capture.

Headless runs use the same class on SDL's dummy video driver, so a headless session exercises the very
code a player sees (HUD and screenshot included), just without a screen.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pygame

from engine.env import Frame


@dataclass
class WindowConfig:
    scale: int | None = None     # window pixels per frame pixel; null: fit about 640 px wide
    fps: float | None = None     # target display and game rate; null: the env's own rate (spec.fps)
    title: str = "neural game engine"
    video_scale: int = 4         # upscale of video.mp4 in recorded sessions


def display_available() -> bool:
    """Whether a window can open: on Linux that needs an X11 or Wayland display; elsewhere assume yes."""
    if os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen"):
        return False
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class Window:
    def __init__(self, cfg: WindowConfig, height: int, width: int, headless: bool) -> None:
        if headless:
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        pygame.display.init()
        pygame.font.init()
        self.scale = int(cfg.scale) if cfg.scale else max(1, round(640 / width))
        self.size = (width * self.scale, height * self.scale)
        self.surface = pygame.display.set_mode(self.size)
        pygame.display.set_caption(cfg.title)
        self.headless = headless
        self.mouse_captured = False

    def blit_frame(self, frame: Frame) -> None:
        small = pygame.surfarray.make_surface(frame.swapaxes(0, 1))
        pygame.transform.scale(small, self.size, self.surface)

    def flip(self) -> None:
        pygame.display.flip()

    def capture_mouse(self, on: bool) -> None:
        """Relative mouse mode: hidden, grabbed, unbounded motion (SDL enables it for grab + hidden)."""
        if self.headless:
            return
        pygame.event.set_grab(on)
        pygame.mouse.set_visible(not on)
        pygame.event.get(pygame.MOUSEMOTION)  # drop the jump that capturing causes
        self.mouse_captured = on

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(self.surface, str(path))
        return path

    def close(self) -> None:
        if self.mouse_captured:
            self.capture_mouse(False)
        pygame.display.quit()
