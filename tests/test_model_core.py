"""World model core: cached generation == full recomputation, training sequence == inference, window bound,
NeuralEnv protocol and live attention switch. Tiny random model on the CPU, float64 where exactness is tested."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.attention import FrameAttention, SequenceAttention, StepInfo, build_mode
from engine.cache import KVCache
from engine.env import Env, make_action
from engine.model import WorldModel, frame_mask, preset
from engine.sampler import Sampler
from engine.world_model import NeuralEnv


def random_model(dtype: torch.dtype = torch.float64, seed: int = 0, **dit: object) -> WorldModel:
    """Tiny model with every weight random: adaLN-Zero init would make most paths trivially zero. `dit`:
    DiTConfig fields to change (the per-head rotary variants below)."""
    from dataclasses import replace
    torch.manual_seed(seed)
    cfg = preset("tiny")
    m = WorldModel(replace(cfg, dit=replace(cfg.dit, **dit)) if dit else cfg)
    with torch.no_grad():
        for p in m.dit.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.to(dtype).eval()


def test_cached_generation_equals_full_recomputation() -> None:
    _cached_equals_full(random_model())


def test_cached_generation_with_heading_heads_equals_full_recomputation() -> None:
    """Heading heads: the sampler's running heading (from reset, over each committed frame's action) is the
    running sum the whole-sequence reference takes over the clip's actions, frame by frame (turns included)."""
    _cached_equals_full(heading_model())


def _cached_equals_full(m: WorldModel) -> None:
    s = Sampler(m, build_mode("dense"), steps=3, context_sigma=0.05, shift=2.0)
    s.reset(seed=7, prompt="night stone")
    actions = [torch.tensor([make_action(k, dx)], dtype=torch.float64)
               for k, dx in [((), 0.0), (("forward",), 0.3), (("turn_left", "run"), -0.5), (("back",), 0.0)]]
    got = [s.step(a) for a in actions]

    # Reference: same noise stream, whole sequence recomputed with SequenceAttention at every pass.
    gen = torch.Generator().manual_seed(7)
    prompt = m.encode_prompt(["night stone"])
    C, h = m.cfg.ae.latent_ch, m.cfg.ae.latent_size
    ctx: list[torch.Tensor] = []
    for i, a in enumerate(actions):
        x = torch.randn((1, C, h, h), generator=gen).double()
        for j in range(3):
            seq = torch.stack(ctx + [x], 1)                                    # (1, i+1, C, h, w)
            sig = torch.tensor([[0.05] * i + [float(s.sigmas[j])]], dtype=torch.float64)
            acts = torch.stack([b for b in actions[:i + 1]], 1)
            mask = frame_mask(torch.tensor([True] * i + [False]), torch.arange(i + 1), m.tokens_per_frame)
            v = m.dit(seq, sig, acts, torch.arange(i + 1)[None], prompt, SequenceAttention(mask))[:, -1]
            x = x + (s.sigmas[j + 1] - s.sigmas[j]).double() * v
        torch.testing.assert_close(got[i].double(), x, rtol=0, atol=1e-9)
        eps = torch.randn((1, C, h, h), generator=gen).double()
        ctx.append(0.95 * x + 0.05 * eps)


def _training_matches_cache(m: WorldModel, frames: torch.Tensor) -> None:
    """[clean | noisy] with frame_mask gives each noisy frame exactly what the cache + current frame give
    (heading heads: each frame's heading passed explicitly, as training passes the episode's)."""
    T, C, h, N = frames.shape[1], m.cfg.ae.latent_ch, m.cfg.ae.latent_size, m.tokens_per_frame
    g = torch.Generator().manual_seed(1)
    clean = torch.randn((1, T, C, h, h), generator=g).double()
    noisy = torch.randn((1, T, C, h, h), generator=g).double()
    s_ctx = torch.rand((1, T), generator=g).double() * 0.1
    s_noisy = torch.rand((1, T), generator=g).double()
    acts = torch.rand((1, T, 8), generator=g).double()
    prompt = m.encode_prompt(["wood dusk"])
    order = torch.arange(T)
    mask = frame_mask(torch.cat([torch.ones(T, dtype=torch.bool), torch.zeros(T, dtype=torch.bool)]),
                      torch.cat([order, order]), N)
    head = None if not m.cfg.dit.rope_heading_heads else torch.rand((1, T), generator=g).double() * 40 - 20
    v_train = m.dit(torch.cat([clean, noisy], 1), torch.cat([s_ctx, s_noisy], 1), torch.cat([acts, acts], 1),
                    torch.cat([frames, frames], 1), prompt, SequenceAttention(mask),
                    None if head is None else torch.cat([head, head], 1))[:, T:]
    cache = KVCache(m.cfg.dit.depth, 1, m.cfg.dit.heads, m.cfg.dit.head_dim, 0, dtype=torch.float64)
    mode = build_mode("dense")
    for i in range(T):
        f = int(frames[0, i])
        sl = slice(i, i + 1)
        hs = None if head is None else head[:, sl]
        v = m.dit(noisy[:, sl], s_noisy[:, sl], acts[:, sl], frames[:, sl], prompt,
                  FrameAttention(mode, cache, StepInfo(f, 0, 4, False)), hs)
        torch.testing.assert_close(v, v_train[:, sl], rtol=0, atol=1e-9)
        m.dit(clean[:, sl], s_ctx[:, sl], acts[:, sl], frames[:, sl], prompt,
              FrameAttention(mode, cache, StepInfo(f, 4, 4, True)), hs)


