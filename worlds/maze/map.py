"""The maze layout made from a seed: rooms, corridors, wall kinds and landmarks.

Cell (x, y) covers [x, x+1) x [y, y+1) in world units; `kind[y, x]` says what is there. Row index y grows
"south" (down in a top view), x grows "east". A pose (x, y, yaw_deg) with yaw 0 looks east and yaw 90
looks south, so turning right increases yaw (see env.py).

Why landmarks: a video world model can only learn to come back to a place it saw earlier if places look
different. Every map has coloured panels (8 colours, each with its own symbol), doors in the accent colour,
pillars in rooms and ceiling lamps whose light pools vary the brightness across the map; room walls use a
second variant of the wall material, so rooms and corridors differ too.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

# Cell kinds. Anything > FLOOR blocks movement and is drawn as a wall block with that kind's texture.
FLOOR = 0
WALL = 1          # corridor wall, the prompt's wall material
ROOM_WALL = 2     # wall bordering a room: a variant of the same material (trim band)
DOOR = 3          # a closed door in the accent colour (decoration, does not open)
PILLAR = 4        # a free-standing column inside a room
PANEL0 = 5        # PANEL0 + k: coloured panel k on the wall, k < NUM_PANELS
NUM_PANELS = 8
NUM_KINDS = PANEL0 + NUM_PANELS
KIND_NAMES: tuple[str, ...] = ("floor", "wall", "room_wall", "door", "pillar") + tuple(
    f"panel{k}" for k in range(NUM_PANELS))

MIN_GRID = 8


@dataclass
class MazeMap:
    """One maze. `kind` int8 (G, G): cell kinds above; `lamps` bool (G, G): floor cells with a ceiling lamp."""
    seed: int
    kind: np.ndarray                         # int8 (G, G)
    lamps: np.ndarray                        # bool (G, G)
    rooms: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x0, y0, x1, y1) inclusive

    @property
    def size(self) -> int:
        return int(self.kind.shape[0])

    @property
    def walls(self) -> np.ndarray:
        """bool (G, G): cells that block movement."""
        return self.kind != FLOOR

    def is_wall(self, x: int, y: int) -> bool:
        """Cells outside the grid count as walls (the border is walled anyway)."""
        g = self.size
        return not (0 <= x < g and 0 <= y < g) or bool(self.kind[y, x] != FLOOR)

    def floor_cells(self) -> np.ndarray:
        """int (N, 2) of (x, y) floor cells, row-major order."""
        ys, xs = np.nonzero(self.kind == FLOOR)
        return np.stack([xs, ys], axis=1)

    def spawn(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """A start pose: the centre of a random floor cell, looking down its longest open line (so the first
        frame shows some of the maze rather than a wall an arm's length away)."""
        cells = self.floor_cells()
        options = []                                  # (open run, x, y, yaw) for 6 candidate cells x 4 headings
        for i in rng.integers(len(cells), size=6):
            x, y = (int(v) for v in cells[int(i)])
            for yaw, (dx, dy) in ((0.0, (1, 0)), (90.0, (0, 1)), (180.0, (-1, 0)), (270.0, (0, -1))):
                n = 0
                while not self.is_wall(x + dx * (n + 1), y + dy * (n + 1)):
                    n += 1
                options.append((n, x, y, yaw))
        longest = max(o[0] for o in options)
        best = [o for o in options if o[0] == longest]
        _, x, y, yaw = best[int(rng.integers(len(best)))]
        return x + 0.5, y + 0.5, yaw

    def bfs(self, start: tuple[int, int]) -> np.ndarray:
        """int32 (G, G) step distances over floor cells from `start` (4-connected); -1 where unreachable."""
        g = self.size
        dist = np.full((g, g), -1, np.int32)
        sx, sy = start
        if self.is_wall(sx, sy):
            return dist
        dist[sy, sx] = 0
        q = deque([(sx, sy)])
        while q:
            x, y = q.popleft()
            d = dist[y, x] + 1
            for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if not self.is_wall(nx, ny) and dist[ny, nx] < 0:
                    dist[ny, nx] = d
                    q.append((nx, ny))
        return dist

    def path(self, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
        """Shortest 4-connected cell path start..goal inclusive ([] if unreachable)."""
        dist = self.bfs(goal)
        sx, sy = start
        if dist[sy, sx] < 0:
            return []
        out = [(sx, sy)]
        x, y = sx, sy
        while (x, y) != tuple(goal):
            for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if not self.is_wall(nx, ny) and dist[ny, nx] == dist[y, x] - 1:
                    x, y = nx, ny
                    break
            out.append((x, y))
        return out


def _carve_maze(free: np.ndarray, rng: np.random.Generator) -> None:
    """Perfect maze (iterative recursive backtracker) over the odd-coordinate cells of `free` (bool, in place)."""
    g = free.shape[0]
    n = (g - 1) // 2                        # maze cells per axis, at coordinates 1, 3, ..., 2n-1 <= g-2
    seen = np.zeros((n, n), bool)
    stack = [(int(rng.integers(n)), int(rng.integers(n)))]
    seen[stack[0][1], stack[0][0]] = True
    free[2 * stack[0][1] + 1, 2 * stack[0][0] + 1] = True
    while stack:
        cx, cy = stack[-1]
        nbrs = [(cx + dx, cy + dy) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= cx + dx < n and 0 <= cy + dy < n and not seen[cy + dy, cx + dx]]
        if not nbrs:
            stack.pop()
            continue
        nx, ny = nbrs[int(rng.integers(len(nbrs)))]
        seen[ny, nx] = True
        free[2 * ny + 1, 2 * nx + 1] = True
        free[cy + ny + 1, cx + nx + 1] = True   # the wall cell between the two maze cells
        stack.append((nx, ny))


def _place_rooms(free: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Carve non-overlapping odd-aligned rooms; they overlap maze cells, so they stay connected."""
    g = free.shape[0]
    rooms: list[tuple[int, int, int, int]] = []
    target = max(2, g * g // 70)
    for _ in range(target * 8):
        if len(rooms) == target:
            break
        w = int(rng.choice([3, 3, 5, 5, 7]))
        h = int(rng.choice([3, 3, 5, 5, 7]))
        max_x0 = g - 2 - w                      # room must end at an odd coordinate <= g - 2
        max_y0 = g - 2 - h
        if max_x0 < 1 or max_y0 < 1:
            continue
        x0 = 1 + 2 * int(rng.integers(max_x0 // 2 + 1))
        y0 = 1 + 2 * int(rng.integers(max_y0 // 2 + 1))
        x1, y1 = x0 + w - 1, y0 + h - 1
        if x1 > g - 2 or y1 > g - 2:
            continue
        if any(x0 <= rx1 + 2 and rx0 <= x1 + 2 and y0 <= ry1 + 2 and ry0 <= y1 + 2 for rx0, ry0, rx1, ry1 in rooms):
            continue
        free[y0:y1 + 1, x0:x1 + 1] = True
        rooms.append((x0, y0, x1, y1))
    return rooms


def _add_loops(free: np.ndarray, rng: np.random.Generator, share: float = 0.08) -> None:
    """Open a share of the walls between two open cells, so there are several routes (loops) to a place."""
    g = free.shape[0]
    cands = []
    for y in range(1, g - 1):
        for x in range(1, g - 1):
            if free[y, x]:
                continue
            if (free[y, x - 1] and free[y, x + 1] and not free[y - 1, x] and not free[y + 1, x]) or \
               (free[y - 1, x] and free[y + 1, x] and not free[y, x - 1] and not free[y, x + 1]):
                cands.append((x, y))
    for x, y in cands:
        if rng.random() < share:
            free[y, x] = True


def _exposed(kind: np.ndarray, x: int, y: int) -> bool:
    """A wall cell with a floor cell beside it (4-neighbour), i.e. a wall face someone can see."""
    g = kind.shape[0]
    return kind[y, x] != FLOOR and any(
        0 <= x + dx < g and 0 <= y + dy < g and kind[y + dy, x + dx] == FLOOR
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)))


def generate_map(seed: int, grid_size: int = 24) -> MazeMap:
    """The maze for `seed`: same seed and size give the same map on any machine (PCG64, integer logic only)."""
    if not isinstance(grid_size, (int, np.integer)) or grid_size < MIN_GRID:
        raise ValueError(f"grid_size: expected an integer >= {MIN_GRID}, got {grid_size!r}")
    g = int(grid_size)
    rng = np.random.Generator(np.random.PCG64(seed))
    free = np.zeros((g, g), bool)
    _carve_maze(free, rng)
    rooms = _place_rooms(free, rng)
    _add_loops(free, rng)

    kind = np.where(free, FLOOR, WALL).astype(np.int8)
    in_room = np.zeros((g, g), bool)
    for x0, y0, x1, y1 in rooms:
        in_room[y0:y1 + 1, x0:x1 + 1] = True
    # Walls touching a room (8-neighbourhood) get the room variant.
    near_room = np.zeros((g, g), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near_room |= np.roll(np.roll(in_room, dy, 0), dx, 1)
    kind[(kind == WALL) & near_room] = ROOM_WALL

    # Pillars: room cells whose 8 neighbours are all floor; removing such a cell cannot disconnect the map.
    for x0, y0, x1, y1 in rooms:
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        cands = [(x, y) for y in range(y0 + 1, y1) for x in range(x0 + 1, x1)]
        for i in rng.permutation(len(cands))[: int(rng.integers(1, 4))]:
            x, y = cands[int(i)]
            if (kind[y - 1:y + 2, x - 1:x + 2] == FLOOR).all():
                kind[y, x] = PILLAR

    # Decorations on visible wall faces, spread apart so each one marks its own place.
    exposed = [(x, y) for y in range(g) for x in range(g) if kind[y, x] in (WALL, ROOM_WALL) and _exposed(kind, x, y)]
    order = rng.permutation(len(exposed))
    decorations = [PANEL0 + k for k in range(NUM_PANELS)] * 2 + [DOOR] * max(2, g // 6)
    rng.shuffle(decorations)
    placed: list[tuple[int, int]] = []
    for i in order:
        if not decorations:
            break
        x, y = exposed[int(i)]
        if any(max(abs(x - px), abs(y - py)) < 3 for px, py in placed):
            continue
        kind[y, x] = decorations.pop()
        placed.append((x, y))

    # Lamps: one per room (its centre) plus a few along corridors.
    lamps = np.zeros((g, g), bool)
    for x0, y0, x1, y1 in rooms:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        if kind[cy, cx] == FLOOR:
            lamps[cy, cx] = True
    floor = np.argwhere((kind == FLOOR) & ~in_room)
    for i in rng.permutation(len(floor))[: max(1, g * g // 80)]:
        y, x = floor[int(i)]
        lamps[y, x] = True

    m = MazeMap(seed=int(seed), kind=kind, lamps=lamps, rooms=rooms)
    start = tuple(int(v) for v in m.floor_cells()[0])
    dist = m.bfs(start)  # type: ignore[arg-type]
    assert ((dist >= 0) == (kind == FLOOR)).all(), f"seed {seed}: map is not fully connected"
    return m


def ascii_map(m: MazeMap) -> str:
    """A top view for debugging: '#' wall, '=' room wall, 'D' door, 'O' pillar, digits panels, '*' lamp."""
    chars = {FLOOR: ".", WALL: "#", ROOM_WALL: "=", DOOR: "D", PILLAR: "O"}
    rows = []
    for y in range(m.size):
        row = ""
        for x in range(m.size):
            k = int(m.kind[y, x])
            row += "*" if m.lamps[y, x] else chars.get(k, str(k - PANEL0))
        rows.append(row)
    return "\n".join(rows)
