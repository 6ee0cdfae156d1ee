"""AnnSA: sparse self-attention over buckets (FAST-AR). Each query of the frame attends to the cached keys that
share a bucket with it (own bucket per table plus multi-probe buckets) and to every key of its own frame.

Over a growing cache (AnnSA without TempCache: the annsa modes) the keys of the last `recent_frames` frames
are attended in full as well: the owning mode keeps the older keys sorted by (head, bucket) in the cache
itself, re-sorting once every `recent_frames` frames (FastARAttention._sort_buckets), and the keys committed
since then are the recent ones. With TempCache (a bounded cache) or several tables every cached key is
bucket-restricted, as in the paper.

Paths computing the same function:
- "masked" (the CPU path and the float64 reference): dense scores with every other key masked out. Exact,
  computes everything, saves nothing.
- "bucketed" (GPU default where it applies: one table, no TempCache, unpadded cache): each query repeated
  once per probed bucket and per key chunk, one variable-length call over the (head, bucket, chunk) segments
  of the sorted part plus one segment for the recent keys, read in place from the cache, the rows of a query
  combined by their log-sum-exps (sparse_kernels.sorted_bucket_attention). Nothing is packed per call.
- "sparse" (GPU, the general case): sparse_kernels.bucket_attention, which packs each (head, probe set)
  segment out of the cache and runs one variable-length kernel over all of them: the work skipped is really
  skipped, but the packing copies keys (a call at 3000 frames took 103 ms on the H100).

With a temporal decay the bucketed path skips each bucket's keys past the head's horizon (the cache sorts
each bucket oldest first, so they are a prefix: FastARAttention._horizon_skip_fn), as dense skips them.

Key codes are computed once, when a frame's keys are committed, and kept in KVCache.slot_data["codes"] so they
move with their slots (TempCache compaction, window rings).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from engine.attention import kernels, sparse_kernels
from engine.cache import NEG_BIAS


@dataclass
class AnnSAConfig:
    path: str = "auto"      # auto (bucketed where it applies, else sparse, on CUDA; masked on CPU) | bucketed | sparse | masked
    kernel: str = "auto"    # sparse kernel: auto | triton_varlen | flash_attn_varlen | torch_varlen | loop
    recent_frames: int = 32  # growing cache: the last 1..recent_frames frames in full, older keys by bucket (0: all by bucket)
    chunks: int = 8         # bucketed: key chunks per (head, bucket) segment (split-KV by hand: 8 was fastest on the H100)
    min_frames: int = 0     # growing cache: dense attention (density 1) until it holds this many frames, where the
                            # sparse call's fixed costs (hashing, packing, combine, host work) outweigh what it skips

    def __post_init__(self) -> None:
        if self.path not in ("auto", "bucketed", "sparse", "masked"):
            raise ValueError(f"annsa.path: must be auto|bucketed|sparse|masked, got {self.path!r}")
        if self.min_frames < 0:
            raise ValueError(f"annsa.min_frames must be >= 0, got {self.min_frames}")
        if self.recent_frames < 0 or self.chunks < 1:
            raise ValueError(f"annsa.recent_frames must be >= 0 and annsa.chunks >= 1, got {self.recent_frames}, "
                             f"{self.chunks}")
        if self.kernel not in ("auto", *sparse_kernels.BACKENDS):
            raise ValueError(f"annsa.kernel: must be auto|{'|'.join(sparse_kernels.BACKENDS)}, got {self.kernel!r}")


def allowed_mask(probes: torch.Tensor, codes: torch.Tensor, sorted_len: int | None = None) -> torch.Tensor:
    """probes (B, H, n, T, P), codes (B, H, L, T) -> (B, H, n, L) bool: key shares a searched bucket, or (with
    sorted_len) sits at or after slot sorted_len, among the recent keys read in full."""
    allowed = (codes[:, :, None, :, :, None] == probes[:, :, :, None]).flatten(-2).any(-1)
    if sorted_len is not None:
        allowed[..., sorted_len:] = True
    return allowed


def masked_attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, bias: torch.Tensor | None,
                     allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference: q (B, H, n, D) over K, V (B, H, L, D) where allowed (B, H, n, L); bias (B, H, L) or None."""
    m = torch.where(allowed, 0.0, NEG_BIAS).to(q.dtype)
    if bias is not None:
        m = m + bias[:, :, None, :].to(q.dtype)
    kernels.note_kernel(kernels.sdpa_name(q, K, V, m, "masked"))
    return torch.nn.functional.scaled_dot_product_attention(q, K, V, attn_mask=m, scale=scale)


