"""Probe mode: dense attention that also measures how sparse each layer's attention is, to set the FAST-AR
schedule's layers once a trained model exists:

    attn = build_mode("probe", mass=0.85, every=4)   # run the model for a few hundred frames with it, then
    attn.stats()["suggested_layers"]                 # -> ScheduleConfig.layers (metrics.choose_layers)

Per layer it records the smallest share of keys that carries `mass` of the softmax (sampled queries, every
`every`-th frame, denoising steps after the schedule's dense phase only, since that is where sparsity applies).
"""
from __future__ import annotations

from typing import Any

import torch

from engine.attention.base import StepInfo
from engine.attention.dense import DenseAttention, DenseConfig
from engine.attention.metrics import LayerMeter, choose_layers, sample_queries, top_mass_share
from engine.cache import KVCache


class ProbeAttention(DenseAttention):
    name = "probe"

    def __init__(self, mass: float = 0.85, every: int = 4, queries: int = 32, fraction: float = 0.7,
                 dense_until: float = 0.3) -> None:
        if not 0 < mass < 1 or every < 1 or queries < 1 or not 0 < fraction <= 1:
            raise ValueError(f"probe: need 0 < mass < 1, every >= 1, queries >= 1, 0 < fraction <= 1; got "
                             f"mass={mass} every={every} queries={queries} fraction={fraction}")
        super().__init__(DenseConfig(graph_frames=0))   # measures on the host: never bucketed nor captured
        self.mass, self.every, self.queries, self.fraction, self.dense_until = mass, every, queries, fraction, dense_until
        self.meter = LayerMeter()

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                       info: StepInfo) -> torch.Tensor:
        if info.frame % self.every == 0 and info.progress >= self.dense_until and cache.length[layer]:
            end = cache.length[layer]
            K, _, _ = cache.view(layer, end)
            bias = cache.attn_bias(layer, end)
            idx = sample_queries(q, self.queries)
            kk = torch.cat([K, k], 2)
            biased = self._biased or cache.decay is not None
            b = torch.cat([bias, torch.zeros_like(bias[..., :k.shape[2]])], -1) if biased else None
            self.meter.add(layer, "top_mass_share", top_mass_share(q[:, :, idx], kk, b, self.mass))
        return super().self_attention(layer, q, k, v, cache, info)

    def cross_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        info: StepInfo) -> torch.Tensor:
        if info.frame % self.every == 0 and info.progress >= self.dense_until:
            idx = sample_queries(q, self.queries)
            self.meter.add(layer, "ca_top_mass_share", top_mass_share(q[:, :, idx], k, None, self.mass))
        return super().cross_attention(layer, q, k, v, info)

    def reset(self) -> None:
        super().reset()
        self.meter.reset()

    def stats(self) -> dict[str, Any]:
        layers = self.meter.summary()
        share = {int(l): d["top_mass_share"] for l, d in layers.items() if "top_mass_share" in d}
        return {**super().stats(), "layers": layers,
                "suggested_layers": choose_layers(share, self.fraction) if share else None}
