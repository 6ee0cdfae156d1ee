"""Host time of one triton_decay call (queued, no sync) at 300 frames: Triton combine vs torch ops (s14)."""
import time, torch
from engine.attention import triton_decay as td
dev = torch.device("cuda"); n, H, D, F = 256, 6, 64, 300
q = torch.randn(1, H, n, D, device=dev, dtype=torch.bfloat16)
k = torch.randn(1, H, (F + 1) * n, D, device=dev, dtype=torch.bfloat16); v = torch.randn_like(k)
frame = torch.cat([torch.arange(F, device=dev).repeat_interleave(n), torch.full((n,), -1, device=dev)])
now = torch.tensor(F, device=dev); sl = torch.tensor([0.1] * 4 + [0.01] * 2, device=dev)
hz = torch.tensor([1000] * 4 + [0] * 2, dtype=torch.int32, device=dev)
def call(): return td.decay_attention(q, k, v, frame, now, sl, hz, F * n, n, starts=[0] * 6)
for _ in range(5): call()
torch.cuda.synchronize()
for rep in range(3):
    t = time.perf_counter()
    for _ in range(200): call()
    host = (time.perf_counter() - t) / 200 * 1e6
    torch.cuda.synchronize(); tot = (time.perf_counter() - t) / 200 * 1e6
    print(f"host {host:.1f} us/call, with GPU {tot:.1f} us/call")
import cProfile, pstats
pr = cProfile.Profile(); pr.enable()
for _ in range(100): call()
pr.disable(); torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
