"""Causal video DiT over latent tokens, and the prompt encoder.

One frame = (h/p) * (w/p) tokens (256 for 16x16 latents, patch 1). Each block: self-attention with 3-D rotary
positions (frame index, row, column) and RMS-normalised q/k; cross-attention to the prompt tokens (every
`cross_every` blocks); an MLP. Conditioning is one vector per frame, c = noise-level embedding + action embedding
(keys multi-hot, mouse through a small MLP) + pooled prompt, turned into shift/scale/gate by adaLN-Zero. To save
parameters the adaLN projection is shared by all blocks and each block adds its own learned table (PixArt-alpha's
adaLN-single): a per-block D->6D projection would cost ~0.9M parameters per block at width 384.

All attention goes through the `attn` object passed to forward (SequenceAttention for training and full
recomputation, FrameAttention for cached generation), so the network never knows the mode. Rotary is applied
to q and k before the call: cached keys carry the rotation of their absolute frame index, and since rotary
scores depend only on index differences, a frame at index 3000 attends exactly as one at index 30.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.config import DiTConfig, PromptConfig


class Attn(Protocol):
    def self_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...
    def cross_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...
    # a model with dit.temporal_decay calls this before its layers: slopes (depth, H) float32 >= 0, frames (B, T)
    def set_decay(self, slopes: torch.Tensor, frames: torch.Tensor) -> None: ...


DECAY_INIT = 1e-4  # initial |slope|: ~no decay (a fine-tune starts from its init's function) yet off zero,
                   # where |p| has no gradient; Adam then moves it ~lr a step


def head_slopes(values: object, heads: int, where: str) -> torch.Tensor:
    """Fixed decay slopes given by a user (a list, or a comma-separated string): one finite number >= 0 per
    head, applied in every layer -> (heads,) float32. `where` names the option in the error."""
    try:
        vals = [float(x) for x in (values.split(",") if isinstance(values, str) else values)]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != heads or any(not math.isfinite(x) or x < 0 for x in vals):
        raise ValueError(f"{where}: expected {heads} finite slopes >= 0 (one per head), got {values!r}")
    return torch.tensor(vals, dtype=torch.float32)


def frame_mask(clean: torch.Tensor, order: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Token mask (T*N, T*N), True where a query may see a key, for a sequence of T frame slots.

    A slot sees itself and every *clean* slot of an earlier frame (`order` = frame position, (T,)). With all
    slots clean this is block-causal; for the training sequence [clean 0..T-1 | noisy 0..T-1] it gives exactly
    what inference computes: noisy frame i sees clean frames j < i (the cache) and itself, clean frame i sees
    clean frames j <= i (the commit pass)."""
    m = (clean[None, :] & (order[None, :] < order[:, None])) | torch.eye(len(order), dtype=torch.bool,
                                                                           device=order.device)
    return m.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class RMSNorm(nn.Module):
    """RMS norm over the last dim (torch's fused F.rms_norm), weight applied in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


Rope = tuple[torch.Tensor, torch.Tensor]   # cos, sin as (B, T*N, 1, 1, head_dim): see Rotary.forward


class Rotary(nn.Module):
    """3-D rotary angles: the first `time_dims` channels of a head rotate with the frame index (frequencies
    theta^(-i/n), wavelengths from ~6 to ~35000 frames at theta 1e4, so distances of thousands of frames stay
    distinguishable), the rest split between row and column."""

    def __init__(self, cfg: DiTConfig, grid: int) -> None:
        super().__init__()
        half = cfg.head_dim // 2
        self.nt = cfg.rope_time_dims // 2
        self.ns = (half - self.nt) // 2
        assert self.nt + 2 * self.ns == half, "head_dim - rope_time_dims must split evenly between height and width"
        self.grid, self.theta_t, self.theta_s = grid, cfg.rope_time_theta, cfg.rope_space_theta
        self.heads, self.free, self.turn = cfg.heads, cfg.rope_time_free_heads, cfg.rope_heading_heads
        if not 0 <= self.free <= cfg.heads:
            raise ValueError(f"dit.rope_time_free_heads must be in [0, heads={cfg.heads}], got {self.free}")
        if self.turn < 0 or self.free + self.turn > cfg.heads:
            raise ValueError(f"dit.rope_heading_heads must be >= 0 and, with rope_time_free_heads "
                             f"({self.free}), at most heads={cfg.heads}; got {self.turn}")
        if self.turn and not any(cfg.heading_per_action):
            raise ValueError("dit.rope_heading_heads > 0 needs dit.heading_per_action (the world's degrees of yaw "
                             "per unit of each action entry, e.g. worlds/maze/physics.HEADING_PER_ACTION)")

    @property
    def per_head(self) -> bool:
        """Whether heads rotate differently (time-free or heading heads): tables (..., H, head_dim)."""
        return bool(self.free or self.turn)

    def forward(self, frames: torch.Tensor, dtype: torch.dtype, heading: torch.Tensor | None = None) -> Rope:
        """frames (B, T) int64 -> cos, sin (B, T*N, 1, 1, head_dim) in float32 (float64 for a float64 model),
        laid out for q/k as (B, L, 2, H, Dh) and already in the rotate-half form of `apply_rotary`
        (cos = [cos, cos], sin = [-sin, sin]). Computed once per frame; shared by every layer and pass.
        With time-free or heading heads: (B, T*N, 1, H, head_dim). Heads [H - heading - free, H - heading)
        have time angles zero; the last `rope_heading_heads` heads have time angles m x heading (B, T)
        (radians, float64), m = 1..time_dims/2: integer multiples, so headings 2 pi apart rotate alike and a
        query meets a key seen from the same direction at any distance in frames.

        Angles are computed in float64 on every call (no buffers, so casting the model to bf16/fp16 cannot
        degrade them): at frame 3000 a float32 angle would already be off by ~2e-4 rad."""
        B, T = frames.shape
        dev, f64 = frames.device, torch.float64
        f_t = self.theta_t ** (-torch.arange(self.nt, device=dev, dtype=f64) / self.nt)
        f_s = self.theta_s ** (-torch.arange(self.ns, device=dev, dtype=f64) / self.ns)
        r = torch.arange(self.grid, device=dev, dtype=f64)
        space = torch.cat([(r[:, None, None] * f_s).expand(-1, self.grid, -1),
                           (r[None, :, None] * f_s).expand(self.grid, -1, -1)], -1).reshape(-1, 2 * self.ns)
        N = space.shape[0]
        t = frames.to(f64)[:, :, None] * f_t                                      # (B, T, nt)
        if not self.per_head:
            ang = torch.cat([t[:, :, None, :].expand(B, T, N, -1),
                             space[None, None].expand(B, T, N, -1)], dim=-1)     # (B, T, N, half)
            ang = ang.reshape(B, T * N, 1, 1, -1)
        else:   # time angles per head (B, T, H, nt): 0 in time-free heads, m x heading in heading heads
            H = self.heads
            h = torch.arange(H, device=dev)
            t = t[:, :, None, :] * (h < H - self.free - self.turn).to(f64)[:, None]
            if self.turn:
                if heading is None or heading.shape != frames.shape:
                    raise ValueError(f"rotary: rope_heading_heads={self.turn} needs heading (B, T) = "
                                     f"{tuple(frames.shape)} in radians, got "
                                     f"{None if heading is None else tuple(heading.shape)}")
                m = torch.arange(1, self.nt + 1, device=dev, dtype=f64)                         # (nt,)
                t = torch.where((h >= H - self.turn)[:, None], heading.to(f64)[:, :, None, None] * m, t)
            ang = torch.cat([t[:, :, None].expand(B, T, N, H, -1),
                             space[None, None, :, None].expand(B, T, N, H, -1)], dim=-1)  # (B, T, N, H, half)
            ang = ang.reshape(B, T * N, 1, H, -1)
        out = torch.float64 if dtype == torch.float64 else torch.float32
        cos, sin = ang.cos().to(out), ang.sin().to(out)
        return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """x (..., Dh) in rope's dtype; rotate the pairs (x[:Dh/2], x[Dh/2:]): [x1 cos - x2 sin, x2 cos + x1 sin]
    = x * [cos, cos] + [x2, x1] * [-sin, sin] (3 ops for q and k together)."""
    cos, sin = rope
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig, layer: int, cross: bool) -> None:
        super().__init__()
        D, self.H, self.Dh, self.layer = cfg.width, cfg.heads, cfg.head_dim, layer
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(D, 3 * D)
        self.q_norm, self.k_norm = RMSNorm(self.Dh), RMSNorm(self.Dh)
        self.proj = nn.Linear(D, D)
        self.cross = cross
        if cross:
            self.norm2 = nn.LayerNorm(D, eps=1e-6)
            self.cq, self.ckv, self.cproj = nn.Linear(D, D), nn.Linear(D, 2 * D), nn.Linear(D, D)
            self.cq_norm, self.ck_norm = RMSNorm(self.Dh), RMSNorm(self.Dh)
        self.norm3 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(D * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, D))
        self.table = nn.Parameter(torch.zeros(6, D))   # per-block part of the shared adaLN modulation

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.H, self.Dh).transpose(1, 2)                      # (B, H, L, Dh)

    def cross_kv(self, ptok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Prompt tokens (B, P, D) -> this block's cross-attention k, v (B, H, P, Dh), or None without
        cross-attention. Depends on the prompt only: inference computes it once per episode."""
        if not self.cross:
            return None
        ck, cv = self.ckv(ptok).chunk(2, dim=-1)
        return self.ck_norm(self.heads(ck)), self.heads(cv)

    # The block in the pieces between its attention calls: forward() chains them around the `attn` calls, and
    # engine/graphs.py captures each piece as a CUDA graph and runs the attention calls eagerly between them.
    def self_qkv(self, x: torch.Tensor, mod: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, N, D); mod (B, T, 6, D): this block's modulation, scales already offset by 1 (see
        CausalDiT.run). -> q, k, v (B, H, T*N, Dh), rotary applied to q and k."""
        B, T, N, D = x.shape
        L, H, Dh, wd = T * N, self.H, self.Dh, self.qkv.weight.dtype
        # Under a bf16 model the modulation (fp32 tables) and so the residual stream x are float32, as they were
        # under autocast; only the linear layers' inputs are cast to the weights' dtype.
        sh1, sc1 = mod[:, :, None, 0], mod[:, :, None, 1]                          # (B, T, 1, D)
        h = torch.addcmul(sh1, F.layer_norm(x, (D,), eps=1e-6), sc1).view(B, L, D)
        qkv = self.qkv(h.to(wd)).view(B, L, 3, H, Dh)
        # q and k normalised, weighted and rotated together in rope's dtype (float32 under a bf16 model)
        qk = F.rms_norm(qkv[:, :, :2].to(rope[0].dtype), (Dh,), eps=self.q_norm.eps)
        qk = apply_rotary(qk * torch.stack([self.q_norm.weight, self.k_norm.weight])[:, None], rope).to(wd)
        return qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    def after_self(self, x: torch.Tensor, o: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """Gated residual of the self-attention output o (B, H, T*N, Dh) onto x (B, T, N, D)."""
        B, T, N, D = x.shape
        return torch.addcmul(x, mod[:, :, None, 2], self.proj(o.transpose(1, 2).reshape(B, T, N, D)))

    def cross_q(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-attention queries (B, H, T*N, Dh) of x (B, T, N, D) (blocks with cross-attention only)."""
        B, T, N, D = x.shape
        return self.cq_norm(self.heads(self.cq(self.norm2(x).view(B, T * N, D).to(self.qkv.weight.dtype))))

    def after_cross(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        B, T, N, D = x.shape
        return x + self.cproj(o.transpose(1, 2).reshape(B, T, N, D))

    def mlp_part(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        D = x.shape[-1]
        h = torch.addcmul(mod[:, :, None, 3], F.layer_norm(x, (D,), eps=1e-6), mod[:, :, None, 4])
        return torch.addcmul(x, mod[:, :, None, 5], self.mlp(h.to(self.qkv.weight.dtype)))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, rope: Rope,
                ckv: tuple[torch.Tensor, torch.Tensor] | None, attn: Attn) -> torch.Tensor:
        """x (B, T, N, D); mod (B, T, 6, D); ckv from cross_kv (None: no cross-attention)."""
        x = self.after_self(x, attn.self_attn(self.layer, *self.self_qkv(x, mod, rope)), mod)
        if ckv is not None:
            x = self.after_cross(x, attn.cross_attn(self.layer, self.cross_q(x), *ckv))
        return self.mlp_part(x, mod)


def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of noise levels t in [0, 1] (scaled by 1000 as in DiT). t (...) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = t.float()[..., None] * 1000.0 * freqs
    return torch.cat([a.cos(), a.sin()], dim=-1)


class CausalDiT(nn.Module):
    """forward() is the whole network from raw inputs (training, full recomputation). Inference splits it by
    how often each part changes, with the same arithmetic: prompt_context once per episode, frame_condition and
    rope once per frame, sigma_embedding once per schedule (a table), and run() once per pass."""

    def __init__(self, cfg: DiTConfig, latent_ch: int, latent_size: int, prompt_width: int,
                 action_dim: int, num_keys: int) -> None:
        super().__init__()
        assert cfg.width == cfg.heads * cfg.head_dim, "width must be heads * head_dim"
        self.cfg, self.C, self.p, self.num_keys = cfg, latent_ch, cfg.patch, num_keys
        self.grid = latent_size // cfg.patch
        self.tokens_per_frame = self.grid ** 2
        D = cfg.width
        self.x_embed = nn.Linear(latent_ch * cfg.patch ** 2, D)
        self.t_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        self.key_embed = nn.Linear(num_keys, D, bias=False)                  # multi-hot keys: sum of key vectors
        self.mouse_embed = nn.Sequential(nn.Linear(action_dim - num_keys, 64), nn.SiLU(), nn.Linear(64, D))
        self.prompt_proj = nn.Linear(prompt_width, D)
        self.prompt_pool = nn.Linear(prompt_width, D)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))               # shared by every block
        self.rotary = Rotary(cfg, self.grid)
        self._turn_w: dict[torch.device, torch.Tensor] = {}   # heading_per_action in radians, per device (turn)
        self.blocks = nn.ModuleList(Block(cfg, i, i % cfg.cross_every == 0) for i in range(cfg.depth))
        # temporal decay: slope = |decay| per (layer, head), logits -slope x frame distance (DiTConfig)
        self.decay = nn.Parameter(torch.full((cfg.depth, cfg.heads), DECAY_INIT)) if cfg.temporal_decay else None
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.table_out = nn.Parameter(torch.zeros(2, D))
        self.out = nn.Linear(D, latent_ch * cfg.patch ** 2)
        # adaLN rows that are scales enter as (1 + scale): the 1 rides on the tables (one add for all blocks)
        self.register_buffer("_one", torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])[:, None], persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the linear layers (and so of x, c and the attention inputs)."""
        return self.out.weight.dtype

    def cast_for_inference(self, dtype: torch.dtype) -> "CausalDiT":
        """Cast once for inference (instead of autocast re-casting every weight on every call), keeping in
        float32 what autocast kept there: the adaLN tables (so modulation and the residual stream stay
        float32), the q/k/cross norm weights, norm2's affine and the scale offset."""
        self.to(dtype)
        keep = [self.table_out, self._one] + [b.table for b in self.blocks] + \
            ([] if self.decay is None else [self.decay])
        for b in self.blocks:
            keep += [b.q_norm.weight, b.k_norm.weight]
            if b.cross:
                keep += [b.norm2.weight, b.norm2.bias, b.cq_norm.weight, b.ck_norm.weight]
        for t in keep:
            t.data = t.data.float()
        return self

    def prompt_context(self, prompt: tuple[torch.Tensor, torch.Tensor]) -> PromptContext:
        """PromptEncoder output -> what every pass needs from the prompt; once per episode."""
        ptok = self.prompt_proj(prompt[0])                                         # (B, P, D)
        return PromptContext(self.prompt_pool(prompt[1]), [b.cross_kv(ptok) for b in self.blocks])

    def frame_condition(self, actions: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """Action and prompt parts of the conditioning vector. actions (B, T, A), pool (B, D) -> (B, T, D)."""
        a = actions.to(self.dtype)
        return self.key_embed(a[..., :self.num_keys]) + self.mouse_embed(a[..., self.num_keys:]) + pool[:, None]

    def sigma_embedding(self, sigma: torch.Tensor) -> torch.Tensor:
        """Noise-level part of the conditioning vector. sigma (...) -> (..., D)."""
        return self.t_embed(timestep_embedding(sigma).to(self.dtype))

    def decay_slopes(self) -> torch.Tensor | None:
        """(depth, heads) float32 logit slopes per frame of distance (>= 0), or None without temporal decay."""
        return None if self.decay is None else self.decay.float().abs()

    def logit_bound(self) -> torch.Tensor:
        """(depth,) float32: an upper bound on |q.k| / sqrt(head_dim) in each block's self-attention. q and k are
        RMS-normed (norm sqrt(head_dim), eps only shrinks it) and scaled per channel by the q/k norm weights;
        rotary keeps norms; so |q.k| <= max|w_q| sqrt(Dh) x max|w_k| sqrt(Dh) (Cauchy-Schwarz)."""
        return torch.stack([b.q_norm.weight.detach().abs().max().float() * b.k_norm.weight.detach().abs().max().float()
                            for b in self.blocks]) * math.sqrt(self.cfg.head_dim)

    def rope(self, frames: torch.Tensor, heading: torch.Tensor | None = None) -> Rope:
        return self.rotary(frames, self.dtype, heading)

    def turn(self, actions: torch.Tensor) -> torch.Tensor | None:
        """actions (B, T, A) -> each frame's change of heading (B, T) in radians, float64 (the world's
        heading_per_action), or None when no head rotates with the heading."""
        if not self.cfg.rope_heading_heads:
            return None
        w = self._turn_w.get(actions.device)
        if w is None:   # made once per device, outside any CUDA graph capture (the graphs warm up eagerly)
            w = torch.tensor(self.cfg.heading_per_action, dtype=torch.float64, device=actions.device) * (math.pi / 180)
            self._turn_w[actions.device] = w
        if w.numel() != actions.shape[-1]:
            raise ValueError(f"dit.heading_per_action has {w.numel()} entries, the actions {actions.shape[-1]}")
        return actions.to(torch.float64) @ w

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor, frames: torch.Tensor,
                prompt: tuple[torch.Tensor, torch.Tensor], attn: Attn, heading: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Velocity prediction for flow matching.

        x (B, T, C, h, w) latents at noise levels sigma (B, T); actions (B, T, A): the action that produced
        each frame; frames (B, T) int64 absolute frame indices (rotary); prompt = (tokens (B, P, Pw),
        pooled (B, Pw)) from PromptEncoder; heading (B, T) radians for heading heads (None: the running sum
        of turn(actions) over the clip, right for a contiguous clip). Returns (B, T, C, h, w)."""
        ctx = self.prompt_context(prompt)
        c = self.sigma_embedding(sigma) + self.frame_condition(actions, ctx.pool)
        if heading is None and self.cfg.rope_heading_heads:
            heading = self.turn(actions).cumsum(1)  # type: ignore[union-attr]
        slopes = self.decay_slopes()
        if slopes is not None:
            attn.set_decay(slopes, frames)
        return self.run(x, c, self.rope(frames, heading), ctx.kv, attn)

    def run(self, x: torch.Tensor, c: torch.Tensor, rope: Rope,
            ckv: list[tuple[torch.Tensor, torch.Tensor] | None], attn: Attn) -> torch.Tensor:
        """The per-pass network. x (B, T, C, h, w) in the model's dtype; c (B, T, D) conditioning vector;
        rope from rope(); ckv from prompt_context. Returns v (B, T, C, h, w)."""
        tok, mods = self.embed(x, c)
        for blk, mod, kv in zip(self.blocks, mods.unbind(0), ckv):
            tok = blk(tok, mod, rope, kv, attn)
        return self.head(tok, c, x.shape)

    def embed(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C, h, w), c (B, T, D) -> tokens (B, T, N, D) and every block's modulation
        (depth, B, T, 6, D), scale rows offset by 1."""
        B, T, C, h, w = x.shape
        p, g = self.p, self.grid
        tok = x.reshape(B, T, C, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, T, g * g, C * p * p)
        tables = torch.stack([b.table for b in self.blocks]) + self._one               # (depth, 6, D)
        mods = self.ada(c).view(B, T, 6, -1)[None] + tables[:, None, None]            # (depth, B, T, 6, D)
        return self.x_embed(tok), mods

    def head(self, tok: torch.Tensor, c: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Final norm, modulation and projection: tokens (B, T, N, D) -> v of the input's `shape` (B, T, C, h, w)."""
        B, T, C, h, w = shape
        p, g = self.p, self.grid
        shift, scale = (self.table_out + c[:, :, None]).unsqueeze(2).unbind(3)    # (B, T, 1, D)
        out = self.out(modulate(self.norm_out(tok), shift, scale).to(self.out.weight.dtype))  # (B, T, N, C*p*p)
        return out.view(B, T, g, g, C, p, p).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, T, C, h, w)


class PromptContext(NamedTuple):
    """Per-episode prompt work: pooled projection (B, D) and each block's cross-attention (k, v) or None."""
    pool: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor] | None]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class PromptEncoder(nn.Module):
    """Words of the world's vocabulary -> tokens (B, P, width) and a pooled vector (B, width); run once per
    episode. Token 0 is padding, token 1 a summary token always placed first (its output is the pooled vector)."""

    def __init__(self, cfg: PromptConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.words = [w for ws in cfg.vocabulary.values() for w in ws]
        self.index = {w: i + 2 for i, w in enumerate(self.words)}
        self.embed = nn.Embedding(len(self.words) + 2, cfg.width)
        self.pos = nn.Parameter(torch.zeros(cfg.max_tokens + 1, cfg.width))
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 2 * cfg.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def canonical(self, prompt: str) -> str:
        """One word per category in vocabulary order, defaults filled in (as worlds.maze.canonical_prompt)."""
        chosen: dict[str, str] = {}
        cat_of = {w: c for c, ws in self.cfg.vocabulary.items() for w in ws}
        for word in str(prompt).lower().split():
            if word not in cat_of:
                raise ValueError(f"prompt {prompt!r}: unknown word {word!r}; accepted words: "
                                 + "; ".join(f"{c}: {', '.join(ws)}" for c, ws in self.cfg.vocabulary.items()))
            if chosen.setdefault(cat_of[word], word) != word:
                raise ValueError(f"prompt {prompt!r}: two words of category {cat_of[word]!r}")
        return " ".join(chosen.get(c, ws[0]) for c, ws in self.cfg.vocabulary.items())

    def tokenize(self, prompts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, max_tokens + 1) int64: summary token, word ids, padding."""
        ids = torch.zeros(len(prompts), self.cfg.max_tokens + 1, dtype=torch.long)
        for b, p in enumerate(prompts):
            words = self.canonical(p).split()[: self.cfg.max_tokens]
            ids[b, 0] = 1
            ids[b, 1:1 + len(words)] = torch.tensor([self.index[w] for w in words], dtype=torch.long)
        return ids.to(device)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(self.body(self.embed(ids) + self.pos))                       # (B, P, width)
        return h, h[:, 0]


def initialize_weights(dit: CausalDiT) -> None:
    """DiT init: xavier linears, then zero every residual gate source so each block starts as the identity
    (adaLN-Zero: the shared adaLN projection, the per-block tables, cross-attention outputs and the output
    layer start at zero)."""
    for m in dit.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for lin in (dit.t_embed[0], dit.t_embed[2]):
        nn.init.normal_(lin.weight, std=0.02)
    nn.init.normal_(dit.key_embed.weight, std=0.02)
    nn.init.zeros_(dit.ada[1].weight)
    nn.init.zeros_(dit.ada[1].bias)
    for blk in dit.blocks:
        nn.init.zeros_(blk.table)
        if blk.cross:
            nn.init.zeros_(blk.cproj.weight)
            nn.init.zeros_(blk.cproj.bias)
    nn.init.zeros_(dit.out.weight)
    nn.init.zeros_(dit.out.bias)
