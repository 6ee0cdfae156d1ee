"""The KV cache: preallocated K/V storage for every self-attention layer of one generation stream.

Only this class owns cache memory. Attention modes (engine/attention/) decide what to keep and ask the cache to
append, overwrite, compact or grow; the model never sees the cache, only the attention call.

Layout, per layer l (all layers share one capacity, lengths are per layer):

    k[l], v[l]   (B, H, capacity, D)  keys (rotary already applied) and values, slots [0, length[l]) valid
    bias[l]      (B, H, capacity)     float32 additive logit bias per slot: 0 for a plain key, log(m) for a
                                      TempCache group of m keys, NEG_BIAS for a slot a head has emptied
    frame[l]     (capacity,)          int64 absolute frame index of the newest key in the slot (-1 if none)

Temporal decay (a model with dit.temporal_decay; set_decay): slopes (L, H) float32 and `now`, the frame being
generated (a device scalar, so captured graphs read it at replay). What the attention reads is `attn_bias`:
bias + max(slope x (frame - now), DECAY_FLOOR) over the committed slots and bias alone over the scratch (the
frame itself, distance 0). The per-slot `frame` is per layer, not per head: a slot whose heads hold different
TempCache groups decays with its newest frame (an approximation; dense and window are exact). `bias` itself
stays the group weight, which TempCache's merging and adoption read.

Order of slots carries no meaning: rotary positions are applied before keys are stored, and softmax attention
is invariant to the order of keys, so modes may reuse slots in any order (a ring for the window mode).

The current frame's own K/V are written into a scratch region right after the valid slots,
[length, length + n), so that one kernel call attends to the past and the frame together without a
concatenation; `commit` then advances the length (or a mode moves the scratch into its ring slot). With
`fused_writes` (set_fused_writes) that write is one triton kernel instead of three torch ops
(engine/cache_kernels.py).

Lengths are host integers: no device sync is needed to know how much of the cache is valid.

Bias channel (set_bias_channel, used by the biased modes on CUDA): k and v are views of storage padded to
Dp = D + 1 rounded up to a multiple of 8 channels, and before a call `padded()` writes each slot's bias into key
channel D. A query padded as [q, 1/scale, 0...] then gets q.k * scale + bias from a plain dense kernel, with no
mask argument and no per-call copy of the cache (engine/attention/kernels.py). The bias tensor stays the one
source of truth. Modes change committed slots only when committing (and TempCache when it lays a layer out,
where that call writes the channel in full), so the committed slots' channel is written once per frame by
`refresh_channel()` (the sampler calls it after setting `now`; FrameAttention for any other caller) and each
call writes the scratch frame's alone (`padded(committed_fresh=True)`). Why: with a temporal decay every slot's
bias changes every frame, and recomputing it for every slot in each of a frame's 5 x depth calls cost ~10
small kernels a call (run 11 on the H100: dense 62 -> 36 fps with the decay on).
"""
from __future__ import annotations

import math

import torch

from engine import cache_kernels

HORIZON_MARGIN = 50.0  # a skipped key's weight is below e^-50 (2e-22) of the newest key's (set_decay): even a
                       # billion of them sum to < 1e-12 of the result, float32 rounding is ~1e-7
NEG_BIAS = -1.0e4  # bias of an emptied slot: exp(-1e4) is 0 in every float format, yet finite (no inf - inf NaN)
DECAY_FLOOR = -1.0e3  # the temporal decay term's floor: exp(-1000) is 0 already, and a decayed slot stays
                      # well above NEG_BIAS / 2, so it is never mistaken for an emptied one


