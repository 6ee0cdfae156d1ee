"""A vectorised numpy raycaster: DDA over the grid, textured walls, floor/ceiling casting, lamps and fog.

Batched: B environments (each with its own map, pose and style) render in one call, so dataset workers can
amortise numpy's per-call overhead.

Bit-exact determinism on any machine: every per-pixel value is computed in float64 with IEEE basic
operations only (+ - * /, floor, abs, comparisons, integer indexing), which every CPU rounds identically,
SIMD or not. cos/sin are taken once per frame per env on Python scalars (`math`), and fog/lamp falloffs come
from lookup tables built with `math` on scalars and indexed by integers. No float32 and no array
transcendental (np.exp/np.sin on arrays may differ by an ulp between CPUs and numpy builds).

Geometry: camera height 0.5 (walls are 1 unit high), horizontal camera plane `PLANE` (half-width at distance
1), so the horizontal field of view is 2*atan(PLANE) = 77 degrees; pixels are square, so the focal length
in pixels is f = (W/2) / PLANE. Distances are perpendicular to the view direction (no fish-eye).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from worlds.maze.map import NUM_KINDS, MazeMap
from worlds.maze.style import Style
from worlds.maze.textures import TEX, style_textures

PLANE = 0.8                 # camera plane half-width at distance 1: FOV = 2*atan(0.8) ~ 77.3 degrees
FOG_STEPS_PER_CELL = 16     # fog table resolution
FOG_MAX_CELLS = 64          # distances beyond this use the last fog entry
FLOOR_TEX = NUM_KINDS       # texture slot of the floor in the combined per-style texture stack
CEIL_TEX = NUM_KINDS + 1
LAMP_RADIUS2 = 0.045        # squared radius (cells^2) of the glowing lamp disc on the ceiling
SIDE_SHADE = 0.78           # y-facing walls are darker: cheap directional light that shows wall orientation

# light word -> (ambient rgb, lamp rgb, lamp reach in cells, fog rgb, lamp disc rgb)
LIGHTING: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float,
                          tuple[float, float, float], tuple[float, float, float]]] = {
    "day": ((0.95, 0.95, 0.95), (0.22, 0.2, 0.15), 2.5, (200.0, 205.0, 215.0), (255.0, 252.0, 240.0)),
    "dusk": ((0.6, 0.48, 0.43), (0.45, 0.36, 0.2), 2.8, (140.0, 95.0, 80.0), (255.0, 225.0, 160.0)),
    "night": ((0.15, 0.17, 0.26), (0.75, 0.6, 0.36), 3.0, (8.0, 10.0, 22.0), (255.0, 230.0, 160.0)),
}
# fog word -> extinction per cell of distance
FOG_DENSITY: dict[str, float] = {"clear": 0.035, "haze": 0.11, "fog": 0.3}


@dataclass(frozen=True)
class RenderAssets:
    """Everything the renderer needs about one (map, style) pair, precomputed once."""
    kind: np.ndarray        # int8 (G, G) cell kinds
    lamps: np.ndarray       # bool (G, G)
    pool: np.ndarray        # float64 (G+1, G+1) lamp light at cell corners, bilinear inside
    ambient_rgb: np.ndarray # float64 (3,) light everywhere
    lamp_light: np.ndarray  # float64 (3,) colour of lamp light (times the pool)
    textures: np.ndarray    # uint8 (NUM_KINDS + 2, TEX, TEX, 3): wall kinds, then floor, then ceiling
    fog: np.ndarray         # float64 (FOG_MAX_CELLS * FOG_STEPS_PER_CELL,) fog share by distance step
    fog_rgb: np.ndarray     # float64 (3,)
    lamp_rgb: np.ndarray    # float64 (3,)


def _fog_table(density: float) -> np.ndarray:
    n = FOG_MAX_CELLS * FOG_STEPS_PER_CELL
    return np.asarray([1.0 - math.exp(-density * (i + 0.5) / FOG_STEPS_PER_CELL) for i in range(n)], np.float64)


def _pool_map(lamps: np.ndarray, light: str) -> np.ndarray:
    """float64 (G+1, G+1): sum of smooth pools (1 - d^2/R^2)^2 around every lamp (basic ops only), capped."""
    _, _, reach, _, _ = LIGHTING[light]
    g = lamps.shape[0]
    vy, vx = np.mgrid[0:g + 1, 0:g + 1].astype(np.float64)
    pool = np.zeros((g + 1, g + 1))
    for ly, lx in np.argwhere(lamps):
        d2 = (vx - (lx + 0.5)) ** 2 + (vy - (ly + 0.5)) ** 2
        t = np.maximum(0.0, 1.0 - d2 / (reach * reach))
        pool += t * t
    return np.minimum(pool, 1.0)


@functools.lru_cache(maxsize=256)
def _assets_cached(kind_bytes: bytes, lamp_bytes: bytes, g: int, style: Style) -> RenderAssets:
    kind = np.frombuffer(kind_bytes, np.int8).reshape(g, g)
    lamps = np.frombuffer(lamp_bytes, bool).reshape(g, g)
    atlas, floor, ceil = style_textures(style)
    textures = np.concatenate([atlas, floor[None], ceil[None]], axis=0)
    ambient, lamp_light, _, fog_rgb, lamp_rgb = LIGHTING[style.light]
    return RenderAssets(kind=kind, lamps=lamps, pool=_pool_map(lamps, style.light),
                        ambient_rgb=np.asarray(ambient), lamp_light=np.asarray(lamp_light), textures=textures,
                        fog=_fog_table(FOG_DENSITY[style.fog]), fog_rgb=np.asarray(fog_rgb),
                        lamp_rgb=np.asarray(lamp_rgb))


def build_assets(m: MazeMap, style: Style) -> RenderAssets:
    """Render assets for a map and style (cached by content, so equal maps share them)."""
    return _assets_cached(np.ascontiguousarray(m.kind, np.int8).tobytes(),
                          np.ascontiguousarray(m.lamps, bool).tobytes(), m.size, style)


class Renderer:
    """Renders (B, H, W, 3) uint8 frames for B (assets, pose) pairs; one instance per frame size."""

    def __init__(self, height: int = 128, width: int = 128) -> None:
        if height < 2 or width < 2 or height % 2:
            raise ValueError(f"height/width: expected height even and >= 2, width >= 2, got {height}x{width}")
        self.height, self.width = height, width
        self.focal = (width / 2) / PLANE                                       # pixels per unit at distance 1
        self.cam_x = (2.0 * (np.arange(width) + 0.5) / width - 1.0) * PLANE     # (W,) plane offset per column
        rows = np.arange(height) + 0.5 - height / 2                             # (H,) pixel row from horizon
        self.rows = rows
        self.row_dist = 0.5 * self.focal / np.abs(rows)                         # (H,) floor/ceiling distance
        self.is_floor_row = rows > 0                                            # (H,)

    def render(self, assets: Sequence[RenderAssets], poses: np.ndarray) -> np.ndarray:
        """poses float64 (B, 3) of (x, y, yaw_deg) -> uint8 (B, H, W, 3)."""
        poses = np.asarray(poses, np.float64).reshape(-1, 3)
        b_n, h, w = len(assets), self.height, self.width
        if poses.shape[0] != b_n:
            raise ValueError(f"poses: expected {b_n} rows (one per env), got {poses.shape[0]}")
        g = assets[0].kind.shape[0]
        if any(a.kind.shape != (g, g) for a in assets):
            raise ValueError("assets: all maps in one batch must have the same grid size")
        kinds = np.stack([a.kind for a in assets])                  # (B, G, G)
        lamps = np.stack([a.lamps for a in assets])                 # (B, G, G)
        pools = np.stack([a.pool for a in assets])                  # (B, G+1, G+1)
        ambient = np.stack([a.ambient_rgb for a in assets])         # (B, 3)
        lamp_light = np.stack([a.lamp_light for a in assets])       # (B, 3)
        textures = np.stack([a.textures for a in assets])           # (B, K+2, T, T, 3)
        fogs = np.stack([a.fog for a in assets])                    # (B, F)
        fog_rgb = np.stack([a.fog_rgb for a in assets])             # (B, 3)
        lamp_rgb = np.stack([a.lamp_rgb for a in assets])           # (B, 3)

        # Per-env camera basis from Python scalar trig (the only transcendental calls).
        dirs = np.array([[math.cos(math.radians(p[2])), math.sin(math.radians(p[2]))] for p in poses])  # (B, 2)
        px, py = poses[:, 0:1], poses[:, 1:2]                                  # (B, 1)
        # right = (-sin, cos): yaw grows clockwise in this y-down frame, so the screen's right is +90 degrees.
        rdx = dirs[:, 0:1] - dirs[:, 1:2] * self.cam_x[None, :]               # (B, W) ray direction x
        rdy = dirs[:, 1:2] + dirs[:, 0:1] * self.cam_x[None, :]               # (B, W) ray direction y

        perp, side, hit_kind = self._cast(kinds, px, py, rdx, rdy)             # (B, W) each
        hitx = px + perp * rdx                                                 # (B, W) hit point
        hity = py + perp * rdy
        wall_u = np.where(side == 0, hity, hitx)
        wall_u = wall_u - np.floor(wall_u)
        flip = ((side == 0) & (rdx < 0)) | ((side == 1) & (rdy > 0))            # so textures read left to right
        wall_u = np.where(flip, 1.0 - wall_u, wall_u)
        tex_u = np.minimum(np.floor(wall_u * TEX).astype(np.int64), TEX - 1)   # (B, W)

        # Per pixel (B, H, W): wall where the row falls inside the wall slice, else floor or ceiling.
        v = self.rows[None, :, None] * perp[:, None, :] / self.focal + 0.5     # (B, H, W) wall texture v
        is_wall = (v >= 0.0) & (v < 1.0)
        row_d = self.row_dist[None, :, None]                                   # (1, H, 1)
        fx = px[:, :, None] + row_d * rdx[:, None, :]                          # (B, H, W) floor point
        fy = py[:, :, None] + row_d * rdy[:, None, :]
        ptx = np.where(is_wall, hitx[:, None, :], fx)
        pty = np.where(is_wall, hity[:, None, :], fy)
        dist = np.where(is_wall, perp[:, None, :], row_d)

        tex_id = np.where(is_wall, hit_kind[:, None, :].astype(np.int64),
                          np.where(self.is_floor_row[None, :, None], FLOOR_TEX, CEIL_TEX))
        tx = np.where(is_wall, tex_u[:, None, :], np.floor(fx * TEX).astype(np.int64) & (TEX - 1))
        ty = np.where(is_wall, np.minimum(np.floor(v * TEX).astype(np.int64), TEX - 1) & (TEX - 1),
                      np.floor(fy * TEX).astype(np.int64) & (TEX - 1))
        bidx = np.arange(b_n)[:, None, None]
        # Bilinear lamp light from the corner pool map at the visible point.
        cx = np.clip(ptx, 0.0, g - 1e-9)
        cy = np.clip(pty, 0.0, g - 1e-9)
        ix, iy = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
        ax, ay = cx - ix, cy - iy
        pool_flat = pools.reshape(-1)                                          # (B*(G+1)*(G+1),)
        li = (bidx * (g + 1) + iy) * (g + 1) + ix                              # (B, H, W) top-left corner
        pool = (pool_flat[li] * (1.0 - ax) + pool_flat[li + 1] * ax) * (1.0 - ay) + \
               (pool_flat[li + g + 1] * (1.0 - ax) + pool_flat[li + g + 2] * ax) * ay

        fog_idx = np.minimum(np.floor(dist * FOG_STEPS_PER_CELL).astype(np.int64), fogs.shape[1] - 1)
        f = fogs.reshape(-1)[bidx * fogs.shape[1] + fog_idx]                  # (B, H, W) fog share
        keep = np.where(is_wall & (side[:, None, :] == 1), SIDE_SHADE, 1.0) * (1.0 - f)
        lamp_keep = pool * keep

        # Glowing lamp discs on the ceiling above lamp cells (seen through the fog).
        is_ceil = ~is_wall & ~self.is_floor_row[None, :, None]
        d2 = (cx - (ix + 0.5)) ** 2 + (cy - (iy + 0.5)) ** 2
        glow = is_ceil & (d2 < LAMP_RADIUS2) & lamps.reshape(-1)[(bidx * g + iy) * g + ix]
        any_glow = bool(glow.any())

        # Colour one channel at a time: numpy is far faster on contiguous (B, H, W) planes than on a trailing
        # axis of 3. Textures are gathered through one flat integer index per pixel.
        n_tex = textures.shape[1]
        texel = ((bidx * n_tex + tex_id) * TEX + ty) * TEX + tx                 # (B, H, W) flat texel index
        out = np.empty((b_n, h, w, 3), np.uint8)
        for c in range(3):
            tex_c = textures[..., c].reshape(-1)                                # (B*(K+2)*T*T,)
            amb = ambient[:, c, None, None]                                     # (B, 1, 1)
            val = tex_c[texel] * (keep * amb + lamp_keep * lamp_light[:, c, None, None]) + \
                fog_rgb[:, c, None, None] * f
            if any_glow:
                val = np.where(glow, lamp_rgb[:, c, None, None] * (1.0 - f) + fog_rgb[:, c, None, None] * f, val)
            out[..., c] = np.clip(np.floor(val + 0.5), 0.0, 255.0)
        return out

    @staticmethod
    def _cast(kinds: np.ndarray, px: np.ndarray, py: np.ndarray, rdx: np.ndarray, rdy: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DDA: step each ray cell by cell until it enters a non-floor cell.

        Returns perpendicular distance (B, W) float64, side (B, W) int (0: crossed an x boundary, 1: y) and
        the kind of the cell hit (B, W) int8. Rays are processed as a shrinking flat set of active indices."""
        b_n, w = rdx.shape
        g = kinds.shape[1]
        n = b_n * w
        bi = np.repeat(np.arange(b_n), w)
        pxf, pyf = np.repeat(px[:, 0], w), np.repeat(py[:, 0], w)
        rx, ry = rdx.reshape(-1), rdy.reshape(-1)
        big = 1e30                                     # stands in for 1/0: finite, so 0 * big stays 0
        with np.errstate(divide="ignore"):
            ddx = np.where(rx == 0.0, big, np.abs(1.0 / np.where(rx == 0.0, 1.0, rx)))
            ddy = np.where(ry == 0.0, big, np.abs(1.0 / np.where(ry == 0.0, 1.0, ry)))
        mx, my = np.floor(pxf).astype(np.int64), np.floor(pyf).astype(np.int64)
        sx = np.where(rx < 0.0, -1, 1)
        sy = np.where(ry < 0.0, -1, 1)
        sdx = np.where(rx < 0.0, (pxf - mx) * ddx, (mx + 1.0 - pxf) * ddx)
        sdy = np.where(ry < 0.0, (pyf - my) * ddy, (my + 1.0 - pyf) * ddy)
        side = np.zeros(n, np.int64)
        hit_kind = np.zeros(n, np.int8)
        act = np.arange(n)
        for _ in range(4 * g + 4):
            if act.size == 0:
                break
            step_x = sdx[act] < sdy[act]
            ax_, ay_ = act[step_x], act[~step_x]
            sdx[ax_] += ddx[ax_]
            mx[ax_] += sx[ax_]
            side[ax_] = 0
            sdy[ay_] += ddy[ay_]
            my[ay_] += sy[ay_]
            side[ay_] = 1
            cx_, cy_ = np.clip(mx[act], 0, g - 1), np.clip(my[act], 0, g - 1)
            k = kinds[bi[act], cy_, cx_]
            outside = (mx[act] < 0) | (mx[act] >= g) | (my[act] < 0) | (my[act] >= g)
            k = np.where(outside & (k == 0), 1, k).astype(np.int8)
            done = k != 0
            hit_kind[act[done]] = k[done]
            act = act[~done]
        perp = np.where(side == 0, sdx - ddx, sdy - ddy)
        perp = np.maximum(perp, 1e-6)
        return perp.reshape(b_n, w), side.reshape(b_n, w), hit_kind.reshape(b_n, w)


