"""Frame autoencoder: 128x128 RGB <-> 16x16xC latent, plain convolutions.

Why a deterministic conv AE (no KL, no attention): the DiT needs a compact, smooth, well-scaled latent and the
decoder must run every frame in real time on a CPU. Convolutions with small channel counts at full resolution
keep the decoder cheap; the trainer normalises the latent per channel (mean/std stored in the checkpoint) and
trains the decoder with a little latent noise so that imperfect latents from the DiT still decode cleanly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.config import AEConfig


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.n1, self.c1 = _norm(c), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = _norm(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.silu(self.n2(self.c1(F.silu(self.n1(x))))))


class Encoder(nn.Module):
    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            layers += [ResBlock(c) for _ in range(cfg.enc_blocks)]
            if i + 1 < len(ch):
                layers.append(nn.Conv2d(c, ch[i + 1], 3, stride=2, padding=1))
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.latent_ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.conv_in(x)))        # (B, 3, H, W) -> (B, C, h, w)


class Decoder(nn.Module):
    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        ch = cfg.channels[::-1]
        self.conv_in = nn.Conv2d(cfg.latent_ch, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, c in enumerate(ch):
            layers += [ResBlock(c) for _ in range(cfg.dec_blocks)]
            if i + 1 < len(ch):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, ch[i + 1], 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.conv_in(z)))        # (B, C, h, w) -> (B, 3, H, W) in ~[-1, 1]


class FrameAutoencoder(nn.Module):
    """Raw (unnormalised) latents; WorldModel applies the stored per-channel normalisation."""

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    @staticmethod
    def to_input(frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
        return frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
        return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z), z
