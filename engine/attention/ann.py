"""Top-1 nearest-neighbour search (TempCache's matching step) on two engines that return the same neighbours:

- "torch" (default): brute-force inner products on the cache's device, chunked over keys. On the GPU this is
  one (n x C) matmul per head over a bounded cache: cheaper than the attention it serves, with no transfer.
- "faiss": IndexFlatIP per group (faiss-gpu when installed and the data is on the GPU, else faiss-cpu). Same
  function; useful to cross-check and on CPU-only machines with large caches.

Approximation (LSH buckets, 8-bit codes) is applied by the caller to the vectors and the candidate mask, so both
engines search the same points and agree exactly (a test checks this on a fixed set).
"""
from __future__ import annotations

import torch

NEG = -1.0e30


def top1(x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor | None = None, engine: str = "torch",
         chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """x (G, n, D) queries, y (G, L, D) points, allowed (G, L) or (G, n, L) bool or None.
    Returns (sim (G, n) float32, idx (G, n) int64): best inner product over allowed points (sim = NEG and
    idx = 0 where none is allowed)."""
    if engine == "torch":
        return _top1_torch(x, y, allowed, chunk)
    if engine == "faiss":
        if allowed is not None and allowed.dim() == 3:
            raise ValueError("ann engine: 'faiss' takes a per-point mask only (no per-query candidate sets, "
                             "as LSH-restricted search needs); use engine='torch'")
        return _top1_faiss(x, y, allowed)
    raise ValueError(f"ann engine: unknown engine={engine!r}; use 'torch' or 'faiss'")


def _top1_torch(x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor | None,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    G, n, _ = x.shape
    if x.is_cuda and y.shape[1] <= chunk and (allowed is None or allowed.dim() == 2):
        return _top1_cuda(x, y, allowed)
    if y.shape[1] <= chunk:   # the bounded-cache case: one batched matmul + max, no Python loop
        sc = torch.bmm(x.float(), y.float().transpose(1, 2))                      # (G, n, L)
        if allowed is not None:
            sc = sc.masked_fill(~(allowed[:, None, :] if allowed.dim() == 2 else allowed), NEG)
        v, i = sc.max(dim=-1)
        return v, i
    best = torch.full((G, n), NEG, device=x.device, dtype=torch.float32)
    arg = torch.zeros(G, n, device=x.device, dtype=torch.int64)
    for s in range(0, y.shape[1], chunk):
        e = min(s + chunk, y.shape[1])
        sc = torch.einsum("gnd,gld->gnl", x.float(), y[:, s:e].float())         # (G, n, l)
        if allowed is not None:
            a = allowed[:, None, s:e] if allowed.dim() == 2 else allowed[:, :, s:e]
            sc = sc.masked_fill(~a, NEG)
        v, i = sc.max(dim=-1)
        take = v > best
        best = torch.where(take, v, best)
        arg = torch.where(take, i + s, arg)
    return best, arg


def _top1_cuda(x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounded-cache search on the GPU: one bf16 tensor-core matmul with the point mask as one more channel
    (x' = [x, 1], y' = [y, 0 or -W], W = 4 max|x| max|y| + 1: a gap bf16 rounding cannot close), so no (n x L)
    masked_fill pass and half the bytes of a float32 score matrix (H100, 256 x 16384 points x 6 heads: float32
    bmm 0.14 ms + masked_fill 0.16 ms per layer). The winner is exact up to bf16 ties between near-equal
    candidates; its sim is recomputed in float32, so callers' thresholds see exact similarities."""
    if allowed is not None:
        W = 4.0 * x.float().norm(dim=-1).amax() * y.float().norm(dim=-1).amax() + 1.0     # device scalar, no sync
        pen = torch.where(allowed, 0.0, -1.0) * W                                         # (G, L)
        xs = torch.cat([x.float(), torch.ones_like(x[..., :1], dtype=torch.float32)], -1)
        ys = torch.cat([y.float(), pen[..., None]], -1)
    else:
        xs, ys = x.float(), y.float()
    _, i = torch.bmm(xs.bfloat16(), ys.bfloat16().transpose(1, 2)).max(dim=-1)          # (G, n)
    v = (x.float() * torch.gather(y.float(), 1, i[..., None].expand(-1, -1, y.shape[-1]))).sum(-1)
    if allowed is not None:
        v = torch.where(torch.gather(allowed, 1, i), v, torch.full_like(v, NEG))
    return v, i


def _top1_faiss(x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss  # type: ignore
    import numpy as np

    G, n, D = x.shape
    sims = np.full((G, n), NEG, dtype=np.float32)
    idxs = np.zeros((G, n), dtype=np.int64)
    xs = x.detach().float().cpu().numpy()
    ys = y.detach().float().cpu().numpy()
    al = None if allowed is None else allowed.cpu().numpy()
    for g in range(G):
        ids = np.arange(ys.shape[1]) if al is None else np.nonzero(al[g])[0]
        if len(ids) == 0:
            continue
        index = faiss.IndexFlatIP(D)
        index.add(np.ascontiguousarray(ys[g, ids]))
        d, i = index.search(np.ascontiguousarray(xs[g]), 1)
        sims[g], idxs[g] = d[:, 0], ids[i[:, 0]]
    return torch.from_numpy(sims).to(x.device), torch.from_numpy(idxs).to(x.device)
