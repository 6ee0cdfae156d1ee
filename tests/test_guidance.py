"""Memory guidance (engine/sampler.py `guidance`, `guide`): each denoising step also runs a guide mode on the same
noisy latent and steps along v + G (v - v_guide); both caches commit the frame. Checked against the algorithm
written out with two independent samplers (what tools/recall_probe.py ran in session 14), in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.attention import build_mode
from engine.env import make_action
from engine.sampler import Sampler
from engine.world_model import NeuralEnv
from tests.test_graphs import ACTIONS
from tests.test_model_core import random_model

WINDOW = {"sinks": 1, "window": 3}


def _acts(n: int) -> list[torch.Tensor]:
    return [torch.as_tensor(make_action(*ACTIONS[i % len(ACTIONS)])[None], dtype=torch.float64) for i in range(n)]


@torch.no_grad()
def _written_out(m: torch.nn.Module, g: float, acts: list[torch.Tensor], prime: torch.Tensor) -> list[torch.Tensor]:
    """The guided rollout by hand: a dense sampler draws the noise, a window sampler is the guide."""
    s = Sampler(m, build_mode("dense"), steps=3)
    sg = Sampler(m, build_mode("window", **WINDOW), steps=3)
    for x in (s, sg):
        x.reset(seed=5, prompt="night stone")
        x.commit(prime, acts[0])
    out = []
    for a in acts[1:]:
        f, fg = s.frame_inputs(a), sg.frame_inputs(a)
        x = torch.randn((1, s.C, s.size, s.size), generator=s.gen).to(torch.float64)   # as Sampler.sample draws
        for i in range(s.steps):
            v = s._pass(x, i, f, commit=False)
            x = x + s.dts[i] * (v + g * (v - sg._pass(x, i, fg, commit=False)))
        s.commit(x, a, f)
        sg.commit(x, a, fg)
        out.append(x)
    return out


def _guided(m: torch.nn.Module, g: float, acts: list[torch.Tensor], prime: torch.Tensor,
            mode: str = "dense") -> tuple[list[torch.Tensor], Sampler]:
    s = Sampler(m, build_mode(mode), steps=3, guidance=g, guide=build_mode("window", **WINDOW) if g else None)
    s.reset(seed=5, prompt="night stone")
    s.commit(prime, acts[0])
    return [s.step(a) for a in acts[1:]], s


def test_guided_sampling_equals_the_written_out_algorithm() -> None:
    """Over 9 frames (past the guide's 4-frame window, so the two caches differ): equal to 1e-10; the guide's
    cache holds its window, the main cache every frame; guidance visibly changes the frames."""
    m = random_model(torch.float64)
    acts = _acts(10)
    prime = torch.randn(1, m.cfg.ae.latent_ch, m.cfg.ae.latent_size, m.cfg.ae.latent_size, dtype=torch.float64)
    ref = _written_out(m, 2.0, acts, prime)
    got, s = _guided(m, 2.0, acts, prime)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert s.guide is not None and s.guide.frame == s.frame == 10
    assert s.cache.length[0] == 10 * s.N and s.guide.cache.length[0] <= 4 * s.N
    plain, p = _guided(m, 0.0, acts, prime)
    assert p.guide is None
    assert max(float((a - b).abs().max()) for a, b in zip(plain, got)) > 1e-3


def test_guidance_zero_and_a_guide_like_the_mode_change_nothing() -> None:
    """G = 0 is the plain sampler exactly (no guide built); a window mode guided by the same window is the plain
    window (v - v_guide = 0)."""
    m = random_model(torch.float64)
    acts = _acts(7)
    prime = torch.randn(1, m.cfg.ae.latent_ch, m.cfg.ae.latent_size, m.cfg.ae.latent_size, dtype=torch.float64)
    s = Sampler(m, build_mode("window", **WINDOW), steps=3)
    s.reset(seed=5, prompt="night stone")
    s.commit(prime, acts[0])
    plain = [s.step(a) for a in acts[1:]]
    g = Sampler(m, build_mode("window", **WINDOW), steps=3, guidance=3.0, guide=build_mode("window", **WINDOW))
    g.reset(seed=5, prompt="night stone")
    g.commit(prime, acts[0])
    for a, b in zip(plain, [g.step(x) for x in acts[1:]]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_guidance_is_checked() -> None:
    m = random_model(torch.float64)
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0, got -1"):
        Sampler(m, build_mode("dense"), guidance=-1.0, guide=build_mode("window"))
    with pytest.raises(ValueError, match="guidance > 0 needs a guide attention mode"):
        Sampler(m, build_mode("dense"), guidance=1.0)
    with pytest.raises(ValueError, match="guide_attention: unknown attention mode 'nope'"):
        NeuralEnv(model=m, device="cpu", guidance=1.0, guide_attention="nope")


def test_neural_env_guided_rollouts_repeat_and_keep_the_guide_across_mode_switches() -> None:
    """Through NeuralEnv (the play/bench/evaluation path): same seed, same frames; info names the guidance; a
    switch of the env's mode leaves the guide's mode as it was."""
    m = random_model(torch.float32)

    def roll() -> tuple[list[np.ndarray], NeuralEnv]:
        env = NeuralEnv(model=m, device="cpu", attention="dense", steps=2, guidance=2.0,
                        guide_attention={"name": "window", **WINDOW})
        env.reset(3, "")
        return [env.step(make_action(*ACTIONS[i % len(ACTIONS)])) for i in range(6)], env
    a, env = roll()
    b, _ = roll()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    info = env.info()
    assert info["guidance"] == 2.0 and info["guide_attention"] == "window"
    env.set_attention("fastar")
    env.step(make_action(("forward",)))
    assert env.sampler.mode.name == "fastar" and env.sampler.guide is not None
    assert env.sampler.guide.mode.name == "window"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_guided_graphs_equal_eager() -> None:
    """The guide's passes under its own CUDA graphs (whole-pass once its window is full): the frames equal the
    eager guided rollout (float32, 1e-4)."""
    m = random_model(torch.float32).cuda()
    acts = [a.float().cuda() for a in _acts(10)]
    prime = torch.randn(1, m.cfg.ae.latent_ch, m.cfg.ae.latent_size, m.cfg.ae.latent_size, device="cuda")

    def roll(graphs: str) -> list[torch.Tensor]:
        s = Sampler(m, build_mode("dense"), steps=3, graphs=graphs, guidance=2.0,
                    guide=build_mode("window", **WINDOW))
        s.reset(seed=5, prompt="night stone")
        s.commit(prime, acts[0])
        return [s.step(a) for a in acts[1:]]
    for a, b in zip(roll("off"), roll("cuda")):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
