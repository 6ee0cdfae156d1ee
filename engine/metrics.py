"""Frame quality metrics shared by evaluation, the benchmark and replay checks.

PSNR over uint8 RGB frames (peak 255); SSIM as Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5) on
each channel, averaged. Both in float64 numpy so the numbers do not depend on the device that made the frames.
"""
from __future__ import annotations

import math

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 frames (..., H, W, 3); inf when identical."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0 ** 2 / mse)


def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of per-frame PSNR, for stacks (T, H, W, 3); identical frames count as 100 dB so that
    one exact frame does not make the mean infinite."""
    return float(np.mean([min(psnr(x, y), 100.0) for x, y in zip(a, b)]))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter over the two spatial axes of (H, W, C)."""
    k = len(g)
    h = sum(g[i] * img[i:img.shape[0] - k + 1 + i] for i in range(k))
    return sum(g[i] * h[:, i:h.shape[1] - k + 1 + i] for i in range(k))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM between two uint8 RGB frames (H, W, 3), mean over pixels and channels."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)
    g = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mx * mx
    syy = _filter(y * y, g) - my * my
    sxy = _filter(x * y, g) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())