def sparse_self_attention(cfg: AnnSAConfig, q: torch.Tensor, probe_fn: Callable[[torch.Tensor], torch.Tensor],
                          K: torch.Tensor, V: torch.Tensor, codes: torch.Tensor, bias: torch.Tensor | None,
                          n_buckets: int, layout: "sparse_kernels.BucketLayout | None" = None,
                          kbias_fn: Callable[[], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """q (B, H, n, D); probe_fn: queries (B, H, n, D) -> the buckets they search (B, H, n, T, P) (a function:
    the bucketed path hashes inside its CUDA graph); K, V (B, H, L+n, D) with the frame's own keys last; codes
    (B, H, L, T) for the cached L; bias (B, H, L+n) or None; layout: the cache's bucket order (None: every
    cached key by bucket); kbias_fn: with a layout and a bias, () -> the bias of every slot of the layout's
    storage, flat (B * H * capacity,) float32 (the bucketed path reads K/V in place, so it takes the bias in
    the same slot order). Returns out (B, H, n, D), pairs computed (device scalar), the path's name."""
    n, L = q.shape[2], K.shape[2] - q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    path = cfg.path
    if path == "auto":
        path = "masked" if q.device.type != "cuda" else ("bucketed" if layout is not None and layout.usable else "sparse")
    if path == "bucketed":
        if layout is None or not layout.usable:
            raise ValueError("annsa.path=bucketed needs AnnSA over a growing cache with one table and an unpadded "
                             f"cache (no TempCache); here: {'no bucket layout' if layout is None else layout.why}")
        if bias is not None and kbias_fn is None:
            raise ValueError("annsa.path=bucketed with a per-key bias needs it per slot of the cache (kbias_fn)")
        out, pairs = sparse_kernels.sorted_bucket_attention(q, lambda x: probe_fn(x)[..., 0, :], layout, L, scale,
                                                            cfg.chunks, cfg.kernel, kbias_fn if bias is not None else None)
        return out, pairs, "bucketed:" + sparse_kernels.last_kernel()
    if bias is not None:   # empty slots (NEG_BIAS) are in no bucket (the bucketed path reads no codes)
        codes = torch.where(bias[:, :, :L, None] > NEG_BIAS / 2, codes, torch.full_like(codes, n_buckets))
    probes = probe_fn(q)                                                         # (B, H, n, T, P)
    if path == "sparse":
        if layout is not None and layout.sorted_len < L:
            raise ValueError("annsa.path=sparse reads every cached key by bucket; with recent_frames > 0 over a "
                             "growing cache use path bucketed or masked (or recent_frames: 0)")
        out, pairs = sparse_kernels.bucket_attention(
            q, probes, K[:, :, :L], V[:, :, :L], codes, None if bias is None else bias[:, :, :L],
            K[:, :, L:], V[:, :, L:], n_buckets, scale, cfg.kernel)
        return out, pairs, "varlen:" + sparse_kernels.last_kernel()
    allowed = torch.cat([allowed_mask(probes, codes, None if layout is None else layout.sorted_len),
                         torch.ones(*q.shape[:3], n, dtype=torch.bool, device=q.device)], dim=-1)
    out = masked_attention(q, K, V, bias, allowed, scale)
    return out, allowed.sum(), "masked:" + kernels.kernel_name()
