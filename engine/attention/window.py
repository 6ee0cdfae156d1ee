"""Window attention: a few sink frames kept forever plus a rolling window of the most recent frames.

Constant memory and time per frame (the capacity is fixed up front), as Self-Forcing, Rolling-Forcing and
Matrix-Game 2.0 do; but a place that left the window is forgotten. Slots: [0, sinks*n) the first frames,
then a ring of `window` frames; the frame being generated sits in the scratch slots after them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention import kernels
from engine.attention.base import AttentionMode, StepInfo
from engine.cache import KVCache


@dataclass
class WindowConfig:
    sinks: int = 1     # first frames kept forever (attention sinks)
    window: int = 32   # most recent frames kept

    def __post_init__(self) -> None:
        if self.sinks < 0 or self.window < 1:
            raise ValueError(f"window attention: sinks must be >= 0 and window >= 1, got sinks={self.sinks} "
                             f"window={self.window}")


class WindowAttention(AttentionMode):
    name = "window"

    def __init__(self, cfg: WindowConfig | None = None) -> None:
        self.cfg = cfg or WindowConfig()
        self._frames: dict[int, int] = {}   # layer -> frames committed since reset (drives the ring position)

    def reset(self) -> None:
        self._frames.clear()

    def capacity_tokens(self, tokens_per_frame: int) -> int:
        return (self.cfg.sinks + self.cfg.window + 1) * tokens_per_frame   # +1: the scratch frame

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                       info: StepInfo) -> torch.Tensor:
        n = k.shape[2]
        end = cache.write_scratch(layer, k, v)
        K, V, _ = cache.view(layer, end)
        out = kernels.attention(q, K, V)
        if info.commit:
            done = self._frames.get(layer, 0)
            kept = self.cfg.sinks + self.cfg.window
            if done < kept:
                cache.commit_scratch(layer, n, info.frame)
            else:  # overwrite the oldest frame of the ring with the scratch frame
                ring_slot = (done - self.cfg.sinks) % self.cfg.window
                dst = (self.cfg.sinks + ring_slot) * n
                cache.move(layer, slice(end - n, end), dst)
                cache.frame[layer, dst:dst + n] = info.frame
            self._frames[layer] = done + 1
        return out

    def adopt(self, cache: KVCache, tokens_per_frame: int) -> None:
        """Keep the first `sinks` and the last `window` frames of whatever the cache holds, in that order, so
        that the ring continues from there."""
        n = tokens_per_frame
        for layer in range(cache.n_layers):
            length = cache.length[layer]
            frames = cache.frame[layer, :length].view(-1, n)[:, 0].tolist() if length else []
            order = sorted(range(len(frames)), key=frames.__getitem__)
            keep = order[:self.cfg.sinks] + order[self.cfg.sinks:][-self.cfg.window:]
            src_k = cache.k[layer].clone()
            src_v = cache.v[layer].clone()
            src_f = cache.frame[layer].clone()
            for dst_i, src_i in enumerate(keep):
                s, d = slice(src_i * n, src_i * n + n), slice(dst_i * n, dst_i * n + n)
                cache.k[layer, :, :, d] = src_k[:, :, s]
                cache.v[layer, :, :, d] = src_v[:, :, s]
                cache.frame[layer, d] = src_f[s]
            cache.bias[layer].zero_()   # window keys are plain keys: merged groups lose their weight here
            cache.set_length(layer, len(keep) * n)
            # Next frame overwrites ring slot (done - sinks) % window: make that the oldest kept frame.
            self._frames[layer] = len(keep)
        cache.resize(max(self.capacity_tokens(n), max(cache.length)))   # give back what a dense cache grew to
