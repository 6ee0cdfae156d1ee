"""engine/compiled.py: every function the engine compiles for inference goes through compile_static, which
asks inductor for its deterministic mode (reduction configurations by heuristic, never by timing), so the same
seed, trace, device and mode give the same frames in every process (measured on the H100: docs/BENCHMARKS.md,
session 23). Training's FlexAttention (engine/train_attention.py) is the one exception: it is not a rollout."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from engine import compiled

ENGINE = Path(__file__).resolve().parent.parent / "engine"


def test_compile_static_asks_for_static_shapes_and_inductors_deterministic_mode(monkeypatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.delenv(compiled.OFF_VAR, raising=False)

    def fake_compile(fn, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    f = compiled.compile_static(abs, fullgraph=True)
    assert f is abs
    assert seen == {"fullgraph": True, "dynamic": False, "options": {"deterministic": True}}
    import torch._inductor.config as inductor_config
    assert all(hasattr(inductor_config, k) for k in compiled.INDUCTOR_OPTIONS)   # keys this torch knows


def test_no_inference_code_calls_torch_compile_directly() -> None:
    direct = [f"{p.relative_to(ENGINE)}:{i}" for p in sorted(ENGINE.rglob("*.py"))
              if p.name not in ("compiled.py", "train_attention.py")
              for i, line in enumerate(p.read_text().splitlines(), 1)
              if re.search(r"torch\.compile\(", line.split("#")[0]) and not line.lstrip().startswith(("\"", "'"))]
    assert not direct, f"call engine.compiled.compile_static instead of torch.compile: {direct}"


def test_the_switch_off_warns_and_a_bad_value_names_the_variable(monkeypatch) -> None:
    monkeypatch.setattr(compiled, "_warned", False)
    monkeypatch.setenv(compiled.OFF_VAR, "0")
    with pytest.warns(UserWarning, match="frames may differ between processes"):
        assert compiled.inductor_options() == {}
    monkeypatch.setenv(compiled.OFF_VAR, "yes")
    with pytest.raises(ValueError, match="ENGINE_INDUCTOR_DETERMINISTIC='yes': expected 1"):
        compiled.inductor_options()
