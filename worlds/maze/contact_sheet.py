"""Draw docs/maze_contact_sheet.png: 3 seeds x 3 prompts, a row from a short explorer walk, a row of landmarks.

    python -m worlds.maze.contact_sheet [--out docs/maze_contact_sheet.png]

Why: one picture to check at a glance that maps differ by seed, looks differ by prompt, and walking gives
small, smooth frame-to-frame changes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from worlds.maze.env import MazeEnv
from worlds.maze.explorer import Explorer

SEEDS = (0, 1, 2)
PROMPTS = ("brick checker red day clear", "stone cobble orange dusk haze", "metal carpet blue night fog")
WALK = ("wood parquet green day clear", 11, 6, 12)   # prompt, seed, frames shown, frames between them
LANDMARKS = ("concrete parquet purple dusk clear", 4)  # prompt, seed for the landmark row


def landmark_views(env: MazeEnv, count: int = 6) -> list[tuple[str, np.ndarray]]:
    """Frames looking at landmarks (panels, doors, pillars) from 2 cells away, one per kind where possible."""
    from worlds.maze.map import DOOR, KIND_NAMES, PANEL0, PILLAR
    m = env.map
    assert m is not None
    wanted = [PANEL0, PILLAR, DOOR, PANEL0 + 3, PANEL0 + 5, PANEL0 + 6, PANEL0 + 1, PANEL0 + 2]
    out = []
    for kind in wanted:
        for y, x in np.argwhere(m.kind == kind):
            views = [(yaw, dx, dy) for yaw, dx, dy in ((180.0, 1, 0), (0.0, -1, 0), (270.0, 0, 1), (90.0, 0, -1))
                     if not m.is_wall(x + dx, y + dy) and not m.is_wall(x + 2 * dx, y + 2 * dy)]
            if views:
                yaw, dx, dy = views[0]
                f = env.teleport(x + 0.5 + 2.2 * dx, y + 0.5 + 2.2 * dy, yaw)
                out.append((KIND_NAMES[kind], f))
                break
        if len(out) == count:
            break
    return out


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 16), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def make_sheet(size: int = 128, scale: int = 2) -> np.ndarray:
    """uint8 (H, W, 3) RGB contact sheet."""
    env = MazeEnv(height=size, width=size)
    rows = []
    for seed in SEEDS:
        tiles = []
        for prompt in PROMPTS:
            f = env.reset(seed, prompt)
            f = cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            tiles.append(_label(f, f"seed {seed}: {prompt}"))
        rows.append(np.concatenate(tiles, axis=1))
    width = rows[0].shape[1]
    prompt, seed, shown, every = WALK
    env.reset(seed, prompt)
    assert env.map is not None
    ex = Explorer(env.map, seed)
    walk = []
    for t in range(shown * every):
        f = env.step(ex.act(env.pose))
        if t % every == every - 1:
            walk.append(_label(f, f"t={t + 1}"))
    strip = np.concatenate(walk, axis=1)
    strip = cv2.resize(strip, (width, int(round(strip.shape[0] * width / strip.shape[1]))),
                       interpolation=cv2.INTER_NEAREST)
    lm_prompt, lm_seed = LANDMARKS
    env.reset(lm_seed, lm_prompt)
    marks = np.concatenate([_label(f, name) for name, f in landmark_views(env)], axis=1)
    marks = cv2.resize(marks, (width, int(round(marks.shape[0] * width / marks.shape[1]))),
                       interpolation=cv2.INTER_NEAREST)
    return np.concatenate(rows + [_title(f"explorer walk, seed {seed}: {prompt} (every {every} frames)", width),
                                  strip, _title(f"landmarks, seed {lm_seed}: {lm_prompt}", width), marks], axis=0)


def _title(text: str, width: int) -> np.ndarray:
    title = np.zeros((18, width, 3), np.uint8)
    cv2.putText(title, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return title


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/maze_contact_sheet.png")
    args = ap.parse_args()
    sheet = make_sheet()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} {sheet.shape[1]}x{sheet.shape[0]}")


if __name__ == "__main__":
    main()
