"""Where a frame's host time goes, from a torch.profiler chrome trace (tools/profile_step.py --trace):

    python tools/trace_summary.py trace_1.json.gz [trace_2.json.gz ...] --frames 5
    python tools/trace_summary.py --kernels trace.json.gz     # the device side: kernels by name and grid

Per trace: top-level host ms per frame by op (the host's queue work; ops nested in others are not counted
twice), cudaGraphLaunch calls split at 100 us, and for the costliest graph launch the device nodes it ran
(kernels, copies, memsets): a graph launch's host cost grows with its node count.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json


def summary(path: str, frames: int, top: int = 12) -> None:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    host = [e for e in events if e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver", "user_annotation")]
    host.sort(key=lambda e: (e["tid"], e["ts"], -e["dur"]))
    by_name: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    end: dict[int, float] = {}
    for e in host:   # top level: starts after the previous top-level event of its thread ended
        if e["ts"] >= end.get(e["tid"], -1.0):
            by_name[e["name"]] += e["dur"]
            count[e["name"]] += 1
            end[e["tid"]] = e["ts"] + e["dur"]
    print(f"{path}: top-level host {sum(by_name.values()) / 1e3 / frames:.2f} ms/frame")
    for name, us in by_name.most_common(top):
        print(f"  {us / 1e3 / frames:6.2f} ms  {count[name] / frames:6.1f}/frame  {name[:80]}")
    launches = {e["args"].get("correlation"): e["dur"] for e in host
                if e["name"] == "cudaGraphLaunch" and "args" in e}
    big = [d for d in launches.values() if d > 100]
    small = [d for d in launches.values() if d <= 100]
    print(f"  cudaGraphLaunch: {len(big) / frames:.1f}/frame over 100 us ({sum(big) / 1e3 / frames:.2f} ms), "
          f"{len(small) / frames:.1f}/frame under ({sum(small) / 1e3 / frames:.2f} ms)")
    if launches:
        worst = max(launches, key=launches.__getitem__)
        nodes = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
                 and e.get("args", {}).get("correlation") == worst]
        print(f"  costliest launch: {launches[worst]:.0f} us host, {len(nodes)} device nodes, "
              f"{sum(e['dur'] for e in nodes):.0f} us device")


def kernels(path: str, frames: int, top: int = 25) -> None:
    """The device side: kernels (and copies) per frame by name and grid, with their time, the GPU's busy time
    a frame and the kernel count: what two traces of a change are compared by (docs/BENCHMARKS.md, session 17)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        dev = [e for e in json.load(f)["traceEvents"]
               if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    us: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in dev:
        key = (e["name"][:90], str(e.get("args", {}).get("grid", "")))
        us[key] += e["dur"]
        count[key] += 1
    print(f"{path}: {len(dev) / frames:.0f} device ops a frame, busy {sum(us.values()) / 1e3 / frames:.2f} ms a frame")
    for key, t in us.most_common(top):
        print(f"  {t / frames:7.1f} us  {count[key] / frames:6.1f}/frame  {t / count[key]:6.2f} us each  "
              f"grid {key[1]:<14} {key[0]}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("traces", nargs="+")
    p.add_argument("--frames", type=int, default=5, help="frames the trace covers (profile_step profiles 5)")
    p.add_argument("--kernels", action="store_true", help="the device side instead: kernels by name and grid")
    a = p.parse_args()
    for t in a.traces:
        (kernels if a.kernels else summary)(t, a.frames)


if __name__ == "__main__":
    main()
