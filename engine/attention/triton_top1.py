"""TempCache's top-1 search as one Triton kernel: scores and their row-wise argmax without the score matrix.

Why: the stored-row search (tempcache_merge.commit_rows) is `argmax(x @ y^T)` with x (G, n, R) the new frame's
search rows and y (G, S, R) the cache's: at the default capacity (S = 64 frames x 256 tokens, G = 6 heads, n =
256) the float32 score matrix is 100 MB a layer, written by cuBLAS and read back by the argmax, every frame and
every layer. This kernel keeps a running (max, index) per query while it walks the keys in blocks, like a flash
attention forward pass with max in place of the softmax sum, so nothing but (max, index) per query and key
chunk leaves the chip. The keys are split into chunks of ~1,024 (split-K, as flash-decoding does) so that a
frame's few query blocks still fill the GPU; a tiny argmax over the chunks finishes the search. The first
version walked all keys in one program per (query block, head): 24 programs, 346 us a call on the H100,
slower than the bmm it replaced.

Ties go to the lowest key index, as torch.argmax's; scores are float32 accumulations of bf16/fp16 products
(the same inputs as the bmm path, whose out_dtype=float32 result it replaces). The order of the accumulation
differs from cuBLAS's, so two near-equal candidates may rank the other way round than in the bmm path; the
kernel is deterministic (no atomics, a fixed walk). CUDA with triton only; `available()` says whether it can run.
"""
from __future__ import annotations

import importlib.util

import torch

_triton_ok = importlib.util.find_spec("triton") is not None
if _triton_ok:
    import triton
    import triton.language as tl

    @triton.jit
    def _top1_kernel(X, Y, HEADS, VAL, IDX, n, S, R, chunk, splits, sxg, sxn, syg, sys,  # type: ignore[no-untyped-def]
                     BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr, USE_HEADS: tl.constexpr):
        """Program (query block, head, split): best key of rows [split * chunk, (split + 1) * chunk).
        USE_HEADS: query head g searches key head HEADS[g] (a subset of y's heads, read in place)."""
        pid, g, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        if USE_HEADS:
            gy = tl.load(HEADS + g)
        else:
            gy = g
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_r = tl.arange(0, BLOCK_R)
        x = tl.load(X + g * sxg + offs_n[:, None] * sxn + offs_r[None, :],
                    mask=(offs_n[:, None] < n) & (offs_r[None, :] < R), other=0.0)
        best = tl.full([BLOCK_N], float("-inf"), tl.float32)
        arg = tl.zeros([BLOCK_N], tl.int32)
        lo = sp * chunk
        hi = tl.minimum(lo + chunk, S)
        for s0 in range(lo, hi, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            y = tl.load(Y + gy * syg + offs_s[:, None] * sys + offs_r[None, :],
                        mask=(offs_s[:, None] < hi) & (offs_r[None, :] < R), other=0.0)
            sc = tl.dot(x, tl.trans(y))                                        # (BLOCK_N, BLOCK_S) float32
            sc = tl.where(offs_s[None, :] < hi, sc, float("-inf"))
            m = tl.max(sc, 1)
            # first index of the block maximum: the smallest offset where sc == m
            am = tl.min(tl.where(sc == m[:, None], offs_s[None, :], S), 1)
            upd = m > best                                                     # strict: earlier blocks win ties
            best = tl.where(upd, m, best)
            arg = tl.where(upd, am, arg)
        out = (g * n + offs_n) * splits + sp
        tl.store(VAL + out, best, mask=offs_n < n)
        tl.store(IDX + out, arg.to(tl.int64), mask=offs_n < n)


def available(device: torch.device) -> bool:
    return _triton_ok and device.type == "cuda"


LAUNCH = {"block_n": 128, "block_s": 64, "keys_per_program": 1024, "num_warps": 8, "num_stages": 3}
# the launch settings; tools/gpu/tune_small_kernels.py times others at the engine's shapes (TempCache's search over
# 5 layers x 6 heads, 256 queries, 8192 keys, R = 88): in CUDA graphs on the H100 (session 18), 86.5 us against
# 128.8 for session 17's 64 / 64 / 1024 / 4 warps / 3 stages, the same indices


def top1(x: torch.Tensor, y: torch.Tensor, heads: torch.Tensor | None = None,
         launch: dict[str, int] | None = None) -> torch.Tensor:
    """x (G, n, R), y (G, S, R), both bf16/fp16 on CUDA with unit last stride -> argmax_s <x[g, i], y[g, s]>
    as (G, n) int64. heads (G,) int64: x[g] searches y[heads[g]] instead (y then has any number of heads;
    TempCache searches only in some layers, without copying those layers' rows out). launch: LAUNCH's keys
    to override (the tuning tool)."""
    G, n, R = x.shape
    S = y.shape[1]
    if x.stride(-1) != 1 or y.stride(-1) != 1:
        raise ValueError("triton_top1.top1: x and y need a unit stride in their last dimension")
    cfg = {**LAUNCH, **(launch or {})}
    block_n, block_s, per = cfg["block_n"], cfg["block_s"], cfg["keys_per_program"]
    # split the keys so that the grid fills the GPU (a 256-query frame is only 4 query blocks a head): about
    # keys_per_program keys a program, as a multiple of the key block
    chunk = max(block_s, triton.cdiv(triton.cdiv(S, max(1, triton.cdiv(S, per))), block_s) * block_s)
    splits = triton.cdiv(S, chunk)
    val = torch.empty(G, n, splits, dtype=torch.float32, device=x.device)
    idx = torch.empty(G, n, splits, dtype=torch.int64, device=x.device)
    block_r = max(16, triton.next_power_of_2(R))
    grid = (triton.cdiv(n, block_n), G, splits)
    _top1_kernel[grid](x, y, x if heads is None else heads, val, idx, n, S, R, chunk, splits, x.stride(0),
                       x.stride(1), y.stride(0), y.stride(1), BLOCK_N=block_n, BLOCK_S=block_s, BLOCK_R=block_r,
                       USE_HEADS=heads is not None, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    # the best split; argmax takes the first of equal maxima, i.e. the lowest key index (splits are in order)
    return idx.gather(-1, val.argmax(-1, keepdim=True))[..., 0]
