"""Window attention: a few sink frames kept forever plus a rolling window of the most recent frames.

Constant memory and time per frame (the capacity is fixed up front), as Self-Forcing, Rolling-Forcing and
Matrix-Game 2.0 do; but a place that left the window is forgotten. Slots: [0, sinks*n) the first frames,
then a ring of `window` frames; the frame being generated sits in the scratch slots after them.

While the ring fills (`fill`):
- "fixed" (auto on CUDA): the layout is fixed from a layer's first call: all (sinks + window) frames of slots,
  those not yet written empty (NEG_BIAS, frame -1), as TempCache's are. The attention has one shape from the
  first frame on, so the passes are captured as CUDA graphs while the ring fills too; commit number c writes
  frame slot c until the ring is full, then the oldest ring frame. (Growing left the first sinks + window
  frames eager on the H100: 16.5 ms a frame against 4.2 once full, session 25.)
- "grow" (auto elsewhere): the cache grows by a frame at each commit until the ring is full, so a frame
  attends to the frames so far only. Nothing is captured on a CPU, and there the masked slots would cost:
  ~850 ms a frame from the first frame of CPU play against 340-700 ms while growing (2 cores, session 25).
Both compute the same function (empty slots get no weight), in another summation order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention import kernels
from engine.attention.base import AttentionMode, StepInfo, capturing
from engine.cache import KVCache


@dataclass
class WindowConfig:
    sinks: int = 1     # first frames kept forever (attention sinks)
    window: int = 32   # most recent frames kept
    fill: str = "auto"  # while the ring fills: fixed (every slot from the start, the empty ones masked:
                        # capturable) | grow (the frames so far) | auto (fixed on CUDA, grow elsewhere)

    def __post_init__(self) -> None:
        if self.sinks < 0 or self.window < 1:
            raise ValueError(f"window attention: sinks must be >= 0 and window >= 1, got sinks={self.sinks} "
                             f"window={self.window}")
        if self.fill not in ("auto", "fixed", "grow"):
            raise ValueError(f"window attention: fill must be auto, fixed or grow, got {self.fill!r}")


class WindowAttention(AttentionMode):
    name = "window"

    def __init__(self, cfg: WindowConfig | None = None) -> None:
        self.cfg = cfg or WindowConfig()
        self._frames: dict[int, int] = {}   # layer -> frames committed since reset (drives the ring position)
        self._biased: dict[int, bool] = {}  # layer -> slots carry biases (adopted from TempCache)
        self._dst_t: torch.Tensor | None = None   # first slot of the ring frame the next commit overwrites (device)
        self._n = 0                                # tokens a frame (set by every call)

    def capacity_tokens(self, tokens_per_frame: int) -> int:
        return (self.cfg.sinks + self.cfg.window + 1) * tokens_per_frame   # +1: the scratch frame

    def fixed(self, cache: KVCache) -> bool:
        """Whether the layout is fixed while the ring fills (WindowConfig.fill)."""
        return self.cfg.fill == "fixed" or (self.cfg.fill == "auto" and cache.device.type == "cuda")

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                       info: StepInfo) -> torch.Tensor:
        n = self._n = k.shape[2]
        kept = self.cfg.sinks + self.cfg.window
        fixed = self.fixed(cache)
        if fixed and cache.length[layer] != kept * n:
            self._fixed_layout(cache, layer, n)
        done = self._frames.get(layer, 0)
        end = cache.write_scratch(layer, k, v)
        # a cache adopted from TempCache keeps its group weights and emptied slots until the ring overwrites them;
        # a fixed layout's empty slots are masked by their bias while the ring fills (committed slots change only
        # at the commit below: their bias channel is the frame's refresh)
        out = kernels.cache_attention(q, cache, layer, end, bool(self._biased.get(layer)) or (fixed and done < kept),
                                      committed_fresh=True)
        if info.commit:
            if not fixed and done < kept:   # growing: the frame joins the frames so far
                cache.commit_scratch(layer, n, info.frame)
            else:   # into the next empty frame slot of a fixed layout, or over the oldest frame of the ring
                cache.move_at(layer, slice(end - n, end), self._dst_tensor(done, n, cache.frame.device),
                              self.frame_tensor(info, cache.frame.device))
                if done >= kept and self._biased.get(layer) and (done - self.cfg.sinks) % self.cfg.window == \
                        self.cfg.window - 1:   # a full turn of the ring: recheck the adopted biases once
                    self._biased[layer] = bool((cache.view(layer)[2] != 0).any())
            self._frames[layer] = done + 1
        return out

    def _fixed_layout(self, cache: KVCache, layer: int, n: int) -> None:
        """A fresh (reset) layer: (sinks + window) frames of empty slots, length fixed at their end. Host work,
        outside any capture (graph_key declines until every layer has had its first call)."""
        if cache.length[layer] != 0:
            raise RuntimeError(f"window: layer {layer} holds {cache.length[layer]} slots outside the window's layout "
                               f"(a cache another mode filled goes through adopt first)")
        S = (self.cfg.sinks + self.cfg.window) * n
        cache.ensure_capacity(S + n)
        cache.clear_slots(layer, 0, S)
        cache.set_length(layer, S)
        cache.refresh_channel()   # the empty slots' channel: committed_fresh reads it as this frame's refresh
        self._frames[layer] = 0

    def _dst_tensor(self, done: int, n: int, device: torch.device) -> torch.Tensor:
        """The first slot of the ring frame that commit number `done` overwrites, as a device scalar: filled here
        on eager calls and by graph_inputs before a capture or replay, so one graph serves every ring slot. With
        a host int each of the `window` slots needed a graph of its own: `window` eager commits, then `window`
        captures, before the first replay (on the H100, session 23: frames 33-96 at 13-23 ms instead of 4.2)."""
        t = self._dst_t
        if t is None or t.device != device:
            if capturing():
                raise RuntimeError("window: ring index created during a CUDA graph capture; the commit pass must "
                                   "run eagerly once before it is captured")
            t = self._dst_t = torch.zeros((), dtype=torch.long, device=device)
        if not capturing():
            t.fill_(self._ring_start(done, n))
        return t

    def _ring_start(self, done: int, n: int) -> int:
        """First slot that commit number `done` writes: the next empty frame slot while a fixed layout fills,
        then the oldest frame of the ring."""
        if done < self.cfg.sinks + self.cfg.window:
            return done * n
        return (self.cfg.sinks + (done - self.cfg.sinks) % self.cfg.window) * n

    def graph_key(self, info: StepInfo, cache: KVCache) -> tuple[str, int] | None:
        """Capturable once every layer has its fixed length and no slot carries an adopted bias: with a fixed
        layout one pair of graphs while the ring fills (empty slots masked) and one once it is full; growing,
        only once it is full. The slot a commit writes is a device scalar (graph_inputs), so one commit graph
        serves every slot."""
        if any(self._biased.values()) or len(self._frames) != cache.n_layers:
            return None
        done = set(self._frames.values())
        if len(done) != 1:
            return None
        full = done.pop() >= self.cfg.sinks + self.cfg.window
        if not full and not self.fixed(cache):
            return None   # the length grows at every commit
        if info.commit:
            return ("commit", 0 if full else 1)
        return ("pass", -1 if full else -2)

    def graph_inputs(self, info: StepInfo) -> None:
        super().graph_inputs(info)
        if info.commit and self._dst_t is not None and self._frames:
            self._dst_t.fill_(self._ring_start(next(iter(self._frames.values())), self._n))

    def graph_replayed(self, info: StepInfo) -> None:
        if info.commit:
            for layer in self._frames:
                self._frames[layer] += 1

    def adopt(self, cache: KVCache, tokens_per_frame: int) -> None:
        """Keep the slots of the first `sinks` and the last `window` frames of whatever the cache holds (by the
        frame index of each slot, so a TempCache cache with per-head holes works too), sinks first, so that
        the ring continues from there. Slot biases (group weights, emptied slots) are kept, not zeroed: zeroing
        would revive emptied slots as garbage keys."""
        n = tokens_per_frame
        self._biased = {}
        for layer in range(cache.n_layers):
            length = cache.length[layer]
            fr = cache.frame[layer, :length]
            order = fr.argsort(stable=True)
            order = order[fr[order] >= 0]   # slots no head holds (a TempCache's free slots) are not frames
            n_sink, n_win = self.cfg.sinks * n, self.cfg.window * n
            if length <= n_sink + n_win:
                keep = order
            else:
                keep = torch.cat([order[:n_sink], order[-n_win:]])
            src_k, src_v = cache.k[layer, :, :, keep].clone(), cache.v[layer, :, :, keep].clone()
            src_b, src_f = cache.bias[layer, :, :, keep].clone(), cache.frame[layer, keep].clone()
            side = {name: t[layer, :, :, keep].clone() for name, t in cache.slot_data.items()}
            m = keep.numel()
            padded = -(-m // n) * n   # whole frames, so the ring's frame-sized slots line up
            cache.k[layer, :, :, :m], cache.v[layer, :, :, :m] = src_k, src_v
            cache.bias[layer, :, :, :m], cache.frame[layer, :m] = src_b, src_f
            for name, t in side.items():
                cache.slot_data[name][layer, :, :, :m] = t
            # the rest of the last kept frame is empty, and with a fixed layout the frame slots after it too (for
            # the next commits to fill)
            top = n_sink + n_win if self.fixed(cache) else padded
            cache.ensure_capacity(top + n)
            cache.clear_slots(layer, m, top)
            self._biased[layer] = bool((cache.bias[layer, :, :, :padded] != 0).any())
            cache.set_length(layer, top)
            # next commit fills frame slot padded // n, or (ring full) overwrites ring slot (done - sinks) % window:
            # the oldest kept window frame
            self._frames[layer] = padded // n
        cache.resize(max(self.capacity_tokens(n), max(cache.length)))   # give back what a dense cache grew to
        cache.refresh_channel()   # slots moved and emptied outside a commit

    def reset(self) -> None:
        self._frames.clear()
        self._biased = {}
