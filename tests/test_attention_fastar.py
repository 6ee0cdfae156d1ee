"""FAST-AR attention modes against dense attention where they must be exact (float64, CPU), plus bounds,
recall, run-time switching and config errors. Attention alone: random per-frame q, k, v stand in for a model."""
from __future__ import annotations

import pytest
import torch

from engine.attention import FrameAttention, SequenceAttention, StepInfo, build_mode
from engine.attention import ann
from engine.cache import KVCache

B, H, N, D = 1, 2, 8, 16
F64 = torch.float64


def _cache(mode, layers: int = 1, n: int = N) -> KVCache:
    cap = mode.capacity_tokens(n) or 4 * n
    return KVCache(layers, B, H, D, cap, dtype=F64)


def _step(mode, cache, layer, frame, q, k, v, commit=True):
    info = StepInfo(frame=frame, step=2 if commit else 1, num_steps=2, commit=commit)
    return FrameAttention(mode, cache, info).self_attn(layer, q, k, v)


def _dup_frames(frames: int, seed: int = 0):
    """Keys identical in every frame (static content), fresh queries and values: the grouping lemma's case."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, H, N, D, generator=g, dtype=F64)
    for _ in range(frames):
        yield torch.randn(B, H, N, D, generator=g, dtype=F64), base.clone(), torch.randn(B, H, N, D, generator=g, dtype=F64)


@pytest.mark.parametrize("name,params", [
    ("tempcache", {"tempcache": {"threshold": 0.99}}),
    ("tempcache", {"tempcache": {"threshold": 0.99, "group": "layer"}}),
    ("tempcache_quant", {"tempcache": {"threshold": 0.99, "capacity_frames": 2}}),
    ("tempcache", {"tempcache": {"threshold": 8.0, "search": "exact", "metric": "dot"}}),
    ("tempcache", {"tempcache": {"threshold": 0.99, "match_by": "query", "engine": "faiss", "search": "exact"}}),
])
def test_tempcache_exact_duplicates_equal_dense(name, params):
    if params["tempcache"].get("engine") == "faiss":
        pytest.importorskip("faiss")   # the dev extra installs faiss-cpu; the GPU image has none
    dense, tc = build_mode("dense"), build_mode(name, **params)
    cd, ct = _cache(dense), _cache(tc)
    for f, (q, k, v) in enumerate(_dup_frames(10)):
        a = _step(dense, cd, 0, f, q, k, v)
        b = _step(tc, ct, 0, f, q, k, v)
        assert torch.allclose(a, b, atol=1e-6), (f, (a - b).abs().max())
    if params["tempcache"].get("match_by", "key") == "key" and "metric" not in params["tempcache"]:
        assert int(ct.valid(0).sum(-1).max()) == N and cd.length[0] == 10 * N   # one group per distinct key


def test_switch_dense_to_tempcache_compresses_exactly():
    dense, tc = build_mode("dense"), build_mode("tempcache", tempcache={"threshold": 0.99, "capacity_frames": 3})
    cd, cs = _cache(dense), _cache(dense)
    frames = list(_dup_frames(12, seed=1))
    for f, (q, k, v) in enumerate(frames[:6]):
        _step(dense, cd, 0, f, q, k, v)
        _step(dense, cs, 0, f, q, k, v)
    tc.adopt(cs, N)                                               # 6 frames -> N groups of 6
    # fixed layout: the length is capacity_frames x N for good; N of those slots hold the groups
    assert int(cs.valid(0).sum(-1).max()) == N and cs.length[0] == 3 * N and cs.capacity <= tc.capacity_tokens(N)
    for f, (q, k, v) in enumerate(frames[6:], start=6):
        assert torch.allclose(_step(dense, cd, 0, f, q, k, v), _step(tc, cs, 0, f, q, k, v), atol=1e-6)


@pytest.mark.parametrize("name,params", [
    ("annsa_quant", {"ann": {"centroids": 1, "probes": 1}}),
    ("annsa", {"ann": {"bits": 1, "probes": 2}}),               # both buckets probed: one bucket in effect
    ("annsa_quant", {"ann": {"centroids": 1, "probes": 1},
                     "annsa": {"path": "sparse", "kernel": "loop", "recent_frames": 0}}),
    ("annsa_quant", {"ann": {"centroids": 1, "probes": 1},
                     "annsa": {"path": "bucketed", "kernel": "loop", "recent_frames": 2, "chunks": 3}}),
])
def test_annsa_one_bucket_equals_dense(name, params):
    dense = build_mode("dense")
    sa = build_mode(name, schedule={"dense_until": 0.0}, **params)
    cd, cs = _cache(dense), _cache(sa)
    g = torch.Generator().manual_seed(2)
    for f in range(6):
        q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
        assert torch.allclose(_step(dense, cd, 0, f, q, k, v), _step(sa, cs, 0, f, q, k, v), atol=1e-10)
    st = sa.stats()
    assert st["sa_recall"] == pytest.approx(1.0) and st["sa_density"] == pytest.approx(1.0)


@pytest.mark.parametrize("tables", [1, 2])
def test_annsa_sparse_packing_equals_masked_reference(tables):
    """The GPU path's packing (sort by bucket, varlen segments; here run segment by segment on the CPU) computes
    the same function as the masked reference, with several buckets, probes and tables, and TempCache biases."""
    common = dict(ann={"bits": 3, "probes": 2, "tables": tables}, schedule={"dense_until": 0.0, "layers": None},
                  tempcache={"threshold": 0.8})
    ref = build_mode("fastar", annsa={"path": "masked"}, **common)
    spa = build_mode("fastar", annsa={"path": "sparse", "kernel": "loop"}, **common)
    cr, cs = _cache(ref), _cache(spa)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(B, H, N, D, generator=g, dtype=F64)
    for f in range(8):
        q = torch.randn(B, H, N, D, generator=g, dtype=F64)
        k = base + 0.3 * torch.randn(B, H, N, D, generator=g, dtype=F64)
        v = torch.randn(B, H, N, D, generator=g, dtype=F64)
        assert torch.allclose(_step(ref, cr, 0, f, q, k, v), _step(spa, cs, 0, f, q, k, v), atol=1e-10)
    assert spa.stats()["sa_density"] == pytest.approx(ref.stats()["sa_density"])
    assert ref.stats()["sa_density"] < 1.0


@pytest.mark.parametrize("recent,chunks,min_frames", [(0, 1, 0), (3, 4, 0), (2, 3, 0), (2, 3, 4)])
def test_annsa_bucketed_path_equals_masked_reference(recent, chunks, min_frames):
    """The GPU default for AnnSA over a growing cache (annsa.py "bucketed": the cache kept in bucket order,
    each query repeated per probed bucket and key chunk, rows combined by log-sum-exp; here its varlen call runs
    segment by segment on the CPU) equals the masked reference, across bucket sorts, in two layers, with the
    same pairs; a dense cache adopted mid-run is sorted and keeps giving the same outputs."""
    common = dict(ann={"bits": 3, "probes": 2}, schedule={"dense_until": 0.0, "layers": None},
                  metrics={"recall_every": 1})
    ref = build_mode("annsa", annsa={"path": "masked", "recent_frames": recent, "min_frames": min_frames}, **common)
    buc = build_mode("annsa", annsa={"path": "bucketed", "kernel": "loop", "recent_frames": recent,
                                     "chunks": chunks, "min_frames": min_frames}, **common)
    cr, cb = _cache(ref, 2), _cache(buc, 2)
    g = torch.Generator().manual_seed(8)
    for f in range(9):
        if f == 5:   # switched in again over its own cache, as after a mode switch: everything sorted
            dense = build_mode("dense")
            for m, c in ((ref, cr), (buc, cb)):
                dense.adopt(c, N)
                m.adopt(c, N)
        for layer in range(2):
            q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
            a, b = _step(ref, cr, layer, f, q, k, v), _step(buc, cb, layer, f, q, k, v)
            torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
            assert float(buc.last_pairs) == float(ref.last_pairs)
    assert buc._paths["self"].startswith("bucketed:") and ref._paths["self"].startswith("masked:")
    assert ref.stats()["sa_density"] < 1.0 and buc.stats()["sa_recall"] == pytest.approx(ref.stats()["sa_recall"])
    # the sort only permutes each head's slots: per-head key sums and the multiset of frames are unchanged
    P = buc._sorted[0][0]
    assert P > 0 and int(buc._sorted[0][1].sum()) == P * B * H
    torch.testing.assert_close(cb.k[0, :, :, :cb.length[0]].sum(2), cr.k[0, :, :, :cr.length[0]].sum(2),
                               rtol=0, atol=1e-9)


def test_annsa_is_dense_until_min_frames_and_says_so():
    """annsa.min_frames: while the cache holds fewer frames, AnnSA attends densely (equal to the dense mode,
    density and recall 1 in its stats, no bucket sort); from then on it restricts keys (density < 1)."""
    common = dict(ann={"bits": 3, "probes": 1}, schedule={"dense_until": 0.0, "layers": None},
                  metrics={"recall_every": 1})
    sparse = build_mode("annsa", annsa={"path": "masked", "recent_frames": 1, "min_frames": 3}, **common)
    dense = build_mode("dense")
    cs, cd = _cache(sparse), _cache(dense)
    g = torch.Generator().manual_seed(4)
    for f in range(6):
        q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
        a, b = _step(dense, cd, 0, f, q, k, v), _step(sparse, cs, 0, f, q, k, v)
        if f < 3:   # 0, 1, 2 frames cached before the call
            torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
            assert sparse.stats()["sa_density"] == 1.0 and sparse.stats()["sa_recall"] == 1.0
            assert (0 in sparse._sorted) == (f == 2)   # sorted once the commit brings the cache to 3 frames
        else:
            assert not torch.allclose(b, a)
    assert sparse.stats()["sa_density"] < 1.0 and sparse._sorted[0][0] > 0
    with pytest.raises(ValueError, match="annsa.min_frames"):
        build_mode("annsa", annsa={"min_frames": -1})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen kernel runs on CUDA")
@pytest.mark.parametrize("kernel", ["auto", "torch_varlen", "triton_varlen"])
def test_annsa_bucketed_varlen_on_cuda_equals_masked_reference(kernel):
    """The real kernels (Triton's, torch's or flash-attn's varlen, with log-sum-exps) on bf16 against the masked path."""
    if kernel == "triton_varlen":
        pytest.importorskip("triton")
    common = dict(ann={"bits": 4, "probes": 4}, schedule={"dense_until": 0.0, "layers": None},
                  metrics={"recall_every": 0})
    Hc, Nc, Dc = 4, 64, 64
    ref = build_mode("annsa", annsa={"path": "masked", "recent_frames": 3}, **common)
    buc = build_mode("annsa", annsa={"path": "auto", "kernel": kernel, "recent_frames": 3}, **common)
    caches = [KVCache(1, 1, Hc, Dc, 16 * Nc, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    g = torch.Generator(device="cuda").manual_seed(9)
    for f in range(12):
        # (B, n, H, D) transposed, as the model hands them over: views whose strides the graph's static
        # copies do not share (a recompile inside the capture failed in the engine once)
        q, k, v = (torch.randn(1, Nc, Hc, Dc, generator=g, device="cuda").bfloat16().transpose(1, 2) for _ in range(3))
        a, b = _step(ref, caches[0], 0, f, q, k, v), _step(buc, caches[1], 0, f, q, k, v)
        assert float((a.float() - b.float()).abs().max()) < 3e-2, f
    assert buc._paths["self"].startswith("bucketed:") and buc._sorted[0][0] > 0
    from engine.attention import sparse_kernels
    assert not any(k.startswith(("compile", "capture")) for k in sparse_kernels.errors()), sparse_kernels.errors()
    assert buc._memo[0]["graph"].graph is not None   # the call replayed its CUDA graph
    if kernel != "auto":
        assert buc._paths["self"] == f"bucketed:{kernel}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton runs on CUDA")
@pytest.mark.parametrize("block,biased", [(16, False), (32, False), (64, False), (16, True), (64, True)])
def test_triton_varlen_equals_segment_loop(block, biased):
    """The Triton varlen kernel against explicit per-segment softmax: empty segments (no queries, no keys),
    segments longer than a tile, bf16 inputs, with and without a logit per key row; out and log-sum-exps."""
    pytest.importorskip("triton")
    from engine.attention import sparse_kernels, triton_varlen
    g = torch.Generator(device="cuda").manual_seed(3)
    lens_q, lens_k = [5, 0, 40, 17, 130, 3, 64], [100, 30, 0, 7, 1029, 64, 1]
    cu = lambda x: torch.tensor([0] + torch.tensor(x).cumsum(0).tolist(), dtype=torch.int32, device="cuda")  # noqa: E731
    q = torch.randn(sum(lens_q), 1, 64, generator=g, device="cuda").bfloat16()
    k, v = (torch.randn(sum(lens_k), 1, 64, generator=g, device="cuda").bfloat16() for _ in range(2))
    kb = 3 * torch.randn(sum(lens_k), generator=g, device="cuda") if biased else None
    out, lse = triton_varlen.varlen_attention_lse(q, k, v, cu(lens_q), cu(lens_k), max(lens_q), 0.125, block, kb)
    ref, ref_lse = sparse_kernels._loop_lse(q.float(), k.float(), v.float(), cu(lens_q), cu(lens_k), 0, 0, 0.125, kb)
    assert float((out.float() - ref).abs().max()) < 2e-2
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty) and int(empty.sum()) == 40    # the 40 queries of the keyless segment
    assert float((lse - ref_lse)[~empty].abs().max()) < 2e-2


def _decay_caches(modes, layers: int, device: str = "cpu", dtype=F64, hd: int = D, heads: int = H):
    slopes = torch.tensor([[0.3, 0.05, 0.9, 0.0][:heads], [0.7, 0.0, 0.2, 0.01][:heads]][:layers], dtype=torch.float32)
    caches = []
    for m in modes:
        c = KVCache(layers, B, heads, hd, 4 * N, device=device, dtype=dtype)
        c.set_decay(slopes)
        caches.append(c)
    return caches


@pytest.mark.parametrize("path,dense_until", [("bucketed", 0.0), ("bucketed", 0.6), ("masked", 0.6)])
def test_annsa_bucket_order_with_decay_equals_dense(path, dense_until):
    """A temporal decay over a cache kept in bucket order (each head's slots then hold other frames): with every
    bucket probed (bits 1, probes 2) AnnSA equals dense with the decay, across sorts, in two layers, in the
    steps the schedule runs sparse and in those it runs dense (every bucket: the layer's one frame column no
    longer says which frame a slot holds)."""
    sa = build_mode("annsa", ann={"bits": 1, "probes": 2}, schedule={"dense_until": dense_until, "layers": None},
                    annsa={"path": path, "kernel": "loop", "recent_frames": 2, "chunks": 3})
    dense = build_mode("dense")
    cd, cs = _decay_caches((dense, sa), 2)
    g = torch.Generator().manual_seed(11)
    for f in range(9):
        for commit in (False, True):          # step 1 of 2 (progress 0.5), then the commit step
            for c in (cd, cs):
                c.now.fill_(f)
            for layer in range(2):
                q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
                a, b = _step(dense, cd, layer, f, q, k, v, commit), _step(sa, cs, layer, f, q, k, v, commit)
                torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    assert sa._sorted[0][0] > 0 and sa._paths["self"].startswith(path)
    assert sa._paths.get("every_bucket", "").startswith(path) == (dense_until > 0)
    # on CUDA the order needs a kernel that adds a logit per key (else the packing path runs, as before)
    from engine.attention import sparse_kernels
    cpu = torch.device("cpu")
    assert sparse_kernels.bias_ok("loop", cpu) and sparse_kernels.bias_ok("auto", cpu)
    assert not sparse_kernels.bias_ok("torch_varlen", cpu) and not sparse_kernels.bias_ok("flash_attn_varlen", cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen kernel runs on CUDA")
def test_annsa_bucketed_with_decay_on_cuda_equals_dense():
    """The engine's case on the GPU: a decayed bf16 cache in bucket order, Triton's varlen kernel adding the
    per-head decay per key, a dense step (every bucket) and a sparse one per frame, against the dense mode."""
    pytest.importorskip("triton")
    sa = build_mode("annsa", ann={"bits": 1, "probes": 2}, schedule={"dense_until": 0.6, "layers": None},
                    annsa={"recent_frames": 3}, metrics={"recall_every": 0})
    dense = build_mode("dense")
    Hc, Nc, Dc = 4, 64, 64
    cd, cs = _decay_caches((dense, sa), 1, "cuda", torch.bfloat16, Dc, Hc)
    g = torch.Generator(device="cuda").manual_seed(12)
    for f in range(12):
        for commit in (False, True):
            for c in (cd, cs):
                c.now.fill_(f)
            q, k, v = (torch.randn(1, Nc, Hc, Dc, generator=g, device="cuda").bfloat16().transpose(1, 2) for _ in range(3))
            a, b = _step(dense, cd, 0, f, q, k, v, commit), _step(sa, cs, 0, f, q, k, v, commit)
            assert float((a.float() - b.float()).abs().max()) < 3e-2, (f, commit)
    assert sa._sorted[0][0] > 0
    assert sa._paths["self"] == sa._paths["every_bucket"] == "bucketed:triton_varlen"
    from engine.attention import sparse_kernels
    assert not any(k.startswith(("compile", "capture")) for k in sparse_kernels.errors()), sparse_kernels.errors()


def test_annca_keeping_everything_equals_dense_and_recall_falls_when_dropping():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(B, H, N, D, generator=g, dtype=F64)
    k, v = torch.randn(B, H, 40, D, generator=g, dtype=F64), torch.randn(B, H, 40, D, generator=g, dtype=F64)
    info = StepInfo(frame=0, step=2, num_steps=2, commit=False)
    dense = build_mode("dense").cross_attention(0, q, k, v, info)
    for compact in ("never", "always", "auto"):
        ca = build_mode("annca_quant", ann={"centroids": 1, "probes": 1}, annca={"compact": compact})
        assert torch.allclose(ca.cross_attention(0, q, k, v, info), dense, atol=1e-10)
        assert ca.stats()["ca_recall"] == pytest.approx(1.0)
        # auto masks (no host sync for the kept count); only "always" packs
        assert ca.stats()["paths"]["cross"].startswith("packed:" if compact == "always" else "masked:")
    ca = build_mode("annca", ann={"bits": 8, "probes": 1})
    ca.cross_attention(0, q[:, :, :1], k, v, info)                # one query: most prompt buckets hold none
    st = ca.stats()
    assert st["ca_density"] < 1.0 and st["ca_recall"] < 1.0


def test_recall_one_without_drops_and_below_one_with_drops():
    g = torch.Generator().manual_seed(5)
    full = build_mode("annsa_quant", ann={"centroids": 1, "probes": 1}, schedule={"dense_until": 0.0})
    part = build_mode("annsa", ann={"bits": 4, "probes": 1}, schedule={"dense_until": 0.0}, metrics={"recall_every": 1},
                      annsa={"recent_frames": 0})
    cf, cp = _cache(full), _cache(part)
    for f in range(5):
        q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
        _step(full, cf, 0, f, q, k, v)
        _step(part, cp, 0, f, q, k, v)
    assert full.stats()["sa_recall"] == pytest.approx(1.0)
    assert part.stats()["sa_recall"] < 0.99 and part.stats()["sa_density"] < 0.9


def _block_causal(frames: int, n: int) -> torch.Tensor:
    f = torch.arange(frames).repeat_interleave(n)
    return f[:, None] >= f[None, :]


@pytest.mark.parametrize("name", ["dense", "window", "annsa", "annsa_quant", "annsa_recent"])
def test_cached_decoding_equals_full_recomputation(name):
    frames, layers = 7, 2
    params = {"window": {"sinks": 1, "window": 2}}.get(name, {})
    recent = 2 if name.endswith("_recent") else 0
    name = name.removesuffix("_recent")
    if name.startswith("annsa"):
        params = {"schedule": {"dense_until": 0.0, "layers": [0, 1]}, "ann": {"probes": 1},
                  "annsa": {"recent_frames": recent}}
    mode = build_mode(name, **params)
    cache = _cache(mode, layers)
    g = torch.Generator().manual_seed(6)
    qs, ks, vs = (torch.randn(layers, B, H, frames * N, D, generator=g, dtype=F64) for _ in range(3))
    outs = torch.zeros_like(qs)
    for f in range(frames):
        sl = slice(f * N, (f + 1) * N)
        for layer in range(layers):
            outs[layer, :, :, sl] = _step(mode, cache, layer, f, qs[layer, :, :, sl], ks[layer, :, :, sl], vs[layer, :, :, sl])
    for layer in range(layers):
        mask = _block_causal(frames, N)
        if name == "window":
            fr = torch.arange(frames).repeat_interleave(N)
            mask = mask & ((fr[None, :] < 1) | (fr[:, None] - fr[None, :] <= 2))
        if name.startswith("annsa"):
            h = mode.hasher
            codes = h.codes(layer, ks[layer], True)                     # (B, H, L, T)
            probes = h.probe_codes(layer, qs[layer])                    # (B, H, L, T, P)
            share = (codes[:, :, None, :, :, None] == probes[:, :, :, None]).flatten(-2).any(-1)
            fr = torch.arange(frames).repeat_interleave(N)
            # keys committed since the last bucket sort (every `recent` frames) are read in full
            recent_from = (fr[:, None] // max(recent, 1)) * max(recent, 1) if recent else fr[:, None]
            mask = mask & (share | (fr[:, None] == fr[None, :]) | (fr[None, :] >= recent_from))
        ref = SequenceAttention(mask).self_attn(layer, qs[layer], ks[layer], vs[layer])
        assert torch.allclose(outs[layer], ref, atol=1e-10), (name, layer)


@pytest.mark.parametrize("seed", range(3))
def test_tempcache_never_exceeds_capacity(seed):
    g = torch.Generator().manual_seed(seed)
    cap_frames = 1 + seed
    tc = build_mode("fastar" if seed % 2 else "tempcache", tempcache={"capacity_frames": cap_frames,
                    "threshold": 0.5 + 0.2 * seed, "group": ("head", "layer")[seed % 2], "overflow": "merge"})
    cache = _cache(tc, 2)
    C = tc.capacity_tokens(N)
    for f in range(40):
        for layer in range(2):
            step_k = torch.randn(B, H, N, D, generator=g, dtype=F64) * (1 + (f % 3))
            q, v = torch.randn(B, H, N, D, generator=g, dtype=F64), torch.randn(B, H, N, D, generator=g, dtype=F64)
            out = _step(tc, cache, layer, f, q, step_k, v)
            assert torch.isfinite(out).all()
        # (after the pass: the commit pass commits every layer once the last one has attended)
        for layer in range(2):
            assert cache.length[layer] <= C and cache.capacity <= C
            assert int(cache.valid(layer).sum(-1).max()) <= C - N
            # total mass is conserved: every key ever committed is in some group (merge, never evict)
            mass = torch.exp(cache.bias[layer, :, :, :cache.length[layer]]).masked_fill(~cache.valid(layer), 0)
            assert torch.allclose(mass.sum(-1), torch.full((B, H), float((f + 1) * N), dtype=torch.float32))


def test_switching_modes_mid_run_stays_bounded():
    cache = KVCache(2, B, H, D, 4 * N, dtype=F64)
    g = torch.Generator().manual_seed(7)
    plan = [("dense", {}, 6), ("fastar", {"tempcache": {"capacity_frames": 3}}, 8), ("window", {"window": 2}, 5),
            ("dense", {}, 4), ("fastar_quant", {"tempcache": {"capacity_frames": 2}}, 4)]
    f = 0
    for name, params, frames in plan:
        mode = build_mode(name, **params)
        mode.adopt(cache, N)
        cap = mode.capacity_tokens(N)
        for _ in range(frames):
            for layer in range(2):
                q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
                assert torch.isfinite(_step(mode, cache, layer, f, q, k, v)).all()
            if cap is not None:
                assert max(cache.length) <= cap, (name, cache.length, cap)
            f += 1
        if name == "window":   # adopted groups and emptied slots are honoured, not turned into plain keys
            assert max(cache.length) <= cap


@pytest.mark.parametrize("name,params,field", [
    ("annsa", {"ann": {"bits": 0}}, "bits"),
    ("annsa_quant", {"ann": {"centroids": 0}}, "centroids"),
    ("tempcache", {"tempcache": {"threshold": -0.1}}, "threshold"),
    ("tempcache", {"tempcache": {"thresold": 0.9}}, "thresold"),
    ("fastar", {"bogus": 1}, "bogus"),
    ("annsa", {"tempcache": {}}, "tempcache"),
    ("fastar", {"schedule": {"dense_until": 2}}, "dense_until"),
    ("window", {"windw": 3}, "windw"),
    ("tempcache", {"tempcache": {"layers": [0], "overflow": "merge"}}, "layers"),
    ("fastar", {"tempcache": {"layers": [-1]}}, "layers"),
])
def test_bad_config_is_a_clear_value_error(name, params, field):
    with pytest.raises(ValueError, match=field):
        m = build_mode(name, **params)
        m.adopt(KVCache(1, B, H, D, N), N)   # the hasher is built lazily: make it


def test_ann_engines_return_the_same_neighbours():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(8)
    y = torch.nn.functional.normalize(torch.randn(3, 200, D, generator=g), dim=-1)
    x = torch.nn.functional.normalize(y[:, :50] + 0.05 * torch.randn(3, 50, D, generator=g), dim=-1)
    allowed = torch.rand(3, 200, generator=g) > 0.2
    allowed[:, :50] = True
    for a in (None, allowed):
        st, it = ann.top1(x, y, a, engine="torch")
        sf, if_ = ann.top1(x, y, a, engine="faiss")
        assert torch.equal(it, if_) and torch.allclose(st, sf, atol=1e-5)
    assert torch.equal(it[:, :50], torch.arange(50).expand(3, 50))


def test_window_adopts_a_compressed_cache_without_reviving_empty_slots():
    tc = build_mode("tempcache", tempcache={"threshold": 0.0, "capacity_frames": 4})
    cache = _cache(tc)
    for f, (q, k, v) in enumerate(_dup_frames(5)):
        _step(tc, cache, 0, f, q, k + 0.1 * torch.randn_like(k), v)
    win = build_mode("window", sinks=1, window=2)
    win.adopt(cache, N)
    assert (cache.bias[0, :, :, :cache.length[0]] != 0).any()   # group weights kept
    q, k, v = next(_dup_frames(1, seed=9))
    assert torch.isfinite(_step(win, cache, 0, 5, q, k, v)).all()


def test_bench_smoke(tmp_path):
    from engine.attention import bench
    out = tmp_path / "a.json"
    res = bench.main(["--frames", "3", "--tokens", "8", "--heads", "2", "--dim", "16", "--reps", "1",
                      "--warmup", "0", "--device", "cpu", "--out", str(out)])
    row = res["results"]["3"]
    assert set(row) == set(bench.MODES)
    for name, e in row.items():
        assert "error" not in e, (name, e.get("trace"))
        assert 0 < e["density"] <= 1 and 0 < e["recall"] <= 1 + 1e-6 and e["time_ms"] > 0
    assert row["dense"]["recall"] == 1.0 and out.exists()


class _Sync(RuntimeError):
    pass


def _no_sync(monkeypatch):
    """Make every Python-level way of reading a tensor value back to the host raise (a host sync on CUDA), and
    every data-dependent-shape op that syncs on CUDA (nonzero, unique, masked_select)."""
    def boom(name):
        def f(*a, **k):
            raise _Sync(f"host sync in the hot path: {name}")
        return f
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "unique", "masked_select",
                 "numpy"):
        monkeypatch.setattr(torch.Tensor, name, boom(name))
    for name in ("nonzero", "unique", "masked_select", "argwhere"):
        monkeypatch.setattr(torch, name, boom(name))


@pytest.mark.parametrize("name,params", [
    ("tempcache", {}),
    ("tempcache", {"tempcache": {"group": "layer"}}),
    ("tempcache", {"tempcache": {"search": "exact"}}),
    ("tempcache_quant", {}),
    ("fastar", {}),
    ("fastar_quant", {}),
])
def test_hot_path_has_no_host_sync_and_fixed_shapes(monkeypatch, name, params):
    """The timed path (recall off) of TempCache and the fastar default reads nothing back to the host, from the
    first frame on (layout set-up included) and when the cache is full (forced merges), and the attention
    length and cache capacity never change: flat time and memory by construction."""
    mode = build_mode(name, metrics={"recall_every": 0}, **params, **({} if "tempcache" in params else
                                                                      {"tempcache": {"capacity_frames": 3}}))
    cache = _cache(mode, layers=2)
    cap0 = cache.capacity
    g = torch.Generator().manual_seed(11)
    prompt = torch.randn(B, H, 5, D, generator=g, dtype=F64)
    lengths = set()
    with monkeypatch.context() as m:
        _no_sync(m)
        for f in range(8):
            for layer in range(2):
                q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
                for step, commit in ((0, False), (1, False), (2, True)):
                    info = StepInfo(frame=f, step=step, num_steps=2, commit=commit)
                    fa = FrameAttention(mode, cache, info)
                    fa.self_attn(layer, q, k, v)
                    fa.cross_attn(layer, q, prompt, prompt)
                lengths.add(cache.length[layer])
    assert len(lengths) == 1 and cache.capacity == cap0
    with pytest.raises(_Sync):   # the patch does catch a sync
        with monkeypatch.context() as m:
            _no_sync(m)
            cache.valid(0).sum().item()


@pytest.mark.parametrize("compact", ["auto", "always"])
def test_annca_default_cross_attention_has_no_host_sync(monkeypatch, compact):
    """AnnCA's default (masked) prompt call, its keep mask and its density meter read nothing back to the host,
    so its passes can be captured whole (FastARAttention graph_key); the packed path reads the kept count (one
    sync a call), which the same check catches."""
    mode = build_mode("annca", metrics={"recall_every": 0}, annca={"compact": compact},
                      schedule={"layers": None, "dense_until": 0.0})
    cache = _cache(mode, layers=2)
    g = torch.Generator().manual_seed(12)
    prompt = torch.randn(B, H, 5, D, generator=g, dtype=F64)

    def frames() -> None:
        for f in range(4):
            for layer in range(2):
                q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
                for step, commit in ((0, False), (1, False), (2, True)):
                    fa = FrameAttention(mode, cache, StepInfo(frame=f, step=step, num_steps=2, commit=commit))
                    fa.self_attn(layer, q, k, v)
                    fa.cross_attn(layer, q, prompt, prompt)
    with monkeypatch.context() as m:
        _no_sync(m)
        if compact == "always":
            with pytest.raises(_Sync):
                frames()
            return
        frames()
    assert mode.stats()["paths"]["cross"].startswith("masked:") and mode.stats()["ca_density"] is not None


def test_kernel_agreement_check_catches_a_wrong_result():
    """The dense-kernel chooser checks each candidate against a float32 reference before timing it: a
    relative error of ~1 (wrong layout or scale) fails, bf16 rounding passes."""
    from engine.attention import kernels
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 64, generator=g) for _ in range(3))
    ref = kernels._reference(q, k, v, None, 0.125)
    assert kernels.relative_error(ref.bfloat16(), ref) <= kernels.tolerance(torch.bfloat16)
    assert kernels.relative_error(kernels._reference(q, k, v, None, 0.25).bfloat16(), ref) > \
        kernels.tolerance(torch.bfloat16)                        # the scale of the padded head dim, say
    assert kernels.relative_error(kernels._reference(q, v, k, None, 0.125), ref) > kernels.tolerance(torch.float32)