def bias_channel_width(head_dim: int) -> int:
    """Storage channels with the bias channel on: head_dim + 1, rounded up to a multiple of 8 (module docstring)."""
    return (head_dim + 1 + 7) // 8 * 8


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, capacity: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 bias_channel: bool = False) -> None:
        if min(n_layers, batch, n_heads, head_dim) <= 0 or capacity < 0:
            raise ValueError(f"KVCache: sizes must be positive, got layers={n_layers} batch={batch} "
                             f"heads={n_heads} head_dim={head_dim} capacity={capacity}")
        self.n_layers, self.batch, self.n_heads, self.head_dim = n_layers, batch, n_heads, head_dim
        self.device, self.dtype = torch.device(device), dtype
        self.capacity = 0
        self.pad = bias_channel_width(head_dim) - head_dim if bias_channel else 0   # storage channels beyond D
        self.kp: torch.Tensor   # (L, B, H, capacity, D + pad) storage; k, v are its [..., :D] views
        self.vp: torch.Tensor
        self.k: torch.Tensor
        self.v: torch.Tensor
        self.bias: torch.Tensor
        self.frame: torch.Tensor
        self.length: list[int] = [0] * n_layers
        # Extra per-slot tensors that modes register (e.g. AnnSA's bucket codes), (L, B, H, capacity, *trailing):
        # they follow every slot move, resize and per-head gather, so a mode's side data never drifts from K/V.
        self.slot_data: dict[str, torch.Tensor] = {}
        self._slot_fill: dict[str, float] = {}
        self.decay: torch.Tensor | None = None   # (L, H) temporal-decay slopes (set_decay), or None
        self.horizon: list[list[int | None]] | None = None   # [L][H] frames back that matter (set_decay), or None
        self._hz_dev: tuple[int, torch.Tensor] | None = None   # (id(horizon), (L, H) int32 on the device, 0: none)
        self.now = torch.zeros((), dtype=torch.int64, device=self.device)   # frame being generated (decay)
        self._aranges: dict[int, torch.Tensor] = {}   # n -> arange(n) on the device (the *_at methods)
        self.fused_writes = False   # the scratch writes as one kernel (set_fused_writes; engine/cache_kernels.py)
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        L, B, H, D = self.n_layers, self.batch, self.n_heads, self.head_dim
        kp = torch.zeros(L, B, H, capacity, D + self.pad, device=self.device, dtype=self.dtype)
        vp = torch.zeros_like(kp)
        k, v = kp[..., :D], vp[..., :D]
        bias = torch.zeros(L, B, H, capacity, device=self.device, dtype=torch.float32)
        frame = torch.full((L, capacity), -1, device=self.device, dtype=torch.int64)
        if self.capacity:
            n = min(self.capacity, capacity)
            # with the same padding the whole storage moves, bias channel included: a dense cache grows inside
            # a pass (write_scratch), after refresh_channel() wrote the committed slots' channel for the frame
            same = kp.shape[-1] == self.kp.shape[-1]
            (kp if same else k)[..., :n, :] = (self.kp if same else self.k)[..., :n, :]
            (vp if same else v)[..., :n, :] = (self.vp if same else self.v)[..., :n, :]
            bias[..., :n] = self.bias[..., :n]
            frame[:, :n] = self.frame[:, :n]
        for name, old in getattr(self, "slot_data", {}).items():
            new = torch.full((L, B, H, capacity, *old.shape[4:]), self._slot_fill[name], device=self.device,
                             dtype=old.dtype)
            if self.capacity:
                n = min(self.capacity, capacity)
                new[:, :, :, :n] = old[:, :, :, :n]
            self.slot_data[name] = new
        self.kp, self.vp, self.k, self.v, self.bias, self.frame, self.capacity = kp, vp, k, v, bias, frame, capacity

    def set_bias_channel(self, on: bool) -> None:
        """Switch the padded bias-channel storage on or off (module docstring); reallocates, keeps every slot."""
        pad = bias_channel_width(self.head_dim) - self.head_dim if on else 0
        if pad != self.pad:
            self.pad = pad
            self._allocate(self.capacity)

    def set_fused_writes(self, on: bool) -> None:
        """write_scratch / write_scratch_at as one kernel (engine/cache_kernels.py) instead of three or four torch
        ops: the same values, fewer launches. Needs triton on CUDA (or its interpreter); asking for it where it
        cannot run is an error, not a quiet fallback."""
        if on and not cache_kernels.available(self.device):
            raise RuntimeError(f"KVCache: fused_writes needs triton and a CUDA device, got device {self.device} "
                               f"(triton {'installed' if cache_kernels._triton_ok else 'not installed'})")
        self.fused_writes = bool(on)

    def padded(self, layer: int, end: int, committed_fresh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H, end, Dp) of slots [0, end) with each slot's attention bias in key channel D (written here).
        committed_fresh: the caller's mode changes committed slots only when committing, so the channel of
        [0, length) is still what refresh_channel() wrote this frame: write the scratch frame's alone."""
        if not self.pad:
            raise RuntimeError("KVCache.padded: the bias channel is off (set_bias_channel(True) first)")
        if committed_fresh:
            n = min(self.length[layer], end)
            self.kp[layer, :, :, n:end, self.head_dim] = self.bias[layer, :, :, n:end]   # no decay over the frame
        else:
            self.kp[layer, :, :, :end, self.head_dim] = self.attn_bias(layer, end)
        return self.kp[layer, :, :, :end], self.vp[layer, :, :, :end]

    def refresh_channel(self) -> None:
        """Write every layer's committed slots' attention bias (attn_bias) into key channel D, all layers in one
        go; a no-op with the channel off. Called once per frame after `now` is set (Sampler.frame_inputs), and
        after anything that changes committed slots outside a commit, for `padded(committed_fresh=True)`.
        Slots between a layer's length and the longest layer's get a stale value there, which is harmless:
        they are that layer's scratch (written per call) or beyond what it attends to."""
        n = max(self.length)
        if not self.pad or n == 0:
            return
        b = self.bias[..., :n]                                                          # (L, B, H, n)
        if self.decay is not None:
            b = b + self._decay_term(self.frame[:, :n], self.decay)[:, None]             # (L, 1, H, n)
        self.kp[..., :n, self.head_dim] = b

    def set_decay(self, slopes: torch.Tensor | None, logit_bound: torch.Tensor | None = None) -> None:
        """Temporal decay slopes (L, H) (module docstring), or None for none. `now` is set per frame by the caller.
        logit_bound (L,): a bound on each layer's |q.k| x scale (CausalDiT.logit_bound); with it the cache keeps
        `horizon`, per layer and head the frames back beyond which a key's attention weight is below
        e^-HORIZON_MARGIN of the newest key's whatever q and k are: dense may skip those keys and stay exact to
        float rounding (engine/attention/dense.py)."""
        if slopes is not None and tuple(slopes.shape) != (self.n_layers, self.n_heads):
            raise ValueError(f"KVCache.set_decay: slopes {tuple(slopes.shape)}, expected (layers, heads) = "
                             f"({self.n_layers}, {self.n_heads})")
        self.decay = None if slopes is None else slopes.detach().to(self.device, self._bias_dtype()).clone()
        self.horizon = None
        self._hz_dev = None
        if slopes is not None and logit_bound is not None:
            # a key w frames back scores at most R - slope x w, the newest at least -R: below e^-M when
            # slope x w > M + 2R. Frames, rounded up; no horizon (huge) where the slope is 0.
            need = (HORIZON_MARGIN + 2 * logit_bound.detach().float().cpu()[:, None]) / slopes.detach().float().cpu()
            self.horizon = [[int(math.ceil(w)) if math.isfinite(w) else None for w in row] for row in need.tolist()]

    def horizon_tensor(self) -> torch.Tensor | None:
        """`horizon` as (L, H) int32 on the device, 0 where a head has none (what triton_decay takes), or None
        without horizons. Made once per set_decay (no host copy per call; not first inside a graph capture)."""
        if self.horizon is None or self.decay is None:
            return None
        if self._hz_dev is None or self._hz_dev[0] != id(self.horizon):
            rows = [[0 if w is None else w for w in row] for row in self.horizon]
            self._hz_dev = (id(self.horizon), torch.tensor(rows, dtype=torch.int32, device=self.device))
        return self._hz_dev[1]

    def horizon_starts(self, layer: int, n: int) -> tuple[torch.Tensor, list[int]] | None:
        """For a layer whose slots hold consecutive frames in order, the newest last (a growing cache its mode
        filled itself), with n tokens a frame: per head its horizon (H,) int32 (horizon_tensor) and the first
        slot it reads (host ints), or None where no head of the layer has a horizon."""
        hz = self.horizon_tensor()
        if hz is None or all(w is None for w in self.horizon[layer]):  # type: ignore[index]
            return None
        length, row = self.length[layer], self.horizon[layer]  # type: ignore[index]
        return hz[layer], [0 if w is None else max(0, length - w * n) for w in row]

    def _bias_dtype(self) -> torch.dtype:
        """float32, or float64 for a float64 cache (the exactness tests' reference precision)."""
        return torch.promote_types(torch.float32, self.dtype)

    def attn_bias(self, layer: int, end: int) -> torch.Tensor:
        """(B, H, end): the logit bias the attention adds for slots [0, end): `bias`, plus the temporal decay
        over the committed slots [0, length) (none over the scratch frame after them). float32 (float64 for a
        float64 cache)."""
        b = self.bias[layer, :, :, :end]
        if self.decay is None:
            return b
        n = min(self.length[layer], end)
        return torch.cat([b[..., :n] + self._decay_term(self.frame[layer, :n], self.decay[layer]), b[..., n:]], -1)

    def decay_by_head(self, layer: int, frame: torch.Tensor) -> torch.Tensor:
        """frame (B, H, S): each head's own slot frames (a cache whose heads are ordered differently, AnnSA's
        bucket order) -> (B, H, S) the temporal decay term, as _decay_term: slope x (frame - now), floored."""
        back = (frame - self.now).clamp(max=0).to(self.decay.dtype)               # type: ignore[union-attr]
        return (self.decay[layer][None, :, None] * back).clamp(min=DECAY_FLOOR)   # type: ignore[index]

    def _decay_term(self, frame: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
        """frame (..., n) slot frame indices, slopes (..., H) -> (..., H, n): slope x (frame - now), floored."""
        back = (frame - self.now).clamp(max=0).to(slopes.dtype)                 # frames back, <= 0
        return (slopes[..., :, None] * back[..., None, :]).clamp(min=DECAY_FLOOR)

    # ---- sizes -------------------------------------------------------------------------------------------
    def ensure_capacity(self, tokens: int) -> None:
        """Grow (doubling, so appends are amortised O(1)) until `tokens` slots fit. Used by the dense mode,
        whose memory is meant to grow; bounded modes allocate their fixed capacity once."""
        if tokens <= self.capacity:
            return
        new = max(tokens, 2 * self.capacity, 1)
        self._allocate(new)

    def resize(self, capacity: int) -> None:
        """Reallocate to exactly `capacity` slots (never below a valid length): modes that bound memory call
        this when switched in, so that what a dense cache grew to is given back."""
        if capacity < max(self.length):
            raise ValueError(f"KVCache.resize: {capacity} slots cannot hold the {max(self.length)} valid ones")
        if capacity != self.capacity:
            self._allocate(capacity)

    def tokens(self) -> int:
        """Valid slots summed over layers (what the HUD reports as cache size)."""
        return sum(self.length)

    def nbytes(self) -> int:
        """Bytes allocated for the cache (all layers, capacity, not only the valid part)."""
        tensors = (self.kp, self.vp, self.bias, self.frame, *self.slot_data.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def reset(self) -> None:
        self.length = [0] * self.n_layers
        self.frame.fill_(-1)
        self.bias.zero_()
        for name, t in self.slot_data.items():
            t.fill_(self._slot_fill[name])

    # ---- per-layer access ---------------------------------------------------------------------------------
    def write_scratch(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> int:
        """Put the current frame's k, v (B, H, n, D) right after the valid slots; returns the end index, so
        that slots [0, end) are what the frame attends to. Does not change the length."""
        n = k.shape[2]
        start = self.length[layer]
        self.ensure_capacity(start + n)
        if self.fused_writes:
            cache_kernels.write_kv(self.k[layer], self.v[layer], self.bias[layer], k, v, start)
            return start + n
        self.k[layer, :, :, start:start + n] = k
        self.v[layer, :, :, start:start + n] = v
        self.bias[layer, :, :, start:start + n] = 0.0
        return start + n

    def commit_scratch(self, layer: int, n: int, frame: int) -> None:
        """Make the n scratch slots written by `write_scratch` part of the cache (frame index `frame`)."""
        start = self.length[layer]
        self.frame[layer, start:start + n] = frame
        self.length[layer] = start + n

    # ---- the same at a device-scalar slot index (capturable: no host value of the length is frozen into a graph)
    def _arange(self, n: int) -> torch.Tensor:
        t = self._aranges.get(n)
        if t is None:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("KVCache: index range first built inside a CUDA graph capture; run a pass eagerly "
                                   "first")
            t = self._aranges[n] = torch.arange(n, device=self.device)
        return t

    def write_scratch_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor) -> None:
        """write_scratch with the first scratch slot as a device scalar `start` (the caller made room)."""
        if self.fused_writes:
            cache_kernels.write_kv(self.k[layer], self.v[layer], self.bias[layer], k, v, start)
            return
        idx = start + self._arange(k.shape[2])
        self.k[layer].index_copy_(2, idx, k)
        self.v[layer].index_copy_(2, idx, v)
        self.bias[layer].index_fill_(2, idx, 0.0)

    def commit_scratch_at(self, layer: int, start: torch.Tensor, n: int, frame: torch.Tensor) -> None:
        """commit_scratch for write_scratch_at: frame is a device scalar; the host length advances by n."""
        self.frame[layer].index_copy_(0, start + self._arange(n), frame.reshape(1).expand(n))
        self.length[layer] += n

    def move_at(self, layer: int, src: slice, dst: torch.Tensor, frame: torch.Tensor) -> None:
        """move() to the slots from the device scalar `dst` on, which then hold frame index `frame` (a device
        scalar): the window's ring write with no host value of the slot frozen into a captured graph."""
        n = src.stop - src.start
        idx = dst + self._arange(n)
        for t in (self.k, self.v, self.bias, *self.slot_data.values()):
            t[layer].index_copy_(2, idx, t[layer, :, :, src].clone())   # clone: src is part of the written tensor
        self.frame[layer].index_copy_(0, idx, frame.reshape(1).expand(n))

    def padded_bucket(self, layer: int, start: torch.Tensor, n: int, lo: int, end: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """padded() for slots [0, end) when the frame's scratch starts at the device scalar `start`, lo <= start:
        the channel of [0, lo) and of the committed slots of [lo, start) is the frame's refresh (refresh_channel),
        the scratch [start, start + n) gets 0 (no decay over the frame itself), and [start + n, end) NEG_BIAS, so
        those slots, whatever they hold, get no weight."""
        if not self.pad:
            raise RuntimeError("KVCache.padded_bucket: the bias channel is off (set_bias_channel(True) first)")
        pos = self._arange(end)[lo:]
        ch = self.kp[layer, :, :, lo:end, self.head_dim]
        ch.masked_fill_((pos >= start) & (pos < start + n), 0.0)
        ch.masked_fill_(pos >= start + n, NEG_BIAS)
        return self.kp[layer, :, :, :end], self.vp[layer, :, :, :end]

    def view(self, layer: int, end: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k, v (B, H, end, D) and bias (B, H, end) for slots [0, end) (default: the valid length)."""
        end = self.length[layer] if end is None else end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end], self.bias[layer, :, :, :end]

    def move(self, layer: int, src: slice, dst_start: int) -> None:
        """Copy slots `src` to [dst_start, ...) of the same layer (ring updates, compaction)."""
        n = src.stop - src.start
        dst = slice(dst_start, dst_start + n)
        self.k[layer, :, :, dst] = self.k[layer, :, :, src].clone()
        self.v[layer, :, :, dst] = self.v[layer, :, :, src].clone()
        self.bias[layer, :, :, dst] = self.bias[layer, :, :, src].clone()
        self.frame[layer, dst] = self.frame[layer, src].clone()
        for t in self.slot_data.values():
            t[layer, :, :, dst] = t[layer, :, :, src].clone()

    def clear_slots(self, layer: int, start: int, stop: int) -> None:
        """Mark slots [start, stop) of `layer` empty: NEG_BIAS (no weight in any kernel), frame -1, side data at its
        fill value. The bounded modes' fixed layouts start (and refill) that way; their K/V are left as they are."""
        self.bias[layer, :, :, start:stop] = NEG_BIAS
        self.frame[layer, start:stop] = -1
        for name, t in self.slot_data.items():
            t[layer, :, :, start:stop] = self._slot_fill[name]

    def set_length(self, layer: int, length: int) -> None:
        if not 0 <= length <= self.capacity:
            raise ValueError(f"KVCache.set_length: {length} outside [0, {self.capacity}]")
        self.length[layer] = length

    # ---- additive API for compressed modes (TempCache, AnnSA) ------------------------------------------------
    def add_slot_tensor(self, name: str, trailing: tuple[int, ...], dtype: torch.dtype, fill: float = 0) -> torch.Tensor:
        """Register (or return) a per-slot side tensor (L, B, H, capacity, *trailing) that moves with the slots."""
        t = self.slot_data.get(name)
        if t is None or tuple(t.shape[4:]) != tuple(trailing) or t.dtype != dtype:
            L, B, H = self.n_layers, self.batch, self.n_heads
            t = torch.full((L, B, H, self.capacity, *trailing), fill, device=self.device, dtype=dtype)
            self.slot_data[name] = t
            self._slot_fill[name] = fill
        return t

    def valid(self, layer: int, end: int | None = None) -> torch.Tensor:
        """(B, H, end) bool: slots a head really holds (not emptied with NEG_BIAS)."""
        end = self.length[layer] if end is None else end
        return self.bias[layer, :, :, :end] > NEG_BIAS / 2

    def gather_heads(self, layer: int, idx: torch.Tensor, frame: torch.Tensor | None = None) -> None:
        """Per-head reorder of the first M slots: slot j of head (b, h) becomes old slot idx[b, h, j].
        idx (B, H, M) int64. Used to compact a cache whose heads emptied different slots; the layer-level
        `frame` of the new slots is `frame` (M,) if given (callers pass the newest frame over heads)."""
        M = idx.shape[-1]
        # gather writes a new tensor, so assigning it back over the slots it read is safe without a clone (a
        # clone held a second copy of the layer's keys at the peak: ~0.6 GB a layer at 3000 frames)
        k, v, b = self.k[layer], self.v[layer], self.bias[layer]
        D = k.shape[-1]
        self.k[layer, :, :, :M] = torch.gather(k, 2, idx[..., None].expand(-1, -1, -1, D))
        self.v[layer, :, :, :M] = torch.gather(v, 2, idx[..., None].expand(-1, -1, -1, D))
        self.bias[layer, :, :, :M] = torch.gather(b, 2, idx)
        for t in self.slot_data.values():
            src = t[layer]
            ix = idx.reshape(*idx.shape, *([1] * (src.dim() - 3))).expand(*idx.shape, *src.shape[3:])
            t[layer, :, :, :M] = torch.gather(src, 2, ix)
        if frame is not None:
            self.frame[layer, :M] = frame
