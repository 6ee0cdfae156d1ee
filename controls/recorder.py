"""Recording play sessions in the episode format (engine/episode.py) plus video.mp4, as they happen.

A session is an episode: meta.json (what produced it, enough to replay it), trace.jsonl (the action and
the small per-frame facts of every frame, e.g. the simulator's true pose, so a recording of engine=sim is
training data as it stands) and the frames. EpisodeWriter makes it crash-safe; this class adds the policy:
a write that fails with OSError (a full disk) stops the recording with a message and leaves everything
already written readable, instead of ending the game.
"""
from __future__ import annotations

import datetime as _dt
import numbers
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from controls.errors import UsageError
from engine.video import Video
from engine.env import Action, Env, Frame
from engine.episode import EpisodeError, EpisodeWriter

# info() keys that describe the episode rather than the frame: they go to meta.json ("env_info"), not to
# every trace line
STATIC_INFO = frozenset({"checkpoint_sha256", "checkpoint", "device", "dtype", "noise_scale", "noise_corr", "prompt",
                         "guidance", "guide_attention", "fused_writes", "kernel_choices",
                         "seed", "world"})
RESERVED = frozenset({"frame", "action", "keys", "mouse_dx", "t_wall", "gen_ms"})
# info() keys whose last value goes to meta.json when the session closes (not to trace lines): the attention
# kernels the run chose by timing, which a replay pins to draw the same frames on another GPU of the same kind
FINAL_INFO = frozenset({"kernels_chosen"})


def engine_version() -> str:
    """The installed package version, or pyproject.toml's when running from a plain checkout."""
    try:
        return metadata.version("neural-game-engine")
    except metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"]) + "+checkout"
        except (OSError, KeyError, ValueError):
            return "unknown"


def _small(v: Any) -> Any | None:
    """v as plain JSON if it is small (a number, a short string, a short list of numbers, a small dict of
    those), else None."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, str) and len(v) <= 32:
        return v
    if isinstance(v, dict) and len(v) <= 8:   # e.g. the model's mode_stats {density, recall...}
        items = {str(k): _small(x) for k, x in v.items()}
        return items if all(x is not None for x in items.values()) else None
    if isinstance(v, (list, tuple, np.ndarray)) and len(v) <= 16:
        items = [_small(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
        if all(isinstance(x, (int, float, bool)) for x in items):
            return items
    return None


def trace_fields(info: dict[str, Any]) -> dict[str, Any]:
    """The per-frame part of env.info() that belongs on a trace line."""
    out = {}
    for k, v in info.items():
        if k in STATIC_INFO or k in RESERVED or k in FINAL_INFO:
            continue
        s = _small(v)
        if s is not None:
            out[k] = s
    return out


def current_attention(env: Env, info: dict[str, Any], requested: str | None) -> str | None:
    """The attention mode in use: what the env reports, else what the config asked for; None for an env
    with no attention (the simulator)."""
    mode = info.get("attention_mode", info.get("attention"))
    if isinstance(mode, str):
        return mode
    return requested if env.attention_modes else None


def session_meta(cfg: DictConfig, env: Env, seed: int, prompt: str, info: dict[str, Any]) -> dict[str, Any]:
    """Everything replay needs to rebuild the run, and to refuse a session it cannot reproduce."""
    return {
        "world": env.spec.world,
        "prompt": prompt,
        "seed": int(seed),
        "engine": str(OmegaConf.select(cfg, "engine.name", default="sim")),
        "config_version": int(cfg.config_version),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "checkpoint_sha256": info.get("checkpoint_sha256"),
        "engine_version": engine_version(),
        "device": str(cfg.device),
        "attention": current_attention(env, info, OmegaConf.select(cfg, "attention.name")),
        "fps": float(env.spec.fps),
        "env_info": {k: _small(v) for k, v in info.items() if k in STATIC_INFO},
        "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "producer": "play.py",
    }


def default_session_dir(root: str | Path = "sessions") -> Path:
    return Path(root) / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


class Recorder:
    """At most one recording at a time; `start` opens a session at a reset frame, `stop` closes it.

    Later recordings of the same run (after a reset) go to <dir>_2, <dir>_3... `say` shows messages (the
    console, and the HUD when there is one)."""

    def __init__(self, base: Path, fps: float, video_scale: int = 4,
                 say: Callable[[str], None] = print) -> None:
        self.base, self.fps, self.video_scale, self.say = Path(base), fps, video_scale, say
        self.writer: EpisodeWriter | None = None
        self.video: Video | None = None
        self.sessions: list[Path] = []
        self.error: str | None = None
        self._final: dict[str, Any] = {}   # the last value of each FINAL_INFO key, for meta.json at close

    @property
    def active(self) -> bool:
        return self.writer is not None

    def _next_dir(self) -> Path:
        path, n = self.base, 1
        while (path / "meta.json").exists() or path in self.sessions:
            n += 1
            path = self.base.with_name(f"{self.base.name}_{n}")
        return path

    def start(self, meta: dict[str, Any], frame: Frame, info: dict[str, Any]) -> None:
        """Open a new session and write its frame 0 (the frame reset() returned)."""
        self.stop()
        path = self._next_dir() if self.sessions else self.base
        try:
            self.writer = EpisodeWriter(path, meta, frame.shape[0], frame.shape[1])
        except EpisodeError as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            self._fail(f"cannot create session {path}: {e}")
            return
        self.sessions.append(path)
        self.video = Video(path / "video.mp4", self.fps, self.video_scale)
        self.say(f"recording to {path}")
        self.append(frame, None, 0.0, info)

    def append(self, frame: Frame, action: Action | None, gen_ms: float, info: dict[str, Any]) -> None:
        if self.writer is None:
            return
        import time

        self._final.update({k: info[k] for k in FINAL_INFO if k in info})
        try:
            self.writer.append(frame, action, t_wall=round(time.time(), 4), gen_ms=round(gen_ms, 3),
                               **trace_fields(info))
            assert self.video is not None
            self.video.write(frame)
        except OSError as e:
            self._fail(f"writing {self.writer.path} failed at frame {self.writer.frames}: {e}")

    def _fail(self, message: str) -> None:
        self.error = f"recording stopped: {message}; frames written so far are kept"
        self.say(self.error)
        self.stop(quiet=True)

    def stop(self, quiet: bool = False) -> Path | None:
        """Close the current session (seal the frames, final meta.json, finalise video.mp4)."""
        writer, video = self.writer, self.video
        self.writer = self.video = None
        if writer is None:
            return None
        try:
            if video is not None:
                video.close()
            final, self._final = self._final, {}
            writer.close(**final)
        except OSError as e:
            self.say(f"closing {writer.path} failed ({e}); its trace and frames stay readable")
        if not quiet:
            self.say(f"session written: {writer.path} ({writer.frames} frames)")
        return writer.path