def test_near_ties_flag_the_choices_another_machine_may_make_otherwise(monkeypatch):
    """kernels.near_ties: a candidate ahead of the chosen one just outside the tie margin, or the chosen one just
    inside it and not the fastest, is reported (session 24's 16-key prompt call: cudnn at 1.106x on one H100,
    1.087x and chosen on another); a clear winner, a tie far inside the margin and a pinned bucket are not."""
    from engine.attention import kernels
    timings = {("a",): {"flash": 1.25, "cudnn": 1.106, "efficient": 1.0},      # cudnn ahead, just outside
               ("b",): {"flash": 1.25, "cudnn": 1.087, "efficient": 1.0},      # cudnn chosen, just inside
               ("c",): {"channel": 2.8, "triton": 1.0},                         # clear winner
               ("d",): {"channel": 1.0, "triton_split": 1.01},                 # a tie far inside the margin
               ("e",): {"flash (pinned)": None}}
    choice = {k: kernels.pick(t) if any(v is not None for v in t.values()) else "flash" for k, t in timings.items()}
    assert choice[("a",)] == "efficient" and choice[("b",)] == "cudnn" and choice[("d",)] == "channel"
    monkeypatch.setattr(kernels, "_timings", timings)
    monkeypatch.setattr(kernels, "_choice", choice)
    monkeypatch.setattr(kernels, "bucket_name", lambda key: key[0])
    assert kernels.near_ties() == {"a": {"chosen": "efficient", "ratios": {"cudnn": 1.106}},
                                   "b": {"chosen": "cudnn", "ratios": {"cudnn": 1.087}}}
    from engine.bench_report import near_tie_lines
    lines = near_tie_lines(kernels.near_ties())
    assert len(lines) == 2 and "a chose efficient (cudnn at 1.106x" in lines[0] and "kernel_choices=" in lines[0]


