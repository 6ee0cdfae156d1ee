"""Own-prediction context for DiT training (exposure bias; `dit.own_context_prob`, off by default).

Teacher forcing only ever shows the model true past frames, but a rollout feeds it its own slightly wrong
ones, and the errors compound (docs/MODEL.md: drift/collapse within ~100 frames). Fix used by Self-Forcing,
scheduled sampling and DIAMOND-style context noise: train part of the batch with a context made of the
model's own predictions, while the target stays the true next frame.

`predict_clip` makes those predictions cheaply and in parallel with the training sequence [clean | noisy]:
the clean half holds the true latents at the commit noise level (what the cache holds at inference), the noisy
half starts from pure noise, and `steps` Euler steps on the sampler's shifted grid (engine/sampler.py) denoise
every frame i at once, each seeing clean frames j < i only (the training mask): x_hat[i] is the model's
one-step prediction of frame i given the TRUE past. `rounds=2` runs it again with x_hat as the past, so errors
compound once. Frame 0 is kept true (it is the bootstrap frame at inference). No gradient, eval mode.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def validate(prob: float, steps: int, rounds: int) -> None:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"dit.own_context_prob must be in [0, 1], got {prob}")
    if not 1 <= steps <= 4:
        raise ValueError(f"dit.own_context_steps must be 1..4, got {steps}")
    if not 1 <= rounds <= 2:
        raise ValueError(f"dit.own_context_rounds must be 1 or 2, got {rounds}")


def pick(B: int, prob: float, device: torch.device, last: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the samples that get own-prediction context: a random round(prob * B) of them (at least 1
    when prob > 0). A fixed count, not a per-sample coin, so the prediction pass always has the same batch
    size (one FlexAttention compile instead of one per size). Empty (and no RNG drawn) when prob == 0.
    last (B,) bool: samples taken only once the others run out (same random draw, reordered)."""
    if prob <= 0.0:
        return torch.empty(0, dtype=torch.long, device=device)
    k = min(B, max(1, round(prob * B)))
    order = torch.randperm(B, device=device)
    if last is not None:
        order = order[torch.argsort(last[order].to(torch.int8), stable=True)]
    return order[:k]


def keep_memory(x_hat: torch.Tensor, z: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """x_hat, z (B, T, C, h, w); memory (B,) int: frames [0, memory[b]) of sample b from z (true), the rest from
    x_hat (predicted). Why (dit.own_context_memory): at a return the rollout's recent frames have drifted while
    the first visit's view sits further back; a revisit clip with a true first visit and predicted frames since
    trains the model to take the view from memory over its own recent frames. In a rollout (tools/recall_probe
    --true-first-turn) the model copies the first frames of a return at 26 dB and then drifts away frame by
    frame (docs/MODEL.md, "Sampling temperature")."""
    t = torch.arange(x_hat.shape[1], device=x_hat.device)
    keep = (t[None, :] < memory[:, None])[:, :, None, None, None]                # (B, T, 1, 1, 1)
    return torch.where(keep, z, x_hat)


def sigma_grid(steps: int, shift: float, device: torch.device) -> torch.Tensor:
    """The sampler's schedule (engine/sampler.py): 1 -> 0 over `steps`, s' = k s / (1 + (k - 1) s)."""
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float().to(device)


@torch.no_grad()
def predict_clip(dit: Any, z: torch.Tensor, acts: torch.Tensor, frames: torch.Tensor,
                 prompt: tuple[torch.Tensor, torch.Tensor], attn: Any, steps: int, shift: float,
                 context_sigma: float, rounds: int = 1,
                 autocast: Callable[[], Any] | None = None, heading: torch.Tensor | None = None) -> torch.Tensor:
    """z (B, T, C, h, w) true normalised latents (float32); acts (B, T, A); frames (B, T) -> x_hat (B, T, C, h, w)
    float32, no grad: frame 0 = z[:, 0], frame i = the model's `steps`-step sample given the past (true past in
    round 1, the previous round's x_hat in round 2); heading (B, T) radians for a model with heading heads
    (None: the running sum over the clip's actions, CausalDiT.forward). The DiT is put in eval mode for the pass
    and restored."""
    was_training = dit.training
    dit.eval()
    try:
        B, T = z.shape[:2]
        dev = z.device
        sig = sigma_grid(steps, shift, dev)
        cs = torch.full((B, T), float(context_sigma), device=dev)
        a2, f2 = torch.cat([acts, acts], 1), torch.cat([frames, frames], 1)
        if heading is None and dit.cfg.rope_heading_heads:
            heading = dit.turn(acts).cumsum(1)
        h2 = None if heading is None else torch.cat([heading, heading], 1)
        past = z
        for _ in range(rounds):
            x_ctx = (1 - context_sigma) * past + context_sigma * torch.randn_like(past) if context_sigma > 0 else past
            x = torch.randn_like(z)
            for i in range(steps):
                s = sig[i].expand(B, T)
                with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
                    v = dit(torch.cat([x_ctx, x], 1), torch.cat([cs, s], 1), a2, f2, prompt, attn, h2)[:, T:]
                x = x + (sig[i + 1] - sig[i]) * v.float()
            past = torch.cat([z[:, :1], x[:, 1:]], 1)
        return past.detach()
    finally:
        dit.train(was_training)
