"""Bucket-sparse attention that really skips work: sort queries and keys by bucket, run one variable-length
attention over all (head, query-bucket) segments at once.

Segments: queries of one (batch, head) with the same probe set (own bucket per table plus probes) share one key
set: the cached keys in any of those buckets, plus every key of the query's own frame (so no query has an empty
set). Keys of a table are sorted once per call by (head, bucket); a segment's keys for one (table, probe) are
then one contiguous range (searchsorted), and the segment is the concatenation of its ranges. With several
tables a key can fall in two ranges; it is kept only in the first table that matches (no double counting).
All heads and buckets go into one kernel call, so 256 queries per frame x heads fill the GPU.

Back-ends (`kernel`): "triton_varlen" (triton_varlen.py: query tiles of 16-64 rows for segments of few
queries), "flash_attn_varlen" (flash_attn.flash_attn_varlen_func), "torch_varlen"
(torch.nn.attention.varlen.varlen_attn, torch >= 2.10, CUDA), "loop" (one SDPA per segment: the CPU check of
the packing, slow). "auto" tries them in that order on CUDA and records every failure; it never falls back to
a masked dense kernel silently (the caller reports the path that ran).

Host syncs: one per call (the packed sizes that varlen kernels take as ints), two with several tables.

`sorted_bucket_attention` (AnnSA's "bucketed" path, the CUDA default over a growing cache with one table)
avoids the packing: the owning mode keeps the cache itself in bucket order, each query is repeated per probed
bucket and key chunk, one varlen call reads K/V in place and returns log-sum-exps that combine a query's rows
exactly; no host sync, one CUDA graph replay per call (details at the function).
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from engine.compiled import compile_static

try:  # optional
    from flash_attn import flash_attn_varlen_func as _fa_varlen  # type: ignore
except Exception:  # pragma: no cover
    _fa_varlen = None


def _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    from torch.nn.attention.varlen import varlen_attn
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale)


def _flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    return _fa_varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale)


def _triton_varlen_lse(q, k, v, cu_q, cu_k, max_q, max_k, scale, kbias=None):  # type: ignore[no-untyped-def]
    from engine.attention import triton_varlen
    if not triton_varlen.available(q.device):
        raise RuntimeError("triton_varlen needs CUDA and triton")
    return triton_varlen.varlen_attention_lse(q, k, v, cu_q, cu_k, max_q, scale, kbias=kbias)


def _triton_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    return _triton_varlen_lse(q, k, v, cu_q, cu_k, max_q, max_k, scale)[0]


def _loop(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    out = torch.empty_like(q)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for s in range(len(cq) - 1):
        qs, ks, vs = (t.transpose(0, 1) for t in (q[cq[s]:cq[s + 1]], k[ck[s]:ck[s + 1]], v[ck[s]:ck[s + 1]]))
        out[cq[s]:cq[s + 1]] = F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1)
    return out


def _torch_varlen_lse(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    from torch.nn.attention.varlen import AuxRequest, varlen_attn
    out, lse = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, return_aux=AuxRequest(lse=True))
    return out, lse.reshape(-1)


def _flash_varlen_lse(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    out, lse, _ = _fa_varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, return_attn_probs=True)
    return out, lse.reshape(-1)


def _loop_lse(q, k, v, cu_q, cu_k, max_q, max_k, scale, kbias=None):  # type: ignore[no-untyped-def]
    """One segment at a time with explicit scores: the CPU check of the bucketed path (one head per row);
    kbias (Nk,) or None: a logit per key row."""
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[0],), -math.inf, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for s in range(len(cq) - 1):
        if cq[s + 1] == cq[s] or ck[s + 1] == ck[s]:
            continue
        qs, ks, vs = q[cq[s]:cq[s + 1], 0], k[ck[s]:ck[s + 1], 0], v[ck[s]:ck[s + 1], 0]
        sc = (qs @ ks.transpose(0, 1)) * scale
        if kbias is not None:
            sc = sc + kbias[ck[s]:ck[s + 1]].to(sc.dtype)
        out[cq[s]:cq[s + 1], 0] = sc.softmax(-1) @ vs
        lse[cq[s]:cq[s + 1]] = torch.logsumexp(sc, -1).to(lse.dtype)
    return out, lse


BACKENDS = {"triton_varlen": _triton_varlen, "flash_attn_varlen": _flash_varlen, "torch_varlen": _torch_varlen,
            "loop": _loop}
LSE_BACKENDS = {"triton_varlen": _triton_varlen_lse, "flash_attn_varlen": _flash_varlen_lse,
                "torch_varlen": _torch_varlen_lse, "loop": _loop_lse}
BIAS_BACKENDS = ("triton_varlen", "loop")   # the LSE back-ends that add a per-key logit (kbias)
_last: dict[str, object] = {"kernel": "none", "errors": {}}
_fallbacks: dict[str, str] = {}   # compile / capture failures of the bucketed path: kept for the process
capture: dict[str, tuple] | None = None   # the benchmark sets {} to keep the last packed call, to time the kernel alone


def last_kernel() -> str:
    return str(_last["kernel"])


def errors() -> dict[str, str]:
    """The last call's kernel failures, plus every compile or capture that fell back to eager so far."""
    return {**_last["errors"], **_fallbacks}  # type: ignore[dict-item]


