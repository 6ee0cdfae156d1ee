"""Long-rollout benchmark: every attention mode plays the same trace, side by side (FPS, memory, quality).

    python -m engine.bench                                    # 3000 frames, every mode in conf/bench.yaml
    OMP_NUM_THREADS=1 python -m engine.bench frames=12 'modes=[dense,window]' checkpoint=tiny-random device=cpu

Config: conf/bench.yaml (every key is a hydra override). Writes <out>/bench.json (every per-frame series and
the per-mode summary), table.txt, fps_vs_frame.png, memory_vs_frame.png, psnr_vs_frame.png; with
`results_json=PATH` also the summary in the documented shape (docs/BENCHMARKS.md).

How it measures, and why:
- One process, one device, one mode after another, each in a fresh NeuralEnv built from the same weights, reset
  with the same seed and prompt, fed the same actions: same noise stream, so differences are the mode's.
- Before timing, each mode plays `warmup` frames and is reset (cuDNN/cuBLAS set-up, compiled sparse kernels,
  the kernel measurement of the first shape buckets). kernels.py measures the dense kernels on first use of
  each power-of-two cache bucket, so longer buckets are measured in the timed run: those frames are flagged and
  left out of the FPS numbers, as are frames where a FAST-AR mode measures recall (instrumentation).
- Per frame: the GPU time between the ends of consecutive frames' work (a CUDA event queued after each env.step:
  every denoising step, the decode and the commit pass), which counts any time the GPU waited on the host.
  step() hands its frame out while the GPU still runs the commit pass, and the loop does not wait for the GPU,
  so this is the interval at which a player gets frames. On the CPU, time.perf_counter around env.step, and
  the JSON says so.
- Every `sample_every` frames and at the two reported frames: torch.cuda.max_memory_allocated (peak since the
  mode started) and memory_reserved, and env.info() (mode stats: density, recall, cache size, kernel).
- Quality after each rollout, outside the timed loop: PSNR/SSIM of every frame against dense's frame and PSNR
  against the simulator's true frame (engine/metrics.py); revisit PSNR between a mode's own frames at the
  pairs of frames with the same true pose (engine/bench_trace.py). With `one_step` (default), each mode also
  replays the trace untimed on dense's committed latents (bench_run.follow): PSNR/SSIM of its frame k against
  dense's frame k from the same past, the approximation's own error, which the free rollout's comparison
  loses once the two trajectories have drifted apart.
The benchmark drives envs only through the Env interface plus torch.cuda memory statistics and the kernel
registry's report (kernels.chosen_kernels()).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import bench_report as report
from engine.bench_report import TWIN
from engine.bench_run import (check_commit, follow, frame_digests, git_state, quality, report_frames, rollout,
                              tiny_random_model, where)
from engine.bench_trace import Trace, explorer_trace, replay_truth, revisit_pairs, session_trace
from engine.compiled import inductor_options

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
TINY_RANDOM = "tiny-random"
DEFAULT_MODES = ["dense", "window", "tempcache", "annsa", "annca", "fastar",
                 "tempcache_quant", "annsa_quant", "annca_quant", "fastar_quant"]


@dataclass
class TraceConfig:
    source: str = "explorer"       # explorer, or a recorded session directory (its seed and prompt are used)
    explorer_seed: int = 0
    revisit: bool = True           # add the designed revisit segment (engine/bench_trace.py)
    revisit_at: float = 0.5        # where it starts, as a share of the run


@dataclass
class RevisitConfig:
    min_gap: int | None = None     # frames between visits; null: what the window mode holds (sinks + window)
    pos_tol: float = 0.05          # cells
    yaw_tol_deg: float = 1.0
    max_pairs: int = 64


@dataclass
class BarsConfig:
    """The issue's bars (reported as PASS/FAIL, never asserted)."""
    speedup_end: float = 10.0
    speedup_mean: float = 5.0
    flat_time: float = 0.10
    mem_growth: float = 0.05
    psnr_db: float = 25.0
    ssim: float = 0.70
    revisit_db: float = 1.0
    window_margin_db: float = 0.5
    time_ratio: float = 1.5
    revisit_se: float = 2.0        # "measurably worse" / "beats" on revisit: the paired difference over the revisit
                                   # pairs also exceeds this many standard errors (not noise)


