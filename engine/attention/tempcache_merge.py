"""TempCache's merge step as pure tensor functions (no cache object, no host values but shapes and config),
so that one function plans a whole commit and can be compiled once for every layer (torch.compile on CUDA:
the commit was ~170 small kernels a layer, ~0.6 ms on the H100 inside a CUDA graph). What is compiled is the
plan (plan_rows: search, decision, fold arithmetic), never the in-place writes (write): compiling the
in-place version, whose inputs alias one another, gave wrong merges (tests/test_graphs.py checks it).

All tensors are views of the cache: K, V (B, H, cap, D); bias (B, H, cap); frame_col (cap,) or (F, cap) int64
(the frame index per slot); side: every per-slot side tensor (B, H, cap, *) (bucket codes, search rows), which
follow the representative key. Slots [0, S) are group slots, [S, S + n) the scratch frame being committed. B is
the batch of one layer, or F layers x batch (TempCache commits all layers of a pass at once: the cache keeps
layers outermost, so (F, batch) flattens to one dimension without a copy), frame_col then (F, cap).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from engine.attention import triton_top1

ROW_W, ROW_V = 3.0, 2.0   # search-row channel weights: bucket match (> the cosine range 2), valid slot (> |cos|)
SCAN_BLOCK = 1024         # count_up: rows longer than this are scanned in blocks of it


def count_up(x: torch.Tensor) -> torch.Tensor:
    """Inclusive running count along the last dimension (int64), x bool or integer (..., L). A row longer than
    SCAN_BLOCK is scanned in two levels of short scans (within blocks, then the block totals): inductor (torch
    2.11, CUDA) fails to generate a single long int64 scan (SplitScan codegen error at 72 frames x 256 slots =
    18432; 32 x 256 compiled), and TempCache then falls back to the eager merge. Same result either way."""
    x = x.long()
    L = x.shape[-1]
    if L <= SCAN_BLOCK:
        return x.cumsum(-1)
    pad = (-L) % SCAN_BLOCK
    blocks = F.pad(x, (0, pad)).unflatten(-1, (-1, SCAN_BLOCK)).cumsum(-1)      # (..., L'/BLOCK, BLOCK)
    total = blocks[..., -1]
    before = total.cumsum(-1) - total                                             # counts in earlier blocks
    return (blocks + before[..., None]).flatten(-2)[..., :L]


def rank(key: torch.Tensor, minor: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, n) -> the rank of each entry in ascending (key, then minor, then position) order, by counting
    pairwise (n x n per head): for n = 256 one fused pass instead of radix sorts (~25 us each on the H100,
    latency-bound), and ties broken by position, so the result is deterministic."""
    pos = torch.arange(key.shape[-1], device=key.device)
    a, b = key[..., :, None], key[..., None, :]                                  # i: row, j: column
    earlier = pos[None, :] < pos[:, None]
    if minor is None:
        before = (b < a) | ((b == a) & earlier)
    else:
        ma, mb = minor[..., :, None], minor[..., None, :]
        before = (b < a) | ((b == a) & ((mb < ma) | ((mb == ma) & earlier)))
    return before.sum(-1)


def force_to_capacity(merge: torch.Tensor, sim: torch.Tensor, live: torch.Tensor, valid: torch.Tensor,
                      budget_slots: int) -> torch.Tensor:
    """Merge the best-matching unmerged tokens below the threshold too, so that each head adds at most
    budget_slots - valid new slots (merge, never evict). Sync-free: ranks and counts stay on the device."""
    unmerged = ~merge & live
    room = (budget_slots - valid.sum(-1, keepdim=True)).clamp_min(0)            # (B, H, 1)
    excess = unmerged.sum(-1, keepdim=True) - room                             # (B, H, 1)
    score = torch.where(unmerged & torch.isfinite(sim), sim, torch.full_like(sim, -math.inf))
    forced = unmerged & torch.isfinite(sim) & (rank(-score) < excess)           # rank 0 = best match
    return merge | forced


