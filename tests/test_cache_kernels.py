"""The fused scratch write (engine/cache_kernels.py): the same cache contents and the same frames as KVCache's
torch ops. On CUDA the checks run there; on a CPU with triton installed they run under triton's interpreter in
a subprocess (the variable is read when a kernel is defined); without triton (CI) only the refusal runs."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from engine import cache_kernels
from engine.attention import build_mode
from engine.cache import KVCache
from engine.env import make_action
from engine.sampler import Sampler
from tests.test_model_core import random_model
from tests.triton_checks import worst_error_of

HAS_TRITON = importlib.util.find_spec("triton") is not None


def write_check(device: str) -> float:
    """Largest |fused - torch| over the whole cache (K, V, bias) after writes at a host start and at a device
    start, into padded storage (the bias-channel layout's [..., :D] views), from transposed k, v."""
    torch.manual_seed(0)
    worst = 0.0
    for pad in (0, 8):
        for on_device in (False, True):
            caches = []
            for fused in (False, True):
                c = KVCache(2, 1, 3, 16, 40, device, torch.float32, bias_channel=bool(pad))
                g = torch.Generator(device=device).manual_seed(1)
                c.kp.copy_(torch.randn(c.kp.shape, generator=g, device=device))
                c.vp.copy_(torch.randn(c.vp.shape, generator=g, device=device))
                c.bias.copy_(torch.randn(c.bias.shape, generator=g, device=device))
                c.fused_writes = fused
                caches.append(c)
            k = torch.randn(1, 5, 3, 16, device=device).transpose(1, 2)   # (B, H, n, D), not contiguous
            v = torch.randn(1, 5, 3, 16, device=device).transpose(1, 2)
            for c in caches:
                c.length[1] = 7
                if on_device:
                    c.write_scratch_at(1, k, v, torch.tensor(7, device=device))
                else:
                    assert c.write_scratch(1, k, v) == 12
            a, b = caches
            for x, y in ((a.kp, b.kp), (a.vp, b.vp), (a.bias, b.bias)):
                worst = max(worst, float((x - y).abs().max()))
            assert float(b.bias[1, :, :, 7:12].abs().max()) == 0.0
            assert torch.equal(b.k[1, :, :, 7:12], k)
    return worst


def rollout_check(device: str) -> float:
    """Largest |frame difference| between rollouts with and without fused writes: dense (write_scratch),
    dense by triton buckets (write_scratch_at), the window and fastar; 10 frames of a tiny float32 model, under
    CUDA graphs on a GPU (whole-pass captures replay the kernel), eager in the interpreter."""
    m = random_model(torch.float32).to(device)
    acts = [make_action(("forward",) if i % 3 else ("turn_left",), 0.1 * (i % 4)) for i in range(10)]
    worst = 0.0
    for mode, params in (("dense", {"graph_frames": 0}),
                         ("dense", {"graph_frames": 8, "bucket_frames": 3, "bucket_kernel": "triton"}),
                         ("window", {"sinks": 1, "window": 3}),
                         ("fastar", {"tempcache": {"capacity_frames": 4, "layers": [0]}})):
        frames = []
        for fused in (False, True):
            s = Sampler(m, build_mode(mode, **params), steps=2, fused_writes=fused,
                        graphs="cuda" if device == "cuda" else "off")
            s.reset(seed=5, prompt="night stone")
            frames.append([s.step(torch.as_tensor(a[None], device=device)) for a in acts])
            assert s.cache.fused_writes == fused
        worst = max(worst, max(float((x - y).abs().max()) for x, y in zip(*frames)))
    return worst


def worst_error(check: str) -> float:
    """Run the check named `check` (a function of this module taking a device) where triton runs; its largest
    error (tests/triton_checks.py)."""
    return worst_error_of("tests.test_cache_kernels", check, globals()[check])


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_fused_write_equals_the_torch_ops() -> None:
    assert worst_error("write_check") == 0.0


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_fused_writes_draw_the_same_frames() -> None:
    assert worst_error("rollout_check") == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="where the kernel can run, it is not refused")
def test_fused_writes_are_refused_where_the_kernel_cannot_run() -> None:
    """On a CPU without the interpreter (CI has no triton at all) asking for the kernel is an error that says
    what it needs, not a quiet fallback to the torch ops."""
    assert os.environ.get("TRITON_INTERPRET") != "1" and not cache_kernels.available(torch.device("cpu"))
    m = random_model(torch.float32)
    with pytest.raises(RuntimeError, match="fused_writes needs triton and a CUDA device"):
        Sampler(m, build_mode("dense"), steps=2, fused_writes=True)
    s = Sampler(m, build_mode("dense"), steps=2)
    assert s.cache.fused_writes is False
