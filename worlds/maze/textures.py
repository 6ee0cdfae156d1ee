"""Procedural 64x64 textures, made deterministically from their names.

Each texture is drawn from a PCG64 generator seeded by the CRC32 of its name, with float64 basic arithmetic
only (+ - * /, floor, comparisons; no np.sin/np.exp on arrays), so the same uint8 texels come out on any
machine. Texture row 0 is the top of a wall (or the texture's -y edge on the floor); textures tile.

Why procedural: no asset files to ship, and every look is a function of a prompt word (see style.py).
"""
from __future__ import annotations

import functools
import zlib

import numpy as np

from worlds.maze.map import DOOR, NUM_KINDS, NUM_PANELS, PANEL0, PILLAR, ROOM_WALL, WALL
from worlds.maze.style import Style

TEX = 64  # texels per side; a power of two so texture coordinates wrap with a bitwise and

ACCENT_RGB: dict[str, tuple[float, float, float]] = {
    "red": (200, 40, 35), "green": (40, 165, 60), "blue": (45, 85, 210),
    "yellow": (225, 195, 40), "purple": (140, 55, 185), "orange": (235, 120, 30),
}
# Landmark panel k: its own colour and symbol, so each panel names a place.
PANEL_RGB: tuple[tuple[float, float, float], ...] = (
    (220, 30, 30), (30, 190, 50), (40, 80, 230), (240, 220, 30),
    (220, 40, 220), (30, 210, 220), (250, 130, 20), (245, 245, 245))

_Y, _X = np.mgrid[0:TEX, 0:TEX].astype(np.float64)   # (TEX, TEX) texel row / column


def _rng(name: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(zlib.crc32(name.encode())))


def _noise(rng: np.random.Generator, cells_x: int, cells_y: int) -> np.ndarray:
    """Tileable value noise in [0, 1], float64 (TEX, TEX): smooth-stepped bilinear blend of a random lattice."""
    lat = rng.random((cells_y, cells_x))
    fx, fy = _X * cells_x / TEX, _Y * cells_y / TEX
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    tx, ty = fx - ix, fy - iy
    tx, ty = tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty)
    x0, x1, y0, y1 = ix % cells_x, (ix + 1) % cells_x, iy % cells_y, (iy + 1) % cells_y
    top = lat[y0, x0] * (1.0 - tx) + lat[y0, x1] * tx
    bot = lat[y1, x0] * (1.0 - tx) + lat[y1, x1] * tx
    return top * (1.0 - ty) + bot * ty


def _fbm(rng: np.random.Generator, base: int = 4, octaves: int = 3) -> np.ndarray:
    """Sum of noise octaves in [0, 1]: coarse blotches plus fine grain."""
    out, amp, total = np.zeros((TEX, TEX)), 1.0, 0.0
    for o in range(octaves):
        c = base * 2 ** o
        out += amp * _noise(rng, c, c)
        total += amp
        amp *= 0.5
    return out / total


def _rgb(*c: float) -> np.ndarray:
    return np.asarray(c, np.float64)


def _paint(mask: np.ndarray, img: np.ndarray, colour: np.ndarray) -> None:
    img[mask] = colour


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- wall materials (float64 (TEX, TEX, 3))

def _brick(rng: np.random.Generator) -> np.ndarray:
    row = np.floor(_Y / 8).astype(np.int64)
    shifted = _X + (row % 2) * 8
    col = np.floor(shifted / 16).astype(np.int64) % 4
    per_brick = rng.random((8, 4))[row, col]
    n = _fbm(rng, 8)
    base = _rgb(150, 60, 45) * (0.75 + 0.35 * per_brick)[..., None] * (0.85 + 0.3 * n)[..., None]
    mortar = ((_Y % 8) < 1) | ((shifted % 16) < 1)
    base[mortar] = _rgb(185, 180, 170) * (0.8 + 0.2 * n[mortar])[:, None]
    return base


