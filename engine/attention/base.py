"""One attention interface for every mode: the model calls it, the modes implement it.

The network's attention layers call `attn.self_attn(layer, q, k, v)` and `attn.cross_attn(layer, q, k, v)` on
whatever object they are given and never know which mode runs:

- `SequenceAttention` (training, and the full-recomputation reference): a whole clip at once with a
  block-causal mask (a frame sees itself and every earlier frame).
- `FrameAttention` (generation, one frame at a time): binds a mode, the KV cache and the step being computed;
  the mode decides which cached keys each query reads and what the cache keeps.

An `AttentionMode` is stateless about the model; it may keep per-layer bookkeeping about the cache (a ring
position, groups), which `adopt` rebuilds from the cache when the mode is switched in at run time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

import torch

from engine.attention import kernels
from engine.cache import KVCache


@dataclass(frozen=True)
class StepInfo:
    """Which pass of which frame is being computed."""
    frame: int        # absolute index of the frame being generated
    step: int         # denoising step, 0..num_steps-1; num_steps on the commit pass
    num_steps: int    # denoising steps per frame (<= 4)
    commit: bool      # True on the pass that writes the frame's clean K/V into the cache

    @property
    def progress(self) -> float:
        """Share of denoising done before this pass (0 at the first step); the FAST-AR schedule keys on it."""
        return self.step / max(self.num_steps, 1)


class AttentionMode:
    """Base class of dense, window and the FAST-AR modes. Subclasses override `self_attention` and may
    override `cross_attention`, `adopt` and `stats`."""

    name: str = "base"

    def reset(self) -> None:
        """Forget bookkeeping for a new episode (the cache itself is reset by its owner)."""

    def capacity_tokens(self, tokens_per_frame: int) -> int | None:
        """Fixed cache capacity this mode needs (tokens per layer), or None if the cache grows."""
        return None

    def adopt(self, cache: KVCache, tokens_per_frame: int) -> None:
        """Called when this mode is switched in at run time with a cache another mode filled: bring the cache
        to this mode's rules (compress, evict) without restarting."""

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                       info: StepInfo) -> torch.Tensor:
        """q, k, v (B, H, n, D): the current frame's tokens, rotary applied. Attend to what the cache holds
        for `layer` plus the frame itself; when `info.commit`, also store k, v. Returns (B, H, n, D)."""
        raise NotImplementedError

    def cross_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        info: StepInfo) -> torch.Tensor:
        """q (B, H, n, D) against the prompt's k, v (B, H, P, D). Dense by default."""
        return kernels.attention(q, k, v)

    def stats(self) -> dict[str, Any]:
        """Facts for the HUD and the benchmark (density, recall, groups...), JSON-serialisable."""
        return {"mode": self.name, "kernel": kernels.kernel_name()}

    # ---- whole-pass CUDA graphs (engine/graphs.py) ----------------------------------------------------------
    def graph_key(self, info: StepInfo, cache: KVCache) -> Hashable | None:
        """A key under which this pass's attention calls (all layers) may be captured in one CUDA graph with the
        rest of the pass, or None (default): they run eagerly between the graphed pieces. Return a key only when
        the calls' device work is a function of the key: fixed shapes and cache addresses, no host sync, and no
        host value frozen into the capture other than through `graph_inputs` (the frame index: frame_tensor)."""
        return None

    def graph_stale(self, old: Hashable, new: Hashable) -> bool:
        """Whether the graph captured under key `old` can be dropped now that one is captured under `new` (its
        memory pool freed): a mode whose keys only move forward says so (dense's buckets); default never."""
        return False

    def graph_inputs(self, info: StepInfo) -> None:
        """Write the host values the captured calls read into the mode's device tensors; called before every
        capture and replay of a whole-pass graph."""
        t = getattr(self, "_frame_t", None)
        if t is not None:
            t.fill_(info.frame)

    def graph_replayed(self, info: StepInfo) -> None:
        """The host bookkeeping the calls would have done (frame counters): called after every replay, not
        after the capture, which ran the calls' Python once."""

    def frame_tensor(self, info: StepInfo, device: torch.device) -> torch.Tensor:
        """info.frame as a device scalar for device code that records the frame index: filled here on eager
        calls, by graph_inputs before a replay (a host int would be frozen into a captured graph)."""
        t: torch.Tensor | None = getattr(self, "_frame_t", None)
        if t is None or t.device != device:
            if capturing():
                raise RuntimeError(f"{self.name}: frame_tensor created during a CUDA graph capture; the pass must "
                                   f"run eagerly once before it is captured")
            t = self._frame_t = torch.zeros((), dtype=torch.long, device=device)
        if not capturing():
            t.fill_(info.frame)
        return t


