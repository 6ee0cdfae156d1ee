"""TempCache's top-1 search at the model's shapes: bmm + argmax against the fused Triton kernel (CUDA).

    python tools/bench_top1.py            # G = 6 heads, n = 256 queries, R = 88, S = 16k / 4k / 64k keys
Prints microseconds per call (CUDA events, median of 50 after warm-up) and how often the two agree.
"""
from __future__ import annotations

import torch

from engine.attention import tempcache_merge as tm
from engine.attention import triton_top1
from engine.attention.bench import _timer


def main() -> None:
    ms = _timer(torch.device("cuda"))   # median of CUDA-event times after a warm-up, in ms
    g = torch.Generator(device="cuda").manual_seed(0)
    G, n, R = 6, 256, 88
    print("S      bmm+argmax us   triton us   agree")
    for S in (4096, 16384, 65536):
        x = torch.randn(G, n, R, device="cuda", generator=g).bfloat16()
        y = torch.randn(G, S, R, device="cuda", generator=g).bfloat16()
        ref = tm.scores(x, y, True).argmax(-1)
        got = triton_top1.top1(x, y)
        t_ref = 1e3 * ms(lambda: tm.scores(x, y, True).argmax(-1), 5, 50)
        t_tri = 1e3 * ms(lambda: triton_top1.top1(x, y), 5, 50)
        print(f"{S:<6d} {t_ref:14.1f} {t_tri:11.1f}   {float((ref == got).float().mean()):.4f}")


if __name__ == "__main__":
    main()