def _stone(rng: np.random.Generator) -> np.ndarray:
    row = np.floor(_Y / 16).astype(np.int64)
    cuts = np.sort(rng.integers(4, 60, size=(4, 2)), axis=1)           # two joints per 16-texel course
    off = rng.integers(0, 64, size=4)
    xs = (_X + off[row]) % 64
    block = (xs >= cuts[row, 0]).astype(np.int64) + (xs >= cuts[row, 1])
    tone = rng.random((4, 3))[row, block]
    n = _fbm(rng, 4, 4)
    base = _rgb(125, 125, 118) * (0.7 + 0.35 * tone)[..., None] * (0.75 + 0.5 * n)[..., None]
    seam = ((_Y % 16) < 2) | ((xs - cuts[row, 0]) % 64 < 2) | ((xs - cuts[row, 1]) % 64 < 2)
    base[seam] *= 0.45
    return base


def _wood(rng: np.random.Generator) -> np.ndarray:
    plank = np.floor(_X / 16).astype(np.int64)
    grain = _noise(rng, 16, 2) * 0.6 + _noise(rng, 32, 4) * 0.4
    tone = rng.random(4)[plank]
    base = _rgb(135, 88, 48) * (0.7 + 0.3 * tone + 0.35 * grain)[..., None]
    base[(_X % 16) < 1] *= 0.4
    return base


def _metal(rng: np.random.Generator) -> np.ndarray:
    brushed = _noise(rng, 2, 32)
    base = _rgb(120, 130, 140) * (0.8 + 0.25 * brushed)[..., None]
    px, py = _X % 32, _Y % 32
    base[(px < 1) | (py < 1)] *= 0.45
    base[(px == 31) | (py == 31)] *= 1.25
    rivet = ((px - 4) ** 2 + (py - 4) ** 2 <= 2) | ((px - 27) ** 2 + (py - 4) ** 2 <= 2) | \
            ((px - 4) ** 2 + (py - 27) ** 2 <= 2) | ((px - 27) ** 2 + (py - 27) ** 2 <= 2)
    base[rivet] = _rgb(200, 205, 210)
    return base


def _concrete(rng: np.random.Generator) -> np.ndarray:
    n = _fbm(rng, 4, 4)
    stain = _noise(rng, 3, 3)
    base = _rgb(165, 162, 155) * (0.8 + 0.3 * n - 0.25 * (stain > 0.7) * (stain - 0.7) * 3)[..., None]
    base[(_Y % 32) < 1] *= 0.7
    holes = ((_X % 32 - 8) ** 2 + (_Y % 32 - 16) ** 2 <= 1.5) | ((_X % 32 - 24) ** 2 + (_Y % 32 - 16) ** 2 <= 1.5)
    base[holes] *= 0.5
    return base


def _tile(rng: np.random.Generator) -> np.ndarray:
    tx, ty = np.floor(_X / 16).astype(np.int64), np.floor(_Y / 16).astype(np.int64)
    tone = rng.random((4, 4))[ty, tx]
    n = _fbm(rng, 8, 2)
    base = _rgb(205, 215, 215) * (0.9 + 0.1 * tone + 0.08 * n)[..., None]
    base[((_X % 16) < 1) | ((_Y % 16) < 1)] = _rgb(95, 100, 100)
    return base


WALL_MATERIALS = {"brick": _brick, "stone": _stone, "wood": _wood, "metal": _metal,
                  "concrete": _concrete, "tile": _tile}


# ---------------------------------------------------------------- floors and ceiling

def _checker(rng: np.random.Generator, accent: np.ndarray) -> np.ndarray:
    n = _fbm(rng, 8, 2)
    dark = ((np.floor(_X / 32) + np.floor(_Y / 32)) % 2)[..., None]
    base = (_rgb(200, 195, 185) * (1 - dark) + _rgb(55, 55, 60) * dark) * (0.9 + 0.15 * n)[..., None]
    base[((_X % 32) < 1) | ((_Y % 32) < 1)] *= 0.7
    return base


