"""The heads-up display and the help overlay, drawn over the scaled frame.

The HUD reads what the game measures (display FPS, generation ms p50/p99 over the last seconds) and what
the env reports in info(); the keys it understands are:

    pose                      [x, y, yaw_deg]   the simulator's true pose
    cache_tokens, cache_mib   KV cache size                  (neural model)
    attention_mode            the attention mode in use      (neural model; also read as "attention")
    density, recall           sparse-attention measurements  (neural model, when measured; top level or
                              inside info["mode_stats"])
    merged_share, overflow    TempCache: share of groups holding more than one key, and its capacity policy
    memory                    the spatial memory: places held, frames started from one (neural model, when on)
    cuda_graphs, compiled,    whether the CUDA-graph path runs (and its pieces are compiled), the dense
    kernel                    kernel last used (neural model)

Anything missing is simply not shown, so the same HUD serves the simulator and the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pygame

HELP_LINES = (
    "W A S D / arrows   move, turn        Shift   run",
    "click              capture mouse (mouse turns)",
    "Esc                release mouse; quit when released",
    "P pause    N one frame (paused)    Backspace reset (new seed)",
    "R record on/off (restarts the episode, same seed)",
    "F12 screenshot    H HUD    Tab or / this help",
    "F1..F4             attention mode (neural model)",
)


@dataclass
class HudConfig:
    show: bool = True          # HUD visible at start (H toggles)
    font_size: int = 16
    seconds: float = 3.0       # window of the FPS and ms statistics


@dataclass
class HudState:
    """One frame's worth of facts for the HUD, gathered by the game."""
    display_fps: float = 0.0
    gen_fps: float = 0.0
    target_fps: float = 0.0
    gen_p50: float | None = None
    gen_p99: float | None = None
    frame: int = 0
    seed: int = 0
    prompt: str = ""
    attention: str | None = None
    attention_modes: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    recording: bool = False
    paused: bool = False
    slow: bool = False
    mouse_captured: bool = False
    message: str = ""


def _fmt(v: Any, nd: int = 1) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) else str(v)


class Hud:
    def __init__(self, cfg: HudConfig) -> None:
        self.cfg = cfg
        self.visible = cfg.show
        self.help = False
        self.font = pygame.font.Font(None, cfg.font_size)

    def lines(self, s: HudState) -> list[tuple[str, tuple[int, int, int]]]:
        white, red, yellow = (235, 235, 235), (255, 90, 90), (255, 220, 90)
        ms = "-" if s.gen_p50 is None else f"{s.gen_p50:.1f} / {s.gen_p99:.1f}"
        out = [(f"{s.display_fps:4.1f} fps   gen {s.gen_fps:4.1f} fps   ms p50/p99 {ms}", white),
               (f"frame {s.frame}   seed {s.seed}" + ("   PAUSED" if s.paused else ""), white)]
        if s.slow:
            out.append((f"generation slower than target: {s.gen_fps:.1f} < {s.target_fps:.0f} fps", red))
        info = s.info
        if "cache_tokens" in info or "cache_mib" in info:
            out.append((f"KV cache {info.get('cache_tokens', '-')} tok  {_fmt(info.get('cache_mib', '-'))} MiB",
                        white))
        if s.attention_modes:
            keys = "  ".join(f"F{i + 1} {m}" for i, m in enumerate(s.attention_modes[:4]))
            out.append((f"attention {s.attention}   ({keys})", white))
            if "cuda_graphs" in info:   # the model says whether its fast path runs
                kernel = info.get("kernel", "-")
                graphs = ("on, compiled" if info.get("compiled") else "on") if info["cuda_graphs"] else "off"
                out.append((f"kernel {kernel}   CUDA graphs {graphs}", white))
        else:
            out.append(("attention: none (simulator)", white))
        ms = info.get("mode_stats")
        stats = {**(ms if isinstance(ms, dict) else {}), **info}   # top level, or in the model's mode_stats
        if "density" in stats or "recall" in stats:
            out.append((f"density {_fmt(stats.get('density', '-'), 3)}  recall {_fmt(stats.get('recall', '-'), 3)}",
                        white))
        if isinstance(stats.get("merged_share"), (int, float)):   # TempCache: ~0% = acting as a window
            out.append((f"TempCache groups holding > 1 key {100 * stats['merged_share']:.1f}%"
                        f"   overflow {stats.get('overflow', '-')}", white))
        if isinstance(info.get("memory"), dict):   # the spatial memory (engine/memory.py), when on
            m = info["memory"]
            out.append((f"spatial memory: {m.get('held', '-')} places held, {m.get('anchored', '-')} frames anchored",
                        white))
        if "pose" in info:
            out.append(("pose " + " ".join(_fmt(v, 2) for v in info["pose"]), white))
        if s.prompt:
            out.append((f"prompt: {s.prompt}", white))
        if s.message:
            out.append((s.message, yellow))
        return out

    def _box(self, surface: pygame.Surface, lines: list[tuple[str, tuple[int, int, int]]], x: int, y: int) -> None:
        rendered = [self.font.render(t, True, c) for t, c in lines]
        w = max((r.get_width() for r in rendered), default=0) + 8
        h = sum(r.get_height() + 1 for r in rendered) + 6
        bg = pygame.Surface((w, h), pygame.SRCALPHA)
        bg.fill((0, 0, 0, 150))
        surface.blit(bg, (x, y))
        for r in rendered:
            surface.blit(r, (x + 4, y + 3))
            y += r.get_height() + 1

    def draw(self, surface: pygame.Surface, s: HudState) -> None:
        if s.recording:  # the recording dot shows even with the HUD hidden
            pygame.draw.circle(surface, (230, 30, 30), (surface.get_width() - 12, 12), 6)
            rec = self.font.render("REC", True, (230, 30, 30))
            surface.blit(rec, (surface.get_width() - 22 - rec.get_width(), 12 - rec.get_height() // 2))
        if self.visible:
            self._box(surface, self.lines(s), 4, 4)
        elif s.message:
            self._box(surface, [(s.message, (255, 220, 90))], 4, 4)
        if self.help:
            lines = [(t, (235, 235, 235)) for t in HELP_LINES]
            rendered_h = (self.font.get_linesize() + 1) * len(lines) + 6
            self._box(surface, lines, 4, max(4, surface.get_height() - rendered_h - 4))