@dataclass
class BenchConfig:
    world: Any = None
    checkpoint: str | None = None  # null: the bundled weights; a checkpoint dir; tiny-random: untrained tiny model
    commit: str | None = None      # null: git rev-parse HEAD; set it when the tree was copied without .git
                                   # (quoted: commit="'81e1391'", else hydra may read it as a number)
    prompt: str | None = None      # null: the world's default prompt
    seed: int = 0
    device: str = "auto"
    steps: int = 4
    noise_scale: float = 1.0       # each frame's initial noise scale (Sampler.noise_scale; 1: as trained)
    guidance: float = 0.0          # memory guidance weight for every mode (Sampler; 0: off), against guide_attention
    guide_attention: str = "window"
    memory: dict[str, Any] | None = None   # spatial memory for every mode (engine/memory.py; None: off, so that
                                   # revisit measures the attention's own memory)
    compile: bool = False          # fuse the CUDA-graph pieces with torch.compile (engine/graphs.py)
    fused_writes: bool | None = None   # the cache's scratch writes as one triton kernel (engine/cache_kernels.py;
                                       # None: on CUDA with triton)
    kernel_choices: str | None = None  # a bench.json[.gz] (or {bucket: kernel} JSON) whose kernels to use instead
                                       # of measuring: repeat that run's frames on another GPU of its kind
    frames: int = 3000             # generated frames (env.step calls) per mode
    modes: list[str] = field(default_factory=lambda: list(DEFAULT_MODES))
    mode_params: dict[str, Any] = field(default_factory=dict)   # per-mode overrides of conf/attention/<mode>.yaml
    recall_every: int | None = 50  # FAST-AR modes measure recall every Nth frame (null: the mode's own setting)
    one_step: bool = True          # each mode again on dense's history (bench_run.follow): its one-step error
    twin_params: dict[str, Any] | None = None   # dense again with these param overrides (the same attention
                                   # on other kernels), row `dense_twin`: how far two rollouts differing only in
                                   # rounding drift apart
    bootstrap: bool = True         # start every rollout from the true first frame
    warmup: int = 16
    sample_every: int = 50
    fps_window: int = 9
    metric_threads: int = 8
    progress: bool = True
    plots: bool = True
    out: str | None = None         # null: runs/bench/<timestamp>
    results_json: str | None = None
    trace: TraceConfig = field(default_factory=TraceConfig)
    revisit: RevisitConfig = field(default_factory=RevisitConfig)
    bars: BarsConfig = field(default_factory=BarsConfig)

    def __post_init__(self) -> None:
        check_commit(self.commit)
        if self.kernel_choices:   # a bad file fails here, before anything runs
            from engine.attention.kernels import load_choices
            load_choices(self.kernel_choices)


# ---- set-up --------------------------------------------------------------------------------------------------
def mode_configs(cfg: BenchConfig, conf_dir: Path = CONF) -> dict[str, dict[str, Any]]:
    """name -> params for every requested mode, from conf/attention/<name>.yaml `params:` (else the node's
    other keys), then cfg.mode_params[name]. An unknown name is a ValueError listing the available ones."""
    from omegaconf import OmegaConf

    from engine.attention import MODES
    from engine.attention.fastar import FASTAR_MODES

    names = [m for m in MODES if m != "probe"] if list(cfg.modes) == ["all"] else list(cfg.modes)
    bad = [m for m in names if m not in MODES]
    if bad or not names:
        raise ValueError(f"unknown attention mode(s) {bad or names}; available: {sorted(MODES)}")
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        path = conf_dir / "attention" / f"{name}.yaml"
        node: dict[str, Any] = (OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[assignment]
                                if path.exists() else {})
        params = dict(node["params"] or {}) if "params" in node else {k: v for k, v in node.items() if k != "name"}
        params = _merge(params, dict(cfg.mode_params.get(name) or {}))
        if cfg.recall_every is not None and name in FASTAR_MODES:
            params["metrics"] = {**(params.get("metrics") or {}), "recall_every": cfg.recall_every}
        out[name] = params
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _sim(cfg: BenchConfig) -> Any:
    from hydra.utils import instantiate

    if cfg.world is None or cfg.world.get("sim") is None:
        raise ValueError("config field 'world.sim' is missing: the benchmark needs the world's simulator")
    return instantiate(cfg.world["sim"], _convert_="all")


