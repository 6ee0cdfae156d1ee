"""Bucketing of queries and keys into one shared space, the first half of every FAST-AR ANN step.

`Hasher` is what TempCache, AnnSA and AnnCA ask for: integer codes per token and table (the bucket a key is
stored in) and probe codes per token, table and probe (the buckets a query searches). Two back-ends:

- `LSHHasher` (here): sign random projections (SimHash), `bits` hyperplanes per table, `tables` tables,
  multi-probe by flipping the bits with the smallest margins (Lv et al. 2007): the nearest buckets in Hamming
  distance are the likeliest to hold the query's neighbours, so one extra probe buys more recall than one
  extra table at the same key-side cost (keys are hashed once per table, probes are free for keys).
- `QuantHasher` (quant.py): nearest k-means centroid, fitted once on the first frame a layer sees.

Keys are centred by the mean key of the first frame a layer sees (per head) before hashing: q.(k - mu) and q.k
differ by q.mu, a constant per query, so softmax is unchanged, while the shared component that attention keys
carry would otherwise put most keys on one side of every hyperplane (one giant bucket). The mean is frozen
after the first fit so that codes stored in the cache stay valid.
"""
from __future__ import annotations

from typing import Protocol

import torch


class Hasher(Protocol):
    tables: int
    probes: int
    n_buckets: int

    def codes(self, layer: int, x: torch.Tensor, is_key: bool) -> torch.Tensor:
        """x (B, H, N, D) -> (B, H, N, T) int64 bucket per table, in [0, n_buckets)."""
        ...

    def probe_codes(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, N, D) queries -> (B, H, N, T, P) int64 buckets to search; [..., 0] is the own bucket."""
        ...

    def fit(self, layer: int, k: torch.Tensor, q: torch.Tensor | None = None) -> None:
        """Freeze per-layer statistics (key mean, centroids) from the first frame seen; no-op afterwards."""
        ...


class LSHHasher:
    """SimHash with `bits` hyperplanes x `tables` tables and `probes` probes per table."""

    def __init__(self, head_dim: int, bits: int = 4, tables: int = 1, probes: int = 1, seed: int = 0,
                 center: bool = True) -> None:
        if bits < 1 or bits > 16:
            raise ValueError(f"lsh: bits must be in [1, 16], got bits={bits}")
        if tables < 1:
            raise ValueError(f"lsh: tables must be >= 1, got tables={tables}")
        if not 1 <= probes <= bits + 1:
            raise ValueError(f"lsh: probes must be in [1, bits + 1], got probes={probes}")
        self.bits, self.tables, self.probes, self.center = bits, tables, probes, center
        self.n_buckets = 1 << bits
        g = torch.Generator().manual_seed(seed)
        self._planes = torch.randn(tables, head_dim, bits, generator=g)      # (T, D, bits)
        self._mean: dict[int, torch.Tensor] = {}                              # layer -> (H, D)
        self._dev: dict[tuple, torch.Tensor] = {}

    def fit(self, layer: int, k: torch.Tensor, q: torch.Tensor | None = None) -> None:
        if layer not in self._mean:
            self._mean[layer] = k.float().mean(dim=(0, 2)) if self.center else torch.zeros_like(k[0, :, 0]).float()

    def _planes_on(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in self._dev:
            self._dev[key] = self._planes.to(x.device, torch.float32)
        return self._dev[key]

    def _proj(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        mu = self._mean.get(layer)
        xf = x.float() if mu is None else x.float() - mu[None, :, None, :].to(x.device)
        return torch.einsum("bhnd,tdk->bhntk", xf, self._planes_on(x))      # (B, H, N, T, bits)

    def project_layers(self, x: torch.Tensor) -> torch.Tensor:
        """x (L, B, H, N, D): tokens of layers 0..L-1 -> projections (L, B, H, N, T, bits), one einsum for all
        layers (the batched TempCache commit hashes every layer's scratch keys at once). Every layer must have
        been fitted (its mean is frozen from then on, so the stacked means are built once per device)."""
        L = x.shape[0]
        key = ("means", x.device, L)
        if key not in self._dev:
            if any(layer not in self._mean for layer in range(L)):
                raise RuntimeError(f"lsh: project_layers over {L} layers before every layer was fitted")
            self._dev[key] = torch.stack([self._mean[layer] for layer in range(L)]).to(x.device)   # (L, H, D)
        xf = x.float() - self._dev[key][:, None, :, None, :]
        return torch.einsum("lbhnd,tdk->lbhntk", xf, self._planes_on(x))

    def _weights(self, device: torch.device) -> torch.Tensor:
        """Bit weights (bits,), made once per device: code_of runs at every commit and every probe. Not kept
        when first made inside a CUDA graph capture (its values would exist only in replays)."""
        key = ("weights", device)
        w = self._dev.get(key)
        if w is None:
            w = 1 << torch.arange(self.bits, device=device, dtype=torch.int64)
            if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
                self._dev[key] = w
        return w

    def code_of(self, p: torch.Tensor) -> torch.Tensor:
        """Projections (..., T, bits) -> bucket per table (..., T)."""
        return ((p > 0).long() * self._weights(p.device)).sum(-1)

    def probes_of(self, p: torch.Tensor) -> torch.Tensor:
        """Projections (..., T, bits) -> buckets to search (..., T, P): the own bucket, then the Hamming-1
        buckets across the (probes - 1) least certain bits, one at a time (the nearest to the query)."""
        code = self.code_of(p)
        if self.probes == 1:
            return code[..., None]
        order = p.abs().argsort(dim=-1)[..., :self.probes - 1]                # (..., T, P-1)
        flips = code[..., None] ^ (1 << order)
        return torch.cat([code[..., None], flips], dim=-1)

    def codes(self, layer: int, x: torch.Tensor, is_key: bool = True) -> torch.Tensor:
        return self.code_of(self._proj(layer, x))                             # (B, H, N, T)

    def probe_codes(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.probes_of(self._proj(layer, x))                           # (B, H, N, T, P)
