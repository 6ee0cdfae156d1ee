"""The world model's networks: frame autoencoder, causal DiT, prompt encoder, bundled in `WorldModel`.

Plain forward() only; sampling lives in engine/sampler.py, weights I/O in engine/checkpoint.py.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.model.autoencoder import FrameAutoencoder
from engine.model.config import AEConfig, DiTConfig, ModelConfig, PromptConfig, preset
from engine.model.dit import CausalDiT, PromptEncoder, frame_mask, initialize_weights


class WorldModel(nn.Module):
    """Autoencoder + DiT + prompt encoder, with the latent normalisation (per-channel mean/std, buffers saved
    in the checkpoint) so the DiT always sees unit-scale latents whatever the autoencoder learned."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ae = FrameAutoencoder(cfg.ae)
        self.prompt = PromptEncoder(cfg.prompt)
        self.dit = CausalDiT(cfg.dit, cfg.ae.latent_ch, cfg.ae.latent_size, cfg.prompt.width,
                             cfg.action_dim, cfg.num_keys)
        self.register_buffer("latent_mean", torch.zeros(cfg.ae.latent_ch))
        self.register_buffer("latent_std", torch.ones(cfg.ae.latent_ch))
        initialize_weights(self.dit)

    @property
    def tokens_per_frame(self) -> int:
        return self.dit.tokens_per_frame

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        return self.latent_mean.to(z.dtype).view(shape), self.latent_std.to(z.dtype).view(shape)

    def cast_for_inference(self, dtype: torch.dtype) -> "WorldModel":
        """Cast the inference networks (DiT, prompt encoder, autoencoder) to `dtype` once, in place; the latent
        statistics stay float32, so latents in and out of encode/decode are float32 whatever `dtype` is."""
        self.ae.to(dtype)
        self.prompt.to(dtype)
        self.dit.cast_for_inference(dtype)
        return self

    def _ae_dtype(self) -> torch.dtype:
        return self.ae.decoder.parameters().__next__().dtype

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised latent (B, C, h, w) in the statistics' dtype."""
        z = self.ae.encoder(self.ae.to_input(frames).to(self._ae_dtype())).to(self.latent_std.dtype)
        m, s = self._stats(z)
        return (z - m) / s

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """normalised latent (B, C, h, w) -> uint8 (B, H, W, 3)."""
        z = z.to(self.latent_std.dtype)
        m, s = self._stats(z)
        return self.ae.to_uint8(self.ae.decoder((z * s + m).to(self._ae_dtype())))

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical prompts -> (tokens (B, P, Pw), pooled (B, Pw)); once per episode."""
        return self.prompt(self.prompt.tokenize(prompts, self.latent_std.device))

    def num_params(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"ae": count(self.ae), "dit": count(self.dit), "prompt": count(self.prompt), "total": count(self)}


__all__ = ["WorldModel", "ModelConfig", "AEConfig", "DiTConfig", "PromptConfig", "preset", "frame_mask",
           "CausalDiT", "PromptEncoder", "FrameAutoencoder"]