def _auto_order(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["loop"]
    from engine.attention import triton_varlen
    return ((["triton_varlen"] if triton_varlen.available(device) else [])
            + (["flash_attn_varlen"] if _fa_varlen is not None else []) + ["torch_varlen"])


def bucket_attention(q: torch.Tensor, probes: torch.Tensor, K: torch.Tensor, V: torch.Tensor, codes: torch.Tensor,
                     bias: torch.Tensor | None, k_own: torch.Tensor, v_own: torch.Tensor, n_buckets: int,
                     scale: float, kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, n, D); probes (B, H, n, T, P) buckets each query searches; K, V (B, H, L, D) cached slots;
    codes (B, H, L, T) their buckets (n_buckets = none, for empty slots); bias (B, H, L) or None;
    k_own, v_own (B, H, n, D) the frame's own keys, always attended.
    Returns out (B, H, n, D) and the number of query-key pairs computed (device scalar)."""
    B, H, n, D = q.shape
    L, T, P = K.shape[2], probes.shape[3], probes.shape[4]
    BH, S, dev = B * H, n_buckets + 1, q.device
    # 1. query segments: same (head, probe set)
    pr = probes.reshape(BH * n, T, P).sort(dim=-1).values.reshape(BH * n, T * P)
    bh_q = torch.arange(BH, device=dev).repeat_interleave(n)
    rows = torch.cat([bh_q[:, None], pr], dim=1)
    seg, inv, qcount = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)   # (Sg, 1+TP)
    Sg = seg.shape[0]
    q_order = inv.argsort(stable=True)
    # 2. key ranges per (segment, table, probe) in keys sorted by (head, bucket)
    bh_k = torch.arange(BH, device=dev).repeat_interleave(L)
    ck = bh_k[:, None] * S + codes.reshape(BH * L, T)                          # (BH*L, T)
    sk, perm = ck.sort(dim=0)                                                  # per table
    target = seg[:, :1] * S + seg[:, 1:]                                       # (Sg, T*P)
    tabs = [t for t in range(T) for _ in range(P)]                             # table of each column
    tab = torch.tensor(tabs, device=dev)
    lo = torch.stack([torch.searchsorted(sk[:, t].contiguous(), target[:, c].contiguous())
                      for c, t in enumerate(tabs)], 1)
    hi = torch.stack([torch.searchsorted(sk[:, t].contiguous(), target[:, c].contiguous(), right=True)
                      for c, t in enumerate(tabs)], 1)
    lens = (hi - lo).reshape(-1)                                               # (Sg*T*P,)
    stats = torch.stack([lens.sum(), qcount.max(), (hi - lo).sum(1).max()]).tolist()   # the one host sync
    total, max_q, max_c = (int(x) for x in stats)
    # 3. expand ranges to candidate key ids
    starts = lo.reshape(-1)
    off = torch.cumsum(lens, 0) - lens
    pos = torch.arange(total, device=dev) - off.repeat_interleave(lens, output_size=total) \
        + starts.repeat_interleave(lens, output_size=total)
    col = torch.arange(Sg * T * P, device=dev).repeat_interleave(lens, output_size=total)
    seg_of, t_of = col // (T * P), tab[col % (T * P)]
    key = perm[pos, t_of]                                                      # flat (BH*L) ids
    if T > 1:   # keep a key only in the first table whose probes it matches
        kc = codes.reshape(BH * L, T)[key]                                     # (N, T)
        sp = seg[seg_of, 1:].reshape(-1, T, P)
        first = (kc[..., None] == sp).any(-1).float().argmax(-1)
        keep = first == t_of
        key, seg_of = key[keep], seg_of[keep]
    ccount = torch.bincount(seg_of, minlength=Sg)
    if T > 1:
        max_c = int(ccount.max())
    # 4. pack: per segment [its candidates..., the frame's own n keys]
    kcount = ccount + n
    kstart = torch.cumsum(kcount, 0) - kcount
    cstart = torch.cumsum(ccount, 0) - ccount
    Nc = key.numel()
    src = torch.empty(Nc + Sg * n, dtype=torch.long, device=dev)
    src[kstart[seg_of] + torch.arange(Nc, device=dev) - cstart[seg_of]] = key
    own = (kstart + ccount)[:, None] + torch.arange(n, device=dev)             # (Sg, n)
    src[own.reshape(-1)] = (BH * L + seg[:, 0:1] * n + torch.arange(n, device=dev)).reshape(-1)
    Kp = torch.cat([K.reshape(BH * L, D), k_own.reshape(BH * n, D)])[src]
    Vp = torch.cat([V.reshape(BH * L, D), v_own.reshape(BH * n, D)])[src]
    Qp = q.reshape(BH * n, D)[q_order]
    if bias is not None:   # per-key bias as one extra channel (kernels.py explains), padded to 8
        Dp = (D + 1 + 7) // 8 * 8
        bp = torch.cat([bias.reshape(BH * L).float(), torch.zeros(BH * n, device=dev)])[src]
        Qp, Kp, Vp = (F.pad(t, (0, Dp - D)) for t in (Qp, Kp, Vp))
        Qp[:, D] = 1.0
        Kp[:, D] = (bp / scale).to(Kp.dtype)
    cu_q = F.pad(torch.cumsum(qcount, 0), (1, 0)).to(torch.int32)
    cu_k = F.pad(torch.cumsum(kcount, 0), (1, 0)).to(torch.int32)
    args = (Qp[:, None], Kp[:, None], Vp[:, None], cu_q, cu_k, max_q, max_c + n, scale, kernel)
    if capture is not None:
        capture["args"] = args
    out = _run(*args)[:, 0, :D]
    res = torch.empty(BH * n, D, dtype=out.dtype, device=dev)
    res[q_order] = out
    pairs = (qcount * kcount).sum()
    return res.reshape(B, H, n, D), pairs


@functools.lru_cache(maxsize=None)
def bias_ok(kernel: str, device: torch.device) -> bool:
    """Whether the bucketed path can add a per-key logit (kbias) with annsa.kernel `kernel` on `device`
    (cached: asked several times per layer and pass, and the answer is fixed for the process)."""
    if kernel == "auto":
        return any(name in BIAS_BACKENDS for name in _auto_order(device))
    return kernel in BIAS_BACKENDS


def _run(q, k, v, cu_q, cu_k, max_q, max_k, scale, kernel, table=BACKENDS, kbias=None):  # type: ignore[no-untyped-def]
    names = _auto_order(q.device) if kernel == "auto" else [kernel]
    errs: dict[str, str] = {}
    for name in names:
        if name not in table:
            raise ValueError(f"annsa.kernel: unknown sparse kernel {name!r}; available: auto, {sorted(table)}")
        if kbias is not None and name not in BIAS_BACKENDS:
            errs[name] = f"takes no per-key bias (those that do: {', '.join(BIAS_BACKENDS)})"
            continue
        try:
            out = table[name](q, k, v, cu_q, cu_k, max_q, max_k, scale, **({} if kbias is None else {"kbias": kbias}))
            _last["kernel"], _last["errors"] = name, errs
            return out
        except Exception as e:  # report, then try the next real sparse kernel
            errs[name] = f"{type(e).__name__}: {e}"[:300]
            warnings.warn(f"sparse kernel {name} failed ({errs[name]}); trying the next one")
    _last["errors"] = errs
    raise RuntimeError(f"no sparse varlen kernel ran: {errs}")


@dataclass
class BucketLayout:
    """How one layer's cache is ordered for the bucketed path (kept by the owning mode, FastARAttention):
    per head, slots [0, sorted_len) hold the keys sorted by bucket, `counts` (B * H, n_buckets) of them in each
    bucket in order (device), `max_count` the largest count (host); slots [sorted_len, length) are the keys
    committed since the last sort, read in full. k, v: the layer's cache storage (B, H, capacity, D), which
    must be contiguous (no bias channel) for the varlen kernel to read it in place."""
    sorted_len: int
    counts: torch.Tensor
    max_count: int
    k: torch.Tensor
    v: torch.Tensor
    n_buckets: int
    probes: int                                 # buckets each query searches
    recent_bound: int                           # >= slots from sorted_len to the end of the scratch
    memo: dict = field(default_factory=dict)   # the layer's key segments, kept while the cache is unchanged
    # () -> (B * H, n_buckets) keys at the start of each bucket that no query reads (past a temporal decay's
    # horizon: each bucket holds its keys oldest first), or None; asked only when the segments are rebuilt,
    # which skip_key (with the lengths) says
    skip_fn: Callable[[], torch.Tensor] | None = None
    skip_key: object = None

    @property
    def usable(self) -> bool:
        return self.k.is_contiguous() and self.v.is_contiguous()

    @property
    def why(self) -> str:
        return "ok" if self.usable else "the cache's K/V are not contiguous (a bias-channel layout)"


def _key_segments(counts: torch.Tensor, C: int, Ps: int, end: int, cap: int,
                  skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """counts (G, nb) keys per bucket of each head's sorted part -> cu_seq_k (G * (nb * (C + 1) + 2) + 1,) int32
    over the flattened (G * cap) key rows, and each segment's key count (long). Per head and bucket b: first
    its skip_b oldest keys (skip (G, nb), None: none), a segment no query reads; then C chunks of the rest,
    chunk c starting at start_b + skip_b + floor(c * rest_b / C). Then [Ps, end) (recent keys and the frame
    itself); then [end, cap), the unused slots, a segment no query reads (varlen sequences must tile the key
    rows). Built with device fills only: a host-to-device copy would wait for the GPU."""
    G, nb = counts.shape
    dev = counts.device
    start_b = counts.cumsum(-1) - counts                                          # (G, nb) within the head
    skip = torch.zeros_like(counts) if skip is None else skip.clamp(min=0).minimum(counts)
    rest = counts - skip
    cstart = (start_b + skip)[..., None] + (rest[..., None] * torch.arange(C, device=dev)) // C   # (G, nb, C)
    per_bucket = torch.cat([start_b[..., None], cstart], -1)                      # (G, nb, C + 1)
    tail = torch.full((G, 2), Ps, device=dev, dtype=torch.long)
    tail[:, 1] = end
    starts = torch.cat([per_bucket.reshape(G, nb * (C + 1)), tail], -1) + torch.arange(G, device=dev)[:, None] * cap
    cu_k = torch.cat([starts.reshape(-1), torch.full((1,), G * cap, device=dev, dtype=torch.long)]).to(torch.int32)
    return cu_k, (cu_k[1:] - cu_k[:-1]).long()


def _pack_queries(q: torch.Tensor, probes: torch.Tensor, C: int, nb: int) -> tuple[torch.Tensor, ...]:
    """q (B, H, n, D), probes (B, H, n, P) -> the query rows sorted by segment (rows, 1, D): each query once
    per (probed bucket, chunk) and once for the recent segment, R = P x C + 1 rows, plus flat (each row's
    segment, query-major order), order (the sort), inv (its inverse) and cu_seq_q (int32). Pure and of fixed
    shapes: compiled once on CUDA (sorted_bucket_attention)."""
    B, H, n, D = q.shape
    G, P, dev = B * H, probes.shape[-1], q.device
    nseg, R = nb * (C + 1) + 2, P * C + 1   # per bucket a skipped segment, then C chunks (_key_segments)
    seg_b = (probes.reshape(G, n, P, 1) * (C + 1) + 1 + torch.arange(C, device=dev)).reshape(G, n, P * C)
    seg = torch.cat([seg_b, torch.full((G, n, 1), nb * (C + 1), device=dev, dtype=seg_b.dtype)], -1)
    flat = (seg + torch.arange(G, device=dev)[:, None, None] * nseg).reshape(-1)     # (G * n * R,)
    order = flat.argsort(stable=True)
    inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=dev))
    qp = q.reshape(G * n, D)[order // R][:, None]
    qcount = torch.zeros(G * nseg, device=dev, dtype=torch.long).scatter_add(0, flat, torch.ones_like(flat))
    cu_q = torch.cat([torch.zeros(1, device=dev, dtype=torch.long), qcount.cumsum(0)]).to(torch.int32)
    return qp, flat, order, inv, cu_q


def _combine(out: torch.Tensor, lse: torch.Tensor, klen: torch.Tensor, flat: torch.Tensor, order: torch.Tensor,
             inv: torch.Tensor, shape: tuple[int, int, int, int], R: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The R rows of each query, weighted by softmax of their log-sum-exps (a row whose segment has no key
    weighs 0; the recent row never is empty: it holds the frame itself). Returns (B, H, n, D) and the pairs."""
    B, H, n, D = shape
    acc = torch.promote_types(out.dtype, torch.float32)                          # float64 in the CPU tests
    lse = torch.where(klen[flat[order]] > 0, lse.to(acc), torch.full_like(lse, -math.inf, dtype=acc))
    o = out[inv, 0].to(acc).reshape(B * H, n, R, D)
    w = torch.softmax(lse[inv].reshape(B * H, n, R), -1)
    return (w[..., None] * o).sum(2).to(out.dtype).reshape(B, H, n, D), klen[flat].sum()


_FNS: dict[tuple[str, str], object] = {}


def _fn(name: str, device: torch.device):  # type: ignore[no-untyped-def]
    """_pack_queries / _combine, compiled once per process on CUDA (each is ~15 small kernels eagerly, and the
    bucketed call was launch-bound: ~2 ms of a 2.6 ms call at 3000 frames on the H100), eager elsewhere."""
    eager = {"pack": _pack_queries, "combine": _combine}[name]
    if device.type != "cuda":
        return eager
    key = (name, device.type)
    if key not in _FNS:
        _FNS[key] = compile_static(eager)
    return _FNS[key]


def _call(name: str, device: torch.device, *args):  # type: ignore[no-untyped-def]
    fn = _fn(name, device)
    try:
        return fn(*args)
    except Exception as e:   # said, not silent: recorded beside the kernel errors, warned once, eager from then on
        eager = {"pack": _pack_queries, "combine": _combine}[name]
        if fn is eager:
            raise
        msg = f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"
        _fallbacks[f"compile {name}"] = msg
        warnings.warn(f"bucketed AnnSA: compiling {name} failed ({msg}); running it eagerly")
        _FNS[(name, device.type)] = eager
        return eager(*args)


def sorted_bucket_attention(q: torch.Tensor, probe_fn: "Callable[[torch.Tensor], torch.Tensor]", lay: BucketLayout,
                            L: int, scale: float, chunks: int, kernel: str = "auto",
                            kbias_fn: "Callable[[], torch.Tensor] | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """AnnSA over a cache in bucket order, read in place (annsa.py, path "bucketed"). q (B, H, n, D); probe_fn:
    q -> (B, H, n, P) the buckets each query searches (one table; hashed inside the CUDA graph); slots [0, L) cached, [L, L + n) the frame's own
    keys (scratch). The varlen segments (_key_segments) are each head's (bucket, chunk) ranges of the sorted
    part (after each bucket's keys past a decay's horizon, lay.skip_fn), its recent keys with the frame, and
    its unused slots; each query has P x chunks + 1 rows
    (_pack_queries), combined by log-sum-exp (_combine; exact: with one table the buckets are disjoint and
    chunks split them). Why chunks: with one segment per (head, bucket) only 96 programs ran and FA2 reached
    89 TFLOP/s on the computed pairs; 8 chunks gave 149 (tools/bench_bucket_layout.py). No host sync. The key
    segments change only when the cache does, so they are kept for the frame's passes (lay.memo). On CUDA
    the call replays one CUDA graph per layer and cache capacity (_BucketGraph): eagerly it was ~40 kernel
    launches, ~1.3 ms of host time against ~0.2 ms of GPU work at 100 frames on the H100. kbias_fn: None, or
    () -> (B * H * capacity,) float32, a logit per slot of lay.k (a temporal decay from each head's own slot
    frames); called inside the graph, so what it returns must stay one tensor that its owner refreshes in
    place (FastARAttention._kbias_fn: once a frame). Returns out
    (B, H, n, D) and the query-key pairs computed."""
    B, H, n, D = q.shape
    P, C, nb, dev = lay.probes, chunks, lay.n_buckets, q.device
    G, cap, Ps, end = B * H, lay.k.shape[2], lay.sorted_len, L + n
    key = (Ps, end, cap, C, lay.skip_key)   # the owner clears memo whenever it sorts or resets
    if lay.memo.get("key") != key:
        skip = None if lay.skip_fn is None else lay.skip_fn()
        lay.memo["key"], lay.memo["seg"] = key, _key_segments(lay.counts.reshape(G, nb), C, Ps, end, cap, skip)
    cu_k, klen = lay.memo["seg"]
    kf, vf = lay.k.reshape(G * cap, 1, D), lay.v.reshape(G * cap, 1, D)
    # max_k bounds the keys of every segment that has queries (FA2 sizes its split-KV work by it: the capacity
    # itself ran the kernel ~2x slower), rounded up to a power of two so that it changes rarely (graph key)
    max_k = 1 << max(-(-lay.max_count // C), lay.recent_bound, 1).bit_length()
    if dev.type == "cuda":
        gkey = (kf.data_ptr(), vf.data_ptr(), cap, tuple(q.shape), q.dtype, P, C, nb, kernel, scale,
                kbias_fn is not None, max_k)
        g = lay.memo.get("graph")
        if g is None or g.key != gkey:
            g = lay.memo["graph"] = _BucketGraph(gkey, q, probe_fn, cu_k, klen, kf, vf, scale, kernel, kbias_fn)
        out = g(q, cu_k, klen)
        if out is not None:
            return out
    return _bucketed_eager(q, probe_fn, cu_k, klen, kf, vf, scale, kernel, C, nb, max_k, kbias_fn)


def _bucketed_eager(q: torch.Tensor, probe_fn: "Callable[[torch.Tensor], torch.Tensor]", cu_k: torch.Tensor,
                    klen: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, scale: float, kernel: str, C: int, nb: int,
                    max_k: int, kbias_fn: "Callable[[], torch.Tensor] | None" = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The call itself. max_k: a bound on the keys of every segment with queries (FA2 reads the real lengths
    from cu_seq_k; the unused-slot segments have no queries, so their length is never read)."""
    B, H, n, D = q.shape
    probes = probe_fn(q)
    qp, flat, order, inv, cu_q = _call("pack", q.device, q, probes, C, nb)
    if capture is not None:   # the attention benchmark times the kernel alone (kTF/s)
        capture["args"] = (qp, kf, vf, cu_q, cu_k, n, max_k, scale, kernel)
    kbias = None if kbias_fn is None else kbias_fn()
    out, lse = _run(qp, kf, vf, cu_q, cu_k, n, max_k, scale, kernel, LSE_BACKENDS, kbias)
    return _call("combine", q.device, out, lse, klen, flat, order, inv, (B, H, n, D), probes.shape[-1] * C + 1)


class _BucketGraph:
    """The bucketed call (hashing, packing, varlen kernel, combine) as one CUDA graph per layer storage,
    capacity and max_k bound (engine.graphs.Graphed: one eager call, then capture and replay), over static
    copies of its inputs: one launch instead of ~40. The eager call runs on the static buffers too, so
    torch.compile compiles the packing for their strides before the capture (the model's q is a view; a
    recompile inside the capture failed in the engine on the H100: it copies constants from the host). A
    failure is said once (warning, sparse_kernels.errors()) and the caller runs the call eagerly from then on."""

    def __init__(self, key: tuple, q: torch.Tensor, probe_fn: "Callable[[torch.Tensor], torch.Tensor]",
                 cu_k: torch.Tensor, klen: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, scale: float,
                 kernel: str, kbias_fn: "Callable[[], torch.Tensor] | None" = None) -> None:
        from engine.graphs import Graphed
        C, nb, max_k = key[6], key[7], key[-1]
        self.key, self.failed = key, False
        self.q, self.cu_k, self.klen, self.seg = q.clone(), cu_k.clone(), klen.clone(), cu_k
        self.g = Graphed(lambda: _bucketed_eager(self.q, probe_fn, self.cu_k, self.klen, kf, vf, scale, kernel,
                                                 C, nb, max_k, kbias_fn), torch.cuda.graph_pool_handle(), True,
                         warmup=1)

    @property
    def graph(self) -> "torch.cuda.CUDAGraph | None":
        return self.g.graph

    def __call__(self, q: torch.Tensor, cu_k: torch.Tensor,
                 klen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.failed:
            return None
        self.q.copy_(q)
        if cu_k is not self.seg:   # new key segments (a new frame or a sort): once a frame, not once a call
            self.cu_k.copy_(cu_k)
            self.klen.copy_(klen)
            self.seg = cu_k
        try:
            res, pairs = self.g()
        except Exception as e:
            self.failed = True
            msg = f"{type(e).__name__}: {' '.join(str(e).split())[:600]}"
            _fallbacks["capture bucketed"] = msg
            warnings.warn(f"bucketed AnnSA: CUDA graph capture failed ({msg}); running eagerly")
            return None
        return res.clone(), pairs   # the pairs: read later by stats, always the last call's
