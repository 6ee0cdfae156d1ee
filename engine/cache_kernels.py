"""One kernel for KVCache's scratch write: the frame's K and V into their slots and those slots' bias to 0.

Why: every self-attention call of every pass first writes the current frame's k, v (B, H, n, D) into the
cache's scratch slots and zeroes their bias (engine/cache.py, write_scratch): three kernels as torch slicing
(a copy each for K and V, a fill for the bias), four with the slot index on the device (write_scratch_at: an
arange plus two index_copy_ and an index_fill_). A frame is 5 passes x 8 layers, so these are ~120-160 of a
frame's ~1100 kernels; inside a captured graph each still costs its own launch gap (session 16's H100 trace,
docs/BENCHMARKS.md). Here they are one launch. Exact: it only moves values.

`write_kv(k_cache, v_cache, bias_cache, k, v, start)`: k_cache, v_cache (B, H, capacity, D) views with the
last dim contiguous (the bias-channel layout's [..., :D] views are fine), bias_cache (B, H, capacity); k, v
(B, H, n, D), any strides; start a host int or an int64 device scalar (read at run time, so a captured call
follows it). CUDA with triton, or triton's interpreter (TRITON_INTERPRET=1) for the CPU tests; `available()`
says whether it can run.
"""
from __future__ import annotations

import importlib.util
import os

import torch

_triton_ok = importlib.util.find_spec("triton") is not None
if _triton_ok:
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["start"])
    def _write_kv(KC, VC, BC, KS, VS, START, start, n, H,  # type: ignore[no-untyped-def]
                  skb, skh, skn, svb, svh, svn, sbb, sbh, sbn,
                  sxb, sxh, sxn, sxd, syb, syh, syn, syd,
                  D: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr, START_ON_DEVICE: tl.constexpr):
        """Program (batch x head, block of the frame's tokens): BLOCK rows of k and v into slots start + row,
        and those slots' bias to 0."""
        bh, blk = tl.program_id(0), tl.program_id(1)
        b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
        first = tl.load(START) if START_ON_DEVICE else start
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, DP)
        ok = rows < n
        m = ok[:, None] & (cols[None, :] < D)
        slots = (first + rows).to(tl.int64)
        x = tl.load(KS + b * sxb + h * sxh + rows[:, None] * sxn + cols[None, :] * sxd, mask=m)
        tl.store(KC + b * skb + h * skh + slots[:, None] * skn + cols[None, :], x, mask=m)
        y = tl.load(VS + b * syb + h * syh + rows[:, None] * syn + cols[None, :] * syd, mask=m)
        tl.store(VC + b * svb + h * svh + slots[:, None] * svn + cols[None, :], y, mask=m)
        tl.store(BC + b * sbb + h * sbh + slots * sbn, tl.zeros([BLOCK], BC.dtype.element_ty), mask=ok)

BLOCK = 64


def available(device: torch.device) -> bool:
    """Whether the kernel can run on `device`: triton importable and CUDA (or the interpreter, for tests)."""
    return _triton_ok and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, bias_cache: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, start: int | torch.Tensor) -> None:
    """See the module docstring. The caller makes room (slots start .. start + n - 1 exist)."""
    if not _triton_ok:
        raise RuntimeError("cache_kernels.write_kv: triton is not installed")
    B, H, n, D = k.shape
    if v.shape != k.shape or k_cache.shape[:2] != (B, H) or k_cache.shape[-1] != D \
            or v_cache.shape != k_cache.shape or bias_cache.shape != k_cache.shape[:3]:
        raise ValueError(f"cache_kernels.write_kv: k {tuple(k.shape)}, v {tuple(v.shape)}, cache k "
                         f"{tuple(k_cache.shape)}, v {tuple(v_cache.shape)}, bias {tuple(bias_cache.shape)} "
                         f"do not match")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("cache_kernels.write_kv: the cache's last dim must be contiguous")
    if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
        raise ValueError(f"cache_kernels.write_kv: k {k.dtype} / v {v.dtype} into a {k_cache.dtype} cache")
    on_device = isinstance(start, torch.Tensor)
    dummy = bias_cache   # START's pointer when the start is a host int (never read)
    grid = (B * H, triton.cdiv(n, BLOCK))
    _write_kv[grid](k_cache, v_cache, bias_cache, k, v, start if on_device else dummy,
                    0 if on_device else int(start), n, H, *k_cache.stride()[:3], *v_cache.stride()[:3],
                    *bias_cache.stride(), *k.stride(), *v.stride(), D=D, DP=triton.next_power_of_2(D), BLOCK=BLOCK,
                    START_ON_DEVICE=on_device)
