"""Replay recorded sessions through the env, optionally checking every frame against the recording.

A session is rebuilt from its meta.json: the recorded seed and prompt, and the recorded world, engine and
attention config, except for what the command line names (`python play.py replay=DIR engine=model` replays
a simulator session on the model), and the attention kernels the recording chose (meta.json `kernels_chosen`,
pinned unless `engine.kernel_choices=` is given). A session from another world, checkpoint or config version is refused
with the mismatching field named, unless `allow_mismatch=true`, which the report records. Nothing in the
session is modified; check=true adds check_report.json and check_strip.png beside it.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from controls.check import Checker, write_report
from controls.cli import PlayConfig, overridden
from controls.config import load_controls
from controls.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from controls.window import Window, display_available
from engine.env import Action
from engine.episode import EpisodeError, EpisodeReader, iter_episodes
from engine.factory import FactoryError, build_env

# what a replay takes from the recording unless the command line names it: the groups that build the env, and
# cpu_window (on a CPU it sets the window the model starts with: engine/factory.py)
RECORDED_GROUPS = ("world", "engine", "attention", "cpu_window")


class TraceSource:
    """The recorded actions, in order, then None; also the attention mode each recorded step used."""

    def __init__(self, reader: EpisodeReader, limit: int) -> None:
        self.reader, self.limit, self.i = reader, limit, 1

    def next_action(self) -> Action | None:
        if self.i >= self.limit:
            return None
        a = self.reader.trace[self.i]["action"]
        self.i += 1
        return a

    def attention_for_next(self) -> str | None:
        if self.i >= self.limit:
            return None
        line = self.reader.trace[self.i]
        mode = line.get("attention_mode", line.get("attention"))
        return mode if isinstance(mode, str) else None


def open_session(path: Path) -> EpisodeReader:
    """EpisodeReader plus the checks a replay needs: a closed session must still hold all its frames."""
    reader = EpisodeReader(path)
    meta_frames = reader.meta.get("frames")
    if reader.meta.get("closed") and isinstance(meta_frames, int) and reader.num_frames < meta_frames:
        raise EpisodeError(f"{path}: meta.json field 'frames' says {meta_frames} frames but only "
                           f"{reader.num_frames} are readable (a frames/chunk_*.npz file or trace lines missing)")
    if not isinstance(reader.meta.get("config"), dict):
        raise EpisodeError(f"{path / 'meta.json'}: field 'config' is missing; cannot rebuild the run")
    if reader.num_frames == 0:
        raise EpisodeError(f"{path}: the session holds no frames")
    return reader


def replay_config(cfg: DictConfig, overrides: list[str], meta: dict[str, Any]) -> tuple[DictConfig, int, str]:
    """The config, seed and prompt to replay with: the recording's, except what the command line names."""
    named = overridden(overrides)
    out = copy.deepcopy(cfg)
    OmegaConf.set_struct(out, False)
    for key in RECORDED_GROUPS:
        if key not in named and key in meta["config"]:
            out[key] = meta["config"][key]
    if "device" in named and "engine" not in named and "device" in out.engine:
        out.engine.device = cfg.device  # the recorded engine node holds the recording's resolved device
    chosen = meta.get("kernels_chosen")
    sets_choices = any(o.split("=", 1)[0].lstrip("+~") == "engine.kernel_choices" for o in overrides if "=" in o)
    if isinstance(chosen, dict) and chosen and not sets_choices and "kernel_choices" in (out.get("engine") or {}):
        # the attention kernels the recording ran (chosen by timing there): the same kernels draw the same frames
        # on another GPU of the same kind, where timing could pick others (docs/BENCHMARKS.md, session 23)
        out.engine.kernel_choices = chosen
    seed = int(cfg.seed) if "seed" in named else int(meta["seed"])
    prompt = str(cfg.prompt) if "prompt" in named and cfg.prompt is not None else str(meta["prompt"])
    return out, seed, prompt


def _mismatch(field: str, recorded: Any, replay: Any) -> dict[str, Any] | None:
    return None if recorded == replay else {"field": field, "recorded": recorded, "replay": replay}


def _refuse_or_note(found: list[dict[str, Any]], path: Path, allow: bool) -> None:
    if found and not allow:
        m = found[0]
        raise UsageError(f"{path}: recorded {m['field']} {m['recorded']!r} != this run's {m['replay']!r}; "
                         f"refusing to replay (pass allow_mismatch=true to replay anyway)")