def overflow(merge: torch.Tensor, sim: torch.Tensor, idx: torch.Tensor, live: torch.Tensor, valid: torch.Tensor,
             age: torch.Tensor | None, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(merge, valid) after making room for this frame: merge below the threshold (age None) or evict."""
    if age is None:
        return force_to_capacity(merge, sim, live, valid, S), valid
    return merge, evict_oldest(merge, idx, live, valid, age[..., :S], S)


AGE_BUCKETS = 4096   # evict_oldest: relative ages counted exactly up to this many frames (older ones tie)


def evict_oldest(merge: torch.Tensor, idx: torch.Tensor, live: torch.Tensor, valid: torch.Tensor,
                 age: torch.Tensor, S: int) -> torch.Tensor:
    """The other answer to a full cache (`overflow: evict`): free the least recently touched groups, as many
    per head as this frame's new groups lack room for, and return the valid mask without them (B, H, S).
    age (B, H, S) int64: the frame that last wrote each slot (a new group, or a merge: the representative's
    frame), so a group that keeps being matched stays and a place not seen for long goes. Groups merged into
    this frame are never freed. Order: oldest first, ties to the lower slot (deterministic).

    How, with fixed shapes and no sync: a per-head histogram of the candidates' relative ages (newest valid
    age - age, clamped to AGE_BUCKETS - 1; integer scatter_add, exact), its cumulative count from the oldest
    end gives the cutoff age, everything older than the cutoff goes, and within the cutoff age the lowest
    slots go first (a cumsum). This replaced one topk of n per head over S keys, which the H100 profile put
    at ~110 us a layer (gatherTopK + radix sort), the whole cost of evict over merge. Exactly the topk order
    while relative ages stay below AGE_BUCKETS frames (tests/test_tempcache_merge.py checks it); candidates
    older than that count as equally old."""
    B, H, n = merge.shape
    dev = valid.device
    R = AGE_BUCKETS
    new = (live & ~merge).sum(-1, keepdim=True)                                 # (B, H, 1)
    excess = (new - (S - valid.sum(-1, keepdim=True))).clamp_min(0)            # (B, H, 1), <= n
    dump = torch.full_like(idx, S)
    touched = torch.zeros(B, H, S + 1, dtype=torch.bool, device=dev)
    touched.scatter_(2, torch.where(merge & live, idx, dump), True)            # every write is True: no race
    cand = valid & ~touched[..., :S]                                           # (B, H, S)
    newest = torch.where(valid, age, torch.full_like(age, -1)).amax(-1, keepdim=True)
    rel = (newest - age).clamp(0, R - 1)                                       # (B, H, S): larger = older
    cnt = torch.zeros(B, H, R + 1, dtype=torch.long, device=dev)
    cnt.scatter_add_(2, rel, cand.long())                                      # candidates per relative age
    older_eq = count_up(cnt.flip(-1)).flip(-1)                                  # [r]: candidates with rel >= r
    cut = (older_eq >= excess).sum(-1, keepdim=True) - 1                       # (B, H, 1) cutoff rel, -1: none
    above = torch.gather(older_eq, 2, (cut + 1).clamp(0, R))                   # candidates strictly older
    at_cut = cand & (rel == cut)
    take = at_cut & (count_up(at_cut) <= excess - above)                        # lowest slots at the cutoff
    freed = cand & ((rel > cut) | take) & (excess > 0)
    return valid & ~freed


def targets(merge: torch.Tensor, new: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
            S: int) -> torch.Tensor:
    """Target slot per token (B, H, n): its group for a merge, the next free slot of its head for a new group
    (rank among the free slots by a cumsum: no sort, no nonzero), S (the dump) for a token that carries
    nothing."""
    B, H = valid.shape[:2]
    free = ~valid
    free_rank = torch.where(free, count_up(free) - 1, S)                        # (B, H, S)
    slot_ids = torch.arange(S, device=valid.device).expand(B, H, S)
    free_list = torch.full((B, H, S + 1), S, device=valid.device, dtype=torch.long)
    free_list.scatter_(2, free_rank, slot_ids)
    free_list[:, :, S] = S                                                     # the dump slot stays a dump
    new_rank = (count_up(new) - 1).clamp(0, S)                                 # (B, H, n)
    return torch.where(merge, idx, torch.where(new, torch.gather(free_list, 2, new_rank), S))


class Plan(NamedTuple):
    """What one commit writes, per head: slot (B, H, n) the target of each scratch token (S, the first scratch
    slot, for tokens that write nothing of their own: its content is spent), and for the writers the new key
    (B, H, n, D), the group's new mean value (B, H, n, D) and its new bias log(m) (B, H, n)."""
    slot: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor


def fold_plan(K: torch.Tensor, V: torch.Tensor, bias: torch.Tensor, S: int, n: int, tgt: torch.Tensor,
              score: torch.Tensor, inc: torch.Tensor, valid: torch.Tensor) -> Plan:
    """Fold the scratch tokens into their target slots tgt (B, H, n) in [0, S] (S = dump, ignored): what to
    write, without writing (a pure function: torch.compile mis-handled the in-place version, whose inputs
    alias one another, and gave wrong merges on CUDA; `write` applies the plan eagerly).

    Sparse and deterministic: only the <= n target slots are read and written (never a pass over all S
    slots), and no float atomics (scatter_add sums in whatever order threads arrive, so two runs of the
    same frame could differ in the last bit). Tokens with the same target form a group of the frame; with
    the (n x n) same-target matrix per head, one small matmul gives every token its group's mass and
    mass x value sums, and a pairwise comparison finds each group's representative: the best score (a
    new token alone in its free slot, else the closest merge), ties to the later position. Only the
    representatives write, each its own slot; the others write to slot S, the first scratch slot, whose
    content is spent (the pass that wrote it has attended already; the next pass rewrites it)."""
    B, H, _, D = K.shape
    acc = torch.promote_types(V.dtype, torch.float32)                          # float32, or float64 for tests
    k_new, v_new = K[:, :, S:S + n], V[:, :, S:S + n].to(acc)
    pos = torch.arange(n, device=K.device)
    same = tgt[..., :, None] == tgt[..., None, :]                               # (B, H, n, n)
    sj, si = score[..., None, :], score[..., :, None]
    beaten = (same & ((sj > si) | ((sj == si) & (pos[None, :] > pos[:, None])))).any(-1)
    w = inc.to(acc) * (tgt < S)                                                  # mass each token brings
    x = torch.cat([w[..., None], w[..., None] * v_new], -1)                     # (B, H, n, 1 + D)
    seg = torch.matmul(same.to(x.dtype), x)                                      # group sums, every token
    add_m, add_v = seg[..., 0], seg[..., 1:]
    write = ~beaten & (tgt < S) & (add_m > 0)                                    # (B, H, n): one per slot
    slot = torch.where(write, tgt, torch.full_like(tgt, S))
    sD = slot[..., None].expand(-1, -1, -1, D)
    was = torch.gather(valid, 2, slot.clamp(max=S - 1)) & write
    m_old = torch.where(was, torch.exp(torch.gather(bias, 2, slot).to(acc)), torch.zeros_like(add_m))
    m_tot = m_old + add_m
    v_old = torch.gather(V, 2, sD).to(acc)
    v_mean = (m_old[..., None] * v_old + add_v) / m_tot.clamp_min(1e-30)[..., None]
    return Plan(slot, k_new.clone(), v_mean.to(V.dtype), torch.log(m_tot.clamp_min(1e-30)).to(bias.dtype))