def test_cpu_attention_names_the_sdpa_kernel_torch_runs():
    """On the CPU the call goes to torch's own SDPA dispatch, and the kernel name says which of its kernels that
    takes (its flash kernel where it can, else math), not a fixed "math" label."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from engine.attention import kernels
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 64, generator=g) for _ in range(3))
    bias = torch.randn(1, 2, 16, generator=g)
    kernels.attention(q, k, v, bias=bias)
    default = kernels.kernel_name()
    assert default in ("sdpa_flash_cpu", "sdpa_math_cpu")
    for backend, name in ((SDPBackend.MATH, "sdpa_math_cpu"), (SDPBackend.FLASH_ATTENTION, "sdpa_flash_cpu")):
        with sdpa_kernel(backend):
            try:
                kernels.attention(q, k, v, bias=bias)
            except RuntimeError:   # a build whose CPU flash kernel cannot take this call: nothing to name
                continue
        assert kernels.kernel_name() == name


def test_kernel_chooser_skips_fast_wrong_and_failing_candidates():
    """choose(): the fastest candidate that agrees with the reference wins; a faster wrong one (or a NaN one)
    is listed as wrong, one that raises as failed; with only bf16 rounding everywhere nothing is ruled out."""
    import torch.nn.functional as F

    from engine.attention import kernels
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 64, generator=g).bfloat16() for _ in range(3))
    sdpa = lambda q, k, v, b, s: F.scaled_dot_product_attention(q, k, v, scale=s)   # noqa: E731

    def boom(q, k, v, b, s):
        raise RuntimeError("shape not supported")
    cands = {"slow": sdpa, "ok": sdpa, "wrong": lambda q, k, v, b, s: v[:, :, :q.shape[2]],
             "nan": lambda q, k, v, b, s: sdpa(q, k, v, b, s) * float("nan"), "boom": boom}
    speed = iter([3.0, 2.0])          # ms the fake timer reports, in call order: only slow and ok are timed
    best, timings = kernels.choose(cands, q, k, v, None, 0.125, timer=lambda fn: (fn(), next(speed))[1])
    assert best == "ok" and timings["slow"] == 3.0 and timings["ok"] == 2.0
    assert "boom (failed)" in timings
    assert any(n.startswith("wrong (wrong") for n in timings) and any(n.startswith("nan (wrong") for n in timings)
    with pytest.raises(RuntimeError, match="no attention kernel"):
        kernels.choose({"boom": boom}, q, k, v, None, 0.125, timer=lambda fn: 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernel chooser measures on CUDA")
def test_kernel_chooser_never_picks_a_wrong_candidate(monkeypatch):
    """A candidate that runs fast but computes something else is listed as wrong and never chosen; every real
    candidate agrees with the reference at a bf16 frame shape, with and without a bias."""
    from engine.attention import kernels
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 6, 256, 64, device="cuda", generator=g).bfloat16()
    k, v = (torch.randn(1, 6, 3000, 64, device="cuda", generator=g).bfloat16() for _ in range(2))
    bias = torch.rand(1, 6, 3000, device="cuda", generator=g)
    for biased in (False, True):
        real = dict(kernels._candidates(biased))
        monkeypatch.setitem(kernels._cands, biased, {**real, "bogus": lambda q, k, v, b, s: v[:, :, :q.shape[2]]})
        monkeypatch.setattr(kernels, "_choice", {})
        monkeypatch.setattr(kernels, "_timings", {})
        out = kernels.attention(q, k, v, bias if biased else None)
        chosen = kernels.kernel_name()
        timings = next(iter(kernels._timings.values()))
        assert chosen != "bogus" and any(n.startswith("bogus (wrong") for n in timings)
        assert not [n for n in timings if "(wrong" in n and not n.startswith("bogus")], timings
        ref = kernels._reference(q, k, v, bias if biased else None, 0.125)
        assert kernels.relative_error(out, ref) <= kernels.tolerance(torch.bfloat16)


def test_tempcache_bias_layout_is_checked() -> None:
    with pytest.raises(ValueError, match="tempcache.bias_layout: invalid value 'mask'"):
        build_mode("fastar", tempcache={"bias_layout": "mask"})
    assert build_mode("fastar", tempcache={"bias_layout": "array"}).cfg.tempcache.bias_layout == "array"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bias channel is a CUDA layout")
@pytest.mark.parametrize("mode", ["tempcache", "fastar"])
def test_cuda_bias_array_layout_equals_the_channel(mode: str) -> None:
    """tempcache.bias_layout=array keeps the cache at 64 channels (the group biases stay in the bias array, read
    by a bias-taking kernel) and draws the channel layout's frames (float32, CUDA graphs, 1e-4)."""
    from tests.test_graphs import _roll, with_bias_layout
    from tests.test_model_core import random_model
    m = random_model(torch.float32).cuda()
    ref_s: list = []
    got_s: list = []
    ref = _roll(m, mode, "cuda", frames=12, out_sampler=ref_s, params=with_bias_layout(mode, "channel"))
    got = _roll(m, mode, "cuda", frames=12, out_sampler=got_s, params=with_bias_layout(mode, "array"))
    assert ref_s[0].cache.pad > 0 and got_s[0].cache.pad == 0
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_key_segments_put_each_buckets_skipped_prefix_in_a_segment_no_query_reads():
    """_key_segments with a skip: per bucket the skipped oldest keys, then C chunks of the rest, then the recent
    keys and the unused slots; a skip larger than its bucket is clamped; the query rows of _pack_queries name
    chunk segments only, never a skipped one."""
    from engine.attention.sparse_kernels import _key_segments, _pack_queries
    counts = torch.tensor([[4, 0, 5]])                     # one head, 3 buckets, sorted part of 9 slots
    cu, klen = _key_segments(counts, 2, 9, 12, 16, torch.tensor([[1, 0, 7]]))
    # bucket 0: skip [0, 1), chunks [1, 2), [2, 4); bucket 1: empty; bucket 2: skip [4, 9), chunks empty;
    # recent [9, 12); unused [12, 16)
    assert cu.tolist() == [0, 1, 2, 4, 4, 4, 4, 9, 9, 9, 12, 16]
    assert klen.tolist() == [1, 1, 2, 0, 0, 0, 5, 0, 0, 3, 4] and int(klen.sum()) == 16
    q = torch.randn(1, 1, 2, 4)
    probes = torch.tensor([[[[0, 2], [1, 2]]]])             # (B, H, n, P)
    _, flat, _, _, cu_q = _pack_queries(q, probes, 2, 3)
    assert sorted(set(flat.tolist())) == [1, 2, 4, 5, 7, 8, 9]   # chunks of buckets 0-2 and the recent segment
    assert not {0, 3, 6, 10} & set(flat.tolist())                # skipped segments and unused slots: no query
    assert cu_q.numel() == cu.numel()