def render(maps: Sequence[MazeMap], poses: np.ndarray, styles: Sequence[Style],
           height: int = 128, width: int = 128) -> np.ndarray:
    """Convenience batch render: B maps, poses float64 (B, 3), styles -> uint8 (B, H, W, 3)."""
    if not (len(maps) == len(styles) == len(np.asarray(poses).reshape(-1, 3))):
        raise ValueError(f"maps, poses, styles: expected equal lengths, got {len(maps)}, "
                         f"{len(np.asarray(poses).reshape(-1, 3))}, {len(styles)}")
    return _renderer(height, width).render([build_assets(m, s) for m, s in zip(maps, styles)], poses)


@functools.lru_cache(maxsize=8)
def _renderer(height: int, width: int) -> Renderer:
    return Renderer(height, width)


def tune_malloc(threshold_bytes: int = 256 << 20) -> bool:
    """Keep glibc from mmap-ing (and page-faulting) every large numpy temporary.

    Batched frames make per-pixel temporaries larger than glibc's mmap threshold; each one is then a fresh
    mmap + page faults + munmap, which made batching slower than single frames. Raising the threshold (a
    process-wide setting, so only the dataset workers and benchmarks call this) lets malloc reuse the heap:
    about 2.5x faster batched rendering here. Returns False where it does not apply (non-glibc)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold_bytes)) and \
            bool(libc.mallopt(m_trim_threshold, 2 * threshold_bytes))
    except (OSError, AttributeError):
        return False
