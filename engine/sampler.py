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

Per-pass work is only the network itself: the prompt's pooled vector and cross-attention K/V are computed at
reset, the sigma embeddings of the fixed schedule (and of the commit level) at reset, the action part of the
conditioning and the rotary tables once per frame. The latent x and the Euler update stay in float32 (float64
for a float64 model) whatever the model's dtype; only the model's input is cast.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from engine.attention import AttentionMode, FrameAttention, StepInfo
from engine.cache import KVCache
from engine.graphs import GraphedFrameInputs, GraphedPass
from engine.model import WorldModel
from engine.model.dit import PromptContext, Rope

INITIAL_FRAMES = 16   # dense cache starts with room for this many frames and doubles as it grows
GRAPHS = ("off", "pieces", "cuda")   # how a pass runs: dit.run eagerly | in pieces, eagerly | pieces as CUDA graphs


class FrameInputs(NamedTuple):
    """What every pass of one frame shares: action + prompt conditioning (B, 1, D), rotary tables, and the
    frame's heading (B,) radians float64 (None for a model without heading heads), kept at its commit; with
    memory guidance, the guide sampler's own (its frame index and heading are its own)."""
    cond: torch.Tensor
    rope: Rope
    heading: torch.Tensor | None = None
    guide: "FrameInputs | None" = None


