"""TempCache: bound the KV cache by merging keys that repeat across frames (FAST-AR, Samuel et al. 2026).

On the commit pass each new key of the frame looks up its top-1 past key (ANN, see ann.py / lsh.py /
quant.py); if the two are similar enough the new key joins that key's group: the group's slot now holds the
newest key, the mass-weighted running mean of the group's values, and the logit bias log(m) (m = keys in the
group). Grouping lemma: if a group's keys are identical this is exactly dense attention over all of them.

Choices the paper leaves open, and why (defaults in `TempCacheConfig`):
- metric "cosine": scale-free, so one threshold serves every layer and head although key norms differ by an
  order of magnitude between them; "dot" is available for models whose key norms carry meaning.
- threshold 0.99: on the bundled model, 0.95 merged keys whose values differ (14% of the cache by frame 64),
  and the averaged values cost 2.2 dB against dense over frames 1-50; at 0.99 the rollout equals dense until
  the capacity fills (tools/long_context_probe.py on the CPU, docs/ATTENTION.md). So only near-exact repeats
  merge by similarity, and compression comes from the capacity (below), which is where the loss is.
- match_by "key": the lemma is about equal keys, so a new key is matched against past keys; "query" uses the
  frame's queries for retrieval as the paper words it, the merge test stays key-to-key.
- group "head": every head merges on its own similarity (a key repeated in a position-blind head need not
  repeat in a position-aware one), so heads hold different slot counts; a head's unused slots carry NEG_BIAS so
  the layer keeps one length. "layer" merges a token in all heads at once (mean per-head cosine): less
  compression, no holes.
- hard capacity (capacity_frames x tokens per frame per head), `overflow`: if a frame would not fit, "evict"
  (default) frees the least recently touched groups (a group that keeps being matched stays; with nothing
  repeating it is a window of capacity_frames); "merge" merges the new tokens whose best match is closest
  anyway, below the threshold (nothing forgotten outright, only blurred). capacity_frames 32 (default): the
  bundled model holds together with about as much context as the window mode's 33 frames and fades into a
  frozen texture with more. Measured on the H100 over 3000 frames (docs/BENCHMARKS.md, session 4): capacity
  32 + evict keeps the first-person view (layout_late 0.81, motion 16.7 against the truth's 23.6; window 0.79
  / 15.0) at 116 fps and 303 MiB; capacity 32 + merge fades (0.38 / 9.5), and capacity 64 collapses with
  either policy (evict: a frozen texture, motion 3.4), as does dense. The right capacity is a property of the
  model: a model trained on longer contexts can take a larger one.
- layers (default None: every layer; the shipped configs [0, 4, 5, 6, 7]): where new keys search for a repeat.
  On the bundled model merges at 0.99 are rare and sit in a few layers: 0.6-0.7% of layer 0's groups and
  0.1-0.3% of layers 4-7's over frames 1-100 (CPU), layers 1-3 none; in a 3000-frame H100 run with every
  layer searching (session 6), layers 1-3 peaked at 0.006% of groups merged and layers 0, 4-7 at 0.6-4.5%
  (docs/BENCHMARKS.md). A layer left out skips the search (the commit's largest kernel) and,
  with evict, holds exactly the last capacity_frames frames, every group of one key: once full its bias is all
  zero and its attention runs a plain head-dim-64 kernel instead of the bias-channel layout (FastARAttention
  `_plain`). So it is a window of capacity_frames, which is what a layer that never merges was anyway.
- fixed layout, fixed shapes (why: a per-call cost and memory that never change, no host sync, CUDA-graph
  friendly). From a layer's first call the cache holds S = capacity_frames x n group slots, [0, S), empty ones
  carrying NEG_BIAS, then the n scratch slots of the frame being generated, [S, S + n); `cache.length` is S for
  good, so every attention call runs over S + n keys and every commit over (n x S) scores, from frame 0 on.
  A new token that merges nowhere goes into a free slot of its head (rank among the head's free slots, by a
  cumsum: no sort, no nonzero); merged ones fold into their group without float atomics
  (tempcache_merge.fold). Nothing ever compacts (the old compaction synced once per layer every
  `compact_every` frames and changed the attention length, hence the kernel shape bucket and the allocator's
  pool). Cost: the first frames attend over mostly empty slots, which costs exactly what a full cache does
  (flat, as the frame-time budget wants).
- the top-1 search is one matmul of the n new tokens' rows against rows stored per slot (`_commit_rows`: unit
  key, LSH bucket one-hots, a valid flag), so a commit never normalises, hashes or masks the S slots; the
  general path (`_match`: quantization, group "layer", metric "dot", faiss) builds the same channels per call.
- with that search the owning mode commits every layer at once after the pass (`commit_layers`): the cache
  keeps layers outermost, so (layers, batch) is one batch dimension of views and the commit's ~40 kernels
  run once a frame instead of once a layer.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from engine.attention import ann, triton_top1
from engine.attention import tempcache_merge as tm
from engine.attention.lsh import Hasher
from engine.attention.quant import quantize_8bit
from engine.cache import NEG_BIAS, KVCache
from engine.compiled import compile_static

CODES = "codes"   # name of the per-slot bucket-code tensor in KVCache.slot_data, (L, B, H, C, T)
ROWS = "search_rows"   # per-slot search rows of the stored-row search (TempCache._commit_rows), (L, B, H, C, R)
AGE = "last_frame"     # per-slot frame of the last write, for overflow "evict" (L, B, H, C), -1 when empty


@dataclass
class TempCacheConfig:
    threshold: float = 0.99       # merge when similarity(new key, matched key) >= threshold
    metric: str = "cosine"        # cosine | dot
    group: str = "head"           # head | layer
    match_by: str = "key"         # key | query
    search: str = "ann"           # ann (the mode's LSH/quant back-end) | exact
    engine: str = "torch"         # torch | faiss (top-1 search engine; same neighbours)
    capacity_frames: int = 32     # hard cap: slots per head = capacity_frames * tokens per frame
    compact_every: int = 4        # unused since the fixed layout (nothing compacts); kept so old configs load
    compile: str = "auto"         # merge step via torch.compile: auto (on CUDA with triton) | on | off
    top1: str = "auto"            # stored-row search: matmul (bmm + argmax) | triton (triton_top1) | auto (triton on CUDA, bf16/fp16)
    overflow: str = "evict"       # a full cache: evict the least recently touched groups | merge below the threshold
    layers: list[int] | None = None   # layers whose new keys search for a repeat; None: every layer. Elsewhere
                                      # nothing merges: with evict the layer keeps the last capacity_frames frames
    bias_layout: str = "array"    # on CUDA the group biases stay in the cache's bias array (array: 64 channels,
                                  # the biased calls choose among the kernels that take a bias, triton_split+bias
                                  # reading the array in place) or ride in the key channel 64 (channel: one plain
                                  # kernel on 72 channels). H100, bundle, frame 3000: fastar 4.11 ms a frame with
                                  # array against 4.91 with channel (docs/BENCHMARKS.md, session 16)

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
            "compile": self.compile in ("auto", "on", "off"),
            "top1": self.top1 in ("auto", "triton", "matmul"),
            "overflow": self.overflow in ("merge", "evict"),
            "bias_layout": self.bias_layout in ("channel", "array"),
            "layers": self.layers is None or (all(isinstance(x, int) and x >= 0 for x in self.layers)
                                              and self.overflow == "evict"),
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"tempcache.{field}: invalid value {getattr(self, field)!r} "
                                 f"(threshold in [0, 1] for cosine and >= 0 for dot; metric cosine|dot; "
                                 f"group head|layer; match_by key|query; search ann|exact; engine torch|faiss; "
                                 f"capacity_frames >= 1; compact_every >= 1; compile auto|on|off; "
                                 f"top1 auto|triton|matmul; overflow merge|evict; bias_layout channel|array; "
                                 f"layers null or a list of "
                                 f"layer indices >= 0, with overflow evict: a layer that never searches cannot "
                                 f"merge at capacity)")


_COMPILED: Callable[..., tuple[tm.Plan, torch.Tensor]] | None = None


def _compiled_plan() -> Callable[..., tuple[tm.Plan, torch.Tensor]]:
    """One compiled tempcache_merge.plan_rows per process: every TempCache (a mode switched in again, the next
    benchmark mode) reuses it instead of compiling again (~tens of seconds). Only the pure planning part is
    compiled; the in-place writes stay eager (compiling them gave wrong merges: tempcache_merge.fold_plan)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = compile_static(tm.plan_rows)
    return _COMPILED


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _probe_f32out(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether this torch build multiplies bf16/fp16 into a float32 result (bmm out_dtype) on this device."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    try:
        a = torch.ones(1, 2, 8, dtype=dtype, device=device)
        return torch.bmm(a, a.transpose(1, 2), out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


class TempCache:
    """The merge/adopt logic on one KVCache in the fixed layout (module docstring); the owning mode calls
    `prepare` before each call's write_scratch and `commit` on every commit pass."""

    def __init__(self, cfg: TempCacheConfig, hasher: Hasher | None, backend: str) -> None:
        self.cfg, self.hasher, self.backend = cfg, hasher, backend
        self._fn: Callable[..., tuple[tm.Plan, torch.Tensor]] | None = None   # tm.plan_rows, compiled or not
        self.merge_path = "none yet"                   # what ran: "compiled", "eager", "eager (compile failed: ...)"
        self._f32out: bool | None = None
        self._fused = False
        self.top1_path = "none yet"                    # the stored-row search: "triton" (fused) or "matmul"
        self._heads: dict[tuple, torch.Tensor | None] = {}   # _search_heads per (layers, batch, heads, device)

    def reset(self) -> None:
        pass

    def slots(self, n: int) -> int:
        """Group slots per head (the fixed attention length without the scratch frame)."""
        return self.cfg.capacity_frames * n

    def searches(self, layer: int) -> bool:
        """Whether `layer`'s new keys look for a repeat (tempcache.layers); elsewhere each opens a group."""
        return self.cfg.layers is None or layer in self.cfg.layers

    def check_layers(self, n_layers: int) -> list[int]:
        """The layers that search in a model of `n_layers` (said on stderr when the config lists layers the
        model lacks: the shipped configs name the bundled 8-layer model's, and a smaller checkpoint must run)."""
        listed = list(range(n_layers)) if self.cfg.layers is None else sorted(set(self.cfg.layers))
        beyond = [x for x in listed if x >= n_layers]
        if beyond:
            print(f"tempcache.layers: {beyond} beyond this model's {n_layers} layers, ignored", file=sys.stderr)
        return [x for x in listed if x < n_layers]

    def _search_heads(self, lo: int, hi: int, BF: int, H: int, device: torch.device) -> torch.Tensor | None:
        """The rows of layers [lo, hi) flattened as (layers x batch x heads) (`_layers`) whose layer searches,
        as a device tensor made once; None when every layer searches."""
        if all(self.searches(layer) for layer in range(lo, hi)):
            return None
        key = (lo, hi, BF, H, device)
        if key not in self._heads:
            B = BF // (hi - lo)
            rows = [((layer - lo) * B + b) * H + h for layer in range(lo, hi) if self.searches(layer)
                    for b in range(B) for h in range(H)]
            self._heads[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return self._heads[key]

    def capacity(self, n: int) -> int:
        return (self.cfg.capacity_frames + 1) * n   # +1: the scratch frame

    def prepare(self, cache: KVCache, layer: int, n: int,
                write_codes: "Callable[[KVCache, int, torch.Tensor], None] | None" = None) -> None:
        """Bring the layer to the fixed layout: host integers only, a no-op after the layer's first call.
        A fresh (or reset) layer gets S empty slots; a layer another mode filled is compressed into them."""
        S = self.slots(n)
        if cache.length[layer] == S:
            return
        if cache.length[layer] == 0:
            self._empty_layout(cache, layer, n)
        else:
            self._adopt_layer(cache, layer, n, write_codes)

    def _empty_layout(self, cache: KVCache, layer: int, n: int) -> None:
        S = self.slots(n)
        cache.ensure_capacity(S + n)
        cache.clear_slots(layer, 0, S)
        cache.set_length(layer, S)

    # ---- the commit step --------------------------------------------------------------------------------
    def commit(self, cache: KVCache, layer: int, n: int, frame: int | torch.Tensor, q: torch.Tensor | None = None,
               inc_mass: torch.Tensor | None = None) -> None:
        """Merge the n scratch slots [S, S + n) into the S group slots. q (B, H, n, D): the frame's queries
        (for match_by="query"); inc_mass (B, H, n): mass each scratch token carries (1 for new keys, m for an
        adopted group, 0 for an empty slot); frame: the frame index, an int or a device scalar (inside a CUDA
        graph, where a host int would be frozen at capture). Fixed shapes, no host sync; the length stays S."""
        S = self.slots(n)
        if inc_mass is None and self._rows_ok():
            probes = None
            if self._use_buckets():
                by_query = self.cfg.match_by == "query" and q is not None
                probes = self.hasher.probe_codes(layer, q if by_query else cache.k[layer, :, :, S:S + n])  # type: ignore[union-attr]
            self._commit_rows(cache, layer, layer + 1, S, n, frame, None if q is None else q[None],
                              None if probes is None else probes[None])
            return
        K, V, bias = cache.k[layer], cache.v[layer], cache.bias[layer]            # (B, H, cap, D), (B, H, cap)
        B, H = K.shape[0], K.shape[1]
        inc = torch.ones(B, H, n, device=K.device) if inc_mass is None else inc_mass.float()   # (B, H, n)
        valid = bias[:, :, :S] > NEG_BIAS / 2                                      # (B, H, S)
        if self.searches(layer):
            sim, idx = self._match(cache, layer, S, n, K[:, :, S:S + n], q, valid)  # (B, H, n) each
        else:                                                                      # matches nothing
            sim = torch.full((B, H, n), -math.inf, device=K.device)
            idx = torch.zeros(B, H, n, dtype=torch.long, device=K.device)
        live = inc > 0
        age = self._age(cache, layer, S, n, frame)
        merge, valid = tm.overflow((sim >= self.cfg.threshold) & live, sim, idx, live, valid, age, S)
        new = live & ~merge                                                        # tokens that open a group
        tgt = tm.targets(merge, new, idx, valid, S)                                # S: the dump
        # representative key: a token alone in a free slot; among merges into one group the closest match
        score = torch.where(merge, sim, torch.where(new, torch.full_like(sim, 3.0e38), torch.full_like(sim, -math.inf)))
        tm.fold(K, V, bias, cache.frame[layer], [t[layer] for t in cache.slot_data.values()], S, n, frame, tgt,
                score, inc, valid)

    def _age(self, cache: KVCache, layer: int, S: int, n: int, frame: int | torch.Tensor) -> torch.Tensor | None:
        """overflow "evict": the layer's last-touched frame per slot (B, H, cap), the scratch slots set to this
        frame (slot data, so it follows the representatives); None for "merge"."""
        age = self._ages(cache, layer, layer + 1, S, n, frame)
        return None if age is None else age[0]

    def _ages(self, cache: KVCache, lo: int, hi: int, S: int, n: int,
              frame: int | torch.Tensor) -> torch.Tensor | None:
        """_age for layers [lo, hi): (hi - lo, B, H, cap), or None for "merge"."""
        if self.cfg.overflow != "evict":
            return None
        age = cache.add_slot_tensor(AGE, (), torch.long, fill=-1)[lo:hi]
        age[:, :, :, S:S + n] = frame
        return age

    # ---- stored-row search (the default config: per head, cosine, torch engine, LSH or exact) -------------
    # Every slot keeps its search row y' = [unit key, one-hot bucket per table, 1] beside its K/V (slot data, so
    # it follows merges and moves); an empty slot's row is all zeros. A new token's row x' = [unit key or
    # query, W x one-hot of its probed buckets, V] scores y' with cos + W x (shared buckets) + V x (slot
    # valid): W = 3 exceeds the cosine range, so the best key in a probed bucket wins and a token whose
    # buckets are empty falls back to the best valid key anywhere; V = 2 puts every valid slot above every
    # empty one. So one matmul of n rows against the S stored rows (bf16 in, float32 out on CUDA) is the whole
    # search: no per-commit normalisation, bucket one-hots or masks over the S slots, which cost ~1 ms a layer.
    def _rows_ok(self) -> bool:
        c = self.cfg
        return c.group == "head" and c.metric == "cosine" and c.engine == "torch" and \
            (c.search == "exact" or (self.backend == "lsh" and self.hasher is not None))

    def _row_width(self, D: int) -> int:
        """[unit key (D) | bucket one-hots | valid flag], padded to a multiple of 8 (tensor-core alignment)."""
        T = self.hasher.tables * (self.hasher.n_buckets + 1) if self._use_buckets() else 0  # type: ignore[union-attr]
        return -(-(D + T + 1) // 8) * 8

    def _use_buckets(self) -> bool:
        return self.cfg.search == "ann" and self.backend == "lsh" and self.hasher is not None

    def commit_layers(self, cache: KVCache, n: int, frame: torch.Tensor, q: torch.Tensor | None,
                      probes: torch.Tensor | None) -> None:
        """The commit of every layer at once, after the pass's last attention call (FastARAttention): one
        plan over (layers x batch) heads instead of one per layer, so the ~40 kernels of a commit launch
        once a frame, not once a layer (on the H100 each was a few microseconds of mostly idle GPU). Exact:
        a layer's commit only changes that layer's cache, which no later layer of the pass reads, and its
        scratch stays as the pass wrote it until the next pass. q (L, B, H, n, D): the queries for
        match_by="query"; probes (L, B, H, n, T, P): the scratch tokens' probed buckets (None: exact search);
        the scratch keys' bucket codes must already be in the CODES slot data. Stored-row search only."""
        if not self._rows_ok():
            raise RuntimeError("TempCache.commit_layers needs the stored-row search (TempCache._rows_ok)")
        self._commit_rows(cache, 0, cache.n_layers, self.slots(n), n, frame, q, probes)

    @staticmethod
    def _layers(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Layers [lo, hi) of a cache tensor (L, B, ...) as (F x B, ...), a view (never a copy: the commit
        writes through it)."""
        out = t[lo:hi].flatten(0, 1)
        if out.data_ptr() != t[lo:hi].data_ptr() or out._base is None:
            raise RuntimeError("TempCache: a cache tensor's (layer, batch) dims do not flatten to a view")
        return out

    def _commit_rows(self, cache: KVCache, lo: int, hi: int, S: int, n: int, frame: int | torch.Tensor,
                     q: torch.Tensor | None, probes: torch.Tensor | None) -> None:
        """The commit by tempcache_merge.commit_rows for layers [lo, hi) at once: compiled once on CUDA (the
        same shapes every frame), eager elsewhere. q (F, B, H, n, D) or None; probes (F, B, H, n, T, P) from
        the hasher (its per-layer state), None for exact search."""
        fl = self._layers
        K = fl(cache.k, lo, hi)
        B, H, _, D = K.shape
        rows = cache.add_slot_tensor(ROWS, (self._row_width(D),), cache.dtype, fill=0)  # (L, B, H, cap, R)
        use_b = self._use_buckets()
        by_query = self.cfg.match_by == "query" and q is not None
        codes_new = fl(cache.slot_data[CODES], lo, hi)[:, :, S:S + n] if use_b else None   # written by the mode
        if use_b and probes is None:
            raise RuntimeError("TempCache: LSH search without the probed buckets")
        if not isinstance(frame, torch.Tensor):
            frame = torch.tensor(frame, dtype=torch.long, device=K.device)
        if self._f32out is None:
            self._f32out = _probe_f32out(rows.dtype, K.device)
            self._fused = self._want_fused(rows.dtype, K.device)
        age = self._ages(cache, lo, hi, S, n, frame)      # registered before `side` is listed
        args = (K, fl(cache.v, lo, hi), fl(cache.bias, lo, hi), cache.frame[lo:hi],
                [fl(t, lo, hi) for t in cache.slot_data.values()], fl(rows, lo, hi), codes_new,
                probes.flatten(0, 1) if use_b and probes is not None else None, frame,
                q.flatten(0, 1) if by_query and q is not None else None, S, n, self.cfg.threshold,
                self.hasher.n_buckets if self.hasher is not None else 0, self._f32out, self._fused)
        age = None if age is None else fl(cache.slot_data[AGE], lo, hi)
        heads = self._search_heads(lo, hi, K.shape[0], H, K.device)
        fn = self._merge_fn(K.device)
        if fn is not tm.plan_rows:
            try:
                tm.commit_rows(*args, plan_fn=fn, age=age, heads=heads)
                return
            except Exception as e:   # said, not silent: stats()["merge"] and one line on stderr
                # (a compile failure comes from the plan, which is pure: nothing was written yet)
                self.merge_path = f"eager (compile failed: {type(e).__name__}: {str(e).splitlines()[0][:160]})"
                print(f"tempcache: {self.merge_path}", file=sys.stderr)
                self._fn = tm.plan_rows
        tm.commit_rows(*args, age=age, heads=heads)

    def _want_fused(self, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether the top-1 search runs as triton_top1 (one fused kernel) instead of bmm + argmax."""
        ok = triton_top1.available(device) and dtype in (torch.bfloat16, torch.float16)
        if self.cfg.top1 == "triton" and not ok:
            raise ValueError(f"tempcache.top1=triton needs CUDA, triton and a bf16/fp16 cache; here: {device}, "
                             f"{dtype}, triton {'found' if triton_top1.available(torch.device('cuda')) else 'missing'}")
        self.top1_path = "triton" if self.cfg.top1 != "matmul" and ok else "matmul"
        return self.top1_path == "triton"

    def _merge_fn(self, device: torch.device) -> Callable[..., tuple[tm.Plan, torch.Tensor]]:
        if self._fn is None:
            want = self.cfg.compile == "on" or (self.cfg.compile == "auto" and device.type == "cuda" and _has_triton())
            if want:
                self._fn = _compiled_plan()
                self.merge_path = "compiled"
            else:
                self._fn = tm.plan_rows
                self.merge_path = "eager"
        return self._fn

    def _search_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, N, D) -> (G, N, D') in the space where inner product is the configured similarity."""
        B, H, N, D = x.shape
        x = F.normalize(x.float(), dim=-1) if self.cfg.metric == "cosine" else x.float()
        if self.cfg.group == "layer":   # mean over heads of the per-head similarity
            return x.permute(0, 2, 1, 3).reshape(B, N, H * D) / math.sqrt(H) if self.cfg.metric == "cosine" \
                else x.permute(0, 2, 1, 3).reshape(B, N, H * D) / H
        return x.reshape(B * H, N, D)

    def _match(self, cache: KVCache, layer: int, S: int, n: int, k_new: torch.Tensor, q: torch.Tensor | None,
               valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-1 valid group slot per new token and the exact key-key similarity to it: (B, H, n) each
        (sim = -inf where the head holds no valid slot)."""
        B, H = k_new.shape[:2]
        keys = cache.k[layer, :, :, :S]                                            # (B, H, S, D)
        probe = k_new if self.cfg.match_by == "key" or q is None else q
        xs, ys = self._search_vectors(k_new), self._search_vectors(keys)           # (G, n, D'), (G, S, D')
        x = xs if probe is k_new else self._search_vectors(probe)
        y = ys
        allowed = valid.reshape(B * H, S) if self.cfg.group == "head" else valid.all(dim=1)   # (G, S)
        use_ann = self.cfg.search == "ann"
        if use_ann and self.backend == "quant":
            x, y = quantize_8bit(x), quantize_8bit(y)
        elif use_ann and self.backend == "lsh" and self.hasher is not None and CODES in cache.slot_data:
            x, y = self._bucket_channels(cache, layer, S, probe, x, y)
        _, idx = ann.top1(x, y, allowed, engine=self.cfg.engine)                   # (G, n)
        # the merge test uses the exact similarity of the pair found, whatever found it
        found = torch.gather(ys, 1, idx[..., None].expand(-1, -1, ys.shape[-1]))
        sim = (xs * found).sum(-1)
        ok = torch.gather(allowed, 1, idx)
        sim = torch.where(ok, sim, torch.full_like(sim, -math.inf))
        if self.cfg.group == "layer":
            return sim[:, None].expand(B, H, n), idx[:, None].expand(B, H, n)
        return sim.reshape(B, H, n), idx.reshape(B, H, n)

    def _bucket_channels(self, cache: KVCache, layer: int, S: int, probe: torch.Tensor, x: torch.Tensor,
                         y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LSH-restricted search as extra matmul channels (module docstring): x (G, n, D'), y (G, S, D') ->
        x' (G, n, D' + T*(nb+1)), y' (G, S, D' + T*(nb+1)). W bounds the similarity range on the device."""
        assert self.hasher is not None
        pc = self.hasher.probe_codes(layer, probe)                                 # (B, H, n, T, P)
        kc = cache.slot_data[CODES][layer, :, :, :S]                               # (B, H, S, T)
        B, H, n, T, _ = pc.shape
        nb = self.hasher.n_buckets + 1                                             # + the "no bucket" code
        qh = tm.onehot(pc, self.hasher.n_buckets, T * nb)                          # (B, H, n, T * nb)
        kh = tm.onehot(kc[..., None], self.hasher.n_buckets, T * nb)               # (B, H, S, T * nb)
        if self.cfg.group == "layer":
            qh, kh = qh.amax(1), kh.amax(1)                                        # any head shares the bucket
        else:
            qh, kh = qh.reshape(B * H, n, T * nb), kh.reshape(B * H, S, T * nb)
        W = 2.0 * x.norm(dim=-1).amax() * y.norm(dim=-1).amax() + 1.0              # device scalar, no sync
        return torch.cat([x, qh * W], -1), torch.cat([y, kh], -1)

    # ---- adoption (switching in at run time: not the hot path, may sync) --------------------------------
    def adopt(self, cache: KVCache, n: int, write_codes: "Callable[[KVCache, int, torch.Tensor], None] | None" = None) -> None:
        """Compress whatever the cache holds (a dense cache, a window, an earlier TempCache) into the fixed
        layout: replay its slots in frame order, n at a time, through the same merge step, carrying each
        slot's mass exp(bias); then give back what a dense cache grew to."""
        for layer in range(cache.n_layers):
            self._adopt_layer(cache, layer, n, write_codes)
        cache.resize(self.capacity(n))

    def _adopt_layer(self, cache: KVCache, layer: int, n: int,
                     write_codes: "Callable[[KVCache, int, torch.Tensor], None] | None") -> None:
        L = cache.length[layer]
        k, v, b = (t.clone() for t in cache.view(layer, L))
        fr = cache.frame[layer, :L].clone()
        order = fr.argsort(stable=True)
        self._empty_layout(cache, layer, n)
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
