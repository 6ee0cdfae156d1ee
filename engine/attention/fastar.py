"""FAST-AR attention modes: TempCache, AnnSA, AnnCA, alone or together, one class behind the AttentionMode call.

A mode name picks the modules and the ANN back-end (conf/attention/<name>.yaml):
    tempcache, annsa, annca, fastar            LSH back-end (random hyperplanes, multi-probe)
    tempcache_quant, annsa_quant, annca_quant, fastar_quant   quantization back-end (k-means buckets, 8-bit search)
Params are nested dicts (ann, tempcache, annsa, annca, schedule, metrics); an unknown field, or params for a
module the mode does not use, is a ValueError that names it.

Schedule: AnnSA and AnnCA are off for the first `dense_until` (0.3) of denoising progress, where the coarse
layout is decided, and on only in `schedule.layers`. Until the trained model's per-layer sparsity has been
measured (probe mode, metrics.choose_layers), the default is every layer but the first and the last: those
are the ones that read raw inputs and write the output, where attention is typically least sparse. TempCache
is not scheduled: it shapes the cache, which every later step reads.

The hasher is shared: one set of hyperplanes/centroids per layer serves the key codes stored in the cache
(AnnSA, TempCache's LSH search) and the queries' probes, so stored codes and probes always agree.

AnnCA alone (the annca modes) changes only the cross-attention to the prompt, so its self-attention is dense's
own (a DenseAttention inside, `_dense`): the same kernels, buckets and whole-pass CUDA graphs. AnnCA's keep
mask and masked call have no host sync and fixed shapes, so they are captured with the rest of the pass, under
a key that adds whether this pass is sparse and whether it measures recall. Before, the annca modes ran
FastARAttention's own growing-cache path between graphed pieces: 42.8 fps at frame 300 on the H100 against
dense's 107.4 (docs/BENCHMARKS.md, session 24).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from engine.attention import kernels, sparse_kernels
from engine.attention.annca import AnnCAConfig, keep_mask, sparse_cross_attention
from engine.attention.annsa import AnnSAConfig, allowed_mask, sparse_self_attention
from engine.attention.base import AttentionMode, StepInfo
from engine.attention.dense import DenseAttention
from engine.attention.lsh import Hasher, LSHHasher
from engine.attention.metrics import LayerMeter, mass_recall, sample_queries
from engine.attention.quant import QuantHasher
from engine.attention.tempcache import CODES, TempCache, TempCacheConfig
from engine.cache import NEG_BIAS, KVCache

FRAME_H = "frame_by_head"   # AnnSA's bucket order: each slot's frame per head (the layer column cannot hold it)

CROSS = 10_000   # hasher layer key offset for cross-attention (prompt keys live in another space)


@dataclass
class ANNConfig:
    backend: str = "lsh"    # lsh | quant
    bits: int = 4           # lsh: 16 buckets per table; with 4 probes a query reads ~1/4 of the cache
    tables: int = 1         # one table: a key is in one bucket, segments never overlap (cheapest packing)
    probes: int = 4         # own bucket + the 3 Hamming-1 buckets across the least certain bits
    centroids: int = 16     # quant: k-means buckets per head
    seed: int = 0
    center: bool = True     # hash k - mean(k): softmax-invariant, balances buckets (lsh.py)

    def __post_init__(self) -> None:
        if self.backend not in ("lsh", "quant"):
            raise ValueError(f"ann.backend: must be lsh|quant, got {self.backend!r}")

    def build(self, head_dim: int) -> Hasher:
        if self.backend == "lsh":
            return LSHHasher(head_dim, self.bits, self.tables, self.probes, self.seed, self.center)
        return QuantHasher(head_dim, self.centroids, self.tables, self.probes, seed=self.seed, center=self.center)


@dataclass
class ScheduleConfig:
    dense_until: float = 0.3             # sparse attention off while progress < dense_until
    layers: list[int] | None = None      # layers where AnnSA/AnnCA run; None: all but the first and last

    def __post_init__(self) -> None:
        if not 0.0 <= self.dense_until <= 1.0:
            raise ValueError(f"schedule.dense_until: must be in [0, 1], got {self.dense_until!r}")

    def active(self, layer: int, info: StepInfo, n_layers: int | None) -> bool:
        return info.progress >= self.dense_until and self.in_layers(layer, n_layers)

    def in_layers(self, layer: int, n_layers: int | None) -> bool:
        """Whether `layer` runs AnnSA/AnnCA at some step (the layer half of `active`)."""
        if self.layers is not None:
            return layer in self.layers
        if n_layers is None or n_layers <= 2:
            return True
        return 0 < layer < n_layers - 1


@dataclass
class MetricsConfig:
    recall_every: int = 8     # measure recall on every Nth frame (0: never, for timing runs)
    recall_queries: int = 32  # strided sample of the frame's queries

    def __post_init__(self) -> None:
        if self.recall_every < 0 or self.recall_queries < 1:
            raise ValueError(f"metrics.recall_every must be >= 0 and metrics.recall_queries >= 1, got "
                             f"{self.recall_every}, {self.recall_queries}")


SECTIONS = {"ann": ANNConfig, "tempcache": TempCacheConfig, "annsa": AnnSAConfig, "annca": AnnCAConfig,
            "schedule": ScheduleConfig, "metrics": MetricsConfig}


def _make(cls: type, params: Any, where: str) -> Any:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"{where}: expected a mapping of fields, got {params!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in params:
        if key not in names:
            raise ValueError(f"{where}.{key}: unknown field; known: {sorted(names)}")
    return cls(**params)


@dataclass
class FastARConfig:
    tempcache: TempCacheConfig | None = None
    annsa: AnnSAConfig | None = None
    annca: AnnCAConfig | None = None
    ann: ANNConfig = field(default_factory=ANNConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @classmethod
    def build(cls, modules: tuple[str, ...], backend: str, mode: str, **params: Any) -> "FastARConfig":
        for key in params:
            if key not in SECTIONS:
                raise ValueError(f"{mode}.{key}: unknown field; known: {sorted(SECTIONS)}")
            if key in ("tempcache", "annsa", "annca") and key not in modules:
                raise ValueError(f"{mode}.{key}: mode {mode!r} does not use {key} (it uses {list(modules)})")
        ann = dict(params.get("ann") or {})
        ann.setdefault("backend", backend)
        out = cls(ann=_make(ANNConfig, ann, f"{mode}.ann"),
                  schedule=_make(ScheduleConfig, params.get("schedule"), f"{mode}.schedule"),
                  metrics=_make(MetricsConfig, params.get("metrics"), f"{mode}.metrics"))
        for m in modules:
            setattr(out, m, _make(SECTIONS[m], params.get(m), f"{mode}.{m}"))
        return out


class FastARAttention(AttentionMode):
    def __init__(self, cfg: FastARConfig, name: str = "fastar") -> None:
        self.cfg, self.name = cfg, name
        self.meter = LayerMeter()
        self.hasher: Hasher | None = None
        self.tc: TempCache | None = None
        self._frames: dict[int, int] = {}       # layer -> frames the cache stands for (dense-equivalent)
        self._n_layers: int | None = None
        self._cache: KVCache | None = None
        self._biased = cfg.tempcache is not None
        self._paths: dict[str, str] = {}
        self._n = 1                             # tokens per frame (from the calls)
        self._pairs: torch.Tensor | None = None  # sparse path's pair count of the last call
        self._pairs_src: tuple | None = None       # what last_pairs needs to count a dense call's pairs
        self._staged: dict[int, torch.Tensor | None] = {}   # commit pass: layers whose scratch awaits the commit
        self._fresh: dict[int, int] = {}        # layer -> commits since its fixed layout was made empty or adopted
        self._search_layers: list[int] = []     # TempCache: layers whose new keys search for repeats
        self._sorted: dict[int, tuple[int, torch.Tensor, int]] = {}   # AnnSA bucket order per layer (_sort_buckets)
        self._memo: dict[int, dict] = {}        # per layer: the bucketed path's key segments (BucketLayout.memo)
        self._kbias: dict[int, tuple] = {}      # per layer: (what it was computed for, (B * H * capacity,) float32)
        self._adopted = False                   # the cache came from another mode (its slot order unknown)
        # AnnCA alone: dense's self-attention and graphs (module docstring)
        self._dense = DenseAttention() if cfg.tempcache is None and cfg.annsa is None else None

    # ---- setup -------------------------------------------------------------------------------------------
    def _setup(self, cache: KVCache) -> None:
        self._cache, self._n_layers = cache, cache.n_layers
        if self.hasher is None:
            self.hasher = self.cfg.ann.build(cache.head_dim)
        if self.tc is None and self.cfg.tempcache is not None:
            self.tc = TempCache(self.cfg.tempcache, self.hasher, self.cfg.ann.backend)
            self._search_layers = self.tc.check_layers(cache.n_layers)
        if self._needs_codes():
            cache.add_slot_tensor(CODES, (self.hasher.tables,), torch.int64, fill=self.hasher.n_buckets)
        if self.tc is not None and cache.device.type == "cuda" and not cache.pad \
                and self.tc.cfg.bias_layout == "channel":
            cache.set_bias_channel(True)   # group biases ride in a key channel: one plain kernel (kernels.py)
        if cache.pad and (self.tc is None or self.tc.cfg.bias_layout == "array") and not self._bucket_order() \
                and kernels.decay_in_kernel(cache):
            # a temporal decay had turned the channel on (Sampler.set_decay); the kernel adds it from the slots'
            # frames instead, beside the group biases in the array (TempCache) or alone (AnnCA over a growing
            # cache, whose dense self-attention ran FA2's head-dim-96 kernel on the channel at 10 fps by frame
            # 3000 on the H100 against dense's 26): 64 channels, no per-frame channel refresh
            cache.set_bias_channel(False)
        if self._bucket_order():
            if cache.pad:
                cache.set_bias_channel(False)  # the bucketed path reads K/V in place: contiguous, no bias needed
            cache.add_slot_tensor(FRAME_H, (), torch.long, fill=-1)

    def _needs_codes(self) -> bool:
        tc = self.cfg.tempcache
        return self.cfg.annsa is not None or (tc is not None and tc.search == "ann" and self.cfg.ann.backend == "lsh")

    def _write_codes(self, cache: KVCache, layer: int, k: torch.Tensor) -> None:
        """Bucket codes of the n scratch keys k (B, H, n, D), stored beside them."""
        start, n = cache.length[layer], k.shape[2]
        cache.slot_data[CODES][layer, :, :, start:start + n] = self.hasher.codes(layer, k, True)  # type: ignore[union-attr]

    def reset(self) -> None:
        self.meter.reset()
        self._frames.clear()
        self._staged.clear()
        self._fresh.clear()
        self._sorted.clear()
        self._memo.clear()
        self._kbias.clear()
        self._adopted = False
        if self.tc is not None:
            self.tc.reset()
        if self._dense is not None:
            self._dense.reset()

    def capacity_tokens(self, tokens_per_frame: int) -> int | None:
        return None if self.cfg.tempcache is None else (self.cfg.tempcache.capacity_frames + 1) * tokens_per_frame

    def adopt(self, cache: KVCache, tokens_per_frame: int) -> None:
        """Switch in over a cache another mode filled: fit the hasher on its keys, then compress (TempCache) or
        just compute the bucket codes of every slot (AnnSA); AnnCA alone: dense's adopt."""
        if self._dense is not None:
            self._cache, self._n_layers, self._n, self._adopted = cache, cache.n_layers, tokens_per_frame, True
            for layer in range(cache.n_layers):
                fr = cache.frame[layer, :cache.length[layer]]
                self._frames[layer] = int(fr[fr >= 0].unique().numel()) if cache.length[layer] else 0
            self._dense.adopt(cache, tokens_per_frame)
            return
        self._setup(cache)
        self._adopted = True
        n = self._n = tokens_per_frame
        self._fresh = {layer: 0 for layer in range(cache.n_layers)}   # adopted groups may carry a bias
        for layer in range(cache.n_layers):
            L = cache.length[layer]
            fr = cache.frame[layer, :L]
            self._frames[layer] = int(fr[fr >= 0].unique().numel()) if L else 0
            if L:
                self.hasher.fit(layer, cache.k[layer, :, :, max(0, L - n):L])  # type: ignore[union-attr]
        if self.tc is not None:
            self.tc.adopt(cache, n, self._write_codes if self._needs_codes() else None)
        elif self._needs_codes():
            for layer in range(cache.n_layers):
                L = cache.length[layer]
                for s in range(0, L, 4096):
                    e = min(L, s + 4096)
                    cache.slot_data[CODES][layer, :, :, s:e] = self.hasher.codes(layer, cache.k[layer, :, :, s:e], True)  # type: ignore[union-attr]
        self._biased = self.tc is not None or (bool((cache.bias != 0).any()) if cache.tokens() else False)
        self._sorted.clear()
        self._memo.clear()
        self._kbias.clear()
        if self._bucket_order():   # everything adopted counts as old: sorted by bucket now
            self._setup(cache)
            for layer in range(cache.n_layers):
                L = cache.length[layer]
                cache.slot_data[FRAME_H][layer, :, :, :L] = cache.frame[layer, :L]
                if self.cfg.schedule.in_layers(layer, cache.n_layers):
                    self._sort_buckets(cache, layer)

    # ---- the calls ---------------------------------------------------------------------------------------
    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache,
                       info: StepInfo) -> torch.Tensor:
        """Hot path. With recall/density off (metrics.recall_every = 0) and AnnSA/AnnCA off (the fastar
        default, see FASTAR_DEFAULTS): no host sync and fixed shapes: TempCache's fixed layout makes the
        attention length S + n from the first call on; the commit pass adds one fixed-shape merge."""
        if self._dense is not None:   # AnnCA alone: dense's self-attention (module docstring)
            self._cache, self._n_layers, self._n = cache, cache.n_layers, k.shape[2]
            self._pairs = None
            self._pairs_src = (cache, layer, cache.length[layer], k.shape[2], q.shape[0] * q.shape[1],
                               self._dense._biased)
            out = self._dense.self_attention(layer, q, k, v, cache, info)
            self._paths["dense"] = kernels.kernel_name()
            if info.commit:
                self._frames[layer] = self._frames.get(layer, 0) + 1
            return out
        self._setup(cache)
        hasher = self.hasher
        assert hasher is not None
        hasher.fit(layer, k, q)
        n = k.shape[2]
        self._n = n
        laid_out = False   # whether this call changed committed slots before attending (TempCache's layout)
        if self.tc is not None:
            if cache.length[layer] != self.tc.slots(n):   # a reset or another mode's cache: layout made anew
                self._fresh[layer] = 0
                laid_out = True
            self.tc.prepare(cache, layer, n, self._write_codes if self._needs_codes() else None)
        L0 = cache.length[layer]
        end = cache.write_scratch(layer, k, v)
        K, V, _ = cache.view(layer, end)
        # temporal decay (cache.decay) puts a bias on every slot, so no layer is plain then
        biased = (self._biased and not self._plain(layer)) or cache.decay is not None
        measure = self.cfg.metrics.recall_every > 0
        recall_now = self._recall_now(info)
        self._pairs_src = (cache, layer, L0, n, q.shape[0] * q.shape[1], biased)
        annsa = self.cfg.annsa is not None and self.cfg.schedule.active(layer, info, self._n_layers)
        if annsa and not self._annsa_ready(L0, n):   # a short cache: dense, and measured as such
            annsa = False
            if measure:
                self.meter.add(layer, "sa_density", 1.0)
            if recall_now:
                self.meter.add(layer, "sa_recall", 1.0)
        # a decay over a layer kept in bucket order: each head's slots hold other frames, so the decay comes from
        # the per-head frames (the scratch's are the frame itself: no decay), and the schedule's dense steps
        # probe every bucket (exact dense attention; dense kernels read the layer's one frame column)
        by_head = cache.decay is not None and self._bucket_order() and \
            self.cfg.schedule.in_layers(layer, self._n_layers)
        if by_head:
            cache.slot_data[FRAME_H][layer, :, :, L0:end] = cache.now
        every_bucket = by_head and not annsa and self._sorted.get(layer, (0,))[0] > 0
        if annsa or every_bucket:
            codes = cache.slot_data[CODES][layer, :, :, :L0]
            layout = self._layout(cache, layer, info.frame)
            kbias_fn = self._kbias_fn(cache, layer, end, info.frame) if by_head else None
            # in bucket order with a decay the per-slot bias is the buffer kept once a frame (_kbias_fn), read
            # as (B, H, end), not computed again in each call
            bias = kbias_fn().view(cache.batch, cache.n_heads, -1)[..., :end] if kbias_fn is not None else \
                cache.attn_bias(layer, end) if biased else None
            probe: Callable[[torch.Tensor], torch.Tensor] = lambda x: hasher.probe_codes(layer, x)  # noqa: E731
            if every_bucket:
                assert layout is not None
                layout = dataclasses.replace(layout, probes=hasher.n_buckets, memo=layout.memo.setdefault("all", {}))
                every = cache._arange(hasher.n_buckets)   # every bucket, made once per cache (not per call)
                probe = lambda x: every.expand(*x.shape[:3], 1, -1)  # noqa: E731
            out, pairs, path = sparse_self_attention(self.cfg.annsa, q, probe, K, V, codes, bias, hasher.n_buckets,
                                                     layout, kbias_fn)
            self._pairs = pairs
        if every_bucket:
            self._paths["every_bucket"] = path
        elif annsa:
            self._paths["self"] = path
            if measure:
                valid = cache.valid(layer, L0).sum() if bias is not None else L0 * q.shape[0] * q.shape[1]
                self.meter.add(layer, "sa_density", pairs / ((valid + n * q.shape[0] * q.shape[1]) * n))
            if recall_now:
                idx = sample_queries(q, self.cfg.metrics.recall_queries)
                c = codes if bias is None else torch.where(bias[:, :, :L0, None] > NEG_BIAS / 2, codes,
                                                           torch.full_like(codes, hasher.n_buckets))
                probes = hasher.probe_codes(layer, q[:, :, idx])                   # (B, H, s, T, P)
                kept = torch.cat([allowed_mask(probes, c, None if layout is None else layout.sorted_len),
                                  torch.ones(*q.shape[:2], idx.numel(), n, dtype=torch.bool, device=q.device)], -1)
                self.meter.add(layer, "sa_recall", mass_recall(q[:, :, idx], K, bias, kept))
        else:
            # committed slots change at the commit, or above when TempCache lays the layer out: then the
            # channel is written in full, else the frame's refresh stands (KVCache.padded)
            # over a growing cache (annca, annsa's unscheduled layers) only an adopted cache's biases need the
            # bias array: a decay alone is added in the kernel, which also skips the keys past its horizon when
            # the slots are in frame order. TempCache modes keep passing it: their plain layers without it ran
            # another kernel variant, compiled when they turned plain (a 1.07 s frame at frame 31 of fastar's
            # rollout on the H100, session 22), and a bounded window gains nothing from leaving it out
            group = biased if self.tc is not None else self._biased
            out = kernels.cache_attention(q, cache, layer, end, group, committed_fresh=not laid_out,
                                          kernel_decay=True, in_order=self._frame_order(layer))
            self._paths["dense"] = kernels.kernel_name()
            self._pairs = None
        if info.commit:
            if self._batched_commit():
                self._stage(cache, layer, n, q, info)
            else:
                if self._needs_codes():
                    self._write_codes(cache, layer, k)
                if self.tc is not None:
                    self.tc.commit(cache, layer, n, self.frame_tensor(info, k.device), q=q)
                else:
                    cache.commit_scratch(layer, n, info.frame)
                    if self._bucket_order() and self.cfg.schedule.in_layers(layer, self._n_layers):
                        self._after_commit(cache, layer, n, info.frame)
            self._frames[layer] = self._frames.get(layer, 0) + 1
            self._fresh[layer] = self._fresh.get(layer, 0) + 1
        return out

    # ---- AnnSA's bucket order (annsa.py: the bucketed path and the recent frames) -------------------------------
    def _bucket_order(self) -> bool:
        """Whether this mode keeps the cache in bucket order: AnnSA over a growing cache (no TempCache), one
        hash table (buckets disjoint), no per-key bias but a temporal decay, and that only where the sparse
        kernel adds a per-key logit (sparse_kernels.bias_ok): the order scrambles the layer's one frame column,
        so the decay is recomputed from the per-head frames (FRAME_H) and handed to the kernel per key."""
        c = self._cache
        return self.cfg.annsa is not None and self.tc is None and self.hasher is not None and \
            self.hasher.tables == 1 and not self._biased and \
            (c is None or c.decay is None or c.device.type != "cuda" or
             sparse_kernels.bias_ok(self.cfg.annsa.kernel, c.device))

    def _head_bias(self, cache: KVCache, layer: int, end: int) -> torch.Tensor:
        """(B, H, end): the bias of slots [0, end) of a layer in bucket order with a temporal decay, from each
        head's own slot frames (FRAME_H) instead of the layer's one frame column (KVCache.attn_bias)."""
        return cache.bias[layer, :, :, :end] + cache.decay_by_head(layer, cache.slot_data[FRAME_H][layer, :, :, :end])

    def _frame_order(self, layer: int) -> bool:
        """Whether `layer`'s slots hold consecutive frames in order, the newest last, with no bias but a decay:
        a growing cache (no TempCache) this mode filled from empty (not adopted), not kept in bucket order."""
        return self.tc is None and not self._biased and not self._adopted and \
            not (self._bucket_order() and self.cfg.schedule.in_layers(layer, self._n_layers))

    def _kbias_fn(self, cache: KVCache, layer: int, end: int, frame: int) -> Callable[[], torch.Tensor]:
        """The bucketed call's per-slot logit (B * H * capacity,) in the decay's dtype (_head_bias over slots
        [0, end); the slots after them are never read), in a buffer kept per layer and recomputed once a frame,
        not once a call: it changes only with the frame drawn, the cache's length and its sorts (at 3000 frames
        it is ~6M elements, and the 5 passes x 6 sorted layers of a frame had recomputed it 30 times, inside
        the call's graph). The function hands the buffer to the call (its graph reads it in place, so the
        buffer stays the same tensor while the capacity does)."""
        B, H, cap = cache.batch, cache.n_heads, cache.capacity
        key = (frame, end, self._sorted.get(layer, (0,))[0], cap, cache.k.data_ptr())
        entry = self._kbias.get(layer)
        dtype = cache.decay.dtype  # type: ignore[union-attr]   # float32 (float64 in the exactness tests)
        if entry is None or entry[1].numel() != B * H * cap or entry[1].dtype != dtype:
            entry = (None, torch.zeros(B * H * cap, dtype=dtype, device=cache.device))
        if entry[0] != key:
            entry[1].view(B, H, cap)[..., :end].copy_(self._head_bias(cache, layer, end))
            entry = (key, entry[1])
        self._kbias[layer] = entry
        buf = entry[1]
        return lambda: buf

    def _annsa_ready(self, cached: int, n: int) -> bool:
        """Whether AnnSA runs over `cached` slots: a growing cache (annsa modes) of at least annsa.min_frames
        frames. Below it the bucketed call costs more than dense attention over those keys (annsa.min_frames,
        conf/attention/annsa.yaml says what was measured). A bounded cache (TempCache) is always ready."""
        return self.tc is not None or cached >= self.cfg.annsa.min_frames * n  # type: ignore[union-attr]

    def _layout(self, cache: KVCache, layer: int, frame: int = -1) -> sparse_kernels.BucketLayout | None:
        """frame: the frame being drawn (host int, = cache.now): with a horizon the skipped keys change with it."""
        if not self._bucket_order() or not self.cfg.schedule.in_layers(layer, self._n_layers):
            return None
        if layer not in self._sorted:   # nothing sorted yet: every key is recent (counts all zero, kept)
            self._sorted[layer] = self._unsorted(cache)
        P, counts, max_count = self._sorted[layer]
        h = self.hasher
        assert h is not None
        # slots from sorted_len to the scratch's end: < recent_frames frames since the sort, plus the frame
        recent = (max(1, self.cfg.annsa.recent_frames) + 1) * self._n  # type: ignore[union-attr]
        skip_fn = self._horizon_skip_fn(cache, layer, P, counts)
        return sparse_kernels.BucketLayout(P, counts, max_count, cache.k[layer], cache.v[layer], h.n_buckets,
                                           h.probes, recent, self._memo.setdefault(layer, {}), skip_fn,
                                           None if skip_fn is None else frame)

    def _horizon_skip_fn(self, cache: KVCache, layer: int, P: int,
                         counts: torch.Tensor) -> Callable[[], torch.Tensor] | None:
        """With a temporal decay and horizons (KVCache.set_decay: per head, the frames back beyond which a key
        weighs below e^-HORIZON_MARGIN of the newest key's, whatever q and k are), () -> (B * H, n_buckets) the
        keys at the start of each bucket older than the head's horizon: the bucketed call skips them, as dense
        skips the slots before its horizon (dense.py), exactly to float rounding. Each bucket holds its keys
        oldest first (_sort_buckets orders by bucket, then frame), so they are a prefix, found by one
        searchsorted over (bucket, frame) per head. None without a horizon."""
        hz_all = cache.horizon_tensor()                                             # (L, H) int32, 0: none
        if hz_all is None or all(w is None for w in cache.horizon[layer]) or P == 0:  # type: ignore[index]
            return None
        nb = self.hasher.n_buckets  # type: ignore[union-attr]

        def skip() -> torch.Tensor:
            B, H = cache.batch, cache.n_heads
            codes = cache.slot_data[CODES][layer, :, :, :P, 0]                      # (B, H, P), bucket order
            frames = cache.slot_data[FRAME_H][layer, :, :, :P]
            seq = (codes * (1 << 32) + frames).reshape(B * H, P)                   # sorted per head
            horizon = hz_all[layer].long()
            # (H,) the oldest frame read; a head without a horizon: below every frame (-1 is the lowest)
            thr = torch.where(horizon == 0, torch.full_like(horizon, -(1 << 31) + 2), cache.now - horizon)
            first = torch.arange(nb, device=codes.device) * (1 << 32) + thr[:, None]   # (H, nb)
            pos = torch.searchsorted(seq, first.expand(B, H, nb).reshape(B * H, nb).contiguous())
            return pos - (counts.cumsum(-1) - counts)
        return skip

    def _unsorted(self, cache: KVCache) -> tuple[int, torch.Tensor, int]:
        nb = self.hasher.n_buckets  # type: ignore[union-attr]
        return 0, torch.zeros(cache.batch * cache.n_heads, nb, dtype=torch.long, device=cache.device), 0

    def _after_commit(self, cache: KVCache, layer: int, n: int, frame: int) -> None:
        """Record the frame per head for the committed slots; once `recent_frames` frames have come in since
        the last sort (every frame with recent_frames 0), sort the layer again."""
        L = cache.length[layer]
        cache.slot_data[FRAME_H][layer, :, :, L - n:L] = frame
        P = self._sorted.get(layer, (0,))[0]
        if L - P >= max(1, self.cfg.annsa.recent_frames) * n and self._annsa_ready(L, n):  # type: ignore[union-attr]
            self._sort_buckets(cache, layer)   # (no sorting while AnnSA waits for min_frames: dense reads any order)

    def _sort_buckets(self, cache: KVCache, layer: int) -> None:
        """Order each head's slots [0, length) by (bucket, slot) in place (cache.gather_heads moves K, V, bias
        and every slot tensor, the codes and the per-head frames with them) and count the keys per bucket.
        One host sync (the largest count, a bound the varlen kernel takes as an int), once per recent_frames
        frames; the gather reads and writes the layer's whole cache (~1 ms at 3000 frames on the H100).
        The layer-level frame column gets each slot's newest frame over heads: after a sort the heads' slots
        hold different frames, so a mode switched in later (window, TempCache adopt) reads that."""
        L = cache.length[layer]
        memo = self._memo.get(layer, {})
        for m in (memo, memo.get("all", {})):   # the key segments change; a captured call stays valid
            m.pop("key", None)
        if layer in self._kbias:   # recomputed at the next call, in the same buffer (a captured call reads it)
            self._kbias[layer] = (None, self._kbias[layer][1])
        if L == 0:
            self._sorted[layer] = self._unsorted(cache)
            return
        codes = cache.slot_data[CODES][layer, :, :, :L, 0]                      # (B, H, L), one table
        # by bucket, then frame (then slot: stable), so that each bucket holds its keys oldest first and a
        # decay's horizon cuts a prefix of it (_horizon_skip_fn); frames are >= -1 and < 2^31
        perm = (codes * (1 << 32) + cache.slot_data[FRAME_H][layer, :, :, :L]).argsort(dim=-1, stable=True)
        cache.gather_heads(layer, perm)
        cache.frame[layer, :L] = cache.slot_data[FRAME_H][layer, :, :, :L].amax(dim=(0, 1))
        nb = self.hasher.n_buckets  # type: ignore[union-attr]
        codes = cache.slot_data[CODES][layer, :, :, :L, 0].reshape(-1, L)
        counts = torch.zeros(codes.shape[0], nb, dtype=torch.long, device=codes.device)
        counts.scatter_add_(1, codes, torch.ones_like(codes))
        self._sorted[layer] = (L, counts, int(counts.max()))

    def _plain(self, layer: int) -> bool:
        """Whether `layer` attends with no bias at all (a plain head-dim-64 kernel instead of the bias-channel
        layout padded to 72, which runs FA2's head-dim-96 kernel): a layer that never searches
        (tempcache.layers) with overflow evict holds, once capacity_frames frames have been committed since
        its layout was made empty or adopted, exactly the last capacity_frames frames' keys, each alone in its
        group, so every bias is log(1) = 0 (each frame's n new groups evict the n oldest; adopted groups are
        older than any new one). Host integers only: no sync."""
        tc = self.tc
        return tc is not None and not tc.searches(layer) and tc.cfg.overflow == "evict" and \
            self._fresh.get(layer, 0) >= tc.cfg.capacity_frames

    # ---- TempCache's commit, all layers at once -------------------------------------------------------------
    def _batched_commit(self) -> bool:
        """Whether the commit pass stages each layer and commits all of them after the last one
        (TempCache.commit_layers): the stored-row search, with codes from an LSH hasher (hashed for every
        layer in one einsum) or none needed. Otherwise each layer commits in its own call."""
        return self.tc is not None and self.tc._rows_ok() and \
            (not self._needs_codes() or isinstance(self.hasher, LSHHasher))

    def _stage(self, cache: KVCache, layer: int, n: int, q: torch.Tensor, info: StepInfo) -> None:
        """Remember that `layer`'s scratch holds the frame to commit; after the last layer, commit them all.
        A layer staged twice means the earlier pass stopped half-way (an exception mid-pass): its scratch is
        overwritten by now, so those stale stages are dropped, not committed."""
        if layer in self._staged:
            self._staged.clear()
        self._staged[layer] = q.clone() if self.tc.cfg.match_by == "query" else None  # type: ignore[union-attr]
        if len(self._staged) < cache.n_layers:
            return
        assert self.tc is not None and self.hasher is not None
        tc, L = self.tc, cache.n_layers
        S = tc.slots(n)
        q_all = torch.stack([self._staged[i] for i in range(L)]) if tc.cfg.match_by == "query" else None  # type: ignore[misc]
        probes = None
        if self._needs_codes():
            hasher: LSHHasher = self.hasher  # type: ignore[assignment]
            p = hasher.project_layers(cache.k[:, :, :, S:S + n])                   # (L, B, H, n, T, bits)
            cache.slot_data[CODES][:, :, :, S:S + n] = hasher.code_of(p)
            if tc._use_buckets():
                probes = hasher.probes_of(p if q_all is None else hasher.project_layers(q_all))
        tc.commit_layers(cache, n, self.frame_tensor(info, q.device), q_all, probes)
        self._staged.clear()

    @property
    def last_pairs(self) -> torch.Tensor | int:
        """Query-key pairs the last self-attention call computed (device scalar): computed when asked, so
        that the call itself spends no op on it."""
        if self._pairs is not None:
            return self._pairs
        if self._pairs_src is None:
            return 0
        cache, layer, L0, n, BH, biased = self._pairs_src
        past = cache.valid(layer, L0).sum() if biased else L0 * BH
        return past * n + n * n * BH

    def cross_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        info: StepInfo) -> torch.Tensor:
        if self.cfg.annca is None or not self.cfg.schedule.active(layer, info, self._n_layers):
            return kernels.attention(q, k, v)
        if self.hasher is None:
            self.hasher = self.cfg.ann.build(q.shape[-1])
        hk = CROSS + layer
        self.hasher.fit(hk, k, q)
        keep = keep_mask(self.hasher.probe_codes(hk, q), self.hasher.codes(hk, k, True), self.hasher.n_buckets)
        compact = self.cfg.annca.compact == "always"   # auto masks: no host sync (annca.py says why)
        out, pairs = sparse_cross_attention(q, k, v, keep, compact)
        self._paths["cross"] = ("packed:" if compact else "masked:") + kernels.kernel_name()
        B, H, n = q.shape[:3]
        self.meter.add(layer, "ca_density", pairs / (B * H * n * k.shape[2]))
        if self._recall_now(info):
            idx = sample_queries(q, self.cfg.metrics.recall_queries)
            self.meter.add(layer, "ca_recall", mass_recall(q[:, :, idx], k, None, keep))
        return out

    def graph_key(self, info: StepInfo, cache: KVCache) -> tuple | None:
        """Capturable when only TempCache runs in this pass (AnnSA/AnnCA scheduled off in every layer: their
        sparse paths and metrics sync) and every layer is in the fixed layout (after its first call). AnnCA
        alone: where dense's pass is capturable, keyed by dense's key, whether AnnCA runs in this pass and
        whether it measures recall (both change the pass's device work)."""
        L = self._n_layers
        if self._dense is not None:
            inner = self._dense.graph_key(info, cache)
            if inner is None or L is None:
                return None
            sparse = any(self.cfg.schedule.active(layer, info, L) for layer in range(L))
            return ("annca", inner, sparse, sparse and self._recall_now(info))
        if self.tc is None or L is None or self.tc.cfg.engine == "faiss":   # faiss searches on the host
            return None
        for module in (self.cfg.annsa, self.cfg.annca):
            if module is not None and any(self.cfg.schedule.active(layer, info, L) for layer in range(L)):
                return None
        S = self.tc.slots(self._n)
        if any(length != S for length in cache.length):
            return None
        plain = tuple(layer for layer in range(L) if self._plain(layer))   # which attention kernel each call runs
        return ("commit" if info.commit else "pass", plain)

    def graph_stale(self, old: Any, new: Any) -> bool:
        if self._dense is not None and old[0] == new[0] == "annca":
            return self._dense.graph_stale(old[1], new[1])
        return False

    def graph_inputs(self, info: StepInfo) -> None:
        super().graph_inputs(info)
        if self._dense is not None:
            self._dense.graph_inputs(info)

    def graph_replayed(self, info: StepInfo) -> None:
        if self._dense is not None:
            self._dense.graph_replayed(info)
        if info.commit and self._n_layers is not None:
            for layer in range(self._n_layers):
                self._frames[layer] = self._frames.get(layer, 0) + 1
                self._fresh[layer] = self._fresh.get(layer, 0) + 1

    def _recall_now(self, info: StepInfo) -> bool:
        every = self.cfg.metrics.recall_every
        return every > 0 and info.frame % every == 0

    # ---- reporting ---------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        layers = self.meter.summary()
        out: dict[str, Any] = {"mode": self.name, "backend": self.cfg.ann.backend, "kernel": kernels.kernel_name(),
                               "paths": dict(self._paths), "sparse_kernel": sparse_kernels.last_kernel(),
                               "sparse_kernel_errors": sparse_kernels.errors()}
        if self._dense is not None:   # AnnCA alone: how dense's self-attention ran
            ds = self._dense.stats()
            out["horizon_skipped"], out["decay_kernel"] = ds["horizon_skipped"], ds["decay_kernel"]
        if self.tc is not None:
            out["merge"] = self.tc.merge_path   # TempCache's merge step: compiled, eager, or why not compiled
            out["top1"] = self.tc.top1_path     # its search: triton (fused kernel) or matmul (bmm + argmax)
            out["overflow"] = self.tc.cfg.overflow   # a full cache: merge below the threshold, or evict (LRU)
            out["search_layers"] = list(self._search_layers)   # the others keep a window, no bias once full
            out["plain_layers"] = [x for x in range(self._n_layers or 0) if self._plain(x)]
        for key in ("sa_density", "sa_recall", "ca_density", "ca_recall"):
            out[key] = self.meter.mean(key, layers)   # from the one summary read above (one sync, not five)
        c = self._cache
        if c is not None:
            # per layer: mean valid slots per head, and (TempCache) groups holding more than one key (log m > 0),
            # gathered on the device and read back with one sync (the HUD asks every frame)
            rows = []
            for layer in range(c.n_layers):
                L = c.length[layer]
                valid = c.valid(layer, L)
                merged = ((c.bias[layer, :, :, :L] > 1e-3) & valid).sum() if self.tc is not None else valid.sum() * 0
                rows.append(torch.stack([valid.float().sum(-1).mean() if L else valid.sum() * 0.0,
                                         merged.float(), valid.sum().float()]))
            vals = torch.stack(rows).tolist()
            kept = []
            for layer, (slots, merged, n_valid) in enumerate(vals):
                frames = self._frames.get(layer, 0)
                d = layers.setdefault(str(layer), {})
                d["cache_groups"] = slots
                if self.tc is not None:
                    d["merged_share"] = merged / max(1.0, n_valid)
                d["cache_density"] = slots / (frames * self._n) if frames else 1.0
                kept.append(d["cache_density"])
            out["cache_tokens"] = c.tokens()
            out["cache_bytes"] = c.nbytes()
            out["cache_groups"] = sum(layers[str(i)]["cache_groups"] for i in range(c.n_layers))
            out["cache_density"] = sum(kept) / len(kept)
            if self.tc is not None:   # what merging did: ~0 means TempCache acts as a window of its capacity
                out["merged_share"] = sum(layers[str(i)]["merged_share"] for i in range(c.n_layers)) / c.n_layers
        out["layers"] = layers
        return out


