"""Attention microbenchmark: every mode against dense at the same cache size, one layer, attention alone.

    python -m engine.attention.bench                       # GPU: 100/1000/3000 frames, bf16, writes
                                                           #      docs/results/attention_h100.json
    python -m engine.attention.bench --frames 4 8 --tokens 16 --heads 2 --dim 16 --out /tmp/a.json   # CPU smoke

Inputs are synthetic, with the structure FAST-AR exploits (printed in the output): per-token keys drawn around
`clusters` semantic centres; a `static` share of tokens keeps nearly the same key frame after frame
(near-duplicates across frames, so TempCache merges), the rest drift slowly (random walk); queries lie near
their token's cluster, so attention concentrates and LSH/k-means buckets mean something.

For each mode and cache size: the cache is built dense, then the mode adopts it (compression time reported),
then one denoising-step call (progress 0.5: sparse on) is timed with CUDA events (warm-up, median of reps);
the commit pass is timed too (its extra time is TempCache's merge). Reported: time_ms, speed-up vs dense,
TFLOP/s on the query-key pairs actually computed (whole call, and the sparse kernel alone), density (pairs
computed over dense pairs at the same frame count), cache_density, recall (dense softmax mass kept, exact, on a
query sample: window = mass on kept frames, AnnSA = on kept keys, TempCache = metrics.grouped_recall), ann_ms
(hashing the frame's queries and keys; TempCache: the merge), and which kernel ran. A mode that fails is
reported with its error; nothing falls back silently.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import traceback
from typing import Any, Callable

import torch

from engine.attention import StepInfo, build_mode, kernels, sparse_kernels
from engine.attention.annsa import allowed_mask
from engine.attention.fastar import FastARAttention
from engine.attention.metrics import grouped_recall, sample_queries
from engine.cache import KVCache

MODES = ["dense", "window", "tempcache", "tempcache_quant", "annsa", "annsa_quant", "fastar", "fastar_quant"]


class Scene:
    """Synthetic token streams with near-duplicate keys across frames and clustered queries."""

    def __init__(self, n: int, H: int, D: int, clusters: int, static: float, drift: float, device: torch.device,
                 dtype: torch.dtype, seed: int = 0) -> None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.cent = torch.randn(H, clusters, D, generator=g) * 1.5                   # semantic centres
        self.cl = torch.randint(0, clusters, (H, n), generator=g)                    # token -> cluster
        self.base = self.cent.gather(1, self.cl[..., None].expand(-1, -1, D)) + 0.7 * torch.randn(H, n, D, generator=g)
        self.static = torch.rand(H, n, generator=g) < static
        self.offset = torch.randn(H, 1, D, generator=g) * 0.5                         # shared key component
        self.g, self.drift, self.dev, self.dtype = g, drift, device, dtype

    def frame(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (1, H, n, D) of the next frame."""
        step = torch.randn(self.base.shape, generator=self.g) * self.drift
        self.base = self.base + step * (~self.static)[..., None]
        k = self.base + 0.03 * torch.randn(self.base.shape, generator=self.g) + self.offset
        q = self.cent.gather(1, self.cl[..., None].expand(-1, -1, k.shape[-1])) \
            + 0.8 * torch.randn(self.base.shape, generator=self.g)
        v = torch.randn(self.base.shape, generator=self.g)
        return tuple(t[None].to(self.dev, self.dtype) for t in (q, k, v))  # type: ignore[return-value]


def _timer(device: torch.device) -> Callable[[Callable[[], Any], int, int], float]:
    def cuda_time(fn: Callable[[], Any], warm: int, reps: int) -> float:
        for _ in range(warm):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b))
        return statistics.median(ts)

    def cpu_time(fn: Callable[[], Any], warm: int, reps: int) -> float:
        for _ in range(warm):
            fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)
    return cuda_time if device.type == "cuda" else cpu_time


def _dense_cache(hist: list[tuple[torch.Tensor, torch.Tensor]], n: int, H: int, D: int, device: torch.device,
                 dtype: torch.dtype) -> KVCache:
    c = KVCache(1, 1, H, D, len(hist) * n + n, device, dtype)
    for f, (k, v) in enumerate(hist):
        c.write_scratch(0, k, v)
        c.commit_scratch(0, n, f)
    return c


