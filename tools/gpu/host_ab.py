"""Host and device time of one triton_decay call at 300 frames, the chunks joined by torch ops or by the triton
kernel with 8 / 32 / 64 rows a program (session 14, docs/MODEL.md):  PYTHONPATH=. python3 tools/gpu/host_ab.py"""
import time, torch
from engine.attention import triton_decay as td
dev = torch.device("cuda"); n, H, D, F = 256, 6, 64, 300
q = torch.randn(1, H, n, D, device=dev, dtype=torch.bfloat16)
k = torch.randn(1, H, (F + 1) * n, D, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
frame = torch.cat([torch.arange(F, device=dev).repeat_interleave(n), torch.full((n,), -1, device=dev)])
now = torch.tensor(F, device=dev); sl = torch.tensor([0.1] * 4 + [0.01] * 2, device=dev)
hz = torch.tensor([1000] * 4 + [0] * 2, dtype=torch.int32, device=dev)
length = torch.tensor(F * n, device=dev)
def call(): return td.decay_attention(q, k, v, frame, now, sl, hz, length, n, starts=[0] * 6)
for _ in range(5): call()
torch.cuda.synchronize()
for comb, rows in (("torch", 0), ("triton", 8), ("triton", 32), ("triton", 64)):
    td.COMBINE, td.COMBINE_ROWS = comb, rows or 8
    for _ in range(5): call()
    torch.cuda.synchronize()
    for rep in range(3):
        t = time.perf_counter()
        for _ in range(200): call()
        host = (time.perf_counter() - t) / 200 * 1e6
        torch.cuda.synchronize(); tot = (time.perf_counter() - t) / 200 * 1e6
        print(f"combine {comb} rows {rows}: host {host:.1f} us/call, with GPU {tot:.1f} us/call")
import cProfile, pstats
pr = cProfile.Profile(); pr.enable()
for _ in range(100): call()
pr.disable(); torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