def test_training_sequence_matches_cached_inference() -> None:
    _training_matches_cache(random_model(), torch.tensor([[3, 4, 900, 901]]))   # a long gap, as in training


def test_rotary_far_frames_relative() -> None:
    """Scores depend on frame distance only: shifting every index by 3000 changes nothing (to fp64 noise)."""
    m = random_model()
    x = torch.randn(1, 2, m.cfg.ae.latent_ch, 16, 16, dtype=torch.float64)
    args = (torch.rand(1, 2).double(), torch.zeros(1, 2, 8).double())
    mask = frame_mask(torch.ones(2, dtype=torch.bool), torch.arange(2), m.tokens_per_frame)
    pr = m.encode_prompt([""])
    a = m.dit(x, *args, torch.tensor([[0, 5]]), pr, SequenceAttention(mask))
    b = m.dit(x, *args, torch.tensor([[3000, 3005]]), pr, SequenceAttention(mask))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def test_time_free_heads_match_across_any_time_distance() -> None:
    """dit.rope_time_free_heads: those heads' q.k does not depend on the frame index at all (a view seen 60 or
    3000 frames ago scores as if it were the last frame), the other heads' depends on it; 0 is the old rope."""
    from dataclasses import replace

    from engine.model.dit import Rotary, apply_rotary
    base = preset("base").dit
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, 1, base.heads, base.head_dim, generator=g, dtype=torch.float64) for _ in range(2))

    def score(rot: Rotary, tq: int, tk: int) -> torch.Tensor:   # (H,) q of frame tq against k of frame tk
        rq = rot(torch.tensor([[tq]]), torch.float64)
        rk = rot(torch.tensor([[tk]]), torch.float64)
        return (apply_rotary(q, (rq[0][:, :1], rq[1][:, :1])) * apply_rotary(k, (rk[0][:, :1], rk[1][:, :1]))).sum(-1)[0, 0, 0]

    plain = Rotary(base, 16)
    free = Rotary(replace(base, rope_time_free_heads=2), 16)
    assert plain(torch.tensor([[5]]), torch.float64)[0].shape[-2] == 1                 # unchanged layout
    torch.testing.assert_close(free(torch.tensor([[5]]), torch.float64)[0][..., :-2, :],
                               plain(torch.tensor([[5]]), torch.float64)[0].expand(-1, -1, -1, base.heads, -1)[..., :-2, :])
    near, far = score(free, 100, 99), score(free, 100, 40)
    torch.testing.assert_close(near[-2:], far[-2:], rtol=0, atol=1e-12)                 # time-free: same score
    assert (near[:-2] - far[:-2]).abs().min() > 1e-6                                     # the others: distance counts
    with pytest.raises(ValueError, match="rope_time_free_heads"):
        Rotary(replace(base, rope_time_free_heads=base.heads + 1), 16)


def time_free_model(dtype: torch.dtype = torch.float64) -> WorldModel:
    """Tiny random model with two heads, the second without time rotation (dit.rope_time_free_heads=1)."""
    return random_model(dtype, 3, heads=2, head_dim=32, rope_time_dims=16, rope_time_free_heads=1)


def test_cached_generation_with_time_free_heads_equals_training_sequence() -> None:
    """The training sequence and cached inference agree with time-free heads too (per-head rotary)."""
    _training_matches_cache(time_free_model(), torch.tensor([[2, 70, 71]]))


