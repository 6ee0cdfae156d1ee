"""TempCache: bound the KV cache by merging keys that repeat across frames (FAST-AR, Samuel et al. 2026).

On the commit pass each new key of the frame looks up its top-1 past key (ANN, see ann.py / lsh.py /
quant.py); if the two are similar enough the new key joins that key's group: the group's slot now holds the
newest key, the mass-weighted running mean of the group's values, and the logit bias log(m) (m = keys in the
group). Grouping lemma: if a group's keys are identical this is exactly dense attention over all of them.

Choices the paper leaves open, and why (defaults in `TempCacheConfig`):
- metric "cosine": scale-free, so one threshold serves every layer and head although key norms differ by an
  order of magnitude between them; "dot" is available for models whose key norms carry meaning.
- threshold 0.95: merges near-duplicates (static content, whose keys differ only by noise and drift) but not
  neighbouring distinct tokens; tune it per model with metrics.sparsity_probe once the trained model exists.
- match_by "key": the lemma is about equal keys, so a new key is matched against past keys; "query" uses the
  frame's queries for retrieval as the paper words it, the merge test stays key-to-key.
- group "head": every head merges on its own similarity (a key repeated in a position-blind head need not
  repeat in a position-aware one), so heads hold different slot counts; a head's unused slots carry NEG_BIAS so
  the layer keeps one length. "layer" merges a token in all heads at once (mean per-head cosine): less
  compression, no holes.
- hard capacity (capacity_frames x tokens per frame per head): if a frame would not fit, the new tokens
  whose best match is closest are merged into it anyway, below the threshold (merge, never evict): memory stays
  bounded even when nothing repeats, and no place is forgotten outright, only blurred. The alternative,
  evicting the oldest lightest group, turns TempCache into a window for exactly the long-range memory it is for.
- compaction (one host sync) runs only when holes may not leave room for the next frame, or every
  `compact_every` frames so that attention does not run over many empty slots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from engine.attention import ann
from engine.attention.lsh import Hasher
from engine.attention.quant import quantize_8bit
from engine.cache import NEG_BIAS, KVCache

CODES = "codes"   # name of the per-slot bucket-code tensor in KVCache.slot_data, (L, B, H, C, T)


@dataclass
class TempCacheConfig:
    threshold: float = 0.95       # merge when similarity(new key, matched key) >= threshold
    metric: str = "cosine"        # cosine | dot
    group: str = "head"           # head | layer
    match_by: str = "key"         # key | query
    search: str = "ann"           # ann (the mode's LSH/quant back-end) | exact
    engine: str = "torch"         # torch | faiss (top-1 search engine; same neighbours)
    capacity_frames: int = 64     # hard cap: slots per head = capacity_frames * tokens per frame
    compact_every: int = 4        # frames between compactions (each is one host sync per layer)

    def __post_init__(self) -> None:
        checks = {
            "threshold": self.threshold >= 0 and (self.metric != "cosine" or self.threshold <= 1),
            "metric": self.metric in ("cosine", "dot"),
            "group": self.group in ("head", "layer"),
            "match_by": self.match_by in ("key", "query"),
            "search": self.search in ("ann", "exact"),
            "engine": self.engine in ("torch", "faiss"),
            "capacity_frames": self.capacity_frames >= 1,
            "compact_every": self.compact_every >= 1,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"tempcache.{field}: invalid value {getattr(self, field)!r} "
                                 f"(threshold in [0, 1] for cosine and >= 0 for dot; metric cosine|dot; "
                                 f"group head|layer; match_by key|query; search ann|exact; engine torch|faiss; "
                                 f"capacity_frames >= 1; compact_every >= 1)")


class TempCache:
    """The merge/compact/adopt logic on one KVCache; the owning mode calls `commit` on every commit pass."""

    def __init__(self, cfg: TempCacheConfig, hasher: Hasher | None, backend: str) -> None:
        self.cfg, self.hasher, self.backend = cfg, hasher, backend
        self._since_compact: dict[int, int] = {}
        self._merged_t: torch.Tensor | None = None

    def reset(self) -> None:
        self._since_compact.clear()
        self._merged_t = None

    def capacity(self, n: int) -> int:
        return (self.cfg.capacity_frames + 1) * n   # +1: the scratch frame

    # ---- the commit step --------------------------------------------------------------------------------
    def commit(self, cache: KVCache, layer: int, n: int, frame: int, q: torch.Tensor | None = None,
               inc_mass: torch.Tensor | None = None) -> None:
        """Merge the n scratch slots [length, length + n) into the cache. q (B, H, n, D): the frame's queries
        (for match_by="query"); inc_mass (B, H, n): mass each scratch token carries (1 for new keys, m for an
        adopted group, 0 for an empty slot)."""
        L0 = cache.length[layer]
        end = L0 + n
        C = self.capacity(n)
        K, V, bias = cache.k[layer], cache.v[layer], cache.bias[layer]            # (B, H, cap, D), (B, H, cap)
        B, H, D = K.shape[0], K.shape[1], K.shape[-1]
        inc = torch.ones(B, H, n, device=K.device) if inc_mass is None else inc_mass.float()
        k_new, v_new = K[:, :, L0:end], V[:, :, L0:end]
        valid = cache.valid(layer, L0)                                             # (B, H, L0)
        if L0 == 0:
            merge = torch.zeros(B, H, n, dtype=torch.bool, device=K.device)
            idx = torch.zeros(B, H, n, dtype=torch.long, device=K.device)
        else:
            sim, idx = self._match(cache, layer, L0, n, k_new, q, valid)
            merge = (sim >= self.cfg.threshold) & (inc > 0)
            merge = self._force_to_capacity(merge, sim, inc, valid, C - n)
            sim = torch.where(merge, sim, torch.full_like(sim, -math.inf))
        if L0 == 0:
            sim = torch.full_like(inc, -math.inf)
        self._apply(cache, layer, L0, n, frame, merge, idx, sim, inc, k_new, v_new)
        cache.commit_scratch(layer, n, frame)
        done = self._since_compact.get(layer, 0) + 1
        self._since_compact[layer] = done
        if cache.length[layer] > C - n or done >= self.cfg.compact_every:
            self.compact(cache, layer)
        cache.resize(max(self.capacity(n), max(cache.length) + n))   # give back what a dense cache grew to

    def _search_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, N, D) -> (G, N, D') in the space where inner product is the configured similarity."""
        B, H, N, D = x.shape
        x = F.normalize(x.float(), dim=-1) if self.cfg.metric == "cosine" else x.float()
        if self.cfg.group == "layer":   # mean over heads of the per-head similarity
            return x.permute(0, 2, 1, 3).reshape(B, N, H * D) / math.sqrt(H) if self.cfg.metric == "cosine" \
                else x.permute(0, 2, 1, 3).reshape(B, N, H * D) / H
        return x.reshape(B * H, N, D)

    def _match(self, cache: KVCache, layer: int, L0: int, n: int, k_new: torch.Tensor, q: torch.Tensor | None,
               valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-1 past slot per new token and the exact key-key similarity to it: (B, H, n) each."""
        B, H = k_new.shape[:2]
        keys = cache.k[layer, :, :, :L0]
        probe = k_new if self.cfg.match_by == "key" or q is None else q
        x, y = self._search_vectors(probe), self._search_vectors(keys)
        allowed = valid.reshape(B * H, L0) if self.cfg.group == "head" else valid.all(dim=1)
        use_ann = self.cfg.search == "ann"
        if use_ann and self.backend == "quant":
            x, y = quantize_8bit(x), quantize_8bit(y)
        elif use_ann and self.backend == "lsh" and self.hasher is not None and CODES in cache.slot_data:
            pc = self.hasher.probe_codes(layer, probe)                             # (B, H, n, T, P)
            kc = cache.slot_data[CODES][layer, :, :, :L0]                          # (B, H, L0, T)
            hit = (kc[:, :, None, :, :, None] == pc[:, :, :, None]).flatten(-2).any(-1)   # (B, H, n, L0)
            hit = hit.reshape(B * H, n, L0) if self.cfg.group == "head" else hit.any(dim=1)
            hit = hit & allowed[:, None, :]
            # a key whose buckets hold no past key searches everywhere: every token has a target to be
            # force-merged into when the cache is full
            allowed = torch.where(hit.any(-1, keepdim=True), hit, allowed[:, None, :].expand_as(hit))
        _, idx = ann.top1(x, y, allowed, engine=self.cfg.engine)                   # (G, n)
        # the merge test uses the exact similarity of the pair found, whatever found it
        xs, ys = self._search_vectors(k_new), self._search_vectors(keys)
        found = torch.gather(ys, 1, idx[..., None].expand(-1, -1, ys.shape[-1]))
        sim = (xs * found).sum(-1)
        ok = torch.gather(allowed if allowed.dim() == 2 else allowed.any(1), 1, idx)
        sim = torch.where(ok, sim, torch.full_like(sim, -math.inf))
        if self.cfg.group == "layer":
            return sim[:, None].expand(B, H, n), idx[:, None].expand(B, H, n)
        return sim.reshape(B, H, n), idx.reshape(B, H, n)

    def _force_to_capacity(self, merge: torch.Tensor, sim: torch.Tensor, inc: torch.Tensor, valid: torch.Tensor,
                           budget_slots: int) -> torch.Tensor:
        """Merge the best-matching unmerged tokens below the threshold too, so that each head adds at most
        budget_slots - valid new slots. Sync-free: ranks and counts stay on the device."""
        unmerged = ~merge & (inc > 0)
        room = (budget_slots - valid.sum(-1, keepdim=True)).clamp_min(0)            # (B, H, 1)
        excess = unmerged.sum(-1, keepdim=True) - room                             # (B, H, 1)
        score = torch.where(unmerged & torch.isfinite(sim), sim, torch.full_like(sim, -math.inf))
        rank = score.argsort(dim=-1, descending=True).argsort(dim=-1)              # 0 = best match
        forced = unmerged & torch.isfinite(sim) & (rank < excess)
        return merge | forced

    def _apply(self, cache: KVCache, layer: int, L0: int, n: int, frame: int, merge: torch.Tensor,
               idx: torch.Tensor, sim: torch.Tensor, inc: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Fold merged scratch tokens into their targets and empty their scratch slots."""
        K, V, bias = cache.k[layer], cache.v[layer], cache.bias[layer]
        B, H, _, D = K.shape
        tgt = torch.where(merge, idx, torch.full_like(idx, L0))                     # L0: a dump slot, ignored
        w = inc * merge                                                             # (B, H, n)
        m_old = torch.exp(bias[:, :, :L0 + 1].clone()) * (bias[:, :, :L0 + 1] > NEG_BIAS / 2)
        add_m = torch.zeros(B, H, L0 + 1, device=K.device).scatter_add_(2, tgt, w)
        add_v = torch.zeros(B, H, L0 + 1, D, device=K.device).scatter_add_(
            2, tgt[..., None].expand(-1, -1, -1, D), w[..., None] * v_new.float())
        # representative: the newest key; among several new keys merging into one group, the closest match
        best = torch.full((B, H, L0 + 1), -math.inf, device=K.device).scatter_reduce_(2, tgt, sim, "amax")
        winner = merge & (sim >= torch.gather(best, 2, tgt))
        nwin = torch.zeros(B, H, L0 + 1, device=K.device).scatter_add_(2, tgt, winner.float())
        ksum = torch.zeros(B, H, L0 + 1, D, device=K.device).scatter_add_(
            2, tgt[..., None].expand(-1, -1, -1, D), winner[..., None] * k_new.float())
        hit = (add_m[:, :, :L0] > 0)
        m_tot = m_old[:, :, :L0] + add_m[:, :, :L0]
        v_mean = (m_old[:, :, :L0, None] * V[:, :, :L0].float() + add_v[:, :, :L0]) / m_tot.clamp_min(1e-30)[..., None]
        k_rep = ksum[:, :, :L0] / nwin[:, :, :L0].clamp_min(1)[..., None]
        V[:, :, :L0] = torch.where(hit[..., None], v_mean.to(V.dtype), V[:, :, :L0])
        K[:, :, :L0] = torch.where(hit[..., None] & (nwin[:, :, :L0, None] > 0), k_rep.to(K.dtype), K[:, :, :L0])
        bias[:, :, :L0] = torch.where(hit, torch.log(m_tot.clamp_min(1e-30)), bias[:, :, :L0])
        for t in cache.slot_data.values():   # side data (bucket codes) follows the representative key
            src = t[layer, :, :, L0:L0 + n]
            ix = tgt.reshape(*tgt.shape, *([1] * (src.dim() - 3))).expand(*tgt.shape, *src.shape[3:])
            keep = winner.reshape(*winner.shape, *([1] * (src.dim() - 3)))
            dst = t[layer, :, :, :L0 + 1].clone()
            dst.scatter_(2, ix, torch.where(keep, src, torch.gather(dst, 2, ix)))
            t[layer, :, :, :L0] = dst[:, :, :L0]
        any_hit = hit.flatten(0, 1).any(0)                                          # (L0,)
        cache.frame[layer, :L0] = torch.where(any_hit, torch.full_like(cache.frame[layer, :L0], frame),
                                              cache.frame[layer, :L0])
        # scratch slots: merged tokens leave a hole, the others are groups of their incoming mass
        bias[:, :, L0:L0 + n] = torch.where(merge | (inc <= 0), torch.full_like(inc, NEG_BIAS),
                                            torch.log(inc.clamp_min(1e-30)))
        self._merged_t = (merge.float().sum() if self._merged_t is None else self._merged_t + merge.float().sum())

    # ---- compaction and adoption -------------------------------------------------------------------------
    def compact(self, cache: KVCache, layer: int) -> None:
        """Move each head's valid slots to the front (one host sync for the new length)."""
        L = cache.length[layer]
        if L == 0:
            return
        valid = cache.valid(layer, L)                                               # (B, H, L)
        order = (~valid).to(torch.int8).argsort(dim=-1, stable=True)               # valid first, in order
        M = int(valid.sum(-1).max())
        idx = order[..., :M]
        fr = cache.frame[layer, :L][idx]                                            # (B, H, M)
        fr = torch.where(torch.gather(valid, 2, idx), fr, torch.full_like(fr, -1)).flatten(0, 1).amax(0)
        cache.gather_heads(layer, idx, fr)
        cache.set_length(layer, M)
        self._since_compact[layer] = 0

    def adopt(self, cache: KVCache, n: int, write_codes: "Callable[[KVCache, int, torch.Tensor], None] | None" = None) -> None:
        """Compress whatever the cache holds (a dense cache, a window, an earlier TempCache): replay its slots
        in frame order, n at a time, through the same merge step, carrying each slot's mass exp(bias)."""
        for layer in range(cache.n_layers):
            L = cache.length[layer]
            k, v, b = (t.clone() for t in cache.view(layer, L))
            fr = cache.frame[layer, :L].clone()
            order = fr.argsort(stable=True)
            cache.set_length(layer, 0)
            self._since_compact[layer] = 0
            for s in range(0, L, n):
                ix = order[s:s + n]
                c = ix.numel()
                kk, vv, bb = k[:, :, ix], v[:, :, ix], b[:, :, ix]
                if c < n:   # last partial block: pad with empty slots
                    pad = n - c
                    kk, vv = F.pad(kk, (0, 0, 0, pad)), F.pad(vv, (0, 0, 0, pad))
                    bb = F.pad(bb, (0, pad), value=NEG_BIAS)
                cache.write_scratch(layer, kk, vv)
                if write_codes is not None:
                    write_codes(cache, layer, kk)
                mass = torch.exp(bb.float()) * (bb > NEG_BIAS / 2)
                self.commit(cache, layer, n, int(fr[ix].max()), inc_mass=mass)
            self.compact(cache, layer)
        cache.resize(max(self.capacity(n), max(cache.length) + n))   # give back what a dense cache grew to