# Where AnnSA/AnnCA run by default in the combined modes. Measured on the H100 (docs/results/attention_h100.json,
# 256 queries/frame, 6 heads, D 64, bf16): AnnSA's varlen path 6.6 / 37.8 / 103 ms per call vs dense FA2
# 0.26 / 0.52 / 1.41 ms at 100 / 1000 / 3000 frames; it never measured positive. With TempCache bounding the
# cache to S = capacity_frames x 256 slots, dense attention over S + n keys is a fixed ~0.06 ms, and a bucket
# mask can only add work to it (a 256-query frame spans every bucket, so no key block is skippable). So the
# combined modes run AnnSA/AnnCA in no layer until a GPU measurement shows a layer where they pay; list the
# layers in schedule.layers to turn them on (the annsa/annca modes keep "all but the first and last").
FASTAR_DEFAULTS: dict[str, Any] = {"schedule": {"layers": []}}


def _factory(modules: tuple[str, ...], backend: str, name: str, defaults: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    def make(**params: Any) -> FastARAttention:
        merged: dict[str, Any] = {k: dict(v) for k, v in (defaults or {}).items()}
        for key, val in params.items():   # user params override the defaults field by field
            merged[key] = {**merged[key], **val} if key in merged and isinstance(val, dict) else val
        return FastARAttention(FastARConfig.build(modules, backend, name, **merged), name)
    return make


ALL = ("tempcache", "annsa", "annca")
FASTAR_MODES = {
    **{m: _factory((m,), "lsh", m) for m in ALL},
    **{f"{m}_quant": _factory((m,), "quant", f"{m}_quant") for m in ALL},
    "fastar": _factory(ALL, "lsh", "fastar", FASTAR_DEFAULTS),
    "fastar_quant": _factory(ALL, "quant", "fastar_quant", FASTAR_DEFAULTS),
}
