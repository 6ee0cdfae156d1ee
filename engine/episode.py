"""The on-disk episode format: one format for recorded play sessions and for training datasets.

A recording of someone playing the real maze is training data as it stands, and a dataset episode can be
replayed like a session. An episode is a directory:

    meta.json                 what produced it: world, prompt, seed, height, width, action layout, plus whatever
                              the producer adds (resolved config, checkpoint sha256, device, attention mode...);
                              rewritten atomically at close with "frames" and "closed": true
    trace.jsonl               one JSON object per frame, in order, flushed as each frame completes:
                                {"frame": i, "action": [8 floats] | null, "keys": [names], "mouse_dx": float,
                                 "t_wall": s, "gen_ms": ms, "pose": [x, y, yaw_deg] (simulator only), ...}
                              frame 0 is the frame reset() returned (action null); the action on line i is
                              the one whose step() produced frame i
    frames/chunk_NNNNNN.npz   frames [N*C, (N+1)*C) as uint8 (n, H, W, 3), compressed, written atomically
    frames/tail.u8            raw frames of the chunk still being written, appended and flushed per frame

Why this shape: it is crash-safe without a journal. Every frame is on disk (raw, in tail.u8) before its
trace line is written, and a chunk file appears only complete (temp file + rename), so a session cut by
Ctrl-C, a crash or a full disk reads back every frame up to the last complete one. The reader takes the
shorter of the trace and the frames, so a frame without its trace line (or the reverse) is dropped, never
misread.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from engine.env import ACTION_DIM, ACTION_NAMES, ActionError, KEY_NAMES, validate_action

FORMAT_NAME = "neural-engine-episode"
FORMAT_VERSION = 1
CHUNK_FRAMES = 64
_CHUNK_RE = re.compile(r"chunk_(\d{6})\.npz$")


class EpisodeError(ValueError):
    """An episode directory that is missing a file or holds malformed content; the message names where."""


def _write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


class EpisodeWriter:
    """Appends frames and trace lines to an episode directory as they are produced.

    Use as a context manager or call close(); after an exception (a full disk, say) everything written so
    far stays readable.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any], height: int, width: int,
                 chunk_frames: int = CHUNK_FRAMES) -> None:
        self.path = Path(path)
        if (self.path / "meta.json").exists():
            raise EpisodeError(f"{self.path}: an episode is already recorded there; choose a new directory")
        (self.path / "frames").mkdir(parents=True, exist_ok=True)
        self.height, self.width, self.chunk_frames = height, width, chunk_frames
        self.meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "height": height, "width": width,
                     "action_names": list(ACTION_NAMES), "chunk_frames": chunk_frames, **meta}
        _write_json_atomic(self.path / "meta.json", self.meta)
        self._trace = open(self.path / "trace.jsonl", "w")
        self._tail = open(self.path / "frames" / "tail.u8", "wb")
        self._pending: list[np.ndarray] = []   # frames of the current chunk, kept to compress at chunk end
        self.frames = 0
        self.closed = False

    def append(self, frame: np.ndarray, action: np.ndarray | None, **fields: Any) -> None:
        """Write frame number `self.frames` (uint8 (H, W, 3)) and its trace line.

        `action` is None for the first frame of an episode; extra `fields` (t_wall, gen_ms, pose...) go into
        the trace line as they are (JSON-serialisable values)."""
        if self.closed:
            raise EpisodeError(f"{self.path}: append after close")
        if frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
            raise EpisodeError(f"{self.path}: frame {self.frames} must be uint8 ({self.height}, {self.width}, 3), "
                               f"got {frame.dtype} {frame.shape}")
        line: dict[str, Any] = {"frame": self.frames, "action": None}
        if action is not None:
            a = validate_action(action, f"{self.path} frame {self.frames}")
            line.update(action=[float(x) for x in a],
                        keys=[KEY_NAMES[i] for i in range(len(KEY_NAMES)) if a[i] > 0.5],
                        mouse_dx=float(a[-1]))
        line.update(fields)
        # The frame goes to disk before its trace line: a line on disk always has its frame.
        self._tail.write(np.ascontiguousarray(frame).tobytes())
        self._tail.flush()
        self._pending.append(frame.copy())
        self._trace.write(json.dumps(line) + "\n")
        self._trace.flush()
        self.frames += 1
        if len(self._pending) == self.chunk_frames:
            self._seal_chunk()

    def _seal_chunk(self) -> None:
        index = (self.frames - len(self._pending)) // self.chunk_frames
        final = self.path / "frames" / f"chunk_{index:06d}.npz"
        tmp = final.with_name(final.name + ".tmp.npz")
        np.savez_compressed(tmp, frames=np.stack(self._pending))
        os.replace(tmp, final)
        # Only now may the raw copy go: the chunk is complete on disk.
        self._tail.seek(0)
        self._tail.truncate()
        self._tail.flush()
        self._pending.clear()

    def close(self, **meta_updates: Any) -> None:
        """Seal the last chunk and write the final meta.json (frames count, closed flag, extra fields)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._pending:
                self._seal_chunk()
        finally:
            self._tail.close()
            self._trace.close()
            self.meta.update(meta_updates, frames=self.frames, closed=True)
            _write_json_atomic(self.path / "meta.json", self.meta)

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_trace(path: Path) -> list[dict[str, Any]]:
    """Read trace.jsonl, checking every line.

    A last line without its newline that does not parse is a write cut short by a crash: it is dropped (its
    frame is then dropped too). Any other malformed line is an error naming the line and the field."""
    lines = path.read_text().split("\n")
    last_unterminated = lines.pop()          # "" when the file ends with a newline
    if last_unterminated.strip():
        try:
            json.loads(last_unterminated)
            lines.append(last_unterminated)
        except json.JSONDecodeError:
            pass                              # torn by a crash mid-write
    out: list[dict[str, Any]] = []
    for n, raw in enumerate(lines, start=1):
        where = f"{path} line {n}"
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise EpisodeError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise EpisodeError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        if rec.get("frame") != len(out):
            raise EpisodeError(f"{where}: field 'frame' should be {len(out)}, got {rec.get('frame')!r}")
        if "action" not in rec:
            raise EpisodeError(f"{where}: field 'action' is missing")
        act = rec["action"]
        if len(out) == 0:
            if act is not None:
                raise EpisodeError(f"{where}: frame 0 is the reset frame; its 'action' must be null")
        else:
            if act is None:
                raise EpisodeError(f"{where}: field 'action' is null; expected {ACTION_DIM} numbers")
            try:
                rec["action"] = validate_action(act, f"{where} field 'action'")
            except ActionError as e:
                raise EpisodeError(str(e)) from None
            unknown = [k for k in rec.get("keys") or [] if k not in KEY_NAMES]
            if unknown:
                raise EpisodeError(f"{where}: field 'keys' has unknown key name(s) {unknown}; "
                                   f"expected names from {list(KEY_NAMES)}")
        out.append(rec)
    return out


class EpisodeReader:
    """Reads an episode directory (complete, or cut short by a crash) with clear errors for bad content."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not self.path.is_dir():
            raise EpisodeError(f"{self.path}: no such episode directory")
        for needed in ("meta.json", "trace.jsonl", "frames"):
            if not (self.path / needed).exists():
                raise EpisodeError(f"{self.path}: missing '{needed}'; not an episode directory")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise EpisodeError(f"{meta_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if self.meta.get("format") != FORMAT_NAME:
            raise EpisodeError(f"{meta_path}: field 'format' is {self.meta.get('format')!r}, expected {FORMAT_NAME!r}")
        if self.meta.get("version") != FORMAT_VERSION:
            raise EpisodeError(f"{meta_path}: field 'version' is {self.meta.get('version')!r}; this engine reads "
                               f"version {FORMAT_VERSION}")
        for field in ("height", "width", "chunk_frames", "prompt", "seed", "world"):
            if field not in self.meta:
                raise EpisodeError(f"{meta_path}: field '{field}' is missing")
        if self.meta.get("action_names") != list(ACTION_NAMES):
            raise EpisodeError(f"{meta_path}: field 'action_names' is {self.meta.get('action_names')!r}, "
                               f"expected {list(ACTION_NAMES)}")
        self.height, self.width = int(self.meta["height"]), int(self.meta["width"])
        self.chunk_frames = int(self.meta["chunk_frames"])
        self.trace = _parse_trace(self.path / "trace.jsonl")
        self._chunks = self._list_chunks()
        tail = self.path / "frames" / "tail.u8"
        self._tail_frames = (tail.stat().st_size // self._frame_bytes) if tail.exists() else 0
        stored = len(self._chunks) * self.chunk_frames + self._tail_frames
        self.num_frames = min(len(self.trace), stored)
        self.truncated = not self.meta.get("closed", False)
        self._cache: tuple[int, np.ndarray] | None = None

    @property
    def _frame_bytes(self) -> int:
        return self.height * self.width * 3

    def _list_chunks(self) -> list[Path]:
        found = sorted(p for p in (self.path / "frames").iterdir() if _CHUNK_RE.search(p.name))
        for i, p in enumerate(found):
            if p.name != f"chunk_{i:06d}.npz":
                raise EpisodeError(f"{self.path / 'frames'}: expected chunk_{i:06d}.npz, found {p.name} "
                                   f"(a chunk is missing)")
        return found

    def _chunk(self, index: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        if index < len(self._chunks):
            try:
                with np.load(self._chunks[index]) as z:
                    arr = z["frames"]
            except Exception as e:  # zip/npz corruption comes in many exception types
                raise EpisodeError(f"{self._chunks[index]}: unreadable chunk ({e})") from None
            if arr.dtype != np.uint8 or arr.shape[1:] != (self.height, self.width, 3):
                raise EpisodeError(f"{self._chunks[index]}: expected uint8 (n, {self.height}, {self.width}, 3), "
                                   f"got {arr.dtype} {arr.shape}")
        else:
            raw = np.fromfile(self.path / "frames" / "tail.u8", dtype=np.uint8,
                              count=self._tail_frames * self._frame_bytes)
            arr = raw.reshape(self._tail_frames, self.height, self.width, 3)
        self._cache = (index, arr)
        return arr

    def __len__(self) -> int:
        return self.num_frames

    def frame(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"{self.path}: frame {i} out of range [0, {self.num_frames})")
        c, r = divmod(i, self.chunk_frames)
        return self._chunk(c)[r]

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop) as uint8 (n, H, W, 3)."""
        stop = self.num_frames if stop is None else min(stop, self.num_frames)
        if start >= stop:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        return np.stack([self.frame(i) for i in range(start, stop)])

    def actions(self) -> np.ndarray:
        """float32 (num_frames, ACTION_DIM): row i is the action that produced frame i; row 0 is zeros."""
        out = np.zeros((self.num_frames, ACTION_DIM), np.float32)
        for i in range(1, self.num_frames):
            out[i] = self.trace[i]["action"]
        return out

    def poses(self) -> np.ndarray | None:
        """float64 (num_frames, 3) true poses (x, y, yaw_deg) where every line has one, else None."""
        if self.num_frames == 0 or any("pose" not in self.trace[i] for i in range(self.num_frames)):
            return None
        return np.asarray([self.trace[i]["pose"] for i in range(self.num_frames)], np.float64)

    def field(self, name: str) -> list[Any]:
        """One trace field for every frame (None where a line lacks it)."""
        return [self.trace[i].get(name) for i in range(self.num_frames)]


def iter_episodes(root: str | Path) -> Iterator[Path]:
    """Episode directories under `root` (root itself if it is one), sorted by path."""
    root = Path(root)
    if (root / "meta.json").exists():
        yield root
        return
    yield from sorted(p.parent for p in root.rglob("meta.json"))
