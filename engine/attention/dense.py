"""Dense attention: every frame reads every earlier frame. The cache grows without bound (memory and time per
frame grow linearly with the frame index): the quality reference and the speed baseline."""
from __future__ import annotations

import torch

from engine.attention import kernels
from engine.attention.base import AttentionMode, StepInfo
from engine.cache import KVCache


class DenseAttention(AttentionMode):
    name = "dense"

    def __init__(self) -> None:
        self._biased = False   # True once adopted from a mode whose slots carry group or empty-slot biases

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                       info: StepInfo) -> torch.Tensor:
        end = cache.write_scratch(layer, k, v)
        # Slots may hold TempCache groups if the cache was filled by another mode and then switched to dense:
        # keep their bias so the switch stays exact; a plain dense cache has none and takes the bias-free path.
        # committed slots change only at the commit below: their bias channel is the frame's refresh
        out = kernels.cache_attention(q, cache, layer, end, self._biased, committed_fresh=True)
        if info.commit:
            cache.commit_scratch(layer, k.shape[2], info.frame)
        return out

    def adopt(self, cache: KVCache, tokens_per_frame: int) -> None:
        self._biased = bool((cache.bias != 0).any()) if cache.tokens() else False

    def reset(self) -> None:
        self._biased = False
