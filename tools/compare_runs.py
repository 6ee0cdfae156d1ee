"""Did two or more benchmark runs make the same frames? Per mode: the whole-rollout sha256 of each run and, where
they differ, the first frame whose digest differs (engine.bench writes both: `frames_sha256`, `frame_digest`);
then the attention kernels the runs chose differently, the usual cause (`kernel_choices=` pins them).

    python tools/compare_runs.py runs/bench/a/bench.json runs/bench/b/bench.json[.gz] ...

Exits 1 when any mode present in every run made different frames, so a script can gate on it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from anywhere
from engine.bench_report import load  # noqa: E402


def first_difference(a: list[str], b: list[str]) -> int | None:
    """1-based index of the first frame whose digest differs (frames are numbered from 1 as in the bench), or
    None if the shorter series is a prefix of the longer."""
    return next((k for k, (x, y) in enumerate(zip(a, b), start=1) if x != y), None)


def _difference(a: list[str], b: list[str]) -> str:
    k = first_difference(a, b)
    if k is not None:
        return f"first differing frame {k}"
    if len(a) == len(b):
        return "same frames"
    return f"the same first {min(len(a), len(b))} frames, then {len(a)} against {len(b)}"


def compare(docs: list[dict[str, Any]], names: list[str]) -> tuple[list[str], bool]:
    """Lines of the report, and whether every mode common to all runs made identical frames."""
    modes = [m for m in docs[0]["modes"] if all(m in d["modes"] for d in docs[1:])]
    lines, same = [], True
    for m in modes:
        series = [d["modes"][m]["series"] for d in docs]
        if any("frame_digest" not in s for s in series):
            missing = [n for n, s in zip(names, series) if "frame_digest" not in s]
            raise SystemExit(f"{m}: no frame_digest in {missing} (runs older than the digests cannot be compared)")
        shas = [s["frames_sha256"] for s in series]
        if len(set(shas)) == 1:
            lines.append(f"{m}: identical ({len(series[0]['frame_digest'])} frames, sha256 {shas[0][:16]})")
            continue
        same = False
        parts = [f"{n} vs {names[0]}: {_difference(series[0]['frame_digest'], s['frame_digest'])}"
                 for n, s in zip(names[1:], series[1:])]
        lines.append(f"{m}: DIFFERENT; " + "; ".join(parts))
    lines += kernel_differences(docs, names)
    return lines, same


def kernel_differences(docs: list[dict[str, Any]], names: list[str]) -> list[str]:
    """The shape buckets whose attention kernel differs between the first run and another (kernels picked by
    timing differ in rounding, hence in frames: pin them with `kernel_choices=` to repeat a run)."""
    first = (docs[0].get("kernels") or {}).get("chosen") or {}
    out = []
    for n, d in zip(names[1:], docs[1:]):
        other = (d.get("kernels") or {}).get("chosen") or {}
        diff = {b: (first[b], other[b]) for b in first if b in other and first[b] != other[b]}
        if diff:
            out.append(f"kernel choices differ, {names[0]} vs {n}: "
                       + ", ".join(f"{b} {a} vs {c}" for b, (a, c) in sorted(diff.items())))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="bench.json or bench.json.gz of each run (two or more)")
    a = p.parse_args(argv)
    if len(a.runs) < 2:
        p.error("give two or more runs")
    lines, same = compare([load(r) for r in a.runs], [str(r) for r in a.runs])
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