def capturing() -> bool:
    """True inside a CUDA graph capture (where host syncs, new shapes and first-time kernel timing are illegal)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class FrameAttention:
    """What the network calls while generating one frame: a mode, its cache, and the pass being computed."""

    def __init__(self, mode: AttentionMode, cache: KVCache, info: StepInfo, refresh: bool = True) -> None:
        """refresh: bring the cache's bias channel up to date first (KVCache.refresh_channel), which the modes'
        calls rely on; the Sampler passes False, having done it once for the frame in frame_inputs."""
        self.mode, self.cache, self.info = mode, cache, info
        if refresh:
            cache.refresh_channel()

    def self_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.mode.self_attention(layer, q, k, v, self.cache, self.info)

    def cross_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.mode.cross_attention(layer, q, k, v, self.info)

    def set_decay(self, slopes: torch.Tensor, frames: torch.Tensor) -> None:
        """A model with temporal decay calling forward() one frame at a time (frames (B, 1), every row the same
        frame): the cache takes the slopes and the frame it is attending from (the sampler, which calls run(),
        sets both itself)."""
        self.cache.set_decay(slopes)
        self.cache.now.copy_(frames.reshape(-1)[-1])
        self.cache.refresh_channel()


class SequenceAttention:
    """Whole-clip attention for training and for the full-recomputation reference.

    `mask` is a boolean (Lq, Lk) or (B, 1, Lq, Lk) tensor, True where a query may see a key (block-causal
    over frames, built by the model). Cross-attention is plain dense attention to the prompt tokens."""

    def __init__(self, mask: torch.Tensor | None) -> None:
        self.mask = mask
        self.slopes: torch.Tensor | None = None   # (depth, H) temporal decay (set_decay), else None
        self.times: torch.Tensor | None = None    # (B, L) frame index of each token

    def set_decay(self, slopes: torch.Tensor, frames: torch.Tensor) -> None:
        """Temporal decay: a query at frame t_q sees a key at frame t_k with logit - slope x (t_q - t_k).
        slopes (depth, H); frames (B, T) the frame index of each of the sequence's T frame slots."""
        self.slopes, self.times = slopes, frames

    def self_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if self.slopes is not None and self.times is not None:
            mask = decay_mask(self.slopes[layer], self.times, q.shape[2] // self.times.shape[1], mask, q.dtype)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def cross_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def decay_mask(slopes: torch.Tensor, times: torch.Tensor, tokens_per_frame: int, mask: torch.Tensor | None,
               dtype: torch.dtype) -> torch.Tensor:
    """Additive mask (B, H, L, L) of one layer's temporal decay: -slope[h] x (t_q - t_k), -inf where the
    boolean `mask` ((L, L) or (B, 1, L, L), None: everything) hides the key. slopes (H,); times (B, T).
    Materialises L x L per head: for tests and short clips (training on CUDA uses FlexAttention)."""
    t = times.to(dtype).repeat_interleave(tokens_per_frame, 1)                    # (B, L)
    bias = -slopes.to(dtype)[None, :, None, None] * (t[:, None, :, None] - t[:, None, None, :])
    if mask is None:
        return bias
    return bias.masked_fill(~mask, float("-inf"))
