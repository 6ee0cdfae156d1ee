"""Dense attention: every frame reads every earlier frame. The cache grows without bound (memory and time per
frame grow linearly with the frame index): the quality reference and the speed baseline.

Whole-pass CUDA graphs at short context (engine/graphs.py). A plain dense pass cannot be captured: the cache grows
by a frame at every commit, so the attention's shapes and write addresses change every frame, and the attention
calls ran eagerly between the graphed pieces (on the H100, run 11's weights at 80 frames of context: ~400 launches
a frame, host-bound; docs/MODEL.md "Dense by buckets" has the measured effect of this change). While the context
holds at most `graph_frames` frames, dense instead attends to a bucket: slots [0, E), E the frame's end rounded up
to `bucket_frames` frames, with the slots past the frame's end masked by NEG_BIAS in the cache's bias channel, and
it writes the frame by a device-scalar slot index. Then the pass's device work depends only on E (and whether it
commits), so each bucket is captured once and replayed for every frame in it; the result equals the unbucketed
pass (masked slots get exactly zero weight). Beyond `graph_frames` the kernels dominate a frame and the padding
would only cost: dense runs as before. The bucketed path needs the bias channel: dense switches it on for the
graphed range when the cache has none (a model without temporal decay) and off again after, so that long contexts
read unpadded K/V.

A model with temporal decay puts a bias on every committed key. Past the graphed range, on CUDA with triton,
dense computes it inside its own kernel from the slots' frame indices (engine/attention/triton_decay.py,
`decay_kernel`): 64 key channels instead of the bias channel's 72, which FA2 runs at about half speed, and no
channel to rewrite every frame; the channel is switched off there as for a model without decay. Elsewhere
(the CPU, no triton, `decay_kernel: channel`) the bias rides in the channel or a mask, and
`stats()["decay_kernel"]` says which path ran. `bucket_kernel: triton` (what `auto`, the default, takes
where triton runs and a one-time measurement at the first call finds it faster) runs the bucketed range on
the same kernel, with or without a decay: it reads the committed length on the device and never reads past
the frame, so no channel masks the bucket's tail, and the graphed range then
defaults to TRITON_GRAPH_FRAMES, a whole long rollout (the cache grows by doubling and the buckets behind the
frame drop their graphs: graph_stale). Its key chunks are sized for the SM count at every length: on the H100
with the bundled model, 128 against 82 fps at ~100-200 frames of context and 25 against 19 fps at frame 3000
(the channel buckets, then torch's FA2 past frame 256).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from engine.attention import kernels, triton_decay
from engine.attention.base import AttentionMode, StepInfo, capturing
from engine.cache import NEG_BIAS, KVCache, bias_channel_width


MAX_PRESIZE = 256   # frames of cache graph_key allocates ahead (graph_frames' default with channel buckets)
TRITON_GRAPH_FRAMES = 4096   # graph_frames' default with triton buckets: the whole benchmark captured
TRITON_BUCKET_FRAMES = 64    # bucket_frames' defaults (DenseAttention.bucket_frames says why they differ)
CHANNEL_BUCKET_FRAMES = 16


def head_runs(starts: list[int]) -> list[tuple[int, int, int]]:
    """Per-head first slots -> [(h0, h1, start)]: runs of adjacent heads with the same first slot (one
    attention call per run)."""
    runs: list[tuple[int, int, int]] = []
    for h, st in enumerate(starts):
        if runs and runs[-1][2] == st:
            runs[-1] = (runs[-1][0], h + 1, st)
        else:
            runs.append((h, h + 1, st))
    return runs


@dataclass
class DenseConfig:
    graph_frames: int | None = None   # attend by buckets (capturable) while the context is at most this many frames
                                      # (0: never; None: TRITON_GRAPH_FRAMES with triton buckets, else MAX_PRESIZE)
    bucket_frames: int | None = None   # frames a bucket: one captured graph per bucket; at most this - 1 of them
                                       # masked (None: 64 on triton buckets, which never read the masked slots,
                                       # so a longer bucket only captures less often; 16 on the channel, which
                                       # reads them)
    decay_kernel: str = "auto"   # temporal decay past the graphed range: triton (in-kernel), channel, or auto
                                 # (triton where it can run: CUDA with triton installed, else the channel)
    bucket_kernel: str = "auto"   # the bucketed (graphed) range: channel (masked through the bias channel,
                                  # 72 key channels), triton (triton_decay with the length on the device: 64
                                  # channels, with or without a decay; needs triton), auto (where triton
                                  # runs, the faster of the two, timed once at the first call; else channel)

    def __post_init__(self) -> None:
        if (self.graph_frames is not None and self.graph_frames < 0) or \
                (self.bucket_frames is not None and self.bucket_frames < 1):
            raise ValueError(f"dense attention: graph_frames must be >= 0 and bucket_frames >= 1, got "
                             f"graph_frames={self.graph_frames} bucket_frames={self.bucket_frames}")
        if self.decay_kernel not in ("auto", "triton", "channel"):
            raise ValueError(f"dense attention: decay_kernel must be auto, triton or channel, got {self.decay_kernel!r}")
        if self.bucket_kernel not in ("auto", "triton", "channel"):
            raise ValueError(f"dense attention: bucket_kernel must be auto, triton or channel, "
                             f"got {self.bucket_kernel!r}")


class DenseAttention(AttentionMode):
    name = "dense"

    def __init__(self, cfg: DenseConfig | None = None) -> None:
        self.cfg = cfg or DenseConfig()
        self._biased = False   # True once adopted from a mode whose slots carry group or empty-slot biases
        self._n: int | None = None               # tokens per frame (known after the first call)
        self._len_t: torch.Tensor | None = None  # the committed length as a device scalar (bucketed path)
        self._cache: KVCache | None = None       # the cache of the pass graph_key last keyed
        self._own_channel = False                # the bias channel was switched on by this mode (graphs only)
        self._ordered = True                     # the cache holds this mode's own commits, in frame order
        self.skipped = 0.0                       # share of the committed keys the last call skipped (horizon)
        self.decay_path = "none"                 # how the last long-context call applied a decay (stats)
        self._warned = False
        self._warned_buckets = False
        self.decay_choice: str | None = None     # decay_kernel=auto: "triton_decay" or "channel", measured once
        self.bucket_choice: str | None = None    # bucket_kernel=auto: "triton_decay" or "channel", measured once
        self._timer = None                       # GPU ms of a call (kernels._time); tests inject one

    def graph_frames(self, x: torch.Tensor) -> int:
        """The bucketed range in frames: the config's, or by default the whole of a long rollout when the buckets
        run on triton (its graphs read the length on the device and cost no padding), else MAX_PRESIZE."""
        if self.cfg.graph_frames is not None:
            return self.cfg.graph_frames
        return TRITON_GRAPH_FRAMES if self._triton_buckets(x) else MAX_PRESIZE

    def bucket_frames(self, x: torch.Tensor) -> int:
        """Frames a bucket: the config's, or by default TRITON_BUCKET_FRAMES on triton buckets (the kernel reads
        the length on the device and skips the masked slots, so a longer bucket costs nothing and captures less
        often: 169 against 134 fps at ~100-200 frames of context on the H100, docs/BENCHMARKS.md session 16),
        CHANNEL_BUCKET_FRAMES on the channel (which reads every masked slot)."""
        if self.cfg.bucket_frames is not None:
            return self.cfg.bucket_frames
        return TRITON_BUCKET_FRAMES if self._triton_buckets(x) else CHANNEL_BUCKET_FRAMES

    def bucket_end(self, end: int, n: int, x: torch.Tensor) -> int | None:
        """The bucket's end for a frame whose slots end at `end` (n tokens a frame), or None past graph_frames."""
        g = self.bucket_frames(x) * n
        e = -(-end // g) * g
        return e if e <= self.graph_frames(x) * n else None

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                       info: StepInfo) -> torch.Tensor:
        n = k.shape[2]
        self._n = n
        if self.cfg.bucket_kernel == "auto" and self.bucket_choice is None and self.cfg.graph_frames != 0 \
                and not self._biased and triton_decay.supports(q) and not capturing():
            self.bucket_choice = self._choose_bucket_path(q, cache, layer, n)
        e = self.bucket_end(cache.length[layer] + n, n, q) if (cache.pad or self._triton_buckets(q)) else None
        if e is not None:
            return self._bucketed(layer, q, k, v, cache, info, e)
        in_kernel = self._in_kernel_decay(cache, q.device) and self.decay_choice != "channel"
        if in_kernel and self.decay_choice and cache.pad and layer == 0 and not capturing():
            cache.set_bias_channel(False)   # past the graphed range the channel is unused: 64 channels, no refresh
        end = cache.write_scratch(layer, k, v)
        if in_kernel:
            self._length_tensor(cache.frame.device).fill_(cache.length[layer])   # what the kernel reads
        if in_kernel and self.decay_choice is None:
            self.decay_choice = self._choose_decay_path(layer, q, cache, end, n)
            in_kernel = self.decay_choice == "triton_decay"
        if in_kernel:
            out = self._triton_attention(layer, q, cache, end, n)
        else:
            # Slots may hold TempCache groups if the cache was filled by another mode and then switched to
            # dense: keep their bias so the switch stays exact; a plain dense cache has none and takes the
            # bias-free path. Committed slots change only at the commit below: their channel is the frame's.
            self.decay_path = "none" if cache.decay is None else ("channel" if cache.pad else "mask")
            out = kernels.cache_attention(q, cache, layer, end, self._biased, committed_fresh=True,
                                          runs=self._horizon_runs(cache, layer, n))
        if info.commit:
            cache.commit_scratch(layer, n, info.frame)
        return out

    def _in_kernel_decay(self, cache: KVCache, device: torch.device) -> bool:
        """Whether this call takes triton_decay (module docstring): a decay, no group biases, and the kernel
        runnable (decay_kernel=triton insists, auto says once when it cannot)."""
        if cache.decay is None or self._biased or self.cfg.decay_kernel == "channel":
            return False
        ok = triton_decay.available(device) and (self.cfg.decay_kernel == "triton" or triton_decay.supports(cache.k))
        if not ok and self.cfg.decay_kernel == "triton":
            raise RuntimeError(f"dense: decay_kernel=triton needs triton and a CUDA device, got device {device} "
                               f"(triton {'installed' if triton_decay._triton_ok else 'not installed'})")
        if not triton_decay.available(device) and device.type == "cuda" and not self._warned:
            print("dense: triton not installed: the temporal decay rides in the bias channel (72 key channels, "
                  "slower; engine/attention/triton_decay.py)", flush=True)
            self._warned = True
        return ok

    def _choose_decay_path(self, layer: int, q: torch.Tensor, cache: KVCache, end: int, n: int) -> str:
        """decay_kernel=auto, the first call past the graphed range: time the bias-channel path (SDPA on 72
        channels, its backend itself chosen by measurement) against triton_decay on a contiguous copy of the
        keys (what it reads once the channel is off) and keep the faster for the rest of the run, as the issue
        asks of the dense baseline; listed by kernels.chosen_kernels(). Once only: after the channel is off
        its path cannot be timed again, and the synthetic benchmark shows the kernel's lead growing with the
        context (docs/MODEL.md). The two must agree first; a disagreement is printed and keeps the channel.
        decay_kernel=triton, or no channel to compare with (it is off: the mask path is the slow one), choose
        the kernel without timing."""
        if self.cfg.decay_kernel == "triton" or not cache.pad:
            return "triton_decay"
        known = kernels.recorded_choice(q, end, "decay")
        if known is not None:
            return known
        runs = self._horizon_runs(cache, layer, n)

        def channel() -> torch.Tensor:
            return kernels.cache_attention(q, cache, layer, end, False, committed_fresh=True, runs=runs)
        kc, vc = cache.k[layer, :, :, :end].contiguous(), cache.v[layer, :, :, :end].contiguous()

        def kernel() -> torch.Tensor:
            return self._triton_attention(layer, q, cache, end, n, kv=(kc, vc))
        return self._measure(q, end, n, "decay", channel, kernel, "the bias channel", "the decay stays in")

    def _measure(self, q: torch.Tensor, keys: int, n: int, tag: str, channel: Callable[[], torch.Tensor],
                 kernel: Callable[[], torch.Tensor], other: str, fallback: str) -> str:
        """The faster of the channel path and triton_decay for one call over `keys` slots ("channel" or
        "triton_decay"), once they agree (else the channel, printed); recorded under `tag` (decay, buckets)
        among the measured kernels and printed (`other`, `fallback`: the messages' words). Timed by self._timer
        (tests) or kernels._time."""
        err = kernels.relative_error(kernel().float(), channel().float())
        if not err <= 3 * kernels.tolerance(q.dtype):
            print(f"dense: triton_decay disagrees with {other} (relative error {err:.2g}): {fallback} the channel",
                  flush=True)
            kernels.record_choice(q, keys, tag, "channel", {"triton_decay (wrong)": None})
            return "channel"
        timer = self._timer or kernels._time
        times: dict[str, float | None] = {"channel": timer(channel), "triton_decay": timer(kernel)}
        choice = kernels.pick(times)   # a near tie goes to the channel, whatever the timing noise
        kernels.record_choice(q, keys, tag, choice, times)
        print(f"dense: {tag.removesuffix('s')} kernel chosen by measurement over {keys // n} frames of keys: "
              f"{choice} ({', '.join(f'{c} {t:.3f} ms' for c, t in times.items() if t is not None)})", flush=True)
        return choice

    def _triton_buckets(self, x: torch.Tensor) -> bool:
        """Whether the bucketed range runs on triton_decay, for attention on x's device and dtype (q or the
        cache's keys): bucket_kernel=triton, an error where it cannot; auto: where triton runs, for the
        kernel's dtypes (not float64), if the first call's measurement chose it (_choose_bucket_path). On the
        H100 with the bundled model triton measured 128 against 82 fps at ~100-200 frames of context and 25
        against 19 at frame 3000 (docs/BENCHMARKS.md, session 15)."""
        if self.cfg.bucket_kernel == "channel" or self._biased:
            return False
        device = x.device
        if self.cfg.bucket_kernel == "auto":
            ok = triton_decay.supports(x) and self.bucket_choice == "triton_decay"
            if device.type == "cuda" and not triton_decay.available(device) and not self._warned_buckets:
                print("dense: triton not installed: the graphed buckets are masked through the bias channel (72 key "
                      "channels, slower; engine/attention/dense.py)", flush=True)
                self._warned_buckets = True
            return ok
        if not triton_decay.available(device):
            raise RuntimeError(f"dense: bucket_kernel=triton needs triton and a CUDA device, got device {device} "
                               f"(triton {'installed' if triton_decay._triton_ok else 'not installed'})")
        return True

    def _choose_bucket_path(self, q: torch.Tensor, cache: KVCache, layer: int, n: int) -> str:
        """bucket_kernel=auto, at the first call (eager, before any capture): time the channel buckets
        (kernels.padded_attention on 72 channels with the slots past the frame masked, itself choosing its kernel
        by measurement) against triton_decay with the length on the device, on the first bucket's shape with
        random keys, and keep the faster for the run, as the issue asks of the dense baseline; listed by
        kernels.chosen_kernels(). The two must agree first. One shape decides for the whole range: session 15's
        two H100 runs found triton faster at every context from 16 to 3000 frames (docs/BENCHMARKS.md)."""
        B, H, _, D = q.shape
        L0 = cache.length[layer]
        g = (self.cfg.bucket_frames or CHANNEL_BUCKET_FRAMES) * n   # one shape for both: the channel's bucket
        e = -(-(L0 + n) // g) * g
        known = kernels.recorded_choice(q, e, "buckets")
        if known is not None:
            return known
        gen = torch.Generator(device=q.device).manual_seed(0)
        k, v = (torch.randn(B, H, e, D, device=q.device, generator=gen).to(q.dtype) for _ in range(2))
        Dp = bias_channel_width(D)   # the cache's bias-channel storage
        kp, vp = torch.nn.functional.pad(k, (0, Dp - D)), torch.nn.functional.pad(v, (0, Dp - D))
        kp[..., D] = torch.where(torch.arange(e, device=q.device) < L0 + n, 0.0, NEG_BIAS).to(q.dtype)
        length = torch.full((), L0, dtype=torch.long, device=q.device)

        def channel() -> torch.Tensor:
            return kernels.padded_attention(q, kp, vp)

        def kernel() -> torch.Tensor:
            return triton_decay.decay_attention(q, k, v, None, None, None, None, length, n)
        return self._measure(q, e, n, "buckets", channel, kernel, "the channel buckets", "the buckets stay on")

    def _length_tensor(self, device: torch.device) -> torch.Tensor:
        """The committed length as a device scalar, made once (the kernels and the bucketed writes read it)."""
        if self._len_t is None or self._len_t.device != device:
            if capturing():
                raise RuntimeError("dense: length tensor created during a CUDA graph capture; run a pass eagerly first")
            self._len_t = torch.zeros((), dtype=torch.long, device=device)
        return self._len_t

    def _triton_attention(self, layer: int, q: torch.Tensor, cache: KVCache, end: int, n: int,
                          lag: int = 0, kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """q (B, H, n, D) against slots [0, end) through triton_decay: the decay (if any) computed in the kernel,
        each head from its horizon's first slot on (as _horizon_runs), the committed length read from the
        device scalar (which the caller fills). end may lie past the frame (a bucket); lag: how many tokens
        the length may fall short of its host value when this call is replayed (a bucket's graph), so that
        the key chunks are sized for the longest range any replay reads. kv: K, V to read instead of the
        cache's (the measurement's contiguous copy)."""
        # per head the horizon in frames (0: none), made once per set_decay by the cache; None (every slot read)
        # for a cache another mode filled, whose slots need not be in frame order
        hz_all = cache.horizon_tensor() if cache.decay is not None and self._ordered else None
        hz = None if hz_all is None else hz_all[layer]
        length = self._length_tensor(cache.frame.device)   # filled by the caller (eager) or graph_inputs
        starts = self._horizon_starts(cache, layer, n)
        if starts is not None and lag:
            starts = [max(0, st - lag) for st in starts]
        self.decay_path = "triton" if cache.decay is not None else "none"
        kernels.note_kernel("triton_decay")
        K, V = kv if kv is not None else (cache.k[layer, :, :, :end], cache.v[layer, :, :, :end])
        return triton_decay.decay_attention(q, K, V,
                                            cache.frame[layer, :end], cache.now,
                                            None if cache.decay is None else cache.decay[layer].float(), hz,
                                            length, n, starts=starts)

    def _horizon_starts(self, cache: KVCache, layer: int, n: int) -> list[int] | None:
        """Per head, the first slot its decay horizon reads (see _horizon_runs), or None without a horizon.
        Sets stats' horizon_skipped."""
        if cache.horizon is None or not self._ordered or self._biased:
            return None
        length = cache.length[layer]
        starts = [0 if w is None else max(0, length - w * n) for w in cache.horizon[layer]]
        self.skipped = sum(starts) / (len(starts) * max(length, 1))
        return starts

    def _horizon_runs(self, cache: KVCache, layer: int, n: int) -> list[tuple[int, int, int]] | None:
        """With a temporal decay, heads whose horizon (KVCache.set_decay) is shorter than the context skip the
        keys beyond it: their weights are below e^-50 of the newest key's, so the result is dense's to float
        rounding, and a 0.1-a-frame head reads ~900 frames instead of all of them. Runs of adjacent heads
        with the same first slot, or None when every head reads everything. Only for a cache this mode filled
        itself: its slots then hold consecutive frames in order, the newest last."""
        starts = self._horizon_starts(cache, layer, n)
        if not starts or not any(starts):
            return None
        return head_runs(starts)

    def _bucketed(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                  info: StepInfo, e: int) -> torch.Tensor:
        """The same attention over slots [0, e), the slots past the frame masked (module docstring): by the
        bias channel, or (bucket_kernel=triton) by the kernel, which reads the length on the device."""
        n = k.shape[2]
        length = self._length_tensor(cache.frame.device)
        if not capturing():   # eager: the host length is current; captured: graph_inputs fills it before a replay
            cache.ensure_capacity(e)
            length.fill_(cache.length[layer])
        cache.write_scratch_at(layer, k, v, length)
        if self._triton_buckets(q):
            out = self._triton_attention(layer, q, cache, e, n, lag=self.bucket_frames(q) * n)
        else:
            # slots [0, e - bucket) are committed (the frame's end lies in the last bucket): their channel is
            # the frame's refresh
            kp, vp = cache.padded_bucket(layer, length, n, e - self.bucket_frames(q) * n, e)
            out = kernels.padded_attention(q, kp, vp)
        if info.commit:
            cache.commit_scratch_at(layer, self._len_t, n, self.frame_tensor(info, cache.frame.device))
        return out

    # ---- whole-pass CUDA graphs (module docstring) ----------------------------------------------------------
    def graph_key(self, info: StepInfo, cache: KVCache) -> tuple[str, int, bool] | None:
        n = self._n
        if n is None or len(set(cache.length)) != 1:
            return None
        e = self.bucket_end(cache.length[0] + n, n, cache.k)
        if e is None:
            if self._own_channel and cache.pad and cache.decay is None and not self._biased:
                cache.set_bias_channel(False)   # long context: unpadded K/V (the channel was only for graphs)
            self._own_channel = False
            return None
        if self._triton_buckets(cache.k):
            if cache.pad:
                cache.set_bias_channel(False)   # the kernel masks and decays: 64 channels read, none to refresh
        elif not cache.pad:
            cache.set_bias_channel(True)
            cache.refresh_channel()   # the committed slots' channel for this frame (refreshed before it was on)
            self._own_channel = True
        # room for the graphed range (at most MAX_PRESIZE frames of it) at once, here, outside any capture: each
        # growth moves the cache (new addresses), which drops every graph captured so far; past that, room for
        # this bucket (a longer range grows by doubling, as plain dense, so that memory still follows the frames)
        cache.ensure_capacity(max(min(self.graph_frames(cache.k), MAX_PRESIZE) * n, e))
        self._cache = cache
        return ("dense", e, info.commit)

    def graph_stale(self, old: Any, new: Any) -> bool:
        """With a graphed range longer than MAX_PRESIZE frames, a bucket behind the frame's: dense's context only
        grows until a reset, which starts again at the first bucket and captures it anew. Keeps the graphs'
        memory bounded; the default range keeps its 16 buckets' graphs across resets, as before."""
        return (self._cache is not None and self.graph_frames(self._cache.k) > MAX_PRESIZE
                and old[0] == "dense" and new[0] == "dense"
                and old[1] < new[1])

    def graph_inputs(self, info: StepInfo) -> None:
        super().graph_inputs(info)
        if self._len_t is not None and self._cache is not None:
            self._len_t.fill_(self._cache.length[0])

    def graph_replayed(self, info: StepInfo) -> None:
        if info.commit and self._cache is not None and self._n is not None:
            for layer in range(self._cache.n_layers):
                self._cache.length[layer] += self._n

    def adopt(self, cache: KVCache, tokens_per_frame: int) -> None:
        self._biased = bool((cache.bias != 0).any()) if cache.tokens() else False
        self._ordered = cache.tokens() == 0   # another mode's slots need not be in frame order (a ring)

    def reset(self) -> None:
        self._biased = False
        self._ordered = True
        self.skipped = 0.0

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "horizon_skipped": round(self.skipped, 4), "decay_kernel": self.decay_path}
