"""Variable-length attention with log-sum-exps as one Triton kernel, for segments with few queries each.

Why: the bucketed AnnSA call (sparse_kernels.sorted_bucket_attention) runs one varlen attention over
(head, bucket, key chunk) segments. At the model's shapes a segment holds the queries of one head that probe
one bucket: 256 queries x 4 probes / 16 buckets = 64 on average, fewer in most buckets of clustered keys.
FA2's varlen kernel tiles queries by 128 rows, so most of each tile's tensor-core work is padding: on the
H100 it reached 89-115 TFLOP/s on the computed pairs against dense FA2's 250 (docs/ATTENTION.md). This kernel
tiles queries by BLOCK_M rows (16-64, chosen from the mean queries per segment), so a small segment costs a
small tile. Otherwise a plain flash-attention forward: online softmax in base 2, float32 accumulators.

Layout as torch's varlen_attn: q (Nq, 1, D), k and v (Nk, 1, D) (one head per row: the caller folds heads
into segments), cu_q / cu_k (S + 1,) int32 offsets, segment s = queries [cu_q[s], cu_q[s + 1]) against keys
[cu_k[s], cu_k[s + 1]). kbias (Nk,) float32 or None: a logit added to every score against key row j (a
temporal decay over a cache in bucket order, where each head's slots hold different frames). Returns out
(Nq, 1, D) in q's dtype and lse (Nq,) float32 (natural log; -inf and a zero row for a segment without keys).
CUDA with triton only; `available()` says whether it can run.
"""
from __future__ import annotations

import importlib.util
import math

import torch

_triton_ok = importlib.util.find_spec("triton") is not None
if _triton_ok:
    import triton
    import triton.language as tl

    @triton.jit
    def _varlen_fwd(Q, K, V, KB, O, LSE, CU_Q, CU_K, qk_scale,  # type: ignore[no-untyped-def]
                    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr):
        """Program (query block, segment). qk_scale = softmax scale x log2(e): scores in base 2; KB (a per-key
        logit, natural log) is read only with HAS_BIAS."""
        blk, seg = tl.program_id(0), tl.program_id(1)
        q0, q1 = tl.load(CU_Q + seg), tl.load(CU_Q + seg + 1)
        start = q0 + blk * BLOCK_M
        if start >= q1:   # the grid is sized by the largest segment: most programs of small ones exit here
            return
        k0, k1 = tl.load(CU_K + seg), tl.load(CU_K + seg + 1)
        offs_m = start + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        row_ok = offs_m < q1
        q = tl.load(Q + offs_m[:, None].to(tl.int64) * D + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for n0 in range(k0, k1, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            col_ok = offs_n < k1
            kv_off = offs_n[:, None].to(tl.int64) * D + offs_d[None, :]
            k = tl.load(K + kv_off, mask=col_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale                                   # (BLOCK_M, BLOCK_N)
            if HAS_BIAS:
                s += tl.load(KB + offs_n, mask=col_ok, other=0.0)[None, :] * 1.4426950408889634
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + kv_off, mask=col_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        tl.store(O + offs_m[:, None].to(tl.int64) * D + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None])
        lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(LSE + offs_m, lse, mask=row_ok)


def available(device: torch.device) -> bool:
    return _triton_ok and device.type == "cuda"


def block_m(n_queries: int, n_segments: int) -> int:
    """Query tile rows: the power of two nearest the mean queries per segment with any, within 16..64 (16:
    the smallest tensor-core tile; 64: larger tiles gained nothing at these segment sizes)."""
    mean = n_queries / max(n_segments, 1)
    return int(min(64, max(16, 1 << max(0, round(math.log2(max(mean, 1.0)))))))


def varlen_attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                         max_q: int, scale: float, block: int = 0,
                         kbias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """See the module docstring. max_q bounds the queries of any segment (sizes the grid; no host sync).
    block: query tile rows, 0 = block_m() from the mean segment size."""
    if not _triton_ok:
        raise RuntimeError("triton_varlen: triton is not installed")
    Nq, _, D = q.shape
    if D not in (16, 32, 64, 128) or q.shape[1] != 1:
        raise ValueError(f"triton_varlen: head dim must be 16/32/64/128 with one head per row, got q {tuple(q.shape)}")
    if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
        raise ValueError("triton_varlen: q, k, v must be contiguous")
    if kbias is not None and (kbias.shape != (k.shape[0],) or kbias.dtype != torch.float32 or not kbias.is_contiguous()):
        raise ValueError(f"triton_varlen: kbias must be contiguous float32 ({k.shape[0]},), one per key row, got "
                         f"{tuple(kbias.shape)} {kbias.dtype}")
    S = cu_q.numel() - 1
    bm = block or block_m(Nq, S)
    out = torch.empty_like(q)
    lse = torch.empty(Nq, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(max(max_q, 1), bm), S)
    _varlen_fwd[grid](q, k, v, lse if kbias is None else kbias, out, lse, cu_q, cu_k, scale * 1.4426950408889634,
                      D=D, BLOCK_M=bm, BLOCK_N=64, HAS_BIAS=kbias is not None, num_warps=4 if bm >= 64 else 2,
                      num_stages=3)
    return out, lse