def heading_model(dtype: torch.dtype = torch.float64, free: int = 0) -> WorldModel:
    """Tiny random model with two heads, the last rotating with the maze's heading (dit.rope_heading_heads=1)."""
    from worlds.maze.physics import HEADING_PER_ACTION
    return random_model(dtype, 4, heads=2 + free, head_dim=32, width=32 * (2 + free), rope_time_dims=16,
                        rope_time_free_heads=free, rope_heading_heads=1, heading_per_action=HEADING_PER_ACTION)


def test_cached_generation_with_heading_heads_equals_training_sequence() -> None:
    _training_matches_cache(heading_model(), torch.tensor([[2, 70, 71]]))
    _training_matches_cache(heading_model(free=1), torch.tensor([[0, 1, 300]]))   # time-free, heading and plain


def test_heading_heads_match_by_direction() -> None:
    """dit.rope_heading_heads: those heads' q.k depends on the heading difference only, and is the same a full
    turn (2 pi) later at any frame distance; the other heads ignore the heading. Bad settings are errors."""
    import math
    from dataclasses import replace

    from engine.model.dit import Rotary, apply_rotary
    from worlds.maze.physics import HEADING_PER_ACTION
    base = replace(preset("base").dit, rope_heading_heads=2, heading_per_action=HEADING_PER_ACTION)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, 1, base.heads, base.head_dim, generator=g, dtype=torch.float64) for _ in range(2))
    rot = Rotary(base, 16)

    def score(tq: int, hq: float, tk: int, hk: float) -> torch.Tensor:   # (H,)
        rq = rot(torch.tensor([[tq]]), torch.float64, torch.tensor([[hq]], dtype=torch.float64))
        rk = rot(torch.tensor([[tk]]), torch.float64, torch.tensor([[hk]], dtype=torch.float64))
        return (apply_rotary(q, (rq[0][:, :1], rq[1][:, :1])) * apply_rotary(k, (rk[0][:, :1], rk[1][:, :1]))).sum(-1)[0, 0, 0]

    same = score(100, 0.3, 99, 0.3)
    turned = score(100, 0.3 + 2 * math.pi, 40, 0.3)                     # a full turn later, 60 frames apart
    torch.testing.assert_close(same[-2:], turned[-2:], rtol=0, atol=1e-9)
    assert (same[:-2] - turned[:-2]).abs().min() > 1e-6                  # time heads: the distance counts
    off = score(100, 0.3 + math.pi / 2, 99, 0.3)                         # a quarter turn off
    assert (same[-2:] - off[-2:]).abs().min() > 1e-6
    torch.testing.assert_close(same[:-2], off[:-2], rtol=0, atol=1e-12)  # time heads ignore the heading
    with pytest.raises(ValueError, match="needs heading"):
        rot(torch.tensor([[5]]), torch.float64)
    with pytest.raises(ValueError, match="heading_per_action"):
        Rotary(replace(base, heading_per_action=()), 16)
    with pytest.raises(ValueError, match="rope_heading_heads"):
        Rotary(replace(base, rope_time_free_heads=base.heads - 1), 16)


def test_sampler_heading_is_the_running_turn() -> None:
    """The sampler's heading: 0 at reset, + 6 degrees per turn_right frame, - 15 per mouse_dx -1; a prediction
    without commit (teacher forcing) does not move it."""
    import math
    env = NeuralEnv(model=heading_model(torch.float32), device="cpu", steps=1)
    env.reset(0, "")
    assert float(env.sampler.heading) == 0.0                           # reset primes one frame with no action
    for _ in range(3):
        env.step(make_action(("turn_right",)))
    env.step(make_action((), -1.0))
    env.predict(make_action(("turn_left",)))
    assert math.isclose(float(env.sampler.heading), math.radians(3 * 6.0 - 15.0), abs_tol=1e-9)
    env.reset(1, "")
    assert float(env.sampler.heading) == 0.0


def test_window_never_exceeds_capacity() -> None:
    m = random_model(torch.float32)
    env = NeuralEnv(model=m, device="cpu", attention={"name": "window", "sinks": 1, "window": 3}, steps=1)
    env.reset(0, "")
    N, cap = m.tokens_per_frame, (1 + 3 + 1) * m.tokens_per_frame
    for _ in range(10):
        env.step(make_action(("forward",)))
        c = env.sampler.cache
        assert c.capacity <= cap and max(c.length) <= 4 * N


