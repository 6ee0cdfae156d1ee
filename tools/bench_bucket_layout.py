"""What AnnSA's sparse attention would cost with the cache laid out by bucket (an experiment, GPU).

engine/attention/sparse_kernels.py packs, at every call, the keys of each (head, probe set) segment out of a
cache kept in arrival order: with 4 probes of 16 buckets a head has ~64 probe sets, each reading ~1/4 of the
cache, so a call copies ~16x the cache and took 103 ms at 3000 frames against 0.8-1.2 ms for dense FA2
(docs/ATTENTION.md). This probe times the other design the issue names, "lay the cache out by bucket so that
only kept keys are read": keys sorted by (head, bucket) once (as a bucket-ordered cache would hold them), each
query repeated once per probed bucket, one variable-length call over the (head, bucket) segments returning
the log-sum-exp, and the probes of a query combined by their log-sum-exps (exact: with one table the buckets
are disjoint). Synthetic q/k/v, random balanced buckets. Prints a table, writes JSON.

    python tools/bench_bucket_layout.py --frames 100 1000 3000 --out runs/results/bucket_layout_h100.json
"""
from __future__ import annotations

import argparse
import inspect
import json
import math

import torch
import torch.nn.functional as F

from engine.attention import triton_varlen
from engine.attention.kernels import _time as gpu_time   # GPU time of back-to-back calls behind a GPU sleep


def pack(q: torch.Tensor, qb: torch.Tensor, kb: torch.Tensor, nb: int, chunks: int = 1) -> tuple:
    """q (H, n, D), qb (H, n, P) probed buckets per query, kb (H, K) bucket per key ->
    query rows sorted by (head, bucket, chunk), their source query ids, the key order, cu_seq_q, cu_seq_k,
    max_q, max_k. chunks > 1 splits each bucket's keys into that many segments (split-KV by hand: a 256-query
    frame makes only heads x buckets segments, too few programs to fill the GPU), each query repeated per chunk."""
    H, n, P = qb.shape
    K = kb.shape[1]
    C, dev = chunks, q.device
    c = torch.arange(C, device=dev)
    seg_q = ((torch.arange(H, device=dev)[:, None, None, None] * nb + qb[..., None]) * C + c).reshape(-1)
    q_order = seg_q.argsort(stable=True)
    src = torch.arange(H * n, device=dev).repeat_interleave(P * C)[q_order]            # query id per row
    seg_k = ((torch.arange(H, device=dev)[:, None] * nb + kb) * C + torch.arange(K, device=dev) % C).reshape(-1)
    k_order = seg_k.argsort(stable=True)
    seg_q = seg_q[q_order]
    cq = torch.bincount(seg_q, minlength=H * nb * C)
    ck = torch.bincount(seg_k, minlength=H * nb * C)
    cu_q = F.pad(cq.cumsum(0), (1, 0)).to(torch.int32)
    cu_k = F.pad(ck.cumsum(0), (1, 0)).to(torch.int32)
    return src, k_order, cu_q, cu_k, int(cq.max()), int(ck.max())