def trace_and_pairs(cfg: BenchConfig, modes: dict[str, dict[str, Any]]
                    ) -> tuple[Trace, list[tuple[int, int]], int, tuple[int, int] | None]:
    """The trace every mode plays (with its true frames and poses), its revisit pairs, the least gap a pair
    spans (cfg.revisit.min_gap, else what the window mode holds: sinks + window), and the designed revisit's
    (leave, return) pair when its return lands within the tolerances (always among the pairs)."""
    sim = _sim(cfg)
    prompt = cfg.prompt or (cfg.world or {}).get("default_prompt") or ""
    win = (modes.get("window") or {})
    min_gap = cfg.revisit.min_gap or int(win.get("sinks", 1)) + int(win.get("window", 32))
    if cfg.trace.source == "explorer":
        trace = explorer_trace(sim, cfg.seed, prompt, cfg.frames, cfg.trace.explorer_seed, cfg.trace.revisit,
                               cfg.trace.revisit_at, min_gap)
    else:
        trace = replay_truth(sim, session_trace(cfg.trace.source, cfg.frames))
    seg = trace.segment
    must = (seg["leave"], seg["return"]) if seg and seg["pos_err"] <= cfg.revisit.pos_tol and \
        seg["yaw_err_deg"] <= cfg.revisit.yaw_tol_deg else None
    pairs = revisit_pairs(trace.poses, min_gap, cfg.revisit.pos_tol, cfg.revisit.yaw_tol_deg,
                          cfg.revisit.max_pairs, must)
    return trace, pairs, min_gap, must


