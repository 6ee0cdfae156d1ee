"""conf/config.yaml `cpu_window`: on a CPU the window mode the model starts in holds fewer frames (attention is
most of a CPU frame); said aloud; null, another device or another mode leaves the attention node as it is."""
from __future__ import annotations

import pytest
from omegaconf import DictConfig, OmegaConf

from controls.cli import compose
from engine.factory import FactoryError, _cpu_window


def _node(overrides: list[str], device: str) -> tuple[DictConfig, DictConfig]:
    cfg = compose(overrides)
    cfg.device = device
    return cfg, OmegaConf.create(OmegaConf.to_container(cfg.engine, resolve=True))


def test_cpu_window_shortens_the_window_on_a_cpu_only(capsys: pytest.CaptureFixture[str]) -> None:
    cfg, node = _node([], "cpu")
    assert node.attention.name == "window" and node.attention.params.window == 32
    _cpu_window(cfg, node)
    assert node.attention.params.window == 12 and node.attention.params.sinks == 1
    assert "CPU: the window mode holds 12 frames" in capsys.readouterr().out
    for overrides, device in (([], "cuda"), (["cpu_window=null"], "cpu"), (["attention=dense"], "cpu")):
        cfg, node = _node(overrides, device)
        before = OmegaConf.to_container(node.attention)
        _cpu_window(cfg, node)
        assert OmegaConf.to_container(node.attention) == before
    assert capsys.readouterr().out == ""


def test_cpu_window_must_be_a_frame_count() -> None:
    cfg, node = _node(["cpu_window=0"], "cpu")
    with pytest.raises(FactoryError, match="'cpu_window' is 0; expected a number of frames >= 1"):
        _cpu_window(cfg, node)
