"""Launch settings of three small kernels of fastar's frame, timed at the bundle's shapes on the GPU, each against
the current defaults, which must give the same result. Timing: 20 calls captured in one CUDA graph, the replay
timed by CUDA events (median of 10), per call. Why a graph: these kernels run for 5-120 us, and a host loop of
eager calls times the launches instead (session 18's first run put every combine setting at 36-50 us against
6.6 us in the frame's trace); in the engine they run inside graphs too.

    PYTHONPATH=. python3 tools/gpu/tune_small_kernels.py [--out FILE.json]

1. TempCache's top-1 search (engine/attention/triton_top1.py, LAUNCH): 30 query heads (5 layers x 6), 256
   queries, 8192 stored rows of R = 88 (session 17's trace: one call a frame, 121 us). Agreement: the argmax
   indices equal the default's (a different tile may order a near-tie differently: reported, not hidden).
2. triton_decay's combine (COMBINE_ROWS, COMBINE_UNROLL, COMBINE_WARPS): 22 key chunks, 6 heads x 256 queries,
   head dim 64 (25 calls a frame at 6.7 us). Agreement: max |out - default's out|.
3. triton_decay's split-key kernel with a decay and a bias array, fastar's call on a decay model (run 16: 40 calls
   a frame at 25.9 us): 256 queries, 6 heads, 33 committed frames of 256 keys plus the frame; query tile, key
   tile, warps, stages and the number of key chunks. Agreement: max |out - default's out| (bf16).
Prints a table per kernel, fastest first; the defaults change only by hand after a look at the numbers.
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch

from engine.attention import triton_decay as td
from engine.attention import triton_top1


def graph_timer(reps: int = 20):  # type: ignore[no-untyped-def]
    """ms per call of fn, from `reps` calls captured in one CUDA graph (the median of 10 timed replays)."""
    def ms(fn, warm: int = 2) -> float:  # type: ignore[no-untyped-def]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(warm):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(reps):
                fn()
        g.replay()
        torch.cuda.synchronize()
        ts = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) / reps)
        del g
        return sorted(ts)[len(ts) // 2]
    return ms


def top1_rows(ms) -> list[dict]:  # type: ignore[no-untyped-def]
    g = torch.Generator(device="cuda").manual_seed(0)
    G, n, S, R = 30, 256, 8192, 88
    x = torch.randn(G, n, R, device="cuda", generator=g).bfloat16()
    y = torch.randn(48, S, R, device="cuda", generator=g).bfloat16()      # 8 layers x 6 heads stored
    heads = torch.arange(30, device="cuda") + 6                           # layers 1..5's heads, read in place
    ref = triton_top1.top1(x, y, heads)
    rows = []
    for bn, bs, per, w, st in itertools.product((64, 128), (32, 64, 128), (1024, 2048), (4, 8), (2, 3)):
        launch = {"block_n": bn, "block_s": bs, "keys_per_program": per, "num_warps": w, "num_stages": st}
        try:
            got = triton_top1.top1(x, y, heads, launch)
            us = 1e3 * ms(lambda: triton_top1.top1(x, y, heads, launch))
        except Exception as e:   # a tile that does not fit (shared memory): recorded, not fatal
            rows.append({**launch, "us": None, "error": type(e).__name__})
            continue
        rows.append({**launch, "us": us, "agree": float((got == ref).float().mean())})
    return rows


def combine_rows(ms) -> list[dict]:  # type: ignore[no-untyped-def]
    g = torch.Generator(device="cuda").manual_seed(1)
    S, B, H, n, D = 22, 1, 6, 256, 64
    rows_n = B * H * n
    o = torch.randn(S, B * H, n, D, device="cuda", generator=g)
    lse = torch.randn(S, B * H, n, device="cuda", generator=g) * 3
    saved = (td.COMBINE_ROWS, td.COMBINE_UNROLL, td.COMBINE_WARPS)

    def call() -> torch.Tensor:
        out = torch.empty(B, n, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        td._combine[(-(-rows_n // td.COMBINE_ROWS),)](o, lse, out, S, rows_n, n, H, *out.stride()[:3], D=D,
                                                      BLOCK_R=td.COMBINE_ROWS, S_BLOCK=32, UNROLL=td.COMBINE_UNROLL,
                                                      num_warps=td.COMBINE_WARPS)
        return out
    ref = call()
    rows = []
    try:
        for r, u, w in itertools.product((4, 8, 16, 32), (1, 2, 4, 8), (1, 2, 4)):
            td.COMBINE_ROWS, td.COMBINE_UNROLL, td.COMBINE_WARPS = r, u, w
            got = call()
            us = 1e3 * ms(call)
            rows.append({"rows": r, "unroll": u, "num_warps": w, "us": us,
                         "max_diff": float((got.float() - ref.float()).abs().max())})
    finally:
        td.COMBINE_ROWS, td.COMBINE_UNROLL, td.COMBINE_WARPS = saved
    return rows


def decay_rows(ms) -> list[dict]:  # type: ignore[no-untyped-def]
    g = torch.Generator(device="cuda").manual_seed(2)
    B, H, n, D, F = 1, 6, 256, 64, 33
    L = (F + 1) * n
    q = torch.randn(B, H, n, D, device="cuda", generator=g).bfloat16()
    k = torch.randn(B, H, L, D, device="cuda", generator=g).bfloat16()
    v = torch.randn(B, H, L, D, device="cuda", generator=g).bfloat16()
    frame = torch.arange(F + 1, device="cuda").repeat_interleave(n).to(torch.int64) + 500
    now = torch.tensor(500 + F, device="cuda", dtype=torch.int64)
    slopes = torch.tensor([0.1] * 4 + [0.01] * 2, device="cuda")
    bias = torch.rand(B, H, L, device="cuda", generator=g).log1p()
    length = torch.tensor(F * n, device="cuda", dtype=torch.int64)

    def call(**kw):  # type: ignore[no-untyped-def]
        return td.decay_attention(q, k, v, frame, now, slopes, None, length, n, bias=bias, **kw)
    ref = call().float()
    rows = []
    for bm, bn, w, st, sp in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3), (0, 6, 11, 16, 22, 33)):
        kw = {"block_m": bm, "block_n": bn, "num_splits": sp, "launch": {"num_warps": w, "num_stages": st}}
        try:
            got = call(**kw)
            us = 1e3 * ms(lambda: call(**kw))
        except Exception as e:   # a tile that does not fit (shared memory, registers): recorded, not fatal
            rows.append({"block_m": bm, "block_n": bn, "num_warps": w, "num_stages": st, "splits": sp, "us": None,
                         "error": type(e).__name__})
            continue
        rows.append({"block_m": bm, "block_n": bn, "num_warps": w, "num_stages": st, "splits": sp, "us": us,
                     "max_diff": float((got.float() - ref).abs().max())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    a = p.parse_args()
    ms = graph_timer()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "top1_default": triton_top1.LAUNCH,
           "combine_default": {"rows": td.COMBINE_ROWS, "unroll": td.COMBINE_UNROLL, "num_warps": td.COMBINE_WARPS},
           "decay_default": dict(zip(("block_m", "block_n"), td.tile(34 * 256)[:2])) | td.tile(34 * 256)[2]
           | {"splits": 0},
           "top1": top1_rows(ms), "combine": combine_rows(ms), "decay": decay_rows(ms)}
    for name in ("top1", "combine", "decay"):
        ok = sorted((r for r in res[name] if r.get("us") is not None), key=lambda r: r["us"])
        print(f"{name}: default {res[name + '_default']}")
        for r in ok[:12]:
            print("  " + "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
        failed = [r for r in res[name] if r.get("us") is None]
        if failed:
            print(f"  {len(failed)} settings failed to launch")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
