"""AnnCA: sparse cross-attention to the prompt (FAST-AR). Per frame and head, a prompt token whose bucket holds
none of the frame's queries (their own buckets and probes) is left out of that frame's cross-attention; the
next frame decides afresh, so nothing is removed for good.

The kept set is per (batch, head), shared by all queries of the frame, so it is a key subset. Two paths compute
the same function:
- "masked" (`compact: never`, and what `auto` takes on every device): the dropped tokens get NEG_BIAS in a
  per-key bias and the dense kernel runs over the whole prompt. No host sync, so the host keeps queueing work
  ahead of the GPU, as in dense.
- "packed" (`compact: always`): the kept tokens are gathered to the front and the kernel runs over the
  largest kept count only. That count is read on the host: one sync per call. Why `auto` does not take it:
  with this model's 16 prompt tokens the whole cross-attention call is a few microseconds of GPU work, less
  than what a sync costs (the GPU drains and then waits for the host's launches). On the H100 the annca mode
  ran at 21.3 fps at frame 300 with packing and 42.8 masked, dense at 107 (docs/BENCHMARKS.md, session 24). A
  prompt of hundreds of tokens with a low kept share is where packing could pay; measure it there.
A head that would keep nothing keeps everything (no empty softmax).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.attention import kernels
from engine.cache import NEG_BIAS


@dataclass
class AnnCAConfig:
    compact: str = "auto"   # auto (= never: mask, no host sync; module docstring) | always (pack: a sync a call) | never

    def __post_init__(self) -> None:
        if self.compact not in ("auto", "always", "never"):
            raise ValueError(f"annca.compact: must be auto|always|never, got {self.compact!r}")


def keep_mask(q_probes: torch.Tensor, k_codes: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """q_probes (B, H, n, T, P), k_codes (B, H, P_tok, T) -> (B, H, P_tok) bool: the token's bucket, in some
    table, is searched by at least one query of the frame. Sync-free: a bucket-occupancy bitmap per table."""
    B, H, n, T, P = q_probes.shape
    occ = torch.zeros(B, H, T, n_buckets, dtype=torch.bool, device=q_probes.device)
    occ.scatter_(3, q_probes.permute(0, 1, 3, 2, 4).reshape(B, H, T, n * P), True)
    hit = torch.gather(occ, 3, k_codes.permute(0, 1, 3, 2))                    # (B, H, T, P_tok)
    keep = hit.any(2)
    return keep | ~keep.any(-1, keepdim=True)


def sparse_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor,
                           compact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, n, D) against kept prompt tokens of k, v (B, H, P, D). Returns out and pairs computed."""
    n = q.shape[2]
    pairs = keep.sum() * n
    if not compact:
        return kernels.attention(q, k, v, bias=torch.where(keep, 0.0, NEG_BIAS)), pairs
    order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)                 # kept first
    counts = keep.sum(-1)
    M, m_min = (int(x) for x in torch.stack([counts.max(), counts.min()]).tolist())   # the one host sync
    idx = order[..., :M]
    D = k.shape[-1]
    kc = torch.gather(k, 2, idx[..., None].expand(-1, -1, -1, D))
    vc = torch.gather(v, 2, idx[..., None].expand(-1, -1, -1, D))
    kept = torch.gather(keep, 2, idx)
    bias = None if m_min == M else torch.where(kept, 0.0, NEG_BIAS)
    return kernels.attention(q, kc, vc, bias=bias, scale=1.0 / math.sqrt(D)), pairs
