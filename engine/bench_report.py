"""The benchmark's numbers from its per-frame series: per-mode summary, the printed table, the issue's bars, plots.

Pure functions of the series engine/bench.py records, so a bench.json can be re-summarised or re-plotted
without running anything again (`summarise`, `table`, `bars`, `plots`).

FPS at a frame: 1000 / the median generation time over a centred window of `fps_window` frames (clipped at
the ends, so at the last frame it is a trailing window). A median, so that one slow frame (a GC pause, the
first call of a kernel) does not decide it; frames flagged as instrumentation (the first-use kernel
measurement, a mode's recall measurement) are left out of the window and of mean_fps.
"""
from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

TWIN = "dense_twin"   # dense again on other kernels (BenchConfig.twin_params): rollouts that differ only in rounding
SUMMARY_FIELDS: tuple[str, ...] = (
    "fps_at_300", "fps_at_3000", "mean_fps", "peak_mem_mib_at_300", "peak_mem_mib_at_3000", "psnr_vs_dense_db",
    "ssim_vs_dense", "psnr_vs_dense_1step_db", "ssim_vs_dense_1step", "psnr_vs_truth_db", "revisit_psnr_db",
    "density", "recall", "kernel", "motion_late", "truth_motion_late", "layout_late", "frames_sha256")


def mean_of(xs: list[float | None] | None) -> float | None:
    """Mean of the finite values, None when there are none (a field not measured stays null, never 0)."""
    vals = [x for x in (xs or []) if x is not None and math.isfinite(x)]
    return float(np.mean(vals)) if vals else None