def bucketed(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, src: torch.Tensor, cu_q: torch.Tensor,
             cu_k: torch.Tensor, max_q: int, max_k: int, P: int, scale: float) -> torch.Tensor:
    """kp, vp (H*K, 1, D) in bucket order; returns (H*n, D): each query's attention over its probed buckets."""
    from torch.nn.attention.varlen import AuxRequest, varlen_attn
    D = q.shape[-1]
    qp = q.reshape(-1, D)[src][:, None]                                              # (rows, 1, D)
    out, lse = varlen_attn(qp, kp, vp, cu_q, cu_k, max_q, max_k, scale=scale, return_aux=AuxRequest(lse=True))
    lse = lse.reshape(-1)                                                            # (rows,) per row
    # combine a query's P rows: weights softmax(lse) over its rows (scatter by source id)
    n_q = q.shape[0] * q.shape[1]
    m = torch.full((n_q,), -math.inf, device=q.device).scatter_reduce(0, src, lse, "amax")
    w = torch.exp(lse - m[src])
    den = torch.zeros(n_q, device=q.device).index_add_(0, src, w)
    num = torch.zeros(n_q, D, device=q.device).index_add_(0, src, w[:, None] * out[:, 0].float())
    return (num / den[:, None]).to(q.dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 1000, 3000])
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--buckets", type=int, default=16)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from torch.nn.attention import sdpa_kernel, SDPBackend
    from torch.nn.attention import varlen
    dev, dt = torch.device("cuda"), torch.bfloat16
    H, D, n, nb, P = a.heads, a.dim, a.tokens, a.buckets, a.probes
    scale = 1 / math.sqrt(D)
    g = torch.Generator(device=dev).manual_seed(0)
    sig = str(inspect.signature(varlen.varlen_attn))
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__}\nvarlen_attn{sig}")
    rows = []
    for F_ in a.frames:
        K = F_ * n
        q = torch.randn(H, n, D, device=dev, generator=g).to(dt)
        k = torch.randn(H, K, D, device=dev, generator=g).to(dt)
        v = torch.randn(H, K, D, device=dev, generator=g).to(dt)
        kb = torch.randint(0, nb, (H, K), device=dev, generator=g)
        # P distinct buckets per query: its own and P - 1 others
        qb = torch.rand(H, n, nb, device=dev, generator=g).argsort(-1)[..., :P]
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            t_dense = gpu_time(lambda: F.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale), reps=20)
        allowed = (kb[:2, None, None, :] == qb[:2, :32, :, None]).any(2)             # (2, 32, K)
        ref = F.scaled_dot_product_attention(q[:2, :32].float(), k[:2].float(), v[:2].float(),
                                             attn_mask=allowed, scale=scale)
        for C in a.chunks:
            src, k_order, cu_q, cu_k, max_q, max_k = pack(q, qb, kb, nb, C)
            kp = k.reshape(H * K, D)[k_order][:, None].contiguous()
            vp = v.reshape(H * K, D)[k_order][:, None].contiguous()
            out = bucketed(q, kp, vp, src, cu_q, cu_k, max_q, max_k, P, scale)
            # exactness on the first two heads' first 32 queries: a masked dense reference
            err = float((out.reshape(H, n, D)[:2, :32].float() - ref).abs().max())
            t_sparse = gpu_time(lambda: bucketed(q, kp, vp, src, cu_q, cu_k, max_q, max_k, P, scale), reps=20)
            qp = q.reshape(-1, D)[src][:, None]
            from torch.nn.attention.varlen import varlen_attn
            t_kernel = gpu_time(lambda: varlen_attn(qp, kp, vp, cu_q, cu_k, max_q, max_k, scale=scale), reps=20)
            t_pack = gpu_time(lambda: pack(q, qb, kb, nb, C)[0], reps=5)
            pairs = int(((cu_q[1:] - cu_q[:-1]).long() * (cu_k[1:] - cu_k[:-1]).long()).sum())
            density = pairs / (H * n * K)
            tf = lambda ms: 4 * pairs * D / (ms * 1e-3) / 1e12   # noqa: E731
            tf_dense = 4 * H * n * K * D / (t_dense * 1e-3) / 1e12
            row = {"frames": F_, "chunks": C, "keys_per_head": K, "dense_fa2_ms": t_dense, "bucketed_ms": t_sparse,
                   "kernel_only_ms": t_kernel, "speedup": t_dense / t_sparse, "density": density,
                   "tflops_dense": tf_dense, "tflops_on_computed_kernel": tf(t_kernel), "max_abs_err_vs_masked": err,
                   "pack_ms_arrival_order_cache": t_pack}
            if triton_varlen.available(dev):   # the small-tile Triton kernel on the same segments
                ref_o = varlen_attn(qp, kp, vp, cu_q, cu_k, max_q, max_k, scale=scale)
                for bm in (16, 32, 64):
                    run = lambda: triton_varlen.varlen_attention_lse(qp, kp, vp, cu_q, cu_k, max_q, scale, bm)  # noqa: E731
                    t = gpu_time(run, reps=20)
                    row[f"triton_b{bm}_ms"], row[f"triton_b{bm}_tflops"] = t, tf(t)
                    row[f"triton_b{bm}_err_vs_torch"] = float((run()[0].float() - ref_o.float()).abs().max())
            rows.append(row)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "varlen_signature": sig,
                       "heads": H, "dim": D, "tokens": n, "buckets": nb, "probes": P, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
