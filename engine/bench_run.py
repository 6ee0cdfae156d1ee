"""One mode's rollout and its quality, for the benchmark (engine/bench.py).

`rollout` plays the trace in a fresh NeuralEnv and records, per frame, the generation time (on the GPU the time
between the ends of consecutive frames' work, from CUDA events; time.perf_counter around env.step on the CPU),
and every few frames the CUDA memory statistics and env.info() (density, recall, cache size, kernel).
`quality` then compares the frames, outside the timed loop. Only the Env interface, torch.cuda memory
statistics and the kernel registry's report are used: nothing here reaches into the sampler.
"""
from __future__ import annotations

import gc
import hashlib
import os
import platform
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.bench_trace import Trace

REPO = Path(__file__).resolve().parent.parent


def report_frames(frames: int) -> tuple[int, int]:
    """The frames the summary reports: 300 and 3000 for a 3000-frame run; 10% and the last frame otherwise."""
    return max(1, round(frames * 0.1)), frames


def recall_every(name: str, params: dict[str, Any]) -> int:
    """Every how many frames the mode measures recall (those frames are left out of the FPS numbers)."""
    from engine.attention.fastar import FASTAR_MODES, MetricsConfig

    if name not in FASTAR_MODES:
        return 0
    return int((params.get("metrics") or {}).get("recall_every", MetricsConfig().recall_every))


def tiny_random_model(seed: int = 0) -> Any:
    """An untrained tiny WorldModel with every DiT weight perturbed (as tests/test_model_core.py does: the
    adaLN-Zero init would make most paths zero), so smoke runs exercise the whole pipeline in seconds."""
    import torch

    from engine.model import WorldModel, preset

    torch.manual_seed(seed)
    m = WorldModel(preset("tiny"))
    with torch.no_grad():
        for p in m.dit.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.eval()


_REVISION = re.compile(r"[0-9a-fA-F]{4,40}([+\-_.][\w.+\-]*)?")


def check_commit(commit: str | None) -> None:
    """A commit given on the command line must read as a git revision (4-40 hex digits, optionally a note after
    + - _ or .): hydra parses an unquoted revision of digits with one 'e' (81e1391) as a float, inf, and the
    digits are gone before any code sees them. Checked when the config is built, before anything runs."""
    if commit is not None and not _REVISION.fullmatch(str(commit)):
        raise ValueError(f"commit: {commit!r} is not a git revision (4-40 hex digits, optionally followed by +note); "
                         "hydra reads a revision such as 81e1391 as a number: quote it, commit=\"'81e1391'\"")


def git_state(commit: str | None = None) -> dict[str, Any]:
    """HEAD and whether tracked files differ from it. `commit` is for a copy of the tree without .git (a GPU
    machine that receives the working tree only): it is reported as given, with dirty unknown (null)."""
    if commit:
        return {"commit": str(commit), "dirty": None}

    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    head = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": head or "unknown", "dirty": None if status is None else bool(status)}


