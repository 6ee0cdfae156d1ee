"""Bad input gets one clear line naming the file, line and field, exit code 2, and loses nothing recorded."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from fake_env import FAKE, SMALL, run_play


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("err") / "s"
    r = run_play(*FAKE, *SMALL, "headless=true", "frames=70", f"out={out}")
    assert r.returncode == 0, r.stderr
    return out


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _edit_line(n: int, fn: Callable[[dict], str]) -> Callable[[Path], None]:
    def edit(s: Path) -> None:
        lines = (s / "trace.jsonl").read_text().splitlines()
        lines[n - 1] = fn(json.loads(lines[n - 1]))
        (s / "trace.jsonl").write_text("\n".join(lines) + "\n")
    return edit


def _set(field: str, value: object) -> Callable[[dict], str]:
    return lambda rec: json.dumps({**rec, field: value})


CASES = {
    "malformed line": (_edit_line(5, lambda rec: "{not json"), ["trace.jsonl line 5", "not valid JSON"]),
    "unknown key name": (_edit_line(7, _set("keys", ["jump"])), ["trace.jsonl line 7", "'keys'", "jump"]),
    "wrong action length": (_edit_line(9, _set("action", [0, 1, 0])), ["trace.jsonl line 9", "'action'",
                                                                        "length 8"]),
    "nan mouse": (_edit_line(11, lambda rec: json.dumps(rec).replace('"mouse_dx": ', '"x": ')
                             .replace(str(rec["action"][-1]) + "]", "NaN]", 1)), ["trace.jsonl line 11",
                                                                                   "mouse_dx"]),
    "missing trace": (lambda s: (s / "trace.jsonl").unlink(), ["missing 'trace.jsonl'"]),
    "missing first chunk": (lambda s: (s / "frames" / "chunk_000000.npz").unlink(), ["chunk_000000.npz"]),
    "missing last chunk": (lambda s: (s / "frames" / "chunk_000001.npz").unlink(), ["'frames'", "70"]),
    "meta not json": (lambda s: (s / "meta.json").write_text("{"), ["meta.json", "not valid JSON"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_session_is_a_one_line_error(case: str, recorded: Path, tmp_path: Path) -> None:
    s = tmp_path / "s"
    shutil.copytree(recorded, s)
    damage, expected = CASES[case]
    damage(s)
    before = _digest(s)
    r = run_play(*SMALL, f"replay={s}", "check=true")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for part in expected:
        assert part in r.stderr, r.stderr
    assert _digest(s) == before                        # nothing recorded was touched


@pytest.mark.parametrize("override, expected", [
    ("controls.keymap.keys.forward=[w,nosuchkey]", ["controls.keymap.keys.forward", "nosuchkey"]),
    ("+controls.keymap.keys.jump=[space]", ["controls.keymap.keys", "jump"]),
    ("frames=many", ["frames"]),
    ("controls.window.scale=big", ["controls", "scale"]),
    ("engine=model engine._target_=engine.no_such_model.NeuralEnv", ["engine=model", "not available yet",
                                                                      "engine.no_such_model", "engine=sim"]),
    ("world=atlantis", ["world/atlantis"]),
])
def test_bad_config_is_a_one_line_error(override: str, expected: list[str], tmp_path: Path) -> None:
    r = run_play(*FAKE, *SMALL, "headless=true", "frames=3", f"out={tmp_path / 's'}", *override.split())
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for part in expected:
        assert part in r.stderr, r.stderr


def test_out_dir_holding_a_session_is_refused(recorded: Path) -> None:
    before = _digest(recorded)
    r = run_play(*FAKE, *SMALL, "headless=true", "frames=3", f"out={recorded}")
    assert r.returncode == 2 and "already recorded" in r.stderr
    assert _digest(recorded) == before