def test_kernel_pick_gives_near_ties_to_the_fixed_order():
    """Timing noise must not change the frames: candidates within TIE of the fastest are tied, and a tie goes
    to the first in the table's order, whichever of them happened to time fastest; a clear win still wins."""
    from engine.attention import kernels
    assert kernels.pick({"a": 0.0299, "b": 0.0280}) == "a"           # 6.8% apart: tied, the first
    assert kernels.pick({"a": 0.0280, "b": 0.0299}) == "a"
    assert kernels.pick({"a": 0.0280, "b": 0.0299}, tie=0.0) == "a"
    assert kernels.pick({"a": 0.0299, "b": 0.0280}, tie=0.0) == "b"
    assert kernels.pick({"a": 0.028, "b": 0.010}) == "b"             # triton_decay against the channel
    assert kernels.pick({"a": None, "b": 0.05, "c": 0.03}) == "c"     # untimed candidates never win


def test_quant_centroids_are_the_per_cluster_sums_without_float_atomics():
    """QuantHasher's spherical k-means sums each cluster's points with a one-hot matmul (a fixed order on CUDA,
    where a float scatter_add's order is whatever its atomics do). The centroids equal those of the
    scatter_add update to float32 rounding (the hasher works in float32): only the summation order changed."""
    import torch.nn.functional as F

    from engine.attention.quant import QuantHasher
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 3, 40, 16, generator=g, dtype=torch.float64)
    h = QuantHasher(16, centroids=5, iters=4, seed=2)
    h.fit(0, k)

    # the same k-means, written with scatter_add
    x = h._unit(0, k).transpose(0, 1).reshape(3, -1, 16)
    idx = torch.randint(0, x.shape[1], (5,), generator=torch.Generator().manual_seed(2))
    c = x[:, idx].clone()
    for _ in range(4):
        a = torch.einsum("hnd,hkd->hnk", x, c).argmax(-1)
        s = torch.zeros_like(c).scatter_add_(1, a[..., None].expand(-1, -1, 16), x)
        c = torch.where(s.norm(dim=-1, keepdim=True) > 0, F.normalize(s, dim=-1), c)
    assert torch.allclose(h._cent[0][0], c, atol=1e-6)


