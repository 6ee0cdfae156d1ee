"""Dense attention with a temporal decay, one layer's call, synthetic inputs at the model's shapes: the bias
channel (what dense ran through session 13) against the in-kernel decay (engine/attention/triton_decay.py).

    python tools/decay_kernel_bench.py --out runs/results/decay_kernel_h100.json

One frame's 256 queries, 6 heads of 64 channels, bf16, against F committed frames of 256 keys plus the frame
itself, for F in --frames. Heads 0-3 decay at 0.1 a frame and skip keys past a 1000-frame horizon, heads 4-5
at 0.01 read everything (run 12's slopes and horizons, docs/MODEL.md). Rows:
  channel       the cache's bias-channel layout (72 channels) through kernels.padded_attention, one call per
                run of heads with the same first slot, the SDPA backend chosen by measurement (dense's path)
  triton        triton_decay on 64-channel storage (dense's path past its graphed range); variants: tile,
                warps, stages, and key chunks sized for 1, 2 or 8 programs per SM instead of WAVES
  triton_strided  the same kernel reading the first 64 channels of the 72-channel storage in place
  plain64       FA2 on 64 channels with no decay and no horizon (a floor for reference, not a valid result)
Prints a table and writes JSON. CUDA only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.attention import kernels, triton_decay  # noqa: E402
from engine.attention.dense import head_runs  # noqa: E402


def timed(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", default="300,600,1000,3000")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="runs/results/decay_kernel_h100.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("decay_kernel_bench: needs CUDA")
    dev, n, H, D, dt = torch.device("cuda"), 256, 6, 64, torch.bfloat16
    slopes = torch.tensor([0.1] * 4 + [0.01] * 2, device=dev)
    horizon = [1000] * 4 + [0] * 2
    hz = torch.tensor(horizon, dtype=torch.int32, device=dev)
    rows = []
    default_waves = triton_decay.WAVES
    torch.manual_seed(0)
    for frames in [int(f) for f in args.frames.split(",")]:
        L, length = (frames + 1) * n, frames * n
        q = torch.randn(1, H, n, D, device=dev, dtype=dt)
        kp = torch.randn(1, H, L, 72, device=dev, dtype=dt)
        vp = torch.randn(1, H, L, 72, device=dev, dtype=dt)
        frame = torch.cat([torch.arange(frames, device=dev).repeat_interleave(n), torch.full((n,), -1, device=dev)])
        now = torch.tensor(frames, device=dev)
        bias = (slopes[:, None] * (frame - now).clamp(max=0).float()[None]).clamp(min=-1e3)
        bias[:, length:] = 0
        kp[0, :, :, D] = bias.to(dt)                  # channel D holds the bias (KVCache.padded)
        kp[..., D + 1:] = 0
        vp[..., D:] = 0
        starts = [0 if w == 0 else max(0, length - w * n) for w in horizon]
        length_t = torch.tensor(length, device=dev)
        runs = head_runs(starts)

        def channel() -> torch.Tensor:
            return torch.cat([kernels.padded_attention(q[:, a:b], kp[:, a:b, s:], vp[:, a:b, s:]) for a, b, s in runs], 1)
        k64, v64 = kp[..., :D].contiguous(), vp[..., :D].contiguous()
        ref = channel().float()
        variants: dict[str, tuple] = {"triton": (k64, v64, 64, None),
                                      "triton_n128": (k64, v64, 128, None),
                                      "triton_w8": (k64, v64, 64, {"num_warps": 8, "num_stages": 3}),
                                      "triton_s2": (k64, v64, 64, {"num_warps": 4, "num_stages": 2}),
                                      "triton_strided": (kp[..., :D], vp[..., :D], 64, None)}
        for waves in (1, 2, 8):
            variants[f"triton_waves{waves}"] = (k64, v64, 64, None, waves)
        res = {"frames": frames, "keys": L, "channel_ms": timed(channel, args.reps), "channel_kernel": kernels.kernel_name()}
        for name, (k, v, bn, launch, *waves) in variants.items():
            def fn(k=k, v=v, bn=bn, launch=launch) -> torch.Tensor:  # type: ignore[no-untyped-def]
                return triton_decay.decay_attention(q, k, v, frame, now, slopes, hz, length_t, n,
                                                    starts=starts, block_n=bn, launch=launch)
            triton_decay.WAVES = waves[0] if waves else default_waves
            try:
                err = float((fn().float() - ref).abs().max())
                res[f"{name}_ms"], res[f"{name}_max_err"] = timed(fn, args.reps), err
            except Exception as e:   # a launch setting the GPU cannot take (shared memory): say so, go on
                res[f"{name}_ms"], res[f"{name}_error"] = None, f"{type(e).__name__}: {e}"[:200]
        triton_decay.WAVES = default_waves
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            res["plain64_ms"] = timed(lambda: F.scaled_dot_product_attention(q, k64, v64), args.reps)
        rows.append(res)
        print(json.dumps(res), flush=True)
        del kp, vp, k64, v64
    print("\nframes | channel ms | triton ms | x | strided ms | plain64 ms (no decay, no horizon)")
    for r in rows:
        t = r.get("triton_ms")
        print(f"{r['frames']:6d} | {r['channel_ms']:10.3f} | {t if t is None else round(t, 3)} | "
              f"{'-' if t is None else round(r['channel_ms'] / t, 2)} | {r.get('triton_strided_ms')} | {r['plain64_ms']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                          "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