def write(K: torch.Tensor, V: torch.Tensor, bias: torch.Tensor, frame_col: torch.Tensor,
          side: list[torch.Tensor], S: int, n: int, frame: int | torch.Tensor, plan: Plan) -> None:
    """Apply a fold plan in place: K, V, bias at the planned slots; side data (bucket codes, search rows)
    follows the representative key from its scratch slot; frame_col gets the frame index. Eager on purpose
    (a handful of scatters; see fold_plan). The scratch side data is read before anything is written."""
    B, H, _, D = K.shape
    slot = plan.slot
    srcs = [t[:, :, S:S + n].clone() for t in side]                             # (B, H, n, *trailing)
    sD = slot[..., None].expand(-1, -1, -1, D)
    V.scatter_(2, sD, plan.v)
    K.scatter_(2, sD, plan.k)
    bias.scatter_(2, slot, plan.bias)
    for t, src in zip(side, srcs):
        dst = slot.reshape(*slot.shape, *([1] * (src.dim() - 3))).expand(*slot.shape, *src.shape[3:])
        t.scatter_(2, dst, src)
    col = frame_col if frame_col.dim() == 2 else frame_col[None]               # (F, cap), a view
    F_ = col.shape[0]                                                          # layers: B = F x batch
    fr = frame.expand(B * H * n) if isinstance(frame, torch.Tensor) else \
        torch.full((B * H * n,), frame, dtype=torch.long, device=K.device)
    col.scatter_(1, slot.reshape(F_, -1), fr.reshape(F_, -1))


def fold(K: torch.Tensor, V: torch.Tensor, bias: torch.Tensor, frame_col: torch.Tensor,
         side: list[torch.Tensor], S: int, n: int, frame: int | torch.Tensor, tgt: torch.Tensor,
         score: torch.Tensor, inc: torch.Tensor, valid: torch.Tensor) -> None:
    """fold_plan, then write: the whole fold in place (the general path and the tests)."""
    write(K, V, bias, frame_col, side, S, n, frame, fold_plan(K, V, bias, S, n, tgt, score, inc, valid))


def onehot(codes: torch.Tensor, n_buckets: int, width: int) -> torch.Tensor:
    """codes (B, H, n, T, P) -> (B, H, n, width) float: one-hot of every probed bucket, table t's buckets at
    [t * (n_buckets + 1), ...) (+ 1: the "no bucket" code)."""
    B, H, n, T, P = codes.shape
    off = torch.arange(T, device=codes.device)[:, None] * (n_buckets + 1)
    return torch.zeros(B, H, n, width, device=codes.device).scatter_(3, (codes + off).reshape(B, H, n, T * P), 1.0)


def scores(x: torch.Tensor, y: torch.Tensor, f32out: bool) -> torch.Tensor:
    """x (G, n, R) @ y (G, S, R)^T in float32. f32out: bf16/fp16 in, float32 out (tensor cores; a bf16 score
    would round cosines near 1 to ~0.008, too coarse to rank near-duplicates)."""
    if f32out:
        return torch.bmm(x, y.transpose(1, 2), out_dtype=torch.float32)
    return torch.bmm(x.float(), y.float().transpose(1, 2))