def test_pinned_kernel_choices_replace_the_measurement(tmp_path, capsys):
    """kernels.pin: a recorded run's choices are used instead of timing (listed as pinned), a bucket the file
    lacks is measured and said so, a pinned kernel that is no candidate is an error naming the bucket and the
    file; load_choices reads a bench.json.gz's kernels.chosen or a plain mapping and names the file on errors."""
    import gzip
    import json

    from engine.attention import kernels
    q = torch.zeros(1, 2, 256, 64)
    doc = {"kernels": {"chosen": {"q256_kv4096_d64_float32_decay": "triton_decay"}}}
    bench = tmp_path / "bench.json.gz"
    bench.write_bytes(gzip.compress(json.dumps(doc).encode()))
    try:
        kernels.pin(kernels.load_choices(bench), str(bench))
        assert kernels.pinned_source() == str(bench)
        assert kernels.recorded_choice(q, 4000, "decay") == "triton_decay"          # 4000 keys: the 4096 bucket
        assert kernels.chosen_kernels() == {"q256_kv4096_d64_float32_decay": "triton_decay"}
        assert kernels.kernel_timings()["q256_kv4096_d64_float32_decay"] == {"triton_decay (pinned)": None}
        assert kernels.recorded_choice(q, 4000, "buckets") is None                 # not pinned: measure it
        assert "q256_kv4096_d64_float32_buckets is not among the pinned choices" in capsys.readouterr().out
        plain = tmp_path / "choices.json"
        plain.write_text(json.dumps({"q256_kv4096_d64_float32_decay": "flash_attn_9"}))
        kernels.pin(kernels.load_choices(plain), str(plain))
        assert kernels.chosen_kernels() == {}                                      # new pins forget old choices
        with pytest.raises(ValueError, match=r"choices.json: q256_kv4096_d64_float32_decay = 'flash_attn_9' is "
                                             r"not a candidate"):
            kernels.recorded_choice(q, 4000, "decay")
    finally:
        kernels.pin({}, "")
    assert kernels.pinned_source() is None and kernels.recorded_choice(q, 4000, "decay") is None
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        kernels.load_choices(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not JSON"):
        kernels.load_choices(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"kernels": {"chosen": {}}}))
    with pytest.raises(ValueError, match="empty.json holds no kernel choices"):
        kernels.load_choices(tmp_path / "empty.json")


def test_meter_sums_device_values_in_place_and_reset_keeps_the_accumulators() -> None:
    """LayerMeter: device values sum on the device, value and count in one accumulator that a captured CUDA
    graph keeps adding to; reset zeroes it in place (a graph captured before the reset still adds to it), and
    host floats and device values of one name average together."""
    from engine.attention.metrics import LayerMeter
    m = LayerMeter()
    m.add(0, "d", torch.tensor(0.5))
    m.add(0, "d", torch.tensor(0.25))
    m.add(0, "d", 1.0)
    m.add(1, "d", torch.tensor(0.0))
    assert m.summary() == {"0": {"d": pytest.approx(0.5833333)}, "1": {"d": 0.0}}
    assert m.mean("d") == pytest.approx((0.5833333 + 0.0) / 2)
    acc = m._dev[(0, "d")]
    m.reset()
    assert m._dev[(0, "d")] is acc and float(acc.abs().sum()) == 0.0
    assert m.mean("d") is None and m.summary() == {}
    acc[0].add_(0.75)   # what a replay of a graph captured before the reset does
    acc[1].add_(1.0)
    assert m.mean("d") == pytest.approx(0.75)