def load_config(overrides: tuple[str, ...] | list[str] = (), conf_dir: Path = CONF) -> BenchConfig:
    """conf/bench.yaml with hydra overrides, as `python -m engine.bench` composes it (for tools)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        c = compose(config_name="bench", overrides=list(overrides))
    node = OmegaConf.merge(OmegaConf.structured(BenchConfig), {k: v for k, v in c.items() if k != "hydra"})
    return OmegaConf.to_object(node)  # type: ignore[return-value]


# ---- the run --------------------------------------------------------------------------------------------------
def run_benchmark(cfg: BenchConfig, conf_dir: Path = CONF) -> dict[str, Any]:
    """Run every mode, write the outputs, print the table and the bars; returns what bench.json holds."""
    import torch
    from tqdm import tqdm

    from engine.attention import kernels
    from engine.metrics import psnr

    modes = mode_configs(cfg, conf_dir)                       # unknown modes fail before anything runs
    if cfg.frames < 2:
        raise ValueError(f"frames must be >= 2, got {cfg.frames}")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    out = Path(cfg.out or REPO / "runs" / "bench" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    place = where(device)
    print(f"engine.bench: {len(modes)} mode(s) {list(modes)} x {cfg.frames} frames on {place['device']} "
          f"(torch {place['torch']}, timer: {place['timer']}) -> {out}", flush=True)

    # The trace and its truth.
    trace, pairs, min_gap, must = trace_and_pairs(cfg, modes)
    seg = trace.segment
    truth = trace.truth
    T, (early, late) = trace.frames, report_frames(trace.frames)

    # The model, loaded once per mode (fresh env) from the same source.
    if cfg.checkpoint == TINY_RANDOM:
        model = tiny_random_model(cfg.seed)
        source: dict[str, Any] = {"model": model}
    else:
        source = {"checkpoint": cfg.checkpoint}
    if cfg.compile:
        source["compile"] = True
    source["fused_writes"] = cfg.fused_writes
    if cfg.kernel_choices:
        source["kernel_choices"] = cfg.kernel_choices
    source["noise_scale"] = cfg.noise_scale
    if cfg.guidance:
        source.update(guidance=cfg.guidance, guide_attention=cfg.guide_attention)
    if cfg.memory:
        source["memory"] = cfg.memory

    results: dict[str, dict[str, Any]] = {}
    dense_frames: np.ndarray | None = None
    dense_latents: list[Any] | None = [] if cfg.one_step and "dense" in modes else None
    dense_tokens: dict[int, int] = {}
    order = sorted(modes, key=lambda m: m != "dense")         # dense first: everyone is compared with it
    keep = sorted({early, T // 2, late} | ({must[0], must[1]} if must else set()))
    tags = {early: "10%", late: "last"} | ({must[0]: "leave", must[1]: "return"} if must else {})
    labels = [f"frame {k}" + (f" ({tags[k]})" if k in tags else "") for k in keep]
    strips: dict[str, np.ndarray] = {"truth": truth[keep]} if truth is not None else {}
    boot = (lambda: _sim(cfg)) if cfg.bootstrap else None
    # (label, mode, params): every mode, and after dense its twin when asked for. The twin is the same mode,
    # trace and noise with the same attention through other kernels: its frames differ from dense's only by
    # rounding, so its drift from dense is what any mode that differs from dense at all should expect.
    runs = [(name, name, modes[name]) for name in order]
    if cfg.twin_params is not None:
        if "dense" not in modes:
            raise ValueError("twin_params is set but 'dense' is not among the modes: the twin is compared with dense")
        runs.insert(1, (TWIN, "dense", _merge(modes["dense"], dict(cfg.twin_params))))
    total = T * (len(runs) + (len(order) - 1 if dense_latents is not None else 0))
    bar = tqdm(total=total, desc="bench", unit="frame", disable=not cfg.progress, dynamic_ncols=True)
    for done, (label, name, params) in enumerate(runs, 1):
        ref = label == "dense"
        bar.set_description(label)
        t_mode = time.perf_counter()
        frames, series, info = rollout(name, params, trace, source, device, cfg.steps, cfg.warmup,
                                       cfg.sample_every, boot, dense_tokens if ref else {}, bar,
                                       dense_latents if ref else None)
        followed = None
        if dense_latents and name != "dense":
            bar.set_description(f"{label} on dense's history")
            followed = follow(name, params, trace, source, device, cfg.steps, boot, dense_latents, bar)
        series.update(quality(frames, dense_frames, truth, pairs, cfg.metric_threads, followed))
        series["frame_digest"], series["frames_sha256"] = frame_digests(frames)
        if ref:
            dense_frames = frames
            series["psnr_vs_dense"] = series["ssim_vs_dense"] = [None] * T   # the reference itself
        strips[label] = frames[[k - 1 for k in keep]]
        series["final_stats"] = info.get("mode_stats")
        series["checkpoint_sha256"] = info.get("checkpoint_sha256")
        results[label] = {"params": params, "series": series}
        del frames
        if not cfg.progress:   # a background run's log says how far it got (the bar is off there)
            print(f"engine.bench: {label} done in {time.perf_counter() - t_mode:.0f} s ({done} of {len(runs)}), "
                  f"frames sha256 {series['frames_sha256'][:16]}", flush=True)
    bar.close()

    summary = {n: report.summarise(results[n]["series"], early, late, cfg.fps_window) for n in results}
    truth_revisit = [min(psnr(truth[j], truth[i]), 100.0) for i, j in pairs] if truth is not None else []
    doc: dict[str, Any] = {
        "benchmark": "engine.bench", "created": dt.datetime.now().isoformat(timespec="seconds"),
        **place, **git_state(cfg.commit), "inductor_options": inductor_options(),
        "frames": T, "early_frame": early, "late_frame": late,
        "fields_note": f"*_at_300 = at frame {early}, *_at_3000 = at frame {late}",
        "config": dataclasses.asdict(cfg) | {"world": dict(cfg.world or {})},
        "trace": {"source": trace.source, "seed": trace.seed, "prompt": trace.prompt, "segment": seg,
                  "notes": trace.notes, "revisit_min_gap": min_gap, "revisit_pairs": pairs},
        "truth": {"revisit_psnr_db": report.mean_of(truth_revisit), "revisit_psnr": truth_revisit},
        "kernels": {"chosen": kernels.chosen_kernels(), "timings_ms": kernels.kernel_timings(),
                    "pinned_from": kernels.pinned_source(), "near_ties": kernels.near_ties(),
                    "per_mode": {n: summary[n]["kernel"] for n in summary},
                    "cuda_graphs": {n: results[n]["series"].get("cuda_graphs") for n in results}},
        "summary": summary,
        "modes": results,
    }
    doc["bars"] = report.bars(summary, early, late, cfg.bars,
                              {n: results[n]["series"].get("revisit_psnr") or [] for n in results})
    report.write(out, doc, strips, labels, cfg.plots)
    if cfg.results_json:
        report.results_json(Path(cfg.results_json), doc)
    return doc


def _main() -> None:
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
    def run(c: Any) -> None:
        node = OmegaConf.merge(OmegaConf.structured(BenchConfig), c)
        cfg: BenchConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
        run_benchmark(cfg)

    run()


if __name__ == "__main__":
    _main()