def plan_rows(K: torch.Tensor, V: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor,
              codes_new: torch.Tensor | None, probes: torch.Tensor | None, q: torch.Tensor | None, S: int, n: int,
              threshold: float, n_buckets: int, f32out: bool, fused: bool = False,
              age: torch.Tensor | None = None, heads: torch.Tensor | None = None) -> tuple[Plan, torch.Tensor]:
    """The whole commit with the stored-row search, as a pure function (what TempCache compiles once on CUDA):
    returns the fold plan and the scratch tokens' search rows (B, H, n, R), which `commit_rows` writes.
    rows (B, H, cap, R): the stored rows; codes_new (B, H, n, T) the scratch keys' bucket codes and probes
    (B, H, n, T, P) the probed buckets (None: exact search); q (B, H, n, D) the queries for match_by="query"
    (None: by key). fused: the search as triton_top1 (no score matrix) instead of bmm + argmax. age (B, H, cap):
    the slots' last-touched frames for `overflow: evict` (None: merge at capacity, force_to_capacity). heads
    (G_s,) int64: the rows of the B x H heads that search (tempcache.layers); the others match nothing, so
    every new token of theirs opens a group (None: all search)."""
    B, H, _, D = K.shape
    R = rows.shape[-1]
    valid = bias[:, :, :S] > -5.0e3                                             # NEG_BIAS / 2
    ku = F.normalize(K[:, :, S:S + n].float(), dim=-1)                          # (B, H, n, D)
    probe = ku if q is None else F.normalize(q.float(), dim=-1)
    parts_y, parts_x = [ku], [probe]
    if codes_new is not None and probes is not None:
        TB = codes_new.shape[-1] * (n_buckets + 1)
        parts_y.append(onehot(codes_new[..., None], n_buckets, TB))
        parts_x.append(ROW_W * onehot(probes, n_buckets, TB))
    pad = R - D - 1 - sum(p.shape[-1] for p in parts_y[1:])
    ones = torch.ones(B, H, n, 1, device=K.device)
    zeros = torch.zeros(B, H, n, pad, device=K.device)
    y_new = torch.cat(parts_y + [zeros, ones], -1).to(rows.dtype)               # the scratch tokens' rows
    x = torch.cat(parts_x + [zeros, ROW_V * ones], -1).reshape(B * H, n, R).to(rows.dtype)
    y = rows[:, :, :S].reshape(B * H, S, R)                                     # a view: no copy
    idx, searched = _top1(x, y, heads, fused, f32out)                                         # (G, n)
    found = torch.gather(K[:, :, :S].reshape(B * H, S, D), 1, idx[..., None].expand(-1, -1, D))
    sim = (ku.reshape(B * H, n, D) * F.normalize(found.float(), dim=-1)).sum(-1)
    ok = torch.gather(valid.reshape(B * H, S), 1, idx)
    if searched is not None:
        ok = ok & searched[:, None]
    sim = torch.where(ok, sim, torch.full_like(sim, -math.inf)).reshape(B, H, n)
    idx = idx.reshape(B, H, n)
    live = torch.ones(B, H, n, dtype=torch.bool, device=K.device)
    merge, valid = overflow(sim >= threshold, sim, idx, live, valid, age, S)
    new = ~merge
    tgt = targets(merge, new, idx, valid, S)
    score = torch.where(merge, sim, torch.full_like(sim, 3.0e38))               # a new token is alone: best
    plan = fold_plan(K, V, bias, S, n, tgt, score, torch.ones(B, H, n, device=K.device), valid)
    return plan, y_new


def _top1(x: torch.Tensor, y: torch.Tensor, heads: torch.Tensor | None, fused: bool,
          f32out: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The stored-row search: best row of y (G, S, R) per row of x (G, n, R), (G, n) int64, over every head or
    only `heads` (then also the (G,) mask of the heads that searched; the others get index 0, to be ignored)."""
    if heads is None:
        return (triton_top1.top1(x, y) if fused else scores(x, y, f32out).argmax(dim=-1)), None
    G, n = x.shape[:2]
    idx = torch.zeros(G, n, dtype=torch.long, device=x.device)
    searched = torch.zeros(G, dtype=torch.bool, device=x.device)
    if heads.numel():
        xs = x.index_select(0, heads)
        found = triton_top1.top1(xs, y, heads) if fused else scores(xs, y.index_select(0, heads), f32out).argmax(-1)
        idx = idx.index_copy(0, heads, found)
        searched = searched.index_fill(0, heads, True)
    return idx, searched


def commit_rows(K: torch.Tensor, V: torch.Tensor, bias: torch.Tensor, frame_col: torch.Tensor,
                side: list[torch.Tensor], rows: torch.Tensor, codes_new: torch.Tensor | None,
                probes: torch.Tensor | None, frame: torch.Tensor, q: torch.Tensor | None, S: int, n: int,
                threshold: float, n_buckets: int, f32out: bool, fused: bool = False,
                plan_fn: Callable[..., tuple[Plan, torch.Tensor]] = plan_rows, age: torch.Tensor | None = None,
                heads: torch.Tensor | None = None) -> None:
    """One whole commit with the stored-row search (TempCache._commit_rows): plan_fn (plan_rows, or its
    compiled version), then the eager write. rows (B, H, cap, R) and age (B, H, cap), if given, are also in
    `side`: the scratch slots get their rows here (and must already hold this frame in age: TempCache._age),
    which then follow the representatives."""
    plan, y_new = plan_fn(K, V, bias, rows, codes_new, probes, q, S, n, threshold, n_buckets, f32out, fused, age,
                          heads)
    rows[:, :, S:S + n] = y_new
    write(K, V, bias, frame_col, side, S, n, frame, plan)
