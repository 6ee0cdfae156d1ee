"""Quantization back-end of the FAST-AR ANN step.

Two uses, both training-free:
- bucketing (`QuantHasher`): a token's bucket is its nearest of `centroids` k-means centroids (cosine, after
  centring keys as lsh.py explains), fitted per layer and head on the first frame a layer sees (its keys and
  queries together, so both live in one space) and then frozen so that stored codes stay valid. A query probes
  its `probes` nearest centroids. Unlike random hyperplanes, centroids follow the data, so buckets are balanced.
- search (`quantize_8bit`): TempCache's top-1 search over 8-bit codes (per-vector symmetric scale), the
  published default; the search then reads 4x less memory than fp32 keys and its neighbours match exact search
  except on near ties.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """x (..., D) -> the same vectors after int8 round-trip (per-vector scale max|x|/127), float32."""
    xf = x.float()
    s = xf.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(xf / s).clamp_(-127, 127) * s


class QuantHasher:
    """Nearest-centroid buckets: `centroids` per table, `tables` independent k-means runs, `probes` probes."""

    def __init__(self, head_dim: int, centroids: int = 16, tables: int = 1, probes: int = 1, iters: int = 10,
                 seed: int = 0, center: bool = True) -> None:
        if centroids < 1:
            raise ValueError(f"quant: centroids must be >= 1, got centroids={centroids}")
        if tables < 1:
            raise ValueError(f"quant: tables must be >= 1, got tables={tables}")
        if not 1 <= probes <= centroids:
            raise ValueError(f"quant: probes must be in [1, centroids], got probes={probes}")
        self.n_buckets, self.tables, self.probes, self.iters, self.seed = centroids, tables, probes, iters, seed
        self.center = center
        self._mean: dict[int, torch.Tensor] = {}     # layer -> (H, D)
        self._cent: dict[int, torch.Tensor] = {}     # layer -> (T, H, K, D) unit vectors

    def fit(self, layer: int, k: torch.Tensor, q: torch.Tensor | None = None) -> None:
        if layer in self._cent:
            return
        H, D = k.shape[1], k.shape[-1]
        mu = k.float().mean(dim=(0, 2)) if self.center else torch.zeros(H, D, device=k.device)
        self._mean[layer] = mu
        pts = k if q is None else torch.cat([k, q], dim=2)
        x = self._unit(layer, pts).transpose(0, 1).reshape(H, -1, D)           # (H, N, D)
        g = torch.Generator().manual_seed(self.seed + layer)
        cents = []
        for _ in range(self.tables):
            idx = torch.randint(0, x.shape[1], (self.n_buckets,), generator=g).to(x.device)
            c = x[:, idx].clone()                                               # (H, K, D)
            for _ in range(self.iters):  # spherical k-means; empty clusters keep their old centre
                a = torch.einsum("hnd,hkd->hnk", x, c).argmax(-1)               # (H, N)
                # per-centroid sums as a matmul with the one-hot assignment, not scatter_add: on CUDA a float
                # scatter_add sums in whatever order its atomics land, so centroids (and every bucket after them)
                # could differ in the low bits from one process to the next; a matmul sums in a fixed order
                s = torch.einsum("hnk,hnd->hkd", F.one_hot(a, self.n_buckets).to(x.dtype), x)   # (H, K, D)
                nonempty = s.norm(dim=-1, keepdim=True) > 0
                c = torch.where(nonempty, F.normalize(s, dim=-1), c)
            cents.append(c)
        self._cent[layer] = torch.stack(cents)                                  # (T, H, K, D)

    def _unit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        mu = self._mean[layer].to(x.device)
        return F.normalize(x.float() - mu[None, :, None, :], dim=-1)

    def _scores(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if layer not in self._cent:
            self.fit(layer, x)
        c = self._cent[layer].to(x.device)
        return torch.einsum("bhnd,thkd->bhntk", self._unit(layer, x), c)       # (B, H, N, T, K)

    def codes(self, layer: int, x: torch.Tensor, is_key: bool = True) -> torch.Tensor:
        return self._scores(layer, x).argmax(-1)                               # (B, H, N, T)

    def probe_codes(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self._scores(layer, x).topk(self.probes, dim=-1).indices         # (B, H, N, T, P)
