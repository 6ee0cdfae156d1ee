"""The in-kernel temporal decay (engine/attention/triton_decay.py): the kernel against a float64 reference, and
dense's rollout through it against the bias-channel path. Needs triton: on CUDA directly; on a CPU with triton
installed the kernel check runs under triton's interpreter (TRITON_INTERPRET=1, in a subprocess because the
variable is read when the kernel is defined); CI has neither and skips."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.attention import build_mode
from engine.cache import DECAY_FLOOR
from engine.env import make_action
from engine.sampler import Sampler
from tests.test_model_decay import _steep_decay_model

HAS_TRITON = importlib.util.find_spec("triton") is not None
ROOT = Path(__file__).resolve().parents[1]


def kernel_check(device: str) -> float:
    """Largest |kernel - reference| over cases with horizons, a frame index past `now`'s floor, key chunks
    1 and 3 and storage padded to 72 channels (the cache's bias-channel layout, read in place)."""
    from engine.attention import triton_decay as td
    torch.manual_seed(0)
    worst = 0.0
    for B, H, n, D, frames in ((1, 3, 20, 16, 9), (2, 2, 33, 32, 5)):
        L = (frames + 1) * n
        q = torch.randn(B, H, n, D, device=device)
        kp, vp = torch.randn(B, H, L, D + 8, device=device), torch.randn(B, H, L, D + 8, device=device)
        k, v = kp[..., :D], vp[..., :D]
        frame = torch.cat([torch.arange(frames).repeat_interleave(n), torch.full((n,), -1)]).to(device)
        now = torch.tensor(frames, device=device)
        slopes = torch.tensor([0.5, 300.0, 0.1][:H], device=device)     # 300: the floor binds a frame back
        hz = torch.tensor([0, 3, 2][:H], dtype=torch.int32, device=device)
        length = frames * n
        starts = [0 if w == 0 else max(0, length - int(w) * n) for w in hz.tolist()]
        back = (frame - now).clamp(max=0).double()
        bias = (slopes.double()[:, None] * back[None]).clamp(min=DECAY_FLOOR)
        bias[:, length:] = 0.0
        ref = torch.empty(B, H, n, D, dtype=torch.float64)
        for b in range(B):
            for h in range(H):
                s = starts[h]
                lg = q[b, h].double() @ k[b, h, s:].double().T / math.sqrt(D) + bias[h, s:]
                ref[b, h] = (torch.softmax(lg, -1) @ v[b, h, s:].double()).cpu()
        for splits in (1, 3):
            out = td.decay_attention(q, k, v, frame, now, slopes, hz, length, n, starts=starts,
                                     num_splits=splits)
            assert out.shape == (B, H, n, D) and out.dtype == q.dtype
            worst = max(worst, float((out.double().cpu() - ref).abs().max()))
    return worst


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_kernel_equals_the_reference() -> None:
    """float32 inputs, full-precision dots (no tf32): 1e-4 on the GPU, 1e-5 in the interpreter."""
    if torch.cuda.is_available():
        assert kernel_check("cuda") < 1e-4
        return
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_triton_decay import kernel_check; " \
           "print(kernel_check('cpu'))"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 1e-5


def test_decay_kernel_option_is_checked() -> None:
    with pytest.raises(ValueError, match="decay_kernel must be auto, triton or channel, got 'fast'"):
        build_mode("dense", decay_kernel="fast")
    if not HAS_TRITON and not torch.cuda.is_available():
        s = Sampler(_steep_decay_model(), build_mode("dense", graph_frames=0, decay_kernel="triton"), steps=2)
        s.reset(seed=3, prompt="night stone")
        with pytest.raises(RuntimeError, match="decay_kernel=triton needs triton and a CUDA device"):
            s.step(torch.tensor([make_action(("forward",), 0.0)], dtype=torch.float64))


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="the CUDA kernel's check")
def test_cuda_dense_in_kernel_decay_equals_the_channel() -> None:
    """Dense past its graphed range with the decay computed in the kernel gives the channel path's frames
    (float32, 1e-4), with and without the horizon; the channel is off there and the stats say triton."""
    m = _steep_decay_model().float().cuda()
    acts = [(("forward",), 0.0), (("turn_left",), 0.2), ((), -0.4), (("back", "run"), 0.0)]

    def roll(kernel: str, horizon: bool) -> tuple[list[torch.Tensor], Sampler]:
        s = Sampler(m, build_mode("dense", graph_frames=4, bucket_frames=2, decay_kernel=kernel), steps=2,
                    context_sigma=0.05, shift=2.0)
        s.reset(seed=3, prompt="night stone")
        if not horizon:
            s.cache.horizon = None
        out = [s.step(torch.tensor([make_action(*acts[i % len(acts)])], dtype=torch.float32, device="cuda"))
               for i in range(24)]
        return out, s
    for horizon in (False, True):
        ref, sc = roll("channel", horizon)
        got, st = roll("triton", horizon)
        assert sc.mode.stats()["decay_kernel"] == "channel"
        assert st.mode.stats()["decay_kernel"] == "triton" and st.cache.pad == 0
        assert (st.mode.stats()["horizon_skipped"] > 0.05) == horizon
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