def _recall(name: str, mode: Any, q: torch.Tensor, hist_k: torch.Tensor, cache: KVCache, k_own: torch.Tensor,
            F: int, n: int, queries: int) -> float:
    """Exact share of dense softmax mass kept, on a sample of the frame's queries (see module docstring)."""
    idx = sample_queries(q, queries)
    qs = q[:, :, idx].float()
    full_k = torch.cat([hist_k, k_own], 2)
    if name == "dense":
        return 1.0
    if name == "window":
        p = (torch.einsum("bhsd,bhld->bhsl", qs, full_k.float()) / math.sqrt(q.shape[-1])).softmax(-1)
        fr = torch.arange(F + 1, device=q.device).repeat_interleave(n)
        keep = (fr < mode.cfg.sinks) | (fr >= F - mode.cfg.window)
        return float((p * keep).sum(-1).mean())
    assert isinstance(mode, FastARAttention)
    L = cache.length[0]
    K, _, bias = cache.view(0, L)
    sa_kept = None
    if mode.cfg.annsa is not None:
        codes = cache.slot_data["codes"][0, :, :, :L] if L else torch.zeros(1, q.shape[1], 0, 1, dtype=torch.long,
                                                                            device=q.device)
        h = mode.hasher
        probes = h.probe_codes(0, q[:, :, idx])
        own = torch.ones(*qs.shape[:3], n, dtype=torch.bool, device=q.device)
        if mode.cfg.tempcache is None:   # AnnSA alone: kept keys of the dense history itself, in the cache's
            # order (AnnSA keeps it sorted by bucket), the recent frames read in full
            lay = mode._layout(cache, 0)
            allowed = allowed_mask(probes, codes, None if lay is None else lay.sorted_len)
            cache_k = torch.cat([K, k_own], 2)
            p = (torch.einsum("bhsd,bhld->bhsl", qs, cache_k.float()) / math.sqrt(q.shape[-1])).softmax(-1)
            return float((p * torch.cat([allowed, own], -1)).sum(-1).mean())
        valid = bias > -1e3
        c = torch.where(valid[..., None], codes, torch.full_like(codes, h.n_buckets))
        sa_kept = torch.cat([(c[:, :, None, :, :, None] == probes[:, :, :, None]).flatten(-2).any(-1), own], -1)
    comp_k = torch.cat([K, k_own], 2)
    comp_b = torch.cat([bias, torch.zeros_like(bias[..., :n])], -1)
    return float(grouped_recall(qs, full_k, comp_k, comp_b, sa_kept, own=n))


