"""Dense attention with the temporal decay computed from frame indices inside the kernel (no bias channel).

Why: a model with temporal decay (dit.temporal_decay) adds max(slope_h x (frame_j - now), DECAY_FLOOR) to the
logit of every committed key j (engine/cache.py). The plain kernels cannot take a per-key bias without a slow
mask argument, so the cache carried it as one extra key channel: 65 channels padded to 72, which FA2 runs at
about half the speed of 64 (H100, 256 queries against 3000 frames x 256 keys, bf16: 2.13 ms at 72 channels,
1.09 at 64, 1.78 at 96; tools/gpu/chan_cost.py), and the channel had to be rewritten for every slot every
frame. This kernel reads the 64 channels and each slot's frame index, and adds the decay itself.

Shape of the work: one frame's 256 queries against up to millions of keys. Tiling only the queries would give
2 query blocks x 6 heads = 12 programs for 132 SMs, so the keys are split into S chunks as well
(flash-decoding): each program writes a partial output and log-sum-exp, and a combine step weighs the chunks
by their log-sum-exps. Per head, keys past its `horizon` are skipped (the decay horizon: engine/cache.py
set_decay, engine/attention/dense.py). Online softmax in base 2, float32 accumulators, as triton_varlen.py.

Inputs: q (B, H, n, D); k, v (B, H, L, D) with the last dim contiguous (views of padded storage are fine);
frame (L,) int64 slot frame indices; now () int64 the frame being generated (a device scalar, as the cache's);
slopes (H,) float32; horizon (H,) int32, per head the frames back it reads (0: all), which makes it skip the
slots before length - horizon x tokens_per_frame (only for slots in frame order, the newest last: a dense
cache); `length` () int64 on the device, the committed slots: the frame's own n keys are slots
[length, length + n) (no decay over them), and slots past them are never read. With no slopes it is plain
attention over slots [0, length + n), which is what dense's bucketed graphs need: the length on the device,
so one captured call serves every frame of a bucket (a host int does for a call whose length is fixed, as
engine/attention/kernels.py's plain use). Optionally a per-key bias (B, H, L) read in place, e.g. TempCache's
log(group size) from the cache's bias channel, so a biased cache is read at 64 channels too. Returns
(B, H, n, D) in q's dtype, over (B, n, H, D) memory as FA2's output is. CUDA with triton only; `available()`
says whether it can run; on the CPU the tests run it under TRITON_INTERPRET=1.

The same split serves the other modes' plain calls (kernels.py's `triton_split` candidate). At a window's
~8k keys torch's FA2 splits the keys too (`flash_fwd_splitkv_kernel`, ~19 us a call on the H100), and the two
measured within noise of each other in session 15; the per-shape measurement picks.
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch

from engine.cache import DECAY_FLOOR

_triton_ok = importlib.util.find_spec("triton") is not None
if _triton_ok:
    import triton
    import triton.language as tl

    # the chunk size changes from call to call: not specialised on (divisibility by 16, == 1), so one compiled
    # kernel serves the whole rollout (the lengths are read on the device)
    @triton.jit(do_not_specialize=["chunk", "LEN"])
    def _decay_fwd(Q, K, V, O, LSE, FRAME, SLOPE, HZ, NOW, LEN, BIAS, n_new, tpf, chunk, qk_scale, n_q, H,  # type: ignore[no-untyped-def]
                   sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbb, sbh, sbn,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FLOOR: tl.constexpr,
                   PREC: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_BIAS: tl.constexpr,
                   LEN_ON_DEVICE: tl.constexpr):
        """Program (query block, batch x head, key chunk). Partial output (S, B*H, n, D) and lse (S, B*H, n),
        lse in base 2 (the combine only compares them). The committed length is read on the device, so a
        captured call stays right as the cache grows: keys [length + n_new, L) are never read."""
        mb, bh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        b, h = bh // H, bh % H
        length = tl.load(LEN) if LEN_ON_DEVICE else LEN
        end = length + n_new
        hz = tl.load(HZ + h).to(tl.int64)                                # horizon in frames, 0: none
        lo = tl.where(hz > 0, tl.maximum(length - hz * tpf, 0), 0) + split * chunk
        hi = tl.minimum(lo + chunk, end)
        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        row_ok = offs_m < n_q
        q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        if HAS_DECAY:
            slope = tl.load(SLOPE + h) * 1.4426950408889634      # base 2, as the scores
            now = tl.load(NOW)
        kbase = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
        vbase = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            col_ok = offs_n < hi
            k = tl.load(kbase + offs_n[:, None].to(tl.int64) * skn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale                # (BLOCK_M, BLOCK_N)
            if HAS_DECAY:
                fr = tl.load(FRAME + offs_n, mask=col_ok, other=0)
                back = tl.minimum(fr - now, 0).to(tl.float32)                       # frames back, <= 0
                bias = tl.where(offs_n < length, tl.maximum(slope * back, FLOOR * 1.4426950408889634), 0.0)
                s += bias[None, :]
            if HAS_BIAS:   # a per-key logit bias (natural log units), read in place (e.g. the cache's bias channel)
                kb = tl.load(BIAS + b.to(tl.int64) * sbb + h.to(tl.int64) * sbh + offs_n.to(tl.int64) * sbn,
                             mask=col_ok, other=0.0)
                s += kb.to(tl.float32)[None, :] * 1.4426950408889634
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(vbase + offs_n[:, None].to(tl.int64) * svn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        row = (split * tl.num_programs(1) + bh).to(tl.int64) * n_q + offs_m
        tl.store(O + row[:, None] * D + offs_d[None, :], out, mask=row_ok[:, None])
        tl.store(LSE + row, tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf")), mask=row_ok)

    @triton.jit(do_not_specialize=["S"])
    def _combine(O, LSE, OUT, S, rows, n_q, H, sob, soh, soi, D: tl.constexpr, BLOCK_R: tl.constexpr,
                 S_BLOCK: tl.constexpr, UNROLL: tl.constexpr):  # type: ignore[no-untyped-def]
        """out[r] = sum_s 2^(lse[s, r] - m) o[s, r] / sum_s 2^(lse[s, r] - m), m the row's largest lse: the
        chunks' partial softmaxes joined in one launch (as torch ops it was ~8 launches a call, and dense's
        calls past the graphed range are launched one by one). Row r = (b H + h) n_q + i goes to OUT at
        b sob + h soh + i soi (the (B, n, H, D) layout the output projection reads, no transpose after).
        Why the shapes: one chunk at a time, each load waited for before the next, the two passes over S = 22
        chunks took 7.5 us a call on the H100, as long as 44 memory latencies; the maximum takes the S lse
        values as one tile (S_BLOCK, the next power of two, is the only specialisation) and the sum issues
        UNROLL chunks' loads together. The sum still adds the chunks in order 0, 1, ..., S - 1, so the values are
        the one-chunk-at-a-time loop's (a chunk past S adds 0 x 0)."""
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = r < rows
        d = tl.arange(0, D)
        ss = tl.arange(0, S_BLOCK)
        all_lse = tl.load(LSE + ss[:, None] * rows + r[None, :], mask=(ss[:, None] < S) & ok[None, :],
                          other=float("-inf"))
        m = tl.max(all_lse, 0)
        acc = tl.zeros([BLOCK_R, D], tl.float32)
        total = tl.zeros([BLOCK_R], tl.float32)
        for s0 in range(0, S, UNROLL):
            for j in tl.static_range(UNROLL):
                s = s0 + j
                live = ok & (tl.zeros([BLOCK_R], tl.int32) + s < S)   # a row vector: the interpreter's masks
                lse = tl.load(LSE + s * rows + r, mask=live, other=float("-inf"))
                w = tl.where(lse == float("-inf"), 0.0, tl.exp2(lse - m))        # an empty chunk weighs 0
                o = tl.load(O + (s * rows + r)[:, None].to(tl.int64) * D + d[None, :], mask=live[:, None],
                            other=0.0)
                acc += w[:, None] * o
                total += w
        bh = r // n_q
        dst = (bh // H).to(tl.int64) * sob + (bh % H).to(tl.int64) * soh + (r % n_q).to(tl.int64) * soi
        tl.store(OUT + dst[:, None] + d[None, :], (acc / total[:, None]).to(OUT.dtype.element_ty),
                 mask=ok[:, None])


BLOCK_M, BLOCK_N = 128, 64
LAUNCH = {"num_warps": 4, "num_stages": 3}   # measured on the H100 (tools/decay_kernel_bench.py): 8 warps
                                             # 0.59 / 1.71 ms at 1000 / 3000 frames, 4 warps 0.40 / 1.15
# Short key ranges (the bounded modes' ~34 frames, dense's first frames) take another tile: at 256 queries x 6
# heads x 8704 keys with a decay and a bias (fastar's call on a decay model), inside a CUDA graph, call plus
# combine: 26.7 us against 34.7 for the long-range tile (tools/gpu/tune_small_kernels.py, session 18). Ranges
# between SHORT_KEYS and the ~300 frames the long tile was measured at keep the long tile (not measured).
SHORT_KEYS = 12288
SHORT_TILE = (64, 128, {"num_warps": 4, "num_stages": 2})   # block_m, block_n, launch


def tile(keys: int) -> tuple[int, int, dict[str, int]]:
    """(block_m, block_n, launch) for a call whose longest head reads `keys` keys."""
    return SHORT_TILE if keys <= SHORT_KEYS else (BLOCK_M, BLOCK_N, LAUNCH)


WAVES = 2   # key chunks sized for about this many programs per SM (a head that reads more keys gets more chunks);
            # H100, run 12's horizons: 2 -> 0.18 / 0.26 / 0.42 / 0.74 ms at 300 / 600 / 1000 / 3000 frames,
            # 4 -> 0.30 / 0.28 / 0.43 / 0.73, 1 -> 0.20 / 0.34 / 0.56 / 1.25 (docs/results/decay_kernel_h100.json)


def available(device: torch.device) -> bool:
    """Whether the kernel can run on `device`: triton importable and CUDA (or the interpreter, for tests)."""
    return _triton_ok and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel can run on x's device and dtype (float64, the tests' reference dtype, is not one)."""
    return available(x.device) and x.dtype in (torch.float16, torch.bfloat16, torch.float32)


COMBINE, COMBINE_ROWS = "triton", 4   # how the chunks are joined: tools/gpu/host_ab.py measured 105-120 us of host
                                     # time a call against 230-260 for the torch ops on one H100 host
COMBINE_UNROLL, COMBINE_WARPS = 8, 4  # chunks whose loads _combine issues together; its warps a program. Rows,
                                      # unroll, warps timed in CUDA graphs at 22 chunks x 1536 rows (session 18,
                                      # tools/gpu/tune_small_kernels.py): 4, 8, 4 at 5.1 us against 6.4 for 8, 4, 2
_sms: dict[torch.device, int] = {}
_zero: dict[tuple[int, torch.device], torch.Tensor] = {}


def _zeros(h: int, device: torch.device) -> torch.Tensor:
    """(h,) int32 zeros on `device`, made once (a per-call tensor inside a capture would be a new address)."""
    key = (h, device)
    if key not in _zero:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("triton_decay: first call inside a CUDA graph capture; run a pass eagerly first")
        _zero[key] = torch.zeros(h, dtype=torch.int32, device=device)
    return _zero[key]


def chunk_keys(n_q: int, batch: int, ranges: list[int], device: torch.device, block_n: int = BLOCK_N,
               block_m: int = BLOCK_M) -> int:
    """Keys per program, so that the programs with work come to about WAVES per SM: ranges are the keys each
    head reads (from its horizon on). A single chunk size for all heads keeps the work even; a head with a
    shorter range just has fewer chunks (its other programs exit at once). Why not a fixed number of chunks:
    at 3000 frames with run 12's horizons, 22 chunks gave 146 equal programs for 132 SMs, two waves for the
    work of ~1.1 (1.71 ms against FA2's 1.09 at 64 channels with no horizon)."""
    if device not in _sms:
        _sms[device] = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    sms = _sms[device]
    work = -(-n_q // block_m) * batch * sum(ranges)
    chunk = max(4 * block_n, -(-work // (WAVES * sms)))
    return -(-chunk // block_n) * block_n


def decay_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame: torch.Tensor | None,
                    now: torch.Tensor | None, slopes: torch.Tensor | None, horizon: torch.Tensor | None,
                    length: torch.Tensor | int, tokens_per_frame: int, starts: list[int] | None = None,
                    num_splits: int = 0, block_n: int | None = None, launch: dict[str, int] | None = None,
                    bias: torch.Tensor | None = None, block_m: int | None = None) -> torch.Tensor:
    """See the module docstring. length: the committed slots, an int64 device scalar (a captured call reads
    it at replay); the scratch frame is slots [length, length + n), n = q's tokens, and k, v may extend
    past it (a bucket: those slots are never read). slopes None: no decay (frame, now unused), plain
    attention to the slots before length + n. horizon None: every head reads every slot. starts: per head
    the first slot it reads, as the kernel computes it from `horizon` (host ints that size the key chunks
    without a device read; None: 0 for every head); num_splits: key chunks for the longest range, 0 = sized
    by chunk_keys(); block_m, block_n, launch: tile and launch settings (None: tile(), the measured ones).
    bias: (B, H, L) a per-key logit bias added to every query's logit of that key (any strides: the cache's
    bias channel kp[..., D] is read in place), as TempCache's log(group size); with a decay, it is added too."""
    if not _triton_ok:
        raise RuntimeError("triton_decay: triton is not installed")
    B, H, n, D = q.shape
    L = k.shape[2]
    if D not in (16, 32, 64, 128):
        raise ValueError(f"triton_decay: head dim must be 16/32/64/128, got q {tuple(q.shape)}")
    if k.shape[:2] != (B, H) or v.shape[:3] != k.shape[:3] or k.shape[-1] != D or v.shape[-1] != D:
        raise ValueError(f"triton_decay: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("triton_decay: q, k, v need a contiguous last dim")
    on_device = isinstance(length, torch.Tensor)
    if on_device and (length.shape != () or length.dtype != torch.int64 or length.device != q.device):
        raise ValueError(f"triton_decay: length must be an int64 scalar on {q.device}, got {tuple(length.shape)} "
                         f"{length.dtype} on {length.device}")
    decay = slopes is not None
    if horizon is None:
        horizon = _zeros(H, q.device)
    if decay:
        if frame is None or now is None or frame.shape != (L,) or slopes.shape != (H,):
            raise ValueError(f"triton_decay: frame {None if frame is None else tuple(frame.shape)} (want ({L},)), "
                             f"now {now} and slopes {tuple(slopes.shape)} (want ({H},))")
        if slopes.dtype != torch.float32 or frame.dtype != torch.int64:
            raise ValueError(f"triton_decay: slopes float32 and frame int64 expected, got {slopes.dtype}, {frame.dtype}")
    else:                       # placeholders the kernel never reads
        frame, now, slopes = horizon, horizon, horizon
    if horizon.shape != (H,) or horizon.dtype != torch.int32:
        raise ValueError(f"triton_decay: horizon must be ({H},) int32, got {tuple(horizon.shape)} {horizon.dtype}")
    if bias is not None and tuple(bias.shape) != (B, H, L):
        raise ValueError(f"triton_decay: bias {tuple(bias.shape)}, expected (B, H, L) = {(B, H, L)}")
    bstride = (0, 0, 0) if bias is None else bias.stride()
    starts = [0] * H if starts is None else starts
    longest = max(L - min(starts), 1)
    short_m, short_n, short_launch = tile(longest)
    block_m, block_n, launch = block_m or short_m, block_n or short_n, launch or short_launch
    if num_splits:
        per = -(-longest // num_splits)                     # ceil
        chunk = -(-per // block_n) * block_n
    else:
        chunk = chunk_keys(n, B, [L - st for st in starts], q.device, block_n, block_m)
    S = -(-longest // chunk)
    o = torch.empty(S, B * H, n, D, device=q.device, dtype=torch.float32)
    lse = torch.empty(S, B * H, n, device=q.device, dtype=torch.float32)
    grid = (-(-n // block_m), B * H, S)
    _decay_fwd[grid](q, k, v, o, lse, frame, slopes, horizon, now, length, horizon if bias is None else bias, n,
                     tokens_per_frame, chunk, 1.4426950408889634 / math.sqrt(D), n, H,
                     q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                     v.stride(0), v.stride(1), v.stride(2), *bstride,
                     D=D, BLOCK_M=block_m, BLOCK_N=block_n, FLOOR=DECAY_FLOOR,
                     PREC="ieee" if q.dtype == torch.float32 else "tf32", HAS_DECAY=decay, HAS_BIAS=bias is not None,
                     LEN_ON_DEVICE=on_device, **launch)
    if COMBINE == "torch":
        w = torch.exp2(lse - lse.amax(0))                               # (S, BH, n); an empty chunk weighs 0
        return ((o * w[..., None]).sum(0) / w.sum(0)[..., None]).view(B, H, n, D).to(q.dtype)
    # (B, H, n, D) over (B, n, H, D) memory, as FA2's output: the output projection then reads it without a copy
    out = torch.empty(B, n, H, D, device=q.device, dtype=q.dtype).transpose(1, 2)
    rows = B * H * n
    _combine[(-(-rows // COMBINE_ROWS),)](o, lse, out, S, rows, n, H, out.stride(0), out.stride(1), out.stride(2),
                                         D=D, BLOCK_R=COMBINE_ROWS, S_BLOCK=triton.next_power_of_2(S),
                                         UNROLL=COMBINE_UNROLL, num_warps=COMBINE_WARPS)
    return out