def replay_one(path: Path, cfg: DictConfig, opts: PlayConfig, overrides: list[str], game_cls: Any) -> dict[str, Any]:
    """Replay one session; returns a summary ({"passed": bool|None, ...})."""
    reader = open_session(path)
    meta = reader.meta
    rcfg, seed, prompt = replay_config(cfg, overrides, meta)
    mismatches = [m for m in [_mismatch("config_version", meta.get("config_version"), int(rcfg.config_version))] if m]
    _refuse_or_note(mismatches, path, opts.allow_mismatch)
    controls = load_controls(rcfg.controls)
    env = build_env(rcfg)
    spec_m = [m for m in [_mismatch("world", meta.get("world"), env.spec.world)] if m]
    _refuse_or_note(spec_m, path, opts.allow_mismatch)
    mismatches += spec_m
    if (reader.height, reader.width) != (env.spec.height, env.spec.width):
        raise UsageError(f"{path}: recorded frames are {reader.height}x{reader.width}, this env makes "
                         f"{env.spec.height}x{env.spec.width}; cannot replay")
    modes = env.attention_modes
    if meta.get("attention") in modes:
        env.set_attention(meta["attention"])   # the mode in use when the recording started
    limit = min(opts.frames, reader.num_frames) if opts.frames else reader.num_frames
    checker = Checker(reader, opts.threshold_db, opts.worst) if opts.check else None

    def on_frame(index: int, frame: Any, info: dict[str, Any]) -> None:
        if index == 0:
            m = _mismatch("checkpoint_sha256", meta.get("checkpoint_sha256"), info.get("checkpoint_sha256"))
            if m:
                _refuse_or_note([m], path, opts.allow_mismatch)
                mismatches.append(m)
        if checker is not None:
            checker.on_frame(index, frame, info)

    headless = opts.headless or not display_available()
    window = Window(controls.window, env.spec.height, env.spec.width, headless)
    game = game_cls(env, rcfg, controls, window, seed=seed, prompt=prompt, source=TraceSource(reader, limit),
                    limit=limit, paced=not headless, interactive=False, on_frame=on_frame)
    try:
        game.run()
    finally:
        window.close()
    summary: dict[str, Any] = {"session": str(path), "frames": game.produced, "passed": None}
    if checker is None:
        print(f"replayed {path}: {game.produced} frames")
        return summary
    engine_change = _mismatch("engine", meta.get("engine"), OmegaConf.select(rcfg, "engine.name"))
    strip = checker.strip(path / "check_strip.png")
    report = checker.report(
        limit, seed=seed, prompt=prompt, allow_mismatch=opts.allow_mismatch, mismatches=mismatches,
        overrides=overrides, engine_change=engine_change, strip=str(strip) if strip else None,
        device={"recorded": meta.get("device"), "replay": str(rcfg.device)},
        attention={"recorded": meta.get("attention"), "replay": game.attention})
    if game.interrupted:
        report["passed"] = False
    target = Path(opts.report) if opts.report and Path(opts.replay) == path else path / "check_report.json"
    write_report(report, target)
    first = report["first_below"]
    verdict = "PASSED" if report["passed"] else (
        f"FAILED: first frame under {opts.threshold_db:g} dB is frame {first['frame']} ({first['psnr_db']} dB)"
        if first else f"FAILED: {report.get('incomplete')}")
    print(f"check {path}: {report['frames_compared']} frames, min PSNR {report['min_psnr_db']} dB, "
          f"{verdict}; report: {target}" + (f"; strip: {strip}" if strip else ""))
    summary.update(passed=report["passed"], report=str(target), first_below=first, min_psnr_db=report["min_psnr_db"])
    return summary


def run_replays(cfg: DictConfig, opts: PlayConfig, overrides: list[str], game_cls: Any) -> int:
    """Replay `opts.replay`: one session, or every session under a folder (a regression suite)."""
    root = Path(str(opts.replay))
    if not root.exists():
        raise UsageError(f"replay={root}: no such directory")
    sessions = list(iter_episodes(root))
    if not sessions:
        raise UsageError(f"replay={root}: no session (meta.json) found there")
    if len(sessions) == 1 and sessions[0] == root:
        res = replay_one(root, cfg, opts, overrides, game_cls)
        return EXIT_FAILED if res["passed"] is False else EXIT_OK
    results, bad = [], 0
    for path in sessions:  # a suite: one broken session is reported and the others still run
        try:
            results.append(replay_one(path, cfg, opts, overrides, game_cls))
        except (UsageError, EpisodeError, FactoryError) as e:
            bad += 1
            print(f"error: {e}")
            results.append({"session": str(path), "passed": False, "error": str(e)})
    failed = sum(1 for r in results if r["passed"] is False)
    print(f"replayed {len(sessions)} sessions: {len(sessions) - failed} ok, {failed} failed")
    if opts.report:
        write_report({"sessions": results, "failed": failed}, Path(opts.report))
    return EXIT_USAGE if bad else (EXIT_FAILED if failed else EXIT_OK)
