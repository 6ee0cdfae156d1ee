"""Count the aten ops of one self-attention call per mode on the CPU: a proxy for GPU kernel launches, and a
check for host syncs (ops that read a device value back: `_local_scalar_dense` is what .item()/int()/bool()
run, `nonzero` / `_unique2` / `masked_select` produce data-dependent shapes and sync on CUDA).

    python -m engine.attention.opcount                       # 64 cached frames, 256 tokens, 6 heads, D 64
    python -m engine.attention.opcount --frames 8 --tokens 32 --modes dense tempcache

Per mode: a cache of `frames` frames is built by the mode itself (commit passes on synthetic frames from the
microbenchmark's Scene), then one denoising-step call (progress 0.5, sparse attention on) and one commit call
are profiled with recall measurement off (metrics.recall_every = 0: the timed path). Why the CPU: the op count
of a fixed-shape path is the same on every device, and this machine has no GPU.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from engine.attention import FrameAttention, StepInfo, build_mode
from engine.attention.bench import Scene
from engine.cache import KVCache

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim",
            "aten::masked_select", "aten::unique_consecutive")   # .tolist() copies without an aten op: not seen here


# named variants: the GPU paths' packing/ops run on the CPU too ("loop" stands in for the varlen kernel)
VARIANTS: dict[str, dict[str, Any]] = {
    "annsa:sparse": {"annsa": {"path": "sparse", "kernel": "loop"}},
    "annsa:bucketed": {"annsa": {"path": "bucketed", "kernel": "loop"}},
    "annsa:below_min": {"annsa": {"min_frames": 1 << 20}},   # dense until min_frames: what AnnSA adds around it
    "fastar:sparse": {"annsa": {"path": "sparse", "kernel": "loop"}},
    "fastar:annsa_on": {"schedule": {"layers": None}},
}


# ops that only make views or metadata (no kernel on a GPU): excluded from `launch_ops`
VIEW_OPS = {"aten::slice", "aten::select", "aten::unsqueeze", "aten::reshape", "aten::view", "aten::expand",
            "aten::expand_as", "aten::as_strided", "aten::permute", "aten::transpose", "aten::t", "aten::alias",
            "aten::detach", "aten::_unsafe_view", "aten::squeeze", "aten::flatten", "aten::lift_fresh",
            "aten::empty", "aten::empty_strided", "aten::resolve_conj", "aten::resolve_neg", "aten::unflatten",
            "aten::split", "aten::chunk", "aten::unbind", "aten::narrow", "aten::contiguous"}


def _count(fn: Any) -> dict[str, Any]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
    # top-level aten ops (not nested in another aten op): closer to launches than the nested total
    top = launch = 0
    for e in prof.events():
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            top += 1
            launch += e.name not in VIEW_OPS
    return {"aten_ops": sum(names.values()), "top_level_ops": top, "launch_ops": launch,
            "sync_ops": {k: names[k] for k in SYNC_OPS if names[k]}}


def count_mode(name: str, frames: int, n: int, H: int, D: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    torch.manual_seed(0)
    scene = Scene(n, H, D, clusters=16, static=0.7, drift=0.02, device=torch.device("cpu"), dtype=torch.float32)
    extra = dict(params or {})
    if name not in ("dense", "window"):
        extra.setdefault("metrics", {"recall_every": 0})
    mode = build_mode(name, **extra)
    cap = mode.capacity_tokens(n) or (frames + 2) * n
    cache = KVCache(1, 1, H, D, cap)
    for f in range(frames):
        q, k, v = scene.frame()
        FrameAttention(mode, cache, StepInfo(f, 2, 2, True)).self_attn(0, q, k, v)
    q, k, v = scene.frame()
    step = FrameAttention(mode, cache, StepInfo(frames, 1, 2, False))
    commit = FrameAttention(mode, cache, StepInfo(frames, 2, 2, True))
    step.self_attn(0, q, k, v)   # warm (lazy set-ups)
    out = {"step": _count(lambda: step.self_attn(0, q, k, v)), "commit": _count(lambda: commit.self_attn(0, q, k, v)),
           "cache_slots": cache.length[0]}
    later = [scene.frame() for _ in range(8)]

    def eight_frames() -> None:   # periodic work (compaction every few frames) shows only over several frames
        for i, (fq, fk, fv) in enumerate(later):
            for s, c in ((0, False), (1, False), (2, True)):
                FrameAttention(mode, cache, StepInfo(frames + 1 + i, s, 2, c)).self_attn(0, fq, fk, fv)
    out["8_frames_syncs"] = _count(eight_frames)["sync_ops"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--modes", nargs="+", default=["dense", "window", "tempcache", "annsa", "annsa:sparse", "fastar", "fastar:sparse"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    res = {m: count_mode(m.split(":")[0], a.frames, a.tokens, a.heads, a.dim, VARIANTS.get(m)) for m in a.modes}
    for m, r in res.items():
        print(f"{m:15s} step: {r['step']['aten_ops']:5d} aten {r['step']['top_level_ops']:4d} top "
              f"{r['step']['launch_ops']:4d} launch, syncs {r['step']['sync_ops']}  | commit: "
              f"{r['commit']['aten_ops']:5d} aten {r['commit']['top_level_ops']:4d} top "
              f"{r['commit']['launch_ops']:4d} launch, syncs {r['commit']['sync_ops']}  slots {r['cache_slots']}  "
              f"syncs over 8 frames x 3 passes {r['8_frames_syncs']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
