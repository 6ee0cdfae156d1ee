"""Training-time attention for the [clean | noisy] sequence: FlexAttention with a block mask on CUDA.

The doubled training sequence (engine/model/dit.py `frame_mask`) is about half empty: a dense masked kernel
would still compute every query-key block. FlexAttention skips empty 128x128 blocks and needs no (L, L) mask
in memory. Same interface as SequenceAttention (the model cannot tell), and it falls back to
SequenceAttention with the boolean mask where FlexAttention is unavailable or fails to compile (CPU tests).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from engine.attention import SequenceAttention
from engine.model import frame_mask

_compiled: Any = None


class TrainAttention:
    def __init__(self, clean: torch.Tensor, order: torch.Tensor, tokens_per_frame: int, use_flex: bool) -> None:
        self.fallback: SequenceAttention | None = None
        self.block_mask = None
        self.args = (clean, order, tokens_per_frame)
        self.decay: tuple[torch.Tensor, torch.Tensor] | None = None   # (slopes (depth, H), frames (B, T)) or None
        if use_flex:
            try:
                self.block_mask = self._block_mask(clean, order, tokens_per_frame)
            except Exception as e:  # pragma: no cover - depends on the torch build
                warnings.warn(f"FlexAttention unavailable ({e}); using SDPA with a dense mask")
        if self.block_mask is None:
            self.fallback = SequenceAttention(frame_mask(clean, order, tokens_per_frame))

    def set_decay(self, slopes: torch.Tensor, frames: torch.Tensor) -> None:
        """Temporal decay for this pass (SequenceAttention.set_decay): slopes (depth, H) with their gradient,
        frames (B, T) the frame index of each slot of the [clean | noisy] sequence."""
        self.decay = (slopes, frames)
        if self.fallback is not None:
            self.fallback.set_decay(slopes, frames)

    @staticmethod
    def _block_mask(clean: torch.Tensor, order: torch.Tensor, n: int) -> Any:
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
            qs, ks = q // n, kv // n
            return (clean[ks] & (order[ks] < order[qs])) | (qs == ks)
        L = len(order) * n
        return create_block_mask(mask_mod, None, None, L, L, device=clean.device)

    def self_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        global _compiled
        if self.fallback is not None:
            return self.fallback.self_attn(layer, q, k, v)
        try:
            if _compiled is None:
                from torch.nn.attention.flex_attention import flex_attention
                _compiled = torch.compile(flex_attention, dynamic=False)
            if self.decay is None:
                return _compiled(q, k, v, block_mask=self.block_mask)
            return _compiled(q, k, v, score_mod=_decay_mod(self.decay[0][layer], self.decay[1], self.args[2]),
                             block_mask=self.block_mask)
        except Exception as e:  # pragma: no cover - depends on the torch build
            warnings.warn(f"FlexAttention failed ({str(e).splitlines()[0]}); using SDPA with a dense mask")
            self.fallback = SequenceAttention(frame_mask(*self.args))
            if self.decay is not None:
                self.fallback.set_decay(*self.decay)
            return self.fallback.self_attn(layer, q, k, v)

    def cross_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


def _decay_mod(slopes: torch.Tensor, frames: torch.Tensor, n: int) -> Any:
    """FlexAttention score_mod of one layer's temporal decay: - slope[h] x (t_q - t_k), computed in float32
    inside the kernel (no L x L bias in memory); gradients reach `slopes` through the captured tensor.
    slopes (H,); frames (B, T) frame index per slot; n tokens per frame."""
    t = frames.float()

    def score_mod(score: Any, b: Any, h: Any, q: Any, kv: Any) -> Any:
        return score - slopes[h] * (t[b, q // n] - t[b, kv // n])
    return score_mod
