"""Synthetic: what the decay's bias channel costs dense attention at the model's shapes (docs/GPU.md s14)."""
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
torch.manual_seed(0)
dev = "cuda"
def t(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    s.record()
    for _ in range(reps): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / reps
for frames in (300, 1000, 3000):
    N = frames * 256
    for D in (64, 72, 80, 96):
        q = torch.randn(1, 6, 256, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, 6, N, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, 6, N, D, device=dev, dtype=torch.bfloat16)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ms = t(lambda: F.scaled_dot_product_attention(q, k, v, scale=0.125))
        print(f"frames {frames} D {D}: flash {ms:.3f} ms  {4*6*256*N*64/ms/1e9:.0f} TFLOP/s(d64 work)", flush=True)
        del k, v