def _parquet(rng: np.random.Generator, accent: np.ndarray) -> np.ndarray:
    bx, by = np.floor(_X / 16).astype(np.int64), np.floor(_Y / 16).astype(np.int64)
    horizontal = (bx + by) % 2 == 0
    along = np.where(horizontal, _Y % 16, _X % 16)
    strip = np.floor(along / 4).astype(np.int64)
    tone = rng.random((4, 4, 4))[by, bx, strip]
    grain = np.where(horizontal, _noise(rng, 16, 4), _noise(rng, 4, 16))
    base = _rgb(170, 115, 65) * (0.7 + 0.25 * tone + 0.2 * grain)[..., None]
    base[(along % 4) < 1] *= 0.6
    base[((_X % 16) < 1) | ((_Y % 16) < 1)] *= 0.5
    return base


def _carpet(rng: np.random.Generator, accent: np.ndarray) -> np.ndarray:
    n = _noise(rng, 32, 32)
    cx, cy = np.abs(_X % 32 - 15.5), np.abs(_Y % 32 - 15.5)
    diamond = (cx + cy < 12) & (cx + cy > 8)
    border = (cx > 13.5) | (cy > 13.5)
    base = (accent * 0.45 + 30) * (0.85 + 0.3 * n)[..., None]
    base[diamond] = (accent * 0.8 + 40) * (0.9 + 0.2 * n[diamond])[:, None]
    base[border] *= 0.55
    return base


