"""Density, recall and sparsity, measured the same way for every mode (HUD, benchmark, schedule choice).

- density: share of query-key pairs a sparse kernel computed, over the pairs dense attention over the same
  cache would compute; and cache density: slots kept per head over the tokens a dense cache of the same frame
  count would hold.
- recall: share of the dense softmax mass (over the mode's own cache, biases included) that falls on the keys a
  sparse step kept, computed exactly for a strided sample of queries on every `recall_every`-th frame
  (0 = never: timing runs). It needs the full score row, so it is the one place that may sync.
- sparsity (for choosing the schedule's layers): the smallest share of keys that carries `mass` of a query's
  softmax, averaged; a layer where it is small is one where sparse attention loses little.

Running sums stay on the device; `summary()` reads them (one sync, when the HUD or benchmark asks).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F


class LayerMeter:
    """Per-layer running means of named quantities. Host floats sum on the host; device tensors sum on the
    device, value and count together, in place into one accumulator per (layer, name): no sync until summary,
    and a call captured in a CUDA graph keeps adding on every replay (the accumulator exists from the pass's
    eager run before the capture, and reset zeroes it in place rather than dropping it)."""

    def __init__(self) -> None:
        self._sum: dict[int, dict[str, float]] = defaultdict(dict)
        self._cnt: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._dev: dict[tuple[int, str], torch.Tensor] = {}   # (layer, name) -> (2,) float32: sum, count

    def add(self, layer: int, name: str, value: torch.Tensor | float) -> None:
        if not isinstance(value, torch.Tensor):
            self._sum[layer][name] = self._sum[layer].get(name, 0.0) + float(value)
            self._cnt[layer][name] += 1
            return
        acc = self._dev.get((layer, name))
        if acc is None or acc.device != value.device:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"meter: first value of {name!r} (layer {layer}) inside a CUDA graph capture; "
                                   f"the pass must run eagerly once first")
            acc = self._dev[(layer, name)] = torch.zeros(2, dtype=torch.float32, device=value.device)
        acc[0].add_(value.detach().float().reshape(()))
        acc[1].add_(1.0)

    def reset(self) -> None:
        self._sum.clear()
        self._cnt.clear()
        for acc in self._dev.values():
            acc.zero_()

    def _totals(self) -> dict[tuple[int, str], tuple[float, float]]:
        """(layer, name) -> (sum, count) over host and device values (one sync for all device ones)."""
        out: dict[tuple[int, str], tuple[float, float]] = {}
        for layer, sums in self._sum.items():
            for name, v in sums.items():
                out[(layer, name)] = (v, float(self._cnt[layer][name]))
        by_device: dict[torch.device, list[tuple[int, str]]] = defaultdict(list)
        for key, acc in self._dev.items():
            by_device[acc.device].append(key)
        for keys in by_device.values():
            vals = torch.stack([self._dev[k] for k in keys]).tolist()
            for key, (v, c) in zip(keys, vals):
                if c > 0:
                    s0, c0 = out.get(key, (0.0, 0.0))
                    out[key] = (s0 + v, c0 + c)
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (layer, name), (v, c) in sorted(self._totals().items()):
            out.setdefault(str(layer), {})[name] = v / c
        return out

    def mean(self, name: str, summary: dict[str, dict[str, float]] | None = None) -> float | None:
        """The mean over layers of `name`'s per-layer mean; `summary`: one already read (no second sync)."""
        rows = (self.summary() if summary is None else summary).values()
        vals = [row[name] for row in rows if name in row]
        return sum(vals) / len(vals) if vals else None


def sample_queries(q: torch.Tensor, count: int) -> torch.Tensor:
    """Strided subset of `count` query indices of q (B, H, n, D)."""
    n = q.shape[2]
    return torch.arange(0, n, max(1, n // max(count, 1)), device=q.device)[:count]


def mass_recall(q: torch.Tensor, K: torch.Tensor, bias: torch.Tensor | None, kept: torch.Tensor) -> torch.Tensor:
    """Share of the dense softmax mass on kept keys. q (B, H, s, D); K (B, H, L, D); bias (B, H, L) or None;
    kept (B, H, s, L) or (B, H, L) bool. Returns a device scalar (mean over queries and heads)."""
    scores = torch.einsum("bhsd,bhld->bhsl", q.float(), K.float()) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias[:, :, None, :].float()
    p = scores.softmax(-1)
    kept = kept if kept.dim() == 4 else kept[:, :, None, :]
    return (p * kept).sum(-1).mean()


def top_mass_share(q: torch.Tensor, K: torch.Tensor, bias: torch.Tensor | None, mass: float = 0.85) -> torch.Tensor:
    """Smallest share of keys carrying `mass` of each query's softmax, averaged (device scalar)."""
    scores = torch.einsum("bhsd,bhld->bhsl", q.float(), K.float()) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias[:, :, None, :].float()
    p = scores.softmax(-1).sort(-1, descending=True).values.cumsum(-1)
    need = (p < mass).sum(-1).float() + 1
    return (need / K.shape[2]).mean()


def grouped_recall(q: torch.Tensor, hist_k: torch.Tensor, comp_k: torch.Tensor, comp_bias: torch.Tensor,
                   kept: torch.Tensor | None = None, own: int = 0, chunk: int = 8192) -> torch.Tensor:
    """Recall of a compressed (TempCache) cache against the dense history it replaced, for the benchmark:
    each history key is assigned to its most similar (cosine) valid slot; recall = sum over slots of
    min(dense mass of the keys assigned to it, compressed softmax weight of the slot). 1 exactly when groups
    hold identical keys (grouping lemma); falls with approximate and forced merges. With `kept` (B, H, s, Lc),
    the weight of slots a sparse step skipped counts as lost (TempCache + AnnSA). The last `own` entries of
    both (the frame's own keys) correspond one to one.
    q (B, H, s, D); hist_k (B, H, Lh, D); comp_k (B, H, Lc, D); comp_bias (B, H, Lc) (NEG_BIAS = empty)."""
    d = math.sqrt(q.shape[-1])
    p_dense = (torch.einsum("bhsd,bhld->bhsl", q.float(), hist_k.float()) / d).softmax(-1)
    w = (torch.einsum("bhsd,bhld->bhsl", q.float(), comp_k.float()) / d + comp_bias[:, :, None].float()).softmax(-1)
    if kept is not None:
        w = w * kept
    Lh, Lc = hist_k.shape[2], comp_k.shape[2]
    ck = F.normalize(comp_k[:, :, :Lc - own].float(), dim=-1)
    empty = comp_bias[:, :, None, :Lc - own] < -1e3
    agg = torch.zeros_like(w)
    if own:
        agg[..., Lc - own:] = p_dense[..., Lh - own:]
    for s in range(0, Lh - own, chunk):   # assignment in chunks: history x slots does not fit at once
        e = min(s + chunk, Lh - own)
        sim = torch.einsum("bhld,bhcd->bhlc", F.normalize(hist_k[:, :, s:e].float(), dim=-1), ck)
        assign = sim.masked_fill(empty, -2.0).argmax(-1)                         # (B, H, l)
        agg.scatter_add_(3, assign[:, :, None, :].expand(-1, -1, q.shape[2], -1), p_dense[..., s:e])
    return torch.minimum(agg, w).sum(-1).mean()


def choose_layers(share_by_layer: dict[int, float], fraction: float = 0.7) -> list[int]:
    """The `fraction` of layers with the smallest top-mass share (the sparsest): the schedule's layers."""
    ranked = sorted(share_by_layer, key=share_by_layer.__getitem__)
    return sorted(ranked[:max(1, round(fraction * len(ranked)))])
