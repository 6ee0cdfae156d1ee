"""Launch settings of two small kernels of fastar's frame, timed at the bundle's shapes on the GPU (CUDA events,
median of 50 calls after a warm-up), each against the current defaults, which must give the same result:

    PYTHONPATH=. python3 tools/gpu/tune_small_kernels.py [--out FILE.json]

1. TempCache's top-1 search (engine/attention/triton_top1.py, LAUNCH): 30 query heads (5 layers x 6), 256
   queries, 8192 stored rows of R = 88 (session 17's trace: one call a frame, 121 us). Agreement: the argmax
   indices equal the default's (a different tile may order a near-tie differently: reported, not hidden).
2. triton_decay's combine (COMBINE_ROWS, COMBINE_UNROLL, COMBINE_WARPS): 22 key chunks, 6 heads x 256 queries,
   head dim 64 (25 calls a frame at 6.7 us). Agreement: max |out - default's out|.
Prints a table per kernel, fastest first; the defaults change only by hand after a look at the numbers.
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch

from engine.attention import triton_decay as td
from engine.attention import triton_top1
from engine.attention.bench import _timer


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
            us = 1e3 * ms(lambda: triton_top1.top1(x, y, heads, launch), 5, 50)
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
            us = 1e3 * ms(call, 5, 50)
            rows.append({"rows": r, "unroll": u, "num_warps": w, "us": us,
                         "max_diff": float((got.float() - ref.float()).abs().max())})
    finally:
        td.COMBINE_ROWS, td.COMBINE_UNROLL, td.COMBINE_WARPS = saved
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    a = p.parse_args()
    ms = _timer(torch.device("cuda"))
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "top1_default": triton_top1.LAUNCH,
           "combine_default": {"rows": td.COMBINE_ROWS, "unroll": td.COMBINE_UNROLL, "num_warps": td.COMBINE_WARPS},
           "top1": top1_rows(ms), "combine": combine_rows(ms)}
    for name in ("top1", "combine"):
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