def _cobble(rng: np.random.Generator, accent: np.ndarray) -> np.ndarray:
    # Jittered-grid Voronoi: distance to the nearest of the 3x3 neighbouring seed points (sqrt is IEEE exact).
    cells = 4
    pts = rng.random((cells, cells, 2))
    size = TEX / cells
    cx, cy = np.floor(_X / size).astype(np.int64), np.floor(_Y / size).astype(np.int64)
    best, second = np.full((TEX, TEX), 1e9), np.full((TEX, TEX), 1e9)
    ident = np.zeros((TEX, TEX), np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nx, ny = (cx + dx) % cells, (cy + dy) % cells
            px = (cx + dx + pts[ny, nx, 0]) * size
            py = (cy + dy + pts[ny, nx, 1]) * size
            d = np.sqrt((_X + 0.5 - px) ** 2 + (_Y + 0.5 - py) ** 2)
            closer = d < best
            second = np.where(closer, best, np.minimum(second, d))
            ident = np.where(closer, ny * cells + nx, ident)
            best = np.where(closer, d, best)
    tone = rng.random(cells * cells)[ident]
    n = _fbm(rng, 8, 2)
    base = _rgb(130, 125, 115) * (0.65 + 0.35 * tone + 0.2 * n)[..., None]
    base[second - best < 1.5] = _rgb(50, 48, 45)
    return base


FLOOR_MATERIALS = {"checker": _checker, "parquet": _parquet, "carpet": _carpet, "cobble": _cobble}


def _ceiling(rng: np.random.Generator) -> np.ndarray:
    n = _fbm(rng, 8, 2)
    base = _rgb(175, 175, 170) * (0.9 + 0.15 * n)[..., None]
    base[((_X % 32) < 1) | ((_Y % 32) < 1)] *= 0.55
    return base


# ---------------------------------------------------------------- decorations on a wall material

def _room_variant(wall: np.ndarray) -> np.ndarray:
    """Room walls: the same material with a dark wainscot below a bright trim band."""
    out = wall.copy()
    out[_Y >= 46] *= 0.6
    band = (_Y >= 42) & (_Y < 46)
    out[band] = _rgb(225, 215, 190)
    out[(_Y >= 40) & (_Y < 42)] *= 0.4
    return out


def _door(wall: np.ndarray, accent: np.ndarray) -> np.ndarray:
    out = wall.copy()
    frame = (_X >= 12) & (_X < 52) & (_Y >= 8)
    leaf = (_X >= 15) & (_X < 49) & (_Y >= 11)
    out[frame] = _rgb(60, 45, 35)
    shade = 0.8 + 0.2 * ((_X - 15) % 11 < 9)
    out[leaf] = accent * shade[leaf][:, None]
    knob = (_X - 43) ** 2 + (_Y - 38) ** 2 <= 4
    out[knob] = _rgb(235, 210, 120)
    return out


def _pillar(wall: np.ndarray) -> np.ndarray:
    """A fluted column: the wall material lightened, with vertical grooves and a capital band."""
    out = wall * 0.5 + 110
    groove = (_X % 8) < 2
    out[groove] *= 0.6
    out[(_Y < 6) | (_Y >= 58)] = _rgb(215, 210, 200)
    return out


def _symbol(k: int) -> np.ndarray:
    """bool (TEX, TEX): symbol k, centred in the panel."""
    x, y = _X - 31.5, _Y - 31.5
    ax, ay = np.abs(x), np.abs(y)
    shapes = [
        (x * x + y * y <= 100) & (x * x + y * y >= 36),          # ring
        ((ax < 3) & (ay < 11)) | ((ay < 3) & (ax < 11)),           # plus
        (y < 9) & (y > -10) & (ax * 2 < y + 11),                   # triangle
        ax + ay < 11,                                               # diamond
        (ay < 11) & (ax < 11) & ((np.floor(_Y / 4) % 2) == 0),     # horizontal bars
        (ay < 11) & (ax < 11) & ((np.floor(_X / 4) % 2) == 0),     # vertical bars
        (np.maximum(ax, ay) < 11) & (np.maximum(ax, ay) > 6),      # square ring
        (np.abs(ax - ay) < 3) & (ax < 11),                         # X
    ]
    return shapes[k]


def _panel(wall: np.ndarray, k: int) -> np.ndarray:
    out = wall.copy()
    frame = (_X >= 10) & (_X < 54) & (_Y >= 10) & (_Y < 54)
    inner = (_X >= 13) & (_X < 51) & (_Y >= 13) & (_Y < 51)
    out[frame] = _rgb(30, 30, 30)
    out[inner] = _rgb(*PANEL_RGB[k])
    sym = _symbol(k) & inner
    light = sum(PANEL_RGB[k]) > 450
    out[sym] = _rgb(20, 20, 20) if light else _rgb(250, 250, 250)
    return out


# ---------------------------------------------------------------- per-style texture sets

@functools.lru_cache(maxsize=64)
def wall_atlas(wall: str, accent: str) -> np.ndarray:
    """uint8 (NUM_KINDS, TEX, TEX, 3): the texture of every cell kind (row 0, the floor kind, is unused)."""
    if wall not in WALL_MATERIALS:
        raise ValueError(f"wall material: expected one of {sorted(WALL_MATERIALS)}, got {wall!r}")
    base = WALL_MATERIALS[wall](_rng("wall:" + wall))
    acc = _rgb(*ACCENT_RGB[accent])
    atlas = np.zeros((NUM_KINDS, TEX, TEX, 3))
    atlas[WALL] = base
    atlas[ROOM_WALL] = _room_variant(base)
    atlas[DOOR] = _door(base, acc)
    atlas[PILLAR] = _pillar(base)
    for k in range(NUM_PANELS):
        atlas[PANEL0 + k] = _panel(base, k)
    return _to_u8(atlas)


@functools.lru_cache(maxsize=64)
def floor_texture(floor: str, accent: str) -> np.ndarray:
    """uint8 (TEX, TEX, 3)."""
    if floor not in FLOOR_MATERIALS:
        raise ValueError(f"floor material: expected one of {sorted(FLOOR_MATERIALS)}, got {floor!r}")
    return _to_u8(FLOOR_MATERIALS[floor](_rng("floor:" + floor), _rgb(*ACCENT_RGB[accent])))


@functools.lru_cache(maxsize=4)
def ceiling_texture() -> np.ndarray:
    """uint8 (TEX, TEX, 3)."""
    return _to_u8(_ceiling(_rng("ceiling")))


def style_textures(style: Style) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wall atlas (K, T, T, 3), floor (T, T, 3), ceiling (T, T, 3)), all uint8, cached."""
    return wall_atlas(style.wall, style.accent), floor_texture(style.floor, style.accent), ceiling_texture()
