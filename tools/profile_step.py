"""Profile one stream of NeuralEnv.step on this machine: where a frame's time goes.

    python tools/profile_step.py --attention dense --frames 60

Prints ms/frame for the whole step, then separately for the denoising passes, the commit pass and the decode
(each synchronised), then torch.profiler's top operators by device and by host time over a few frames.
Exploration tool for speed work; the benchmark (engine.bench) is what reports numbers.

    python tools/profile_step.py --count-ops          # CPU proxy: aten ops per frame, base preset, random weights

On the CPU every aten op stands for one (or a few) GPU kernel launches, so ops per frame is the launch-count
proxy that can be checked without a GPU.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from engine.attention import kernels
from engine.world_model import NeuralEnv, _default_params, merge_params
from worlds.maze.env import MazeEnv
from worlds.maze.explorer import Explorer


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _ms(fn, dev: torch.device, n: int) -> float:
    _sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(dev)
    return (time.perf_counter() - t) * 1e3 / n


_VIEWS = {"view", "_unsafe_view", "transpose", "unbind", "select", "slice", "chunk", "split", "expand", "unsqueeze",
          "squeeze", "permute", "as_strided", "detach", "alias", "t", "narrow", "lift_fresh", "empty", "view_as"}


def count_ops(frames: int = 5, context: int = 8, steps: int = 4, attention: str = "dense",
              reps: int = 3, bf16: bool = False) -> tuple[float, float, float, float]:
    """(top-level aten ops, of which not views (launch proxy), dtype casts, per frame; best-of-`reps` CPU ms
    per frame) for NeuralEnv.step on the base preset with
    random weights, after `context` frames. Top-level aten ops only (ops called from inside other ops are
    not separate launches)."""
    from engine.env import make_action
    from engine.model import WorldModel, preset
    torch.manual_seed(0)
    env = NeuralEnv(model=WorldModel(preset("base")), device="cpu", attention=attention, steps=steps,
                    bf16=bf16)
    env.reset(0, "")
    act = make_action(("forward",), 0.1)
    for _ in range(context):
        env.step(act)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(frames):
            env.step(act)
    top = [e for e in prof.events() if e.name.startswith("aten::") and
           (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    # an op that only makes a view (or a .to/.reshape that did not copy) launches nothing on a GPU
    work = [e for e in top if e.name.removeprefix("aten::") not in _VIEWS and
            not (e.name in ("aten::to", "aten::reshape", "aten::contiguous") and not e.cpu_children)]
    best = min(_ms(lambda: env.step(act), env.device, frames) for _ in range(reps)) if reps else float("nan")
    casts = sum(1 for e in top if e.name == "aten::to" and e.cpu_children)
    return len(top) / frames, len(work) / frames, casts / frames, best


def _host_ms(env: NeuralEnv, it, n: int) -> float:
    """Host ms per frame to queue one frame's sampler work (no decode, no sync): what the GPU waits on when
    the step is host-bound. Synchronised around, not inside."""
    s = env.sampler
    total = 0.0
    for _ in range(n):
        act = torch.as_tensor(np.asarray(next(it), np.float32)[None]).to(env.device)
        _sync(env.device)
        t = time.perf_counter()
        s.step(act)
        total += time.perf_counter() - t
        _sync(env.device)
    return total * 1e3 / n


SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync", "cudaMemcpy",
         "cudaMalloc", "cudaFree", "cudaGraphLaunch", "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")


def _runtime_calls(prof, frames: int) -> None:
    """CUDA runtime calls per frame: syncs and device-to-host copies stall the host's queue, mallocs/frees
    may sync, launches are the host's per-kernel cost."""
    counts: dict[str, tuple[int, float]] = {}
    for e in prof.key_averages():
        if e.key in SYNCS:
            counts[e.key] = (e.count, e.cpu_time_total / 1e3)
    print("runtime calls per frame: " + ", ".join(f"{k} {c / frames:.1f} ({ms / frames:.2f} ms)"
                                                 for k, (c, ms) in sorted(counts.items())))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--attention", default="dense")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--context", type=int, default=10, help="frames generated before timing (cache size)")
    p.add_argument("--trace", default="", help="write the profiler's chrome trace here (.json)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=1_000_003)
    p.add_argument("--count-ops", action="store_true", help="CPU launch proxy on the base preset, then exit")
    p.add_argument("--graphs", choices=("auto", "on", "off"), default="auto",
                   help="CUDA graphs for the DiT pieces and the decoder (auto: on CUDA)")
    p.add_argument("--compile", action="store_true", help="graph pieces and decoder through torch.compile")
    p.add_argument("--fused-writes", choices=("auto", "on", "off"), default="auto",
                   help="the cache's scratch writes as one triton kernel (auto: on CUDA with triton)")
    p.add_argument("--params", default="{}", help='JSON merged into conf/attention/<mode>.yaml params, e.g. '
                   '\'{"tempcache": {"top1": "matmul"}}\'')
    p.add_argument("--no-profile", action="store_true", help="timings only, skip the profiler tables")
    p.add_argument("--cprofile", type=int, default=0, metavar="N",
                   help="also run cProfile over N frames: where the host spends a frame (launches, Python)")
    a = p.parse_args()
    if a.count_ops:
        torch.set_num_threads(2)
        for bf16 in (False, True):
            ops, work, casts, ms = count_ops(steps=a.steps, attention=a.attention, bf16=bf16, reps=0 if bf16 else 3)
            print(f"base preset, {a.attention}, {a.steps} steps, {'bf16' if bf16 else 'fp32'}, CPU, per frame: "
                  f"{ops:.0f} top-level aten ops, {work:.0f} not views, {casts:.0f} casts; {ms:.1f} ms (best of 3)")
        return
    sim = MazeEnv()
    graphs = None if a.graphs == "auto" else a.graphs == "on"
    params = merge_params(_default_params(a.attention), json.loads(a.params))
    env = NeuralEnv(device=a.device, attention={"name": a.attention, **params}, steps=a.steps, bootstrap=MazeEnv(),
                    cuda_graphs=graphs, compile=a.compile,
                    fused_writes={"auto": None, "on": True, "off": False}[a.fused_writes])
    dev = env.device
    sim.reset(a.seed, "brick day")
    env.reset(a.seed, "brick day")
    assert sim.map is not None
    ex = Explorer(sim.map, a.seed)
    acts = []
    for _ in range(a.context + a.frames + 40):
        acts.append(ex.act(sim.pose))
        sim.step(acts[-1])
    it = iter(acts)
    for _ in range(a.context):                            # warm-up: kernel choice, allocator, cache size
        env.step(next(it))
    step_ms = _ms(lambda: env.step(next(it)), dev, a.frames)
    host_ms = _host_ms(env, it, min(a.frames, 20))
    act = torch.as_tensor(acts[0][None])
    s = env.sampler
    sample_ms = _ms(lambda: s.sample(act), dev, 10)
    z = s.sample(act)
    commit_ms = _ms(lambda: s.commit(z, act), dev, 10)
    decode_ms = _ms(lambda: env._decode(z), dev, 10)
    print(f"device {dev} attention {a.attention} steps {a.steps} cache frames ~{s.frame} "
          f"cuda_graphs {env.info()['cuda_graphs']} compiled {a.compile} fused_writes {env.info()['fused_writes']} "
          f"kernel {kernels.kernel_name()}"
          + "".join(f" {k} {v}" for k, v in env.info()["mode_stats"].items() if k in ("merge", "top1")))
    print(f"step {step_ms:.2f} ms/frame ({1e3 / step_ms:.1f} fps) | sample({a.steps} passes) {sample_ms:.2f} | "
          f"commit pass {commit_ms:.2f} | decode {decode_ms:.2f}")
    print(f"host: {host_ms:.2f} ms/frame to queue the sampler's work (no sync); a step slower than that by "
          f"little is host-bound")
    if a.cprofile:
        import cProfile
        import pstats
        more = [np.asarray(x) for x in (acts * (1 + a.cprofile // max(1, len(acts))))[:a.cprofile]]
        pr = cProfile.Profile()
        _sync(dev)
        pr.enable()
        for x in more:
            env.step(x)
        _sync(dev)
        pr.disable()
        print(f"cProfile over {a.cprofile} frames (host time; the frame's device work overlaps it):")
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
    if a.no_profile:
        return
    acts_prof = [np.asarray(x) for x in acts[-5:]]
    kinds = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=kinds) as prof:
        for x in acts_prof:
            env.step(x)
        _sync(dev)
    if a.trace:
        prof.export_chrome_trace(a.trace)
    if dev.type == "cuda":
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
        _runtime_calls(prof, len(acts_prof))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=22, max_name_column_width=60))


if __name__ == "__main__":
    main()