def where(device: Any) -> dict[str, Any]:
    import torch

    cpu = f"cpu ({platform.processor() or platform.machine()})"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return {"device": name, "device_type": device.type, "host": platform.node(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "timer": "cuda_events_between_frame_ends" if device.type == "cuda" else "perf_counter (cpu: no CUDA events)"}


def density_recall(name: str, info: dict[str, Any], dense_tokens: int | None) -> tuple[Any, Any, dict[str, Any]]:
    """Density and recall from env.info(), comparable across modes: the mode's own "density"/"recall" when it
    reports them; else density = kept cache share (cache_density, or cache tokens over dense's at the same
    frame) x self-attention pair density (sa_density), which is the share of dense's self-attention pairs
    computed; for a mode that sparsifies only cross-attention (annca), its cross-attention density. Recall =
    sa_recall, else ca_recall (None when the mode measures none: window, tempcache alone). The components
    are kept beside them ("parts"). Dense is 1 and 1 by definition."""
    if name == "dense":
        return 1.0, 1.0, {}
    st = info.get("mode_stats") or {}
    keys = ("cache_density", "sa_density", "ca_density", "sa_recall", "ca_recall")
    parts = {k: st[k] for k in keys if st.get(k) is not None}
    layers = st.get("layers") or {}
    merged = [layers[k].get("merged_share") for k in sorted(layers, key=int)]
    if any(m is not None for m in merged):   # TempCache: share of each layer's groups holding > 1 key
        parts["merged_share_by_layer"] = merged
    if st.get("cache_density") is None and dense_tokens:
        parts["cache_density"] = info["cache_tokens"] / dense_tokens
    density = st.get("density")
    if density is None:
        if "sa_density" not in parts and parts.get("cache_density", 1.0) == 1.0 and "ca_density" in parts:
            density = parts["ca_density"]          # a mode that sparsifies only cross-attention (annca)
        elif "sa_density" in parts or "cache_density" in parts:
            density = parts.get("cache_density", 1.0) * parts.get("sa_density", 1.0)
    recall = st.get("recall", parts.get("sa_recall", parts.get("ca_recall")))
    return density, recall, parts


def _elapsed(ends: list[Any], k: int) -> float:
    """ms between the end events of frames k - 1 and k (ends[0]: before frame 1); both complete, or an error."""
    ends[k].synchronize()
    return float(ends[k - 1].elapsed_time(ends[k]))


def rollout(name: str, params: dict[str, Any], trace: Trace, source: dict[str, Any], device: Any,
            steps: int, warmup: int, sample_every: int, bootstrap: Callable[[], Any] | None,
            dense_tokens: dict[int, int], bar: Any, latents: list[Any] | None = None
            ) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Play the trace with a fresh env in mode `name`. Returns (frames (T, H, W, 3), series, final info).
    latents: a list that gets each frame's committed latent (outside the timed part), for follow()."""
    import torch

    from engine.attention import kernels
    from engine.world_model import NeuralEnv

    cuda = device.type == "cuda"
    env = NeuralEnv(device=str(device), attention={"name": name, **params}, steps=steps,
                    bootstrap=bootstrap() if bootstrap else None, **source)
    if warmup:
        env.reset(trace.seed, trace.prompt)
        for a in trace.actions[:warmup]:
            env.step(a)
    env.reset(trace.seed, trace.prompt)
    T, early, late = trace.frames, *report_frames(trace.frames)
    samples = set(range(sample_every, T + 1, sample_every)) | {1, early, late} if sample_every else {1, early, late}
    every = recall_every(name, params)
    frames = np.zeros((T, env.spec.height, env.spec.width, 3), np.uint8)
    s: dict[str, Any] = {"gen_ms": [], "wall_ms": [], "excluded": {},
                         "memory": {"frame": [], "peak_alloc_mib": [], "reserved_mib": []},
                         "stats": {"frame": [], "density": [], "recall": [], "cache_tokens": [], "parts": []}}
    # On the GPU a frame's time is the GPU time between the end of the previous frame's work and the end of its
    # own (events queued after each env.step), which counts any time the GPU waited on the host. The loop never
    # waits for the GPU itself: env.step hands its frame out while the GPU still runs the commit pass and the
    # next step's host work overlaps it, as in play. An end event is complete once the next step has returned
    # (its frame came after it on the stream), so each frame's time is read one frame later.
    ends: list[Any] = []
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        ends.append(torch.cuda.Event(enable_timing=True))
        ends[0].record()
    info: dict[str, Any] = {}
    for k, a in enumerate(trace.actions, start=1):
        measured = len(kernels.chosen_kernels())
        t0 = time.perf_counter()
        frames[k - 1] = env.step(a)
        wall = (time.perf_counter() - t0) * 1e3
        if cuda:
            ends.append(torch.cuda.Event(enable_timing=True))
            ends[-1].record()
            if k > 1:
                s["gen_ms"].append(_elapsed(ends, k - 1))
        else:
            s["gen_ms"].append(wall)
        if latents is not None:   # kept on the host: not part of the mode's GPU memory figures (valid once the
            latents.append(env.last_latent.to("cpu", non_blocking=True))   # stream has passed it: a later sync)
        s["wall_ms"].append(wall)
        if len(kernels.chosen_kernels()) != measured:
            s["excluded"][k] = "kernel_measure"
        elif every and k % every == 0:
            s["excluded"][k] = "recall"
        if k in samples:
            mem = s["memory"]
            mem["frame"].append(k)
            mem["peak_alloc_mib"].append(torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None)
            mem["reserved_mib"].append(torch.cuda.memory_reserved(device) / 2 ** 20 if cuda else None)
            info = env.info()
            if name == "dense":
                dense_tokens[k] = info["cache_tokens"]
            d, r, parts = density_recall(name, info, dense_tokens.get(k))
            for key, v in (("frame", k), ("density", d), ("recall", r), ("cache_tokens", info["cache_tokens"]),
                           ("parts", parts)):
                s["stats"][key].append(v)
        bar.update(1)
        if k % 25 == 0:
            bar.set_postfix_str(f"{name} {1e3 / max(s['gen_ms'][-1], 1e-6):.1f} fps")
    if cuda:
        torch.cuda.synchronize(device)   # the last frame's time, and every latent's copy, are complete
        s["gen_ms"].append(_elapsed(ends, T))
    info = env.info()
    stats = info.get("mode_stats") or {}
    s["kernel"] = kernel_label(stats, info)
    s["cuda_graphs"] = {"on": info.get("cuda_graphs"), "compiled": info.get("compiled"),
                        "whole_pass_replays": info.get("whole_pass_replays")}
    s["fused_writes"] = info.get("fused_writes")
    del env
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return frames, s, info


def follow(name: str, params: dict[str, Any], trace: Trace, source: dict[str, Any], device: Any, steps: int,
           bootstrap: Callable[[], Any] | None, latents: list[Any], bar: Any) -> np.ndarray:
    """Each frame of the trace from a fresh env in mode `name` whose history is another rollout's (its
    committed `latents`, one per frame: NeuralEnv.follow), same seed and noise. Frame k then differs from that
    rollout's frame k only by one step of this mode's attention over the same past: the approximation's own
    error, which a free rollout hides once small differences have grown into another trajectory (a chaotic
    divergence any inexact mode shows; docs/BENCHMARKS.md). Untimed. Returns frames (T, H, W, 3)."""
    from engine.world_model import NeuralEnv

    env = NeuralEnv(device=str(device), attention={"name": name, **params}, steps=steps,
                    bootstrap=bootstrap() if bootstrap else None, **source)
    env.reset(trace.seed, trace.prompt)
    frames = np.zeros((trace.frames, env.spec.height, env.spec.width, 3), np.uint8)
    for k, (a, z) in enumerate(zip(trace.actions, latents, strict=True)):
        frames[k] = env.follow(a, z)
        bar.update(1)
    del env
    gc.collect()
    return frames


def frame_digests(frames: np.ndarray) -> tuple[list[str], str]:
    """Per frame the first 16 hex digits of the sha256 of its uint8 pixels, and the sha256 of the whole rollout.
    Two runs made the same frames exactly when the whole digests match; where they do not, the per-frame ones
    say from which frame on (docs/BENCHMARKS.md: determinism across processes)."""
    whole = hashlib.sha256()
    per: list[str] = []
    for f in np.ascontiguousarray(frames, dtype=np.uint8):
        b = f.tobytes()
        whole.update(b)
        per.append(hashlib.sha256(b).hexdigest()[:16])
    return per, whole.hexdigest()


def kernel_label(stats: dict[str, Any], info: dict[str, Any]) -> str:
    """The dense kernel the mode last ran, plus its sparse paths and kernel when it has them."""
    label = str(stats.get("kernel", info.get("kernel")))
    paths = stats.get("paths") or {}
    extra = [f"{k}={v}" for k, v in paths.items() if v != label]
    if stats.get("sparse_kernel") not in (None, "none"):
        extra.append(f"sparse={stats['sparse_kernel']}")
    return label + (f" ({', '.join(extra)})" if extra else "")


def quality(frames: np.ndarray, dense: np.ndarray | None, truth: np.ndarray | None,
            pairs: list[tuple[int, int]], threads: int, followed: np.ndarray | None = None
            ) -> dict[str, list[float | None]]:
    """Per-frame PSNR/SSIM vs dense and PSNR vs truth (frame k+1 at index k); revisit PSNR per pair; with
    `followed` (follow()'s frames on dense's history) its PSNR/SSIM vs dense too (the *_1step series). Identical
    frames count as 100 dB (engine.metrics.mean_psnr's rule) so the JSON stays finite."""
    from engine.metrics import layout_corr, psnr
    late = max(1, len(frames) // 10)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        vs_dense = against(frames, dense, pool, len(frames))
        one_step = against(followed, dense, pool, len(frames))
        vs_truth = [None] * len(frames) if truth is None else \
            list(pool.map(lambda k: min(psnr(frames[k], truth[k + 1]), 100.0), range(len(frames))))
    return {"psnr_vs_dense": vs_dense[0], "ssim_vs_dense": vs_dense[1],
            "psnr_vs_dense_1step": one_step[0], "ssim_vs_dense_1step": one_step[1],
            "psnr_vs_truth": vs_truth,
            "revisit_psnr": [min(psnr(frames[j - 1], frames[i - 1]), 100.0) for i, j in pairs],
            "motion": motion(frames, None if truth is None else truth[0]),
            "truth_motion": None if truth is None else motion(truth[1:], truth[0]),
            # layout of the last 10% against the truth's (engine.metrics.layout_corr; ~0: collapsed texture)
            "layout_late": None if truth is None else layout_corr(frames[-late:], truth[1:][-late:])}


def against(frames: np.ndarray | None, ref: np.ndarray | None, pool: ThreadPoolExecutor, n: int
            ) -> tuple[list[float | None], list[float | None]]:
    """Per-frame (PSNR, SSIM) of the n `frames` against `ref` (same index); n Nones each if either is missing."""
    from engine.metrics import psnr, ssim
    if frames is None or ref is None:
        return [None] * n, [None] * n
    rows = list(pool.map(lambda k: (min(psnr(frames[k], ref[k]), 100.0), ssim(frames[k], ref[k])),
                         range(len(frames))))
    return [r[0] for r in rows], [r[1] for r in rows]


def motion(frames: np.ndarray, first: np.ndarray | None) -> list[float | None]:
    """Per frame, the mean absolute change from the frame before (0-255; the first frame against `first`, the
    frame the rollout started from, or None). A rollout that froze has ~0 where the truth keeps moving: the
    benchmark's number for what its frame sheet shows."""
    cur, prev = (frames, np.concatenate([first[None], frames[:-1]])) if first is not None else (frames[1:], frames[:-1])
    d = np.abs(cur.astype(np.int16) - prev.astype(np.int16)).reshape(len(prev), -1).mean(-1)
    return ([] if first is not None else [None]) + [float(x) for x in d]