def run(args: argparse.Namespace) -> dict[str, Any]:
    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if dev.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32   # CPU smoke: torch's own SDPA dispatch, fp32
    n, H, D = args.tokens, args.heads, args.dim
    timer = _timer(dev)
    info_step = StepInfo(frame=0, step=2, num_steps=4, commit=False)   # progress 0.5: sparse on
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
                           "torch": torch.__version__, "dtype": str(dtype), "tokens_per_frame": n, "heads": H,
                           "head_dim": D, "inputs": "synthetic: clustered keys, "
                           f"{args.static:.0%} static tokens (near-duplicate keys across frames), the rest drifting "
                           f"(random walk {args.drift}); queries near their token's cluster",
                           "tempcache": {"capacity_frames": args.capacity_frames, "threshold": args.threshold,
                                         "overflow": args.overflow}, "window": args.window, "results": {}}
    print(f"device {res['device']}  dtype {dtype}  tokens/frame {n}  heads {H}  D {D}\ninputs: {res['inputs']}")
    hdr = f"{'frames':>6} {'mode':<16} {'time_ms':>8} {'speedup':>7} {'gpu_ms':>7} {'gpu_x':>6} {'TF/s':>6} {'kTF/s':>6} {'density':>7} " \
          f"{'cache':>6} {'recall':>6} {'ann_ms':>7} {'adopt_s':>7}  kernel"
    print(hdr)
    for F in args.frames:
        scene = Scene(n, H, D, args.clusters, args.static, args.drift, dev, dtype, args.seed)
        hist = [scene.frame()[1:] for _ in range(F)]
        q, k_new, v_new = scene.frame()
        hist_k = torch.cat([k for k, _ in hist], 2)
        dense_pairs = n * (F * n + n) * H
        row: dict[str, Any] = {}
        dense_ms = dense_gpu_ms = None
        for name in args.modes:
            try:
                params: dict[str, Any] = {}
                if name == "window":
                    params = {"sinks": 1, "window": args.window}
                elif name != "dense":
                    # annsa/annca modes: sparse on in the one layer; fastar modes: their default schedule
                    # (fastar.FASTAR_DEFAULTS: AnnSA/AnnCA in no layer until measured positive)
                    sched = {"dense_until": 0.3} if name.startswith("fastar") else {"dense_until": 0.3, "layers": [0]}
                    params = {"metrics": {"recall_every": 0}, "schedule": sched}
                    if "tempcache" in name or "fastar" in name:
                        params["tempcache"] = {"capacity_frames": args.capacity_frames, "threshold": args.threshold,
                                               "overflow": args.overflow}
                mode = build_mode(name, **params)
                cache = _dense_cache(hist, n, H, D, dev, dtype)
                t0 = time.perf_counter()
                mode.adopt(cache, n)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                adopt_s = time.perf_counter() - t0
                call = lambda: mode.self_attention(0, q, k_new, v_new, cache, info_step)   # noqa: E731
                sparse_kernels.capture = {}
                ms = timer(call, args.warmup, args.reps)
                # GPU time alone (calls queued behind a GPU sleep, as a CUDA-graph replay runs them): at small
                # caches time_ms is mostly the host's launch overhead, which the engine's graphs remove
                gpu_ms = kernels._time(call, reps=min(args.reps, 10)) if dev.type == "cuda" else None
                cap, sparse_kernels.capture = sparse_kernels.capture, None
                stats = mode.stats()
                # keys held: a window that is still filling attends over its fixed layout, empty slots masked
                # (computed, weightless); held and pairs count the slots that carry a key, as dense's buckets do
                held = int(cache.valid(0)[0].sum()) / H
                pairs = float(mode.last_pairs) if isinstance(mode, FastARAttention) else n * (held + n) * H
                kernel_ms = None
                if cap and "args" in cap and any(w in str(stats.get("paths", {}).get("self", "")) for w in ("varlen", "bucketed")):
                    run_kernel = lambda: sparse_kernels._run(*cap["args"])   # noqa: E731
                    kernel_ms = (kernels._time(run_kernel, reps=min(args.reps, 10)) if dev.type == "cuda"
                                 else timer(run_kernel, args.warmup, args.reps))   # GPU time: the kernel alone
                ann_ms = None
                if isinstance(mode, FastARAttention) and mode.hasher is not None:
                    h = mode.hasher
                    ann_ms = timer(lambda: (h.probe_codes(0, q), h.codes(0, k_new, True)), args.warmup, args.reps)
                    if mode.tc is not None:   # the merge: commit passes on fresh frames, minus a plain call
                        frames = [scene.frame() for _ in range(args.warmup + args.reps)]
                        it = iter(range(len(frames)))

                        def commit() -> None:
                            i = next(it)
                            fq, fk, fv = frames[i]
                            mode.self_attention(0, fq, fk, fv, cache, StepInfo(F + 1 + i, 4, 4, True))
                        ann_ms = max(0.0, timer(commit, args.warmup, args.reps) - ms) + ann_ms
                recall = None if args.no_recall else _recall(name, mode, q, hist_k, cache if not isinstance(mode, FastARAttention) or mode.tc is None else _recompress(mode, hist, n, H, D, dev, dtype), k_new, F, n, args.recall_queries)
                kern = stats.get("paths", {}).get("self") or kernels.kernel_name()
                entry = {"time_ms": ms, "speedup_vs_dense": None, "gpu_ms": gpu_ms, "gpu_speedup_vs_dense": None, "tflops_on_computed": 4 * pairs * D / ms / 1e9,
                         "kernel_only_ms": kernel_ms,
                         "kernel_tflops_on_computed": 4 * pairs * D / kernel_ms / 1e9 if kernel_ms else None,
                         "density": pairs / dense_pairs, "cache_density": stats.get("cache_density", held / (F * n)),
                         "recall": recall, "ann_ms": ann_ms, "adopt_s": adopt_s, "kernel": kern,
                         "cache_bytes": cache.nbytes(), "sparse_kernel_errors": sparse_kernels.errors()}
                if name == "dense":
                    dense_ms, dense_gpu_ms = ms, gpu_ms
                entry["speedup_vs_dense"] = dense_ms / ms if dense_ms else None
                entry["gpu_speedup_vs_dense"] = dense_gpu_ms / gpu_ms if dense_gpu_ms and gpu_ms else None
                row[name] = entry
                print(f"{F:>6} {name:<16} {ms:>8.3f} {entry['speedup_vs_dense'] or 0:>7.2f} "
                      f"{gpu_ms or 0:>7.3f} {entry['gpu_speedup_vs_dense'] or 0:>6.2f} "
                      f"{entry['tflops_on_computed']:>6.2f} {entry['kernel_tflops_on_computed'] or 0:>6.2f} "
                      f"{entry['density']:>7.3f} {entry['cache_density']:>6.3f} "
                      f"{recall if recall is not None else float('nan'):>6.3f} {ann_ms or 0:>7.3f} {adopt_s:>7.2f}  {kern}")
                del cache, mode
            except Exception as e:   # report and go on: one failing back-end must not hide the others
                row[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
                print(f"{F:>6} {name:<16} FAILED: {type(e).__name__}: {e}")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        res["results"][str(F)] = row
    res["kernels"] = {"dense_choice": kernels.chosen_kernels(), "dense_timings_ms": kernels.kernel_timings(),
                      "sparse_last": sparse_kernels.last_kernel(), "sparse_errors": sparse_kernels.errors()}
    return res


def _recompress(mode: FastARAttention, hist: list, n: int, H: int, D: int, dev: torch.device,
                dtype: torch.dtype) -> KVCache:
    """The timed cache has taken extra commit frames; recall is measured on a fresh adoption of the history."""
    fresh = build_mode(mode.name, ann=dataclass_dict(mode.cfg.ann),
                       tempcache=dataclass_dict(mode.cfg.tempcache),
                       **({"annsa": dataclass_dict(mode.cfg.annsa)} if mode.cfg.annsa is not None else {}),
                       **({"annca": dataclass_dict(mode.cfg.annca)} if mode.cfg.annca is not None else {}))
    cache = _dense_cache(hist, n, H, D, dev, dtype)
    fresh.hasher = mode.hasher   # same buckets as the timed run
    fresh.adopt(cache, n)
    return cache


def dataclass_dict(obj: Any) -> dict[str, Any]:
    import dataclasses
    return dataclasses.asdict(obj)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[100, 1000, 3000] if gpu else [4, 8])
    p.add_argument("--modes", nargs="+", default=MODES)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--capacity-frames", type=int, default=32, help="TempCache slots per head in frames (the "
                   "engine's default; session 3's attention_h100.json ran 64)")
    p.add_argument("--overflow", default="evict", choices=["evict", "merge"], help="TempCache at capacity (the "
                   "engine's default; session 3 ran merge)")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--clusters", type=int, default=32)
    p.add_argument("--static", type=float, default=0.7)
    p.add_argument("--drift", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=5 if gpu else 1)
    p.add_argument("--reps", type=int, default=20 if gpu else 3)
    p.add_argument("--recall-queries", type=int, default=32)
    p.add_argument("--no-recall", action="store_true", help="skip recall (it reads the whole history)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results/attention_h100.json" if gpu else "docs/results/attention_cpu_smoke.json")
    args = p.parse_args(argv)
    res = run(args)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
