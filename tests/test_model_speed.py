"""Launch-light inference path: the per-episode / per-frame precomputation equals the plain forward, the bf16
cast happens once (no autocast, no per-call weight casts), an in-memory model is not mutated by the cast, and
bf16 stays close to float32. Tiny random model on the CPU."""
from __future__ import annotations

import copy

import torch

from torch.utils._python_dispatch import TorchDispatchMode

from engine.attention import FrameAttention, StepInfo, build_mode
from engine.cache import KVCache
from engine.env import make_action
from engine.world_model import NeuralEnv
from tests.test_model_core import random_model


def test_split_inference_equals_forward() -> None:
    """prompt_context + frame_condition + sigma table + rope + run == forward (float64)."""
    m = random_model()
    dit, g = m.dit, torch.Generator().manual_seed(3)
    x = torch.randn((1, 1, m.cfg.ae.latent_ch, 16, 16), generator=g).double()
    act = torch.rand((1, 1, 8), generator=g).double()
    sig = torch.tensor([[0.6]], dtype=torch.float64)
    frames = torch.tensor([[42]])
    prompt = m.encode_prompt(["night"])
    outs = []
    for split in (False, True):
        cache = KVCache(m.cfg.dit.depth, 1, m.cfg.dit.heads, m.cfg.dit.head_dim, 0, dtype=torch.float64)
        attn = FrameAttention(build_mode("dense"), cache, StepInfo(42, 0, 4, False))
        if split:
            ctx = dit.prompt_context(prompt)
            table = dit.sigma_embedding(torch.tensor([0.9, 0.6, 0.3]))            # a schedule's table
            c = dit.frame_condition(act, ctx.pool) + table[1]
            outs.append(dit.run(x, c, dit.rope(frames), ctx.kv, attn))
        else:
            outs.append(dit(x, sig, act, frames, prompt, attn))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)


def test_bf16_cast_once_and_close_to_fp32() -> None:
    m = random_model(torch.float32)
    before = copy.deepcopy(m.state_dict())
    envs = {bf16: NeuralEnv(model=m, device="cpu", steps=2, bf16=bf16) for bf16 in (False, True)}
    for k, v in m.state_dict().items():          # the caller's model (a trainer's EMA) is untouched
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    dit = envs[True].model.dit
    assert envs[True].model is not m and dit.dtype == torch.bfloat16 and envs[True].sampler.dtype == torch.bfloat16
    assert dit.blocks[0].table.dtype == torch.float32 and dit.blocks[0].qkv.weight.dtype == torch.bfloat16
    assert envs[True].sampler.cache.k.dtype == torch.bfloat16 and envs[True].sampler.xdtype == torch.float32
    lat = {}
    for bf16, env in envs.items():
        env.reset(5, "night")
        s = env.sampler
        lat[bf16] = torch.stack([s.step(torch.tensor([make_action(("forward",), 0.2)])) for _ in range(3)])
        assert lat[bf16].dtype == torch.float32
    err = (lat[True] - lat[False]).norm() / lat[False].norm()
    assert err < 0.05, f"bf16 latents differ from float32 by {err:.3f} (relative)"
    # no autocast-style re-casting of weights per pass: only a handful of casts per block
    env = envs[True]
    with CountCasts() as counter:
        env.step(make_action(("forward",)))
    casts = counter.n
    passes, depth = env.sampler.steps + 1, m.cfg.dit.depth
    assert casts <= passes * (6 * depth + 8) + 40, casts


class CountCasts(TorchDispatchMode):
    """Counts dtype casts (aten._to_copy) as dispatched, i.e. what would launch a cast kernel."""
    n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.n += func is torch.ops.aten._to_copy.default
        return func(*args, **(kwargs or {}))



def test_max_frames_presizes_dense_cache() -> None:
    env = NeuralEnv(model=random_model(torch.float32), device="cpu", steps=1, max_frames=40)
    env.reset(0, "")
    cap = env.sampler.cache.capacity
    assert cap == 40 * env.model.tokens_per_frame
    for _ in range(3):
        env.step(make_action(()))
    assert env.sampler.cache.capacity == cap