def ms_at(gen_ms: list[float], excluded: set[int], frame: int, window: int) -> float | None:
    """Median generation ms over the centred window around `frame` (1-based, clipped to the run)."""
    n = len(gen_ms)
    if n == 0:
        return None
    lo = max(1, min(frame, n) - window // 2)
    hi = min(n, lo + window - 1)
    lo = max(1, hi - window + 1)
    idx = [f for f in range(lo, hi + 1) if f not in excluded] or list(range(lo, hi + 1))
    return float(np.median([gen_ms[f - 1] for f in idx]))


def _mem_at(memory: dict[str, list[Any]], frame: int) -> float | None:
    for f, v in zip(memory["frame"], memory["peak_alloc_mib"]):
        if f == frame:
            return v
    return None


def summarise(series: dict[str, Any], early: int, late: int, fps_window: int) -> dict[str, Any]:
    """The per-mode summary (SUMMARY_FIELDS plus the frame times and memory behind them)."""
    gen = series["gen_ms"]
    excluded = {int(f) for f in series["excluded"]}
    kept = [ms for f, ms in enumerate(gen, start=1) if f not in excluded] or gen
    e_ms, l_ms = ms_at(gen, excluded, early, fps_window), ms_at(gen, excluded, late, fps_window)
    st = series["stats"]
    return {
        "fps_at_300": 1e3 / e_ms if e_ms else None,
        "fps_at_3000": 1e3 / l_ms if l_ms else None,
        "mean_fps": 1e3 * len(kept) / sum(kept) if kept else None,
        "mean_fps_raw": 1e3 * len(gen) / sum(gen) if gen else None,
        "ms_at_300": e_ms, "ms_at_3000": l_ms,
        "peak_mem_mib_at_300": _mem_at(series["memory"], early),
        "peak_mem_mib_at_3000": _mem_at(series["memory"], late),
        "reserved_mib_at_3000": next((r for f, r in zip(series["memory"]["frame"], series["memory"]["reserved_mib"])
                                      if f == late), None),
        "psnr_vs_dense_db": mean_of(series["psnr_vs_dense"]),
        "ssim_vs_dense": mean_of(series["ssim_vs_dense"]),
        # the same against dense, each frame made on dense's own history (one step of error, not a drift)
        "psnr_vs_dense_1step_db": mean_of(series.get("psnr_vs_dense_1step")),
        "ssim_vs_dense_1step": mean_of(series.get("ssim_vs_dense_1step")),
        "psnr_vs_truth_db": mean_of(series["psnr_vs_truth"]),
        # mean frame-to-frame change over the last 10% of the run (a frozen rollout: ~0; compare the truth's)
        "motion_late": mean_of(_late(series.get("motion"))),
        "truth_motion_late": mean_of(_late(series.get("truth_motion"))),
        "layout_late": series.get("layout_late"),
        "revisit_psnr_db": mean_of(series["revisit_psnr"]),
        "density": mean_of(st["density"]),
        "recall": mean_of(st["recall"]),
        "kernel": series["kernel"],
        "excluded_frames": len(excluded),
        "frames_sha256": series.get("frames_sha256"),   # equal in two runs exactly when the frames are
    }


def _late(xs: list[float | None] | None) -> list[float | None] | None:
    """The last 10% of a per-frame series (at least one value)."""
    return None if xs is None else xs[len(xs) - max(1, len(xs) // 10):]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(summary: dict[str, dict[str, Any]], early: int, late: int) -> str:
    """The printed table: one row per mode, speed-ups against dense's row (when dense ran)."""
    d = summary.get("dense", {})
    head = ["mode", f"fps@{early}", f"fps@{late}", "mean fps", f"x@{late}", "x mean", f"MiB@{early}",
            f"MiB@{late}", "PSNR/SSIM vs dense", "1 step vs dense", "PSNR vs truth", "revisit dB", "motion (truth)",
            "layout", "density", "recall", "kernel"]
    rows = [head]
    for name, s in summary.items():
        vs_dense = "ref" if name == "dense" else f"{_f(s['psnr_vs_dense_db'])} / {_f(s['ssim_vs_dense'], '{:.3f}')}"
        one = "ref" if name == "dense" else \
            f"{_f(s.get('psnr_vs_dense_1step_db'))} / {_f(s.get('ssim_vs_dense_1step'), '{:.3f}')}"
        rows.append([name, _f(s["fps_at_300"]), _f(s["fps_at_3000"]), _f(s["mean_fps"]),
                     _f(_ratio(s["fps_at_3000"], d.get("fps_at_3000")), "{:.2f}x"),
                     _f(_ratio(s["mean_fps"], d.get("mean_fps")), "{:.2f}x"),
                     _f(s["peak_mem_mib_at_300"]), _f(s["peak_mem_mib_at_3000"]), vs_dense, one,
                     _f(s["psnr_vs_truth_db"]), _f(s["revisit_psnr_db"]),
                     f"{_f(s['motion_late'])} ({_f(s['truth_motion_late'])})", _f(s["layout_late"], "{:.2f}"),
                     _f(s["density"], "{:.3f}"),
                     _f(s["recall"], "{:.3f}"), str(s["kernel"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def paired(a: list[float | None], b: list[float | None]) -> tuple[float, float, int] | None:
    """Mean of a - b over the pairs both scored, its standard error, and the count (None under 2 pairs).
    Neighbouring revisit pairs are consecutive frames and correlate, so the error is a lower bound."""
    d = np.array([x - y for x, y in zip(a, b) if x is not None and y is not None], np.float64)
    if len(d) < 2:
        return None
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), len(d)


def bars(summary: dict[str, dict[str, Any]], early: int, late: int, b: Any,
         revisit: dict[str, list[float | None]] | None = None) -> list[dict[str, str]]:
    """The issue's bars, each PASS/FAIL/SKIP with its numbers. Reported only: nothing here changes output.
    revisit: each mode's PSNR per revisit pair; with it, "measurably worse" and "beats" on revisit also need the
    paired difference to exceed b.revisit_se standard errors (a 0.2-dB edge at 11 dB is noise, not memory)."""
    out: list[dict[str, str]] = []

    def add(bar: str, ok: bool | None, detail: str) -> None:
        out.append({"bar": bar, "status": "SKIP" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail})

    fa, de, wi = summary.get("fastar"), summary.get("dense"), summary.get("window")

    def need(*names: str) -> str | None:
        missing = [n for n in names if n not in summary]
        return f"mode(s) {missing} not run" if missing else None

    x_end = _ratio(fa and fa["fps_at_3000"], de and de["fps_at_3000"])
    x_mean = _ratio(fa and fa["mean_fps"], de and de["mean_fps"])
    miss = need("fastar", "dense")
    add(f"fastar >= {b.speedup_end}x dense per frame at frame {late}", None if miss or x_end is None else
        x_end >= b.speedup_end, miss or f"{x_end:.2f}x ({_f(fa['fps_at_3000'])} vs {_f(de['fps_at_3000'])} fps)")
    add(f"fastar >= {b.speedup_mean}x dense averaged", None if miss or x_mean is None else x_mean >= b.speedup_mean,
        miss or f"{x_mean:.2f}x ({_f(fa['mean_fps'])} vs {_f(de['mean_fps'])} mean fps)")

    miss_f = need("fastar")
    drift = _ratio(fa and fa["ms_at_3000"], fa and fa["ms_at_300"])
    add(f"fastar frame time at {late} within {b.flat_time:.0%} of at {early}",
        None if miss_f or drift is None else abs(drift - 1) <= b.flat_time,
        miss_f or f"{_f(fa['ms_at_300'], '{:.2f}')} -> {_f(fa['ms_at_3000'], '{:.2f}')} ms ({(drift - 1):+.1%})")
    grow = _ratio(fa and fa["peak_mem_mib_at_3000"], fa and fa["peak_mem_mib_at_300"])
    dgrow = _ratio(de and de["peak_mem_mib_at_3000"], de and de["peak_mem_mib_at_300"])
    add(f"fastar peak memory growth {early}->{late} <= {b.mem_growth:.0%}",
        None if miss_f or grow is None else grow - 1 <= b.mem_growth,
        miss_f or ("no CUDA memory statistics on this device" if grow is None else
                   f"fastar {_f(fa['peak_mem_mib_at_300'])} -> {_f(fa['peak_mem_mib_at_3000'])} MiB ({grow - 1:+.1%}); "
                   f"dense " + ("-" if dgrow is None else f"{_f(de['peak_mem_mib_at_300'])} -> "
                                f"{_f(de['peak_mem_mib_at_3000'])} MiB ({dgrow - 1:+.1%})")))
    p, s = (fa or {}).get("psnr_vs_dense_db"), (fa or {}).get("ssim_vs_dense")
    # dense's twin (when run) is the same attention on other kernels: where it too falls short of the bar, the
    # bar measures how fast this model's rollouts drift apart, which no attention mode can undercut; say so here
    tw = summary.get(TWIN)
    twin_words = "" if tw is None else (
        f"; {TWIN}, the same attention in other rounding: {_f(tw.get('psnr_vs_dense_db'), '{:.2f}')} dB, "
        f"{_f(tw.get('ssim_vs_dense'), '{:.3f}')}")
    add(f"fastar vs dense PSNR >= {b.psnr_db} dB and SSIM >= {b.ssim}",
        None if miss or p is None or s is None else (p >= b.psnr_db and s >= b.ssim),
        miss or f"PSNR {_f(p, '{:.2f}')} dB, SSIM {_f(s, '{:.3f}')} (free rollouts; one step on dense's history: "
        f"{_f((fa or {}).get('psnr_vs_dense_1step_db'), '{:.2f}')} dB, "
        f"{_f((fa or {}).get('ssim_vs_dense_1step'), '{:.3f}')}){twin_words}")

    rf, rd, rw = ((x or {}).get("revisit_psnr_db") for x in (fa, de, wi))
    miss3 = need("fastar", "dense", "window")
    nums = (f"revisit PSNR fastar {_f(rf, '{:.2f}')}, dense {_f(rd, '{:.2f}')}, window {_f(rw, '{:.2f}')} dB"
            + ("" if tw is None else f" ({TWIN} {_f(tw.get('revisit_psnr_db'), '{:.2f}')})"))
    k = getattr(b, "revisit_se", 2.0)

    def beyond_noise(x: str, y: str) -> tuple[bool, str]:
        """Is x's revisit above y's by more than k standard errors of their paired difference? And the words."""
        p = None if revisit is None else paired(revisit.get(x) or [], revisit.get(y) or [])
        if p is None:
            return True, ""
        return p[0] > k * p[1], (f"; {x} - {y} {p[0]:+.2f} dB, {k:g} SE {k * p[1]:.2f} over {p[2]} pairs "
                                 f"(neighbouring pairs correlate: a lower bound)")
    dw_ok, dw_words = beyond_noise("dense", "window") if not miss3 else (True, "")
    add(f"revisit: fastar within {b.revisit_db} dB of dense, window worse than dense by >= {b.window_margin_db} dB"
        f" and by more than {k:g} SE",
        None if miss3 or None in (rf, rd, rw) else (rf >= rd - b.revisit_db and rw <= rd - b.window_margin_db
                                                   and dw_ok),
        miss3 or nums + dw_words)
    t = _ratio(fa and fa["ms_at_3000"], wi and wi["ms_at_3000"])
    miss2 = need("fastar", "window")
    fw_ok, fw_words = beyond_noise("fastar", "window") if not miss2 else (True, "")
    add(f"fastar beats window on revisit (by more than {k:g} SE) at <= {b.time_ratio}x its frame time (at frame {late})",
        None if miss2 or None in (rf, rw, t) else (rf > rw and fw_ok and t <= b.time_ratio),  # type: ignore[operator]
        miss2 or f"revisit {_f(rf, '{:.2f}')} vs {_f(rw, '{:.2f}')} dB{fw_words}; frame time ratio {_f(t, '{:.2f}')}x")
    return out


def _smooth(y: list[float | None], w: int, fn: Any = np.nanmedian) -> np.ndarray:
    a = np.asarray([np.nan if v is None else v for v in y], np.float64)
    if w <= 1 or len(a) < 2:
        return a
    h = w // 2
    return np.asarray([fn(a[max(0, i - h):i + h + 1]) if np.isfinite(a[max(0, i - h):i + h + 1]).any() else np.nan
                       for i in range(len(a))])


def plots(out: Path, modes: dict[str, dict[str, Any]], early: int, late: int, device: str) -> list[str]:
    """fps_vs_frame.png, memory_vs_frame.png, psnr_vs_frame.png (one figure each); returns the file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    w = max(5, late // 100)
    colour = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(modes)}   # one colour per mode everywhere

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, s in modes.items():
        fps = [1e3 / ms if ms else None for ms in s["gen_ms"]]
        ax.plot(range(1, len(fps) + 1), _smooth(fps, w), label=name, lw=1.2, color=colour[name])
    ax.set(xlabel="frame", ylabel=f"FPS (median over {w} frames)", title=f"Generation speed vs frame ({device})")
    if any(s["gen_ms"] for s in modes.values()):
        ax.set_yscale("log")
    for f in (early, late):
        ax.axvline(f, color="gray", ls=":", lw=0.8)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "fps_vs_frame.png", dpi=120)
    names.append("fps_vs_frame.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    any_mem = False
    for name, s in modes.items():
        m = s["memory"]
        if any(v is not None for v in m["peak_alloc_mib"]):
            any_mem = True
            ax.plot(m["frame"], m["peak_alloc_mib"], label=name, lw=1.2, marker=".", ms=3, color=colour[name])
    if not any_mem:
        ax.text(0.5, 0.5, f"no CUDA memory statistics on {device}", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8, ncol=2)
    ax.set(xlabel="frame", ylabel="peak allocated MiB (torch.cuda.max_memory_allocated)",
           title=f"Peak GPU memory vs frame ({device})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "memory_vs_frame.png", dpi=120)
    names.append("memory_vs_frame.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, s in modes.items():
        x = range(1, len(s["psnr_vs_truth"]) + 1)
        if name != "dense" and s["psnr_vs_dense"]:
            axes[0].plot(x, _smooth(s["psnr_vs_dense"], w, np.nanmean), label=name, lw=1.2, color=colour[name])
        one = s.get("psnr_vs_dense_1step") or []
        if name != "dense" and any(v is not None for v in one):
            axes[0].plot(x, _smooth(one, w, np.nanmean), label=f"{name}, 1 step", lw=1.0, ls="--",
                         color=colour[name])
        axes[1].plot(x, _smooth(s["psnr_vs_truth"], w, np.nanmean), label=name, lw=1.2, color=colour[name])
    top = axes[0].get_ylim()[1]
    if top > 60:   # identical frames count as 100 dB; do not let them flatten the curves that matter
        axes[0].set_ylim(top=60)
    axes[0].set(xlabel="frame", ylabel=f"PSNR dB (mean over {w} frames; clipped at 60)",
                title="PSNR vs dense (dashed: one step on dense's history)")
    axes[1].set(xlabel="frame", title="PSNR vs true maze frames")
    for a in axes:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "psnr_vs_frame.png", dpi=120)
    names.append("psnr_vs_frame.png")
    plt.close(fig)
    return names


def write(out: Path, doc: dict[str, Any], strips: dict[str, np.ndarray], labels: list[str],
          make_plots: bool) -> None:
    """Plots and the frame sheet first (so bench.json can list them), then bench.json and table.txt."""
    early, late = doc["early_frame"], doc["late_frame"]
    series = {n: m["series"] for n, m in doc["modes"].items()}
    names = plots(out, series, early, late, doc["device"]) if make_plots else []
    if strips:
        _frames_png(out / "frames.png", strips, labels)
        names.append("frames.png")
    doc["outputs"] = ["bench.json", "table.txt", *names]
    text = report_text(doc)
    (out / "table.txt").write_text(text)
    (out / "bench.json").write_text(json.dumps(doc, indent=1, default=_json_default, allow_nan=False))
    print(text, end="", flush=True)
    print(f"wrote {out}/{{{','.join(doc['outputs'])}}}", flush=True)


def near_tie_lines(ties: dict[str, dict[str, Any]]) -> list[str]:
    """One line per measured choice that sat near the tie margin (kernels.near_ties): another machine may choose
    otherwise, and then its frames differ from the first; pinning makes them comparable."""
    from engine.attention.kernels import TIE
    return [f"near tie: {bucket} chose {t['chosen']} ("
            + ", ".join(f"{n} at {r:.3f}x the fastest" for n, r in t["ratios"].items())
            + f"; ties within {1 + TIE:.2f}x): another machine may choose otherwise; to compare frames across "
              "machines, pin with kernel_choices=" for bucket, t in ties.items()]


def report_text(doc: dict[str, Any]) -> str:
    """table.txt: where and what ran, the dense kernels chosen, the table, the bars and the trace's notes."""
    commit = doc["commit"]
    if re.fullmatch(r"[0-9a-f]{40}", commit):   # a full SHA is shortened; a label (e.g. "abc1234-run12") is not
        commit = commit[:12]
    chosen = doc["kernels"]["chosen"]
    text = [f"engine.bench on {doc['device']} (host {doc['host']}), torch {doc['torch']}, commit {commit}"
            f"{' (dirty)' if doc['dirty'] else ''}, {doc['frames']} frames, timer {doc['timer']}",
            ("dense kernels pinned from " + str(doc["kernels"]["pinned_from"]) + " (buckets it lacks: measured)"
             if doc["kernels"].get("pinned_from") else "dense kernels chosen by measurement")
            + ": " + (json.dumps(chosen) if chosen else "none (no CUDA: torch's own SDPA dispatch runs; the kernel column names its kernel)"),
            *near_tie_lines(doc["kernels"].get("near_ties") or {}),
            f"revisit pairs: {len(doc['trace']['revisit_pairs'])} (gap > {doc['trace']['revisit_min_gap']} frames); "
            f"truth's own revisit PSNR: {_f(doc['truth']['revisit_psnr_db'], '{:.2f}')} dB", "",
            table(doc["summary"], doc["early_frame"], doc["late_frame"]), "", "bars:"]
    text += [f"  {b['status']:4}  {b['bar']}: {b['detail']}" for b in doc["bars"]]
    text += [f"note: {n}" for n in doc["trace"]["notes"]]
    if TWIN in doc["summary"]:
        p = (doc.get("config") or {}).get("twin_params")
        text.append(f"note: {TWIN} is dense again, the same attention computed by other kernels ({json.dumps(p)}); "
                    "its PSNR vs dense is how far two rollouts of this model that differ only in rounding drift apart")
    g = (doc.get("config") or {}).get("guidance") or 0
    if g:   # every mode ran two passes a denoising step: the speed columns are not plain sampling's
        text.append(f"note: memory guidance {g} against {doc['config'].get('guide_attention')} in every mode "
                    f"(each denoising step also ran the guide's pass)")
    mem = (doc.get("config") or {}).get("memory") or {}
    if mem.get("enabled"):   # the engine's pose memory works alike in every mode (engine/memory.py)
        text.append(f"note: spatial memory on in every mode ({json.dumps(mem)}): the revisit column and the "
                    "revisit bars measure it, not what each mode's cache keeps")
    return "\n".join(text) + "\n"


def load(path: Path) -> dict[str, Any]:
    """A saved bench.json (or the bench.json.gz kept under docs/results/)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not a bench.json ({e})") from None


def _frames_png(path: Path, strips: dict[str, np.ndarray], labels: list[str]) -> None:
    """Contact sheet: one row per mode (truth first), one column per reported frame (and the revisit pair)."""
    from PIL import Image, ImageDraw

    rows = [np.concatenate(list(f), axis=1) for f in strips.values()]
    h = rows[0].shape[0]
    img = Image.fromarray(np.concatenate(rows, axis=0))
    pad = Image.new("RGB", (img.width + 110, img.height + 14), "white")
    pad.paste(img, (110, 14))
    d = ImageDraw.Draw(pad)
    for r, name in enumerate(strips):
        d.text((4, 14 + r * h + h // 2 - 6), name, fill="black")
    for c, label in enumerate(labels):
        d.text((110 + c * rows[0].shape[1] // len(labels) + 4, 1), label, fill="black")
    pad.save(path)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def results_json(path: Path, doc: dict[str, Any]) -> None:
    """The summary in the documented shape (docs/BENCHMARKS.md), e.g. docs/results/bench_h100.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    res = {"device": doc["device"], "commit": doc["commit"], "dirty": doc["dirty"], "frames": doc["frames"],
           "early_frame": doc["early_frame"], "late_frame": doc["late_frame"], "torch": doc["torch"],
           "timer": doc["timer"], "created": doc["created"],
           "modes": {n: {k: s[k] for k in SUMMARY_FIELDS} for n, s in doc["summary"].items()}}
    path.write_text(json.dumps(res, indent=1, default=_json_default, allow_nan=False) + "\n")


if __name__ == "__main__":
    # python -m engine.bench_report RUN/bench.json[.gz]: print a saved run's table and bars again
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m engine.bench_report PATH/bench.json[.gz]")
    print(report_text(load(Path(sys.argv[1]))), end="")
