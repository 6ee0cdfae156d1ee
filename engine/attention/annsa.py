"""AnnSA: sparse self-attention over buckets (FAST-AR). Each query of the frame attends to the cached keys that
share a bucket with it (own bucket per table plus multi-probe buckets) and to every key of its own frame.

Two paths computing the same function:
- "masked" (the CPU path and the float64 reference): dense scores with every other key masked out. Exact,
  computes everything, saves nothing.
- sparse (GPU): sparse_kernels.bucket_attention, which packs each (head, bucket) segment and runs one
  variable-length kernel over all of them: the work skipped is really skipped.

Key codes are computed once, when a frame's keys are committed, and kept in KVCache.slot_data["codes"] so they
move with their slots (TempCache compaction, window rings).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.attention import kernels, sparse_kernels
from engine.cache import NEG_BIAS


@dataclass
class AnnSAConfig:
    path: str = "auto"      # auto (sparse on CUDA, masked on CPU) | sparse | masked
    kernel: str = "auto"    # sparse kernel: auto | flash_attn_varlen | torch_varlen | loop

    def __post_init__(self) -> None:
        if self.path not in ("auto", "sparse", "masked"):
            raise ValueError(f"annsa.path: must be auto|sparse|masked, got {self.path!r}")
        if self.kernel not in ("auto", *sparse_kernels.BACKENDS):
            raise ValueError(f"annsa.kernel: must be auto|{'|'.join(sparse_kernels.BACKENDS)}, got {self.kernel!r}")


def allowed_mask(probes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """probes (B, H, n, T, P), codes (B, H, L, T) -> (B, H, n, L) bool: key shares a searched bucket."""
    return (codes[:, :, None, :, :, None] == probes[:, :, :, None]).flatten(-2).any(-1)


def masked_attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, bias: torch.Tensor | None,
                     allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference: q (B, H, n, D) over K, V (B, H, L, D) where allowed (B, H, n, L); bias (B, H, L) or None."""
    m = torch.where(allowed, 0.0, NEG_BIAS).to(q.dtype)
    if bias is not None:
        m = m + bias[:, :, None, :].to(q.dtype)
    kernels.note_kernel("sdpa_math_masked" if q.device.type == "cpu" else "sdpa_masked_dense")
    return torch.nn.functional.scaled_dot_product_attention(q, K, V, attn_mask=m, scale=scale)


def sparse_self_attention(cfg: AnnSAConfig, q: torch.Tensor, probes: torch.Tensor, K: torch.Tensor,
                          V: torch.Tensor, codes: torch.Tensor, bias: torch.Tensor | None, n_buckets: int
                          ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """q (B, H, n, D); K, V (B, H, L+n, D) with the frame's own keys last; codes (B, H, L, T) for the cached L;
    bias (B, H, L+n) or None. Returns out (B, H, n, D), pairs computed (device scalar), the path's name."""
    n, L = q.shape[2], K.shape[2] - q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    if bias is not None:   # empty slots (NEG_BIAS) are in no bucket
        codes = torch.where(bias[:, :, :L, None] > NEG_BIAS / 2, codes, torch.full_like(codes, n_buckets))
    path = cfg.path if cfg.path != "auto" else ("sparse" if q.device.type == "cuda" else "masked")
    if path == "sparse":
        out, pairs = sparse_kernels.bucket_attention(
            q, probes, K[:, :, :L], V[:, :, :L], codes, None if bias is None else bias[:, :, :L],
            K[:, :, L:], V[:, :, L:], n_buckets, scale, cfg.kernel)
        return out, pairs, "varlen:" + sparse_kernels.last_kernel()
    allowed = torch.cat([allowed_mask(probes, codes),
                         torch.ones(*q.shape[:3], n, dtype=torch.bool, device=q.device)], dim=-1)
    out = masked_attention(q, K, V, bias, allowed, scale)
    return out, allowed.sum(), "masked:" + kernels.kernel_name()