class Sampler:
    def __init__(self, model: WorldModel, mode: AttentionMode, steps: int = 4, batch: int = 1,
                 shift: float | None = None, context_sigma: float | None = None,
                 max_frames: int | None = None, graphs: str = "off", compile: bool = False,
                 noise_scale: float = 1.0, noise_corr: float = 0.0, guidance: float = 0.0,
                 guide: AttentionMode | None = None, fused_writes: bool = False) -> None:
        """max_frames: pre-size a growing (dense) cache for this many frames so it never reallocates.
        noise_scale: the initial noise's scale (a sampling temperature; 1 is what the model was trained for,
        below 1 the frames lean toward the conditional mean: steadier, less motion; docs/MODEL.md).
        noise_corr: rho in [0, 1): each frame's initial noise is rho x the previous frame's plus
        sqrt(1 - rho^2) x a fresh draw, so each draw is still a standard normal (the trained temperature) while
        consecutive frames share part of it (docs/MODEL.md, "Sampling temperature"); 0: independent draws.
        graphs: "cuda" runs each pass as CUDA graphs between eager attention calls (engine/graphs.py);
        "pieces" runs the same pieces eagerly (any device: the tests' check of the pieced path).
        compile: the pieces through torch.compile (graphs "pieces" or "cuda"; engine/graphs.py says why).
        guidance, guide: memory guidance (docs/MODEL.md, "Memory guidance at inference"): every denoising step
        also runs the model with the `guide` mode (a short window: no frame a full turn back) on the same noisy
        latent, on a second cache, and steps along v + guidance x (v - v_guide), which amplifies what the older
        frames pull the frame toward, as classifier-free guidance does with a condition; both caches commit
        the frame. 0 (default): no guide, one pass a step. It helped a model that reads its far context (run 12:
        revisit 17.2 -> 21.3 dB at 6) and hurt one that does not (the bundle: 19.6 -> 16.4 at 3).
        fused_writes: each attention call's scratch write (the frame's K, V, their bias) as one triton kernel
        (KVCache.set_fused_writes; the same values, ~80-120 fewer launches a frame; CUDA with triton)."""
        if not 1 <= steps <= 4:
            raise ValueError(f"steps must be 1..4, got {steps}")
        if graphs not in GRAPHS:
            raise ValueError(f"graphs must be one of {GRAPHS}, got {graphs!r}")
        self.model, self.mode, self.steps, self.batch = model, mode, steps, batch
        self.device = model.latent_std.device
        dit = model.dit
        self.N, self.C, self.size = dit.tokens_per_frame, model.cfg.ae.latent_ch, model.cfg.ae.latent_size
        self.max_frames = max_frames
        if not noise_scale >= 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.noise_scale = noise_scale
        if not 0 <= noise_corr < 1:
            raise ValueError(f"noise_corr must be in [0, 1), got {noise_corr}")
        self.noise_corr = noise_corr
        if not math.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        if guidance and guide is None:
            raise ValueError("guidance > 0 needs a guide attention mode (e.g. window)")
        self.guidance = float(guidance)
        # the guide: the same model with its own cache, mode, graphs and noise generator (for its commit's
        # context noise; seeded with the same seed, so a guided rollout is as repeatable as a plain one)
        self.guide = Sampler(model, guide, steps, batch, shift, context_sigma, graphs=graphs, compile=compile,
                             fused_writes=fused_writes) if guidance else None
        self._last_noise: torch.Tensor | None = None   # the previous frame's unscaled draw (noise_corr > 0)
        self.context_sigma = model.cfg.context_sigma if context_sigma is None else context_sigma
        k = model.cfg.shift if shift is None else shift
        s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        self.sigmas = (k * s / (1 + (k - 1) * s)).float().to(self.device)       # (steps + 1,)
        self.dtype = dit.dtype                                 # the model's input dtype (bf16 on CUDA)
        self.xdtype = torch.float64 if self.dtype == torch.float64 else torch.float32   # latent, Euler update
        self.dts = (self.sigmas[1:] - self.sigmas[:-1]).to(self.xdtype)         # (steps,)
        self.cache = KVCache(dit.cfg.depth, batch, dit.cfg.heads, dit.cfg.head_dim, self._capacity(mode),
                             self.device, self.dtype)
        self.cache.set_fused_writes(fused_writes)
        slopes = dit.decay_slopes()
        if slopes is not None:
            self.set_decay(slopes)
        if graphs == "cuda" and self.device.type != "cuda":
            raise ValueError(f"graphs='cuda' needs a CUDA device; the model is on {self.device}")
        if compile and graphs == "off":
            raise ValueError("compile=True compiles the graph pieces: it needs graphs='pieces' or 'cuda'")
        self.graphs, self.compiled = graphs, compile
        self.run = dit.run if graphs == "off" else GraphedPass(dit, batch, self.C, self.size,
                                                                capture=graphs == "cuda", compile=compile)
        self.inputs = None if graphs == "off" else GraphedFrameInputs(dit, batch, model.cfg.action_dim,
                                                                     self.device, capture=graphs == "cuda")
        self.gen = torch.Generator(device=self.device)
        self.frame = 0
        # heading heads (dit.rope_heading_heads): the last committed frame's heading, the running sum of
        # dit.turn over every committed frame's action since reset (a device scalar per stream: no host read)
        self.heading = torch.zeros(batch, dtype=torch.float64, device=self.device)
        self.prompt: tuple[torch.Tensor, torch.Tensor] | None = None
        self.ctx: PromptContext | None = None
        self.sig_emb: torch.Tensor | None = None    # (steps + 1, D): the schedule's levels, then context_sigma
        # state kept beside this sampler's cache that must start over with it (NeuralEnv's spatial memory):
        # every caller that resets the sampler (the evaluation resets it directly) resets these too
        self.on_reset: list[Callable[[], None]] = []

    def _capacity(self, mode: AttentionMode) -> int:
        return mode.capacity_tokens(self.N) or (self.max_frames or INITIAL_FRAMES) * self.N

    def set_decay(self, slopes: torch.Tensor) -> None:
        """Temporal decay slopes (depth, heads) for the cache (the model's own, or a probe's over any model);
        before the first frame: on CUDA the bias rides in a key channel, and switching it on reallocates."""
        self.cache.set_decay(slopes, self.model.dit.logit_bound())
        if self.device.type == "cuda":
            self.cache.set_bias_channel(True)
        if self.guide is not None:
            self.guide.set_decay(slopes)

    @torch.no_grad()
    def reset(self, seed: int, prompt: str) -> None:
        """New episode: seed the noise, encode the prompt once (and everything that depends only on it or
        on the schedule), empty the cache."""
        self.gen.manual_seed(int(seed))
        if self.guide is not None:
            self.guide.reset(seed, prompt)
        self.prompt = self.model.encode_prompt([prompt] * self.batch)
        dit = self.model.dit
        self.ctx = dit.prompt_context(self.prompt)
        levels = torch.cat([self.sigmas[:-1], torch.full((1,), self.context_sigma, device=self.device)])
        self.sig_emb = dit.sigma_embedding(levels)
        self.cache.reset()
        self.cache.resize(self._capacity(self.mode))
        self.mode.reset()
        self.frame = 0
        self.heading.zero_()
        self._last_noise = None
        for fn in self.on_reset:
            fn()

    def set_mode(self, mode: AttentionMode) -> None:
        """Switch attention mode mid-episode: the new mode brings the cache to its own rules."""
        mode.reset()
        if self.cache.decay is not None and self.device.type == "cuda" and not self.cache.pad:
            self.cache.set_bias_channel(True)   # dense's in-kernel decay had switched it off (set_decay says why)
            self.cache.refresh_channel()
        mode.adopt(self.cache, self.N)
        self.mode = mode

    def frame_inputs(self, action: torch.Tensor) -> FrameInputs:
        """action (B, A) -> the conditioning and rotary shared by every pass of the current frame."""
        if self.ctx is None:
            raise RuntimeError("Sampler used before reset(seed, prompt)")
        if self.cache.decay is not None:
            self.cache.now.fill_(self.frame)   # outside any capture: graphs read it at replay
        self.cache.refresh_channel()           # every slot's bias for this frame, once (KVCache docstring)
        g = None if self.guide is None else self.guide.frame_inputs(action)
        if self.inputs is not None:
            return FrameInputs(*self.inputs(action.to(self.device), self.frame, self.ctx.pool, self.heading), guide=g)
        dit = self.model.dit
        a = action.to(self.device)[:, None]                                     # (B, 1, A)
        frames = torch.full((self.batch, 1), self.frame, dtype=torch.long, device=self.device)
        turn = dit.turn(a)
        heading = None if turn is None else self.heading[:, None] + turn        # (B, 1)
        return FrameInputs(dit.frame_condition(a, self.ctx.pool), dit.rope(frames, heading),
                           None if heading is None else heading[:, 0], g)

    def _pass(self, x: torch.Tensor, level: int, f: FrameInputs, commit: bool) -> torch.Tensor:
        """One DiT pass over the current frame at sigma_emb[level]. x (B, C, h, w) -> v (B, C, h, w), xdtype."""
        assert self.ctx is not None and self.sig_emb is not None
        info = StepInfo(frame=self.frame, step=level, num_steps=self.steps, commit=commit)
        v = self.run(x.to(self.dtype)[:, None], f.cond + self.sig_emb[level], f.rope, self.ctx.kv,
                     FrameAttention(self.mode, self.cache, info, refresh=False))
        return v[:, 0].to(self.xdtype)

    @torch.no_grad()
    def commit(self, latent: torch.Tensor, action: torch.Tensor, f: FrameInputs | None = None) -> None:
        """Write a finished (or true, when priming) frame's K/V into the cache and advance the frame index.
        latent (B, C, h, w) normalised; action (B, A) float: the action that produced this frame; f: its
        frame_inputs when the caller already has them (step())."""
        f = self.frame_inputs(action) if f is None else f
        x = latent.to(self.xdtype)
        if self.context_sigma > 0:
            eps = torch.randn(x.shape, generator=self.gen, device=self.device).to(self.xdtype)
            x = (1 - self.context_sigma) * x + self.context_sigma * eps
        self._pass(x, self.steps, f, commit=True)
        if f.heading is not None:
            self.heading.copy_(f.heading)
        self.frame += 1
        if self.guide is not None:
            self.guide.commit(latent, action, f.guide)

    @torch.no_grad()
    def sample(self, action: torch.Tensor, f: FrameInputs | None = None, anchor: torch.Tensor | None = None,
               anchor_step: int = 0) -> torch.Tensor:
        """Denoise the next frame's latent for `action` (B, A) without committing it (B, C, h, w).
        anchor (B, C, h, w): a stored latent to start from (engine/memory.py): the frame starts at step
        `anchor_step` of the schedule from (1 - s) anchor + s noise, s = sigmas[anchor_step], the noise being
        the frame's usual draw (so the generator advances as it always does)."""
        f = self.frame_inputs(action) if f is None else f
        x = torch.randn((self.batch, self.C, self.size, self.size), generator=self.gen,
                        device=self.device).to(self.xdtype)
        if self.noise_corr > 0:
            if self._last_noise is not None:
                x.mul_(math.sqrt(1 - self.noise_corr ** 2)).add_(self._last_noise, alpha=self.noise_corr)
                self._last_noise.copy_(x)
            else:
                self._last_noise = x.clone()
        if self.noise_scale != 1.0:
            x.mul_(self.noise_scale)                          # x is this frame's own draw: scaled in place
        first = 0
        if anchor is not None:
            if not 0 < anchor_step < self.steps:
                raise ValueError(f"anchor_step must be in 1..{self.steps - 1} (a step of the schedule), got {anchor_step}")
            first, s = anchor_step, self.sigmas[anchor_step].to(self.xdtype)
            x = torch.lerp(anchor.to(self.xdtype), x, s)      # (1 - s) anchor + s noise
        for i in range(first, self.steps):
            v = self._pass(x, i, f, commit=False)
            if self.guide is not None:   # v + G (v - v_guide), out of place: v may be a graph's static output
                assert f.guide is not None
                v = torch.lerp(self.guide._pass(x, i, f.guide, commit=False), v, 1.0 + self.guidance)
            x = torch.addcmul(x, self.dts[i], v)
        return x

    @torch.no_grad()
    def step(self, action: torch.Tensor, before_commit: Callable[[torch.Tensor], None] | None = None,
             anchor: torch.Tensor | None = None, anchor_step: int = 0) -> torch.Tensor:
        """Generate the next frame's latent for `action` (B, A), commit it, return it (B, C, h, w).
        before_commit(latent): work the caller queues between the last denoising pass and the commit pass.
        Why: the commit pass only fills the cache for the next frame, so NeuralEnv queues the decode and the
        frame's copy to the host there and hands the frame out while the GPU still runs the commit; the host
        then prepares the next frame during it instead of the GPU waiting on the host (docs/BENCHMARKS.md).
        (Teacher forcing calls sample() and then commit() with the true frame instead.)
        anchor, anchor_step: sample()'s, the spatial memory's start (engine/memory.py)."""
        f = self.frame_inputs(action)
        x = self.sample(action, f, anchor, anchor_step)
        if before_commit is not None:
            before_commit(x)
        self.commit(x, action, f)
        return x
