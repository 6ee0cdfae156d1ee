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
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.config import DiTConfig, PromptConfig


class Attn(Protocol):
    def self_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...
    def cross_attn(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


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
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        # weight applied in float32 before the cast: under autocast the result keeps x's dtype (bf16 q/k)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


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

    def forward(self, frames: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T) int64 -> cos, sin (B, 1, T*N, head_dim/2) in float32 (float64 for a float64 model).

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
        ang = torch.cat([t[:, :, None, :].expand(B, T, N, -1),
                         space[None, None].expand(B, T, N, -1)], dim=-1)         # (B, T, N, half)
        ang = ang.reshape(B, 1, T * N, -1)
        out = torch.float64 if dtype == torch.float64 else torch.float32
        return ang.cos().to(out), ang.sin().to(out)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D); rotate the pairs (x[:D/2], x[D/2:])."""
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


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

    def forward(self, x: torch.Tensor, mod: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                prompt: torch.Tensor, attn: Attn) -> torch.Tensor:
        """x (B, T, N, D); mod (B, T, 6, D) shared modulation; prompt (B, P, D)."""
        B, T, N, D = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = (mod + self.table).unsqueeze(2).unbind(3)  # each (B, T, 1, D)
        h = modulate(self.norm1(x), sh1, sc1).reshape(B, T * N, D)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k, v = self.q_norm(self.heads(q)), self.k_norm(self.heads(k)), self.heads(v)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        o = attn.self_attn(self.layer, q, k, v)                                    # (B, H, T*N, Dh)
        x = x + g1 * self.proj(o.transpose(1, 2).reshape(B, T, N, D))
        if self.cross:
            q = self.cq_norm(self.heads(self.cq(self.norm2(x).reshape(B, T * N, D))))
            ck, cv = self.ckv(prompt).chunk(2, dim=-1)
            o = attn.cross_attn(self.layer, q, self.ck_norm(self.heads(ck)), self.heads(cv))
            x = x + self.cproj(o.transpose(1, 2).reshape(B, T, N, D))
        return x + g2 * self.mlp(modulate(self.norm3(x), sh2, sc2))


def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of noise levels t in [0, 1] (scaled by 1000 as in DiT). t (...) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = t.float()[..., None] * 1000.0 * freqs
    return torch.cat([a.cos(), a.sin()], dim=-1)


class CausalDiT(nn.Module):
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
        self.blocks = nn.ModuleList(Block(cfg, i, i % cfg.cross_every == 0) for i in range(cfg.depth))
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.table_out = nn.Parameter(torch.zeros(2, D))
        self.out = nn.Linear(D, latent_ch * cfg.patch ** 2)

    def condition(self, sigma: torch.Tensor, actions: torch.Tensor, prompt_vec: torch.Tensor) -> torch.Tensor:
        """One conditioning vector per frame. sigma (B, T), actions (B, T, A), prompt_vec (B, Pw) -> (B, T, D)."""
        c = self.t_embed(timestep_embedding(sigma).to(self.table_out.dtype))
        c = c + self.key_embed(actions[..., :self.num_keys]) + self.mouse_embed(actions[..., self.num_keys:])
        return c + self.prompt_pool(prompt_vec)[:, None]

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor, frames: torch.Tensor,
                prompt: tuple[torch.Tensor, torch.Tensor], attn: Attn) -> torch.Tensor:
        """Velocity prediction for flow matching.

        x (B, T, C, h, w) latents at noise levels sigma (B, T); actions (B, T, A): the action that produced
        each frame; frames (B, T) int64 absolute frame indices (rotary); prompt = (tokens (B, P, Pw),
        pooled (B, Pw)) from PromptEncoder. Returns (B, T, C, h, w)."""
        B, T, C, h, w = x.shape
        p, g = self.p, self.grid
        tok = x.reshape(B, T, C, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, T, g * g, C * p * p)
        tok = self.x_embed(tok)                                                    # (B, T, N, D)
        c = self.condition(sigma, actions.to(tok.dtype), prompt[1])               # (B, T, D)
        mod = self.ada(c).view(B, T, 6, -1)                                        # (B, T, 6, D)
        rope = self.rotary(frames, tok.dtype)
        ptok = self.prompt_proj(prompt[0])                                         # (B, P, D)
        for blk in self.blocks:
            tok = blk(tok, mod, rope, ptok, attn)
        shift, scale = (self.table_out + c[:, :, None]).unsqueeze(2).unbind(3)    # (B, T, 1, D)
        out = self.out(modulate(self.norm_out(tok), shift, scale))                 # (B, T, N, C*p*p)
        return out.view(B, T, g, g, C, p, p).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, T, C, h, w)


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