def test_neural_env_protocol_and_live_switch() -> None:
    env = NeuralEnv(model=random_model(torch.float32), device="cpu", steps=2)
    assert isinstance(env, Env)
    assert {"dense", "window"} <= set(env.attention_modes)
    assert env.attention_modes[:4] == ("dense", "window", "fastar", "tempcache")   # F1..F4 in play.py
    f0 = env.reset(3, "night")
    assert f0.shape == (128, 128, 3) and f0.dtype == np.uint8
    for _ in range(5):
        env.step(make_action(("forward",)))
    assert env.info()["cache_tokens"] == 6 * env.model.tokens_per_frame * env.model.cfg.dit.depth
    env.set_attention({"name": "window", "sinks": 1, "window": 2})
    f = env.step(make_action(("turn_left",), 0.2))
    info = env.info()
    assert f.shape == (128, 128, 3) and info["attention"] == "window" and info["frame"] == 6
    assert info["cache_tokens"] == 3 * env.model.tokens_per_frame * env.model.cfg.dit.depth
    with pytest.raises(ValueError):
        env.set_attention("nope")
    with pytest.raises(ValueError):
        env.step(np.ones(3))
    with pytest.raises(ValueError):
        env.reset(0, "banana")


def test_same_seed_same_frames() -> None:
    env = NeuralEnv(model=random_model(torch.float32), device="cpu", steps=2)
    acts = [make_action(("forward",)), make_action((), 0.5)]
    runs = []
    for _ in range(2):
        frames = [env.reset(11, "tile")] + [env.step(a) for a in acts]
        runs.append(np.stack(frames))
    assert np.array_equal(runs[0], runs[1])
    other = np.stack([env.reset(12, "tile")] + [env.step(a) for a in acts])
    assert not np.array_equal(runs[0], other)


def test_noise_scale_scales_the_initial_noise() -> None:
    """Sampler.noise_scale (a sampling temperature): 1 is the default path bit for bit, another value changes
    the frames, and a negative one is an error naming it."""
    m = random_model(torch.float32)
    act = torch.as_tensor(make_action(("forward",))[None])

    def frame(**kw: float) -> torch.Tensor:
        s = Sampler(m, build_mode("dense"), steps=2, **kw)
        s.reset(seed=5, prompt="tile")
        return s.step(act)
    ref = frame()
    assert torch.equal(frame(noise_scale=1.0), ref)
    assert not torch.allclose(frame(noise_scale=0.5), ref)
    with pytest.raises(ValueError, match="noise_scale"):
        Sampler(m, build_mode("dense"), noise_scale=-0.1)
    env = NeuralEnv(model=m, device="cpu", steps=1, noise_scale=0.75)   # engine.noise_scale in the config
    assert env.info()["noise_scale"] == 0.75


def test_noise_corr_correlates_consecutive_draws_at_unit_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampler.noise_corr: with the network's velocity held at 0 a sample is its initial noise, so the draws
    can be read directly: consecutive frames correlate by ~rho, each stays a standard normal (the trained
    temperature), 0 is the default path bit for bit, a reset starts a fresh chain, and a value outside [0, 1)
    is an error naming it."""
    m = random_model(torch.float64)
    act = torch.as_tensor(make_action(("forward",))[None])

    def draws(frames: int, **kw: float) -> list[torch.Tensor]:
        s = Sampler(m, build_mode("dense"), steps=1, **kw)
        monkeypatch.setattr(s, "_pass", lambda x, level, f, commit: torch.zeros_like(x))
        out = []
        for seed in (5, 5):   # twice from the same seed: the chain restarts at reset
            s.reset(seed=seed, prompt="tile")
            out.append(torch.stack([s.step(act) for _ in range(frames)]))
        assert torch.equal(out[0], out[1])
        return list(out[0])

    plain, corr = draws(40), draws(40, noise_corr=0.8)
    assert torch.equal(plain[0], corr[0])                  # the first frame is the plain draw
    assert torch.equal(torch.stack(draws(3, noise_corr=0.0)), torch.stack(plain[:3]))
    x = torch.stack(corr).flatten(1)                       # (frames, elements)
    rho = float(torch.nn.functional.cosine_similarity(x[1:], x[:-1], dim=1).mean())
    rho0 = float(torch.nn.functional.cosine_similarity(torch.stack(plain).flatten(1)[1:],
                                                       torch.stack(plain).flatten(1)[:-1], dim=1).mean())
    assert abs(rho - 0.8) < 0.1 and abs(rho0) < 0.1, (rho, rho0)
    assert abs(float(x[10:].std()) - 1.0) < 0.1            # each draw still a standard normal
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="noise_corr"):
            Sampler(m, build_mode("dense"), noise_corr=bad)
    assert NeuralEnv(model=m, device="cpu", steps=1, noise_corr=0.5).info()["noise_corr"] == 0.5
