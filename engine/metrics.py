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


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays of one shape (0 when either is constant)."""
    a, b = a.astype(np.float64) - a.mean(), b.astype(np.float64) - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 0.0


def row_profile(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) frames -> (H, 3) mean colour per image row over all frames: the first-person layout of a
    stretch of play (ceiling above, walls, floor below), which a collapsed rollout's texture has lost."""
    return np.asarray(frames, np.float64).mean((0, 2))


def layout_corr(frames: np.ndarray, truth: np.ndarray) -> float:
    """Correlation of the row profiles of generated and true frames (the collapse measure of engine.evaluate
    and engine.bench: 0.47-0.96 between stretches of one true episode, ~0 for a flat texture; the benchmark's
    frozen dense and pink merge rollouts kept 0.36-0.38, which their motion gives away)."""
    return corr(row_profile(frames), row_profile(truth))


def view_flow(frames: np.ndarray, first: np.ndarray) -> tuple[float, float]:
    """How the view moves over uint8 frames (T, H, W, 3) that follow `first` (H, W, 3): dense optical flow
    (OpenCV Farneback) between consecutive frames, as (mean horizontal flow in pixels a frame, mean divergence
    a frame). Turning or strafing right moves the picture left (dx < 0), left moves it right; walking forward
    expands it (divergence > 0), backing up contracts it. Why: PSNR against the truth mixes "moved the right
    way" with "drew the right things in what came into view"; this keeps only the first. A near-uniform view
    (a dark wall in fog) gives ~0 for both, whatever the motion."""
    import cv2

    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in [first, *frames]]
    dx, div = [], []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)   # (H, W, 2) pixels
        dx.append(float(flow[..., 0].mean()))
        div.append(float((np.gradient(flow[..., 0], axis=1) + np.gradient(flow[..., 1], axis=0)).mean()))
    return float(np.mean(dx)), float(np.mean(div))
