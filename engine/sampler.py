"""The one few-step sampling loop: noise -> at most 4 DiT passes -> clean latent -> commit pass into the cache.

Play, replay, the benchmark and the evaluation all reach it through NeuralEnv.step(); nothing copies it.

Flow matching (rectified flow): x_s = (1 - s) x0 + s eps, the DiT predicts v = eps - x0, and an Euler step
from s to s' is x += (s' - s) v. Steps run from s = 1 to 0 on a shifted grid s' = k s / (1 + (k - 1) s)
(k = `shift`, 1 = uniform), which spends more of the few steps at high noise where the layout is decided.

Commit pass: after the last step the finished latent is run once more through the DiT with commit=True, at
noise level `context_sigma` (the checkpoint's, set by the trainer), so that the cache holds exactly what
training showed the model as context: clean past frames carrying a small known noise level. Training draws
that context level per frame (noise augmentation against drift), so a small fixed level at inference is inside
the training distribution and tells the model "this past frame may be slightly off", which is true of its own
generated frames; the noise added at commit comes from the same seeded generator. Level 0 is also trained.

No host syncs in the loop: the schedule lives on the device, noise comes from a device generator, the frame
index is a host int handed to the attention mode (as StepInfo) and to rotary (as a new tensor, not a read).
"""
from __future__ import annotations

import contextlib

import torch

from engine.attention import AttentionMode, FrameAttention, StepInfo
from engine.cache import KVCache
from engine.model import WorldModel

INITIAL_FRAMES = 16   # dense cache starts with room for this many frames and doubles as it grows


class Sampler:
    def __init__(self, model: WorldModel, mode: AttentionMode, steps: int = 4, batch: int = 1,
                 shift: float | None = None, context_sigma: float | None = None,
                 autocast: torch.dtype | None = None) -> None:
        if not 1 <= steps <= 4:
            raise ValueError(f"steps must be 1..4, got {steps}")
        self.model, self.mode, self.steps, self.batch = model, mode, steps, batch
        self.device = model.latent_std.device
        dit = model.dit
        self.N, self.C, self.size = dit.tokens_per_frame, model.cfg.ae.latent_ch, model.cfg.ae.latent_size
        self.context_sigma = model.cfg.context_sigma if context_sigma is None else context_sigma
        k = model.cfg.shift if shift is None else shift
        s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        self.sigmas = (k * s / (1 + (k - 1) * s)).float().to(self.device)       # (steps + 1,)
        self.autocast = autocast
        self.dtype = next(model.parameters()).dtype     # float32 (float64 in exactness tests)
        dtype = autocast or self.dtype
        self.cache = KVCache(dit.cfg.depth, batch, dit.cfg.heads, dit.cfg.head_dim, self._capacity(mode),
                             self.device, dtype)
        self.gen = torch.Generator(device=self.device)
        self.frame = 0
        self.prompt: tuple[torch.Tensor, torch.Tensor] | None = None

    def _capacity(self, mode: AttentionMode) -> int:
        return mode.capacity_tokens(self.N) or INITIAL_FRAMES * self.N

    def _ctx(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    @torch.no_grad()
    def reset(self, seed: int, prompt: str) -> None:
        """New episode: seed the noise, encode the prompt once, empty the cache."""
        self.gen.manual_seed(int(seed))
        with self._ctx():
            self.prompt = self.model.encode_prompt([prompt] * self.batch)
        self.cache.reset()
        self.cache.resize(self._capacity(self.mode))
        self.mode.reset()
        self.frame = 0

    def set_mode(self, mode: AttentionMode) -> None:
        """Switch attention mode mid-episode: the new mode brings the cache to its own rules."""
        mode.reset()
        mode.adopt(self.cache, self.N)
        self.mode = mode

    def _pass(self, x: torch.Tensor, sigma: torch.Tensor, action: torch.Tensor, step: int,
              commit: bool) -> torch.Tensor:
        """One DiT pass over the current frame. x (B, C, h, w), sigma () or (B,), action (B, A) -> v."""
        B = self.batch
        info = StepInfo(frame=self.frame, step=step, num_steps=self.steps, commit=commit)
        frames = torch.full((B, 1), self.frame, dtype=torch.long, device=self.device)
        with self._ctx():
            v = self.model.dit(x[:, None], sigma.expand(B)[:, None], action[:, None], frames, self.prompt,
                               FrameAttention(self.mode, self.cache, info))
        return v[:, 0].to(self.dtype)

    @torch.no_grad()
    def commit(self, latent: torch.Tensor, action: torch.Tensor) -> None:
        """Write a finished (or true, when priming) frame's K/V into the cache and advance the frame index.
        latent (B, C, h, w) normalised; action (B, A) float: the action that produced this frame."""
        sigma = torch.full((1,), self.context_sigma, device=self.device)
        x = latent.to(self.dtype)
        if self.context_sigma > 0:
            eps = torch.randn(x.shape, generator=self.gen, device=self.device).to(self.dtype)
            x = (1 - self.context_sigma) * x + self.context_sigma * eps
        self._pass(x, sigma.to(self.dtype), action.to(self.device, self.dtype), self.steps, commit=True)
        self.frame += 1

    @torch.no_grad()
    def sample(self, action: torch.Tensor) -> torch.Tensor:
        """Denoise the next frame's latent for `action` (B, A) without committing it (B, C, h, w)."""
        action = action.to(self.device, self.dtype)
        x = torch.randn((self.batch, self.C, self.size, self.size), generator=self.gen,
                        device=self.device).to(self.dtype)
        for i in range(self.steps):
            v = self._pass(x, self.sigmas[i:i + 1].to(self.dtype), action, i, commit=False)
            x = x + (self.sigmas[i + 1] - self.sigmas[i]) * v
        return x

    @torch.no_grad()
    def step(self, action: torch.Tensor) -> torch.Tensor:
        """Generate the next frame's latent for `action` (B, A), commit it, return it (B, C, h, w).
        (Teacher forcing calls sample() and then commit() with the true frame instead.)"""
        x = self.sample(action)
        self.commit(x, action)
        return x
