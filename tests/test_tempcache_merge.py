"""TempCache's merge step (engine/attention/tempcache_merge.py) against plain-Python references, and the
stored-row search against the general search path, in float64 on the CPU."""
from __future__ import annotations

import math

import pytest
import torch

from engine.attention import StepInfo, build_mode
from engine.attention import tempcache_merge as tm
from engine.attention.tempcache import TempCache
from engine.cache import NEG_BIAS
from tests.test_attention_fastar import B, D, F64, H, N, _cache, _step

S = 6 * N


def test_rank_orders_by_key_then_minor_then_position() -> None:
    key = torch.tensor([[[3, 1, 3, 0, 1, 3]]])
    minor = torch.tensor([[[0.5, 0.2, 0.1, 0.0, 0.2, 0.5]]])
    order = sorted(range(6), key=lambda i: (int(key[0, 0, i]), float(minor[0, 0, i]), i))
    expect = torch.empty(6, dtype=torch.long)
    expect[order] = torch.arange(6)
    assert torch.equal(tm.rank(key, minor)[0, 0], expect)
    order = sorted(range(6), key=lambda i: (int(key[0, 0, i]), i))
    expect[order] = torch.arange(6)
    assert torch.equal(tm.rank(key)[0, 0], expect)


def _fold_reference(K, V, bias, frame_col, S, n, frame, tgt, score, inc, valid):
    """The merge written as loops: per head, group the scratch tokens by target, sum mass and mass x value,
    keep the best-scoring (latest on ties) token's key."""
    K, V, bias, frame_col = K.clone(), V.clone(), bias.clone(), frame_col.clone()
    for b in range(K.shape[0]):
        for h in range(K.shape[1]):
            groups: dict[int, list[int]] = {}
            for i in range(n):
                t = int(tgt[b, h, i])
                if t < S and float(inc[b, h, i]) > 0:
                    groups.setdefault(t, []).append(i)
            for t, members in groups.items():
                m_old = math.exp(float(bias[b, h, t])) if bool(valid[b, h, t]) else 0.0
                add_m = sum(float(inc[b, h, i]) for i in members)
                add_v = sum(float(inc[b, h, i]) * V[b, h, S + i] for i in members)
                rep = max(members, key=lambda i: (float(score[b, h, i]), i))
                V[b, h, t] = (m_old * V[b, h, t] + add_v) / (m_old + add_m)
                K[b, h, t] = K[b, h, S + rep]
                bias[b, h, t] = math.log(m_old + add_m)
                frame_col[t] = frame
    return K, V, bias, frame_col


def test_fold_equals_the_loop_reference() -> None:
    g = torch.Generator().manual_seed(4)
    n = N
    K = torch.randn(B, H, S + n, D, generator=g, dtype=F64)
    V = torch.randn(B, H, S + n, D, generator=g, dtype=F64)
    valid = torch.rand(B, H, S, generator=g) < 0.5
    bias = torch.where(valid, torch.log(1 + 3 * torch.rand(B, H, S, generator=g, dtype=F64)), NEG_BIAS)
    bias = torch.cat([bias, torch.zeros(B, H, n, dtype=F64)], -1)
    frame_col = torch.full((S + n,), -1, dtype=torch.long)
    # targets: some tokens share a valid group, some share nothing, one is a dump
    tgt = torch.randint(0, S, (B, H, n), generator=g)
    tgt[..., 1] = tgt[..., 0]
    tgt[..., -1] = S
    score = torch.rand(B, H, n, generator=g, dtype=F64)
    score[..., 2] = score[..., 3]
    tgt[..., 3] = tgt[..., 2]                        # a tie in score inside one group: the later token wins
    inc = torch.ones(B, H, n, dtype=F64)
    ref = _fold_reference(K, V, bias, frame_col, S, n, 7, tgt, score, inc, valid)
    tm.fold(K, V, bias, frame_col, [], S, n, 7, tgt, score, inc, valid)
    # the group slots [0, S) must agree; the scratch [S, S + n) is spent (fold may write its dump there)
    for got, want in ((K[:, :, :S], ref[0][:, :, :S]), (V[:, :, :S], ref[1][:, :, :S]),
                      (bias[:, :, :S], ref[2][:, :, :S]), (frame_col[:S], ref[3][:S])):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("search", ["exact", "ann"])
def test_stored_row_search_equals_the_general_path(search: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rollout through commit_rows (stored rows) and through the general path (per-call search
    vectors): the same caches, since both find the best valid key (in a probed bucket for ann)."""
    params = {"tempcache": {"threshold": 0.9, "search": search, "capacity_frames": 3}}
    g = torch.Generator().manual_seed(2)
    frames = [tuple(torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3)) for _ in range(9)]
    caches = []
    for general in (False, True):
        if general:
            monkeypatch.setattr(TempCache, "_rows_ok", lambda self: False)
        mode = build_mode("tempcache", **params)
        cache = _cache(mode)
        for f, (q, k, v) in enumerate(frames):
            k = k + (0.0 if f == 0 else 0.05) * frames[0][1]   # repeated content, so merges happen
            _step(mode, cache, 0, f, q, k, v)
        caches.append(cache)
    a, b = caches
    torch.testing.assert_close(a.k, b.k, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.v, b.v, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=1e-12)
    assert torch.equal(a.frame, b.frame)


@pytest.mark.parametrize("mode,params", [
    ("fastar", {"overflow": "evict"}), ("tempcache", {"overflow": "merge"}),
    ("tempcache", {"search": "exact", "match_by": "query"})])
def test_all_layer_commit_equals_per_layer_commits(mode: str, params: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit pass commits every layer at once after the last one (FastARAttention._stage,
    TempCache.commit_layers); committing each layer in its own call gives the same caches and outputs."""
    params = {"threshold": 0.9, "capacity_frames": 3, **params}
    g = torch.Generator().manual_seed(5)
    layers = 3
    frames = [[tuple(torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3)) for _ in range(layers)]
              for _ in range(8)]
    runs = []
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(type(build_mode(mode)), "_batched_commit", lambda self: False)
        m = build_mode(mode, tempcache=params)
        cache = _cache(m, layers)
        outs = []
        for f, per_layer in enumerate(frames):
            for layer, (q, k, v) in enumerate(per_layer):
                if f % 2:   # every other frame repeats frame 0 with a little noise: merges happen
                    k = frames[0][layer][1] + 0.01 * k
                    q = k if params.get("match_by") == "query" else q
                outs.append(_step(m, cache, layer, f, q, k, v))
        if batched:
            assert m._batched_commit()
        runs.append((cache, outs))
    (a, oa), (b, ob) = runs
    for x, y in zip(oa, ob):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    for name in ("k", "v", "bias"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-12)
    assert torch.equal(a.frame, b.frame)
    assert bool((a.bias[:, :, :, :a.length[0]] > 1e-3).any()), "no group merged: the test would not test merging"


@pytest.mark.parametrize("batched", [True, False])
def test_layers_without_search_keep_a_window_and_attend_plain(batched: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """tempcache.layers: a layer left out never merges; with evict its cache is the last capacity_frames
    frames, every bias log(1) = 0, and once that many frames are in it attends with no bias (FastARAttention
    _plain; a separate whole-pass graph key). The listed layer is exactly what searching everywhere gives
    (layers are independent), and on content where nothing merges the two configs agree everywhere, so the
    plain path starts only when it is exact (an early start would ignore the empty slots' NEG_BIAS)."""
    from engine.attention.tempcache import AGE
    cap, layers = 3, 2
    if not batched:
        monkeypatch.setattr(type(build_mode("fastar")), "_batched_commit", lambda self: False)

    def roll(params: dict, repeat: bool, adopt_at: int | None = None) -> tuple:
        g = torch.Generator().manual_seed(6)
        first = [torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(layers)]
        m = build_mode("fastar", tempcache={"threshold": 0.9, "capacity_frames": cap, **params})
        cache, outs, plain, keys = _cache(m, layers), [], [], []
        for f in range(10):
            if f == adopt_at:   # switched in again over its own cache: adopted groups may carry a bias
                m = build_mode("fastar", tempcache={"threshold": 0.9, "capacity_frames": cap, **params})
                m.adopt(cache, N)
            for layer in range(layers):
                q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
                if repeat and f % 2:
                    k = first[layer] + 0.01 * k
                keys.append(m.graph_key(StepInfo(f, 0, 2, False), cache))
                outs.append(_step(m, cache, layer, f, q, k, v))
            plain.append(m.stats()["plain_layers"])
        return m, cache, outs, plain, keys

    m, sub, o_sub, plain, keys = roll({"layers": [0]}, True)
    _, full, o_full, _, _ = roll({}, True)
    S = cap * N
    assert m.stats()["search_layers"] == [0]
    assert plain == [[]] * (cap - 1) + [[1]] * (11 - cap)     # after each frame: from the cap-th commit on
    assert keys[-1] == ("pass", (1,)) and keys[2 * cap - 1] == ("pass", ())
    assert bool((full.bias[1, :, :, :S] > 1e-3).any()), "layer 1 merges when it searches: the test would not test"
    assert torch.equal(sub.bias[1, :, :, :S], torch.zeros_like(sub.bias[1, :, :, :S]))
    ages = sub.slot_data[AGE][1, :, :, :S]
    assert sorted({int(a) for a in ages.flatten()}) == list(range(10 - cap, 10))
    for name in ("k", "v", "bias"):
        torch.testing.assert_close(getattr(sub, name)[0], getattr(full, name)[0], rtol=0, atol=1e-12)
    for a, b in zip(o_sub[0::layers], o_full[0::layers]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    _, _, o_sub, plain, _ = roll({"layers": [0], "threshold": 1.0}, False, adopt_at=5)
    _, _, o_full, _, _ = roll({"threshold": 1.0}, False, adopt_at=5)
    assert plain == ([[]] * (cap - 1) + [[1]] * (6 - cap)) * 2
    for a, b in zip(o_sub, o_full):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_top1_option_is_checked() -> None:
    from engine.attention.tempcache import TempCacheConfig
    with pytest.raises(ValueError, match="tempcache.top1"):
        TempCacheConfig(top1="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton search runs on CUDA")
@pytest.mark.parametrize("S", [1000, 16384])
def test_triton_top1_equals_matmul_argmax(S: int) -> None:
    """The fused search returns bmm + argmax's index wherever the best score is clear of the runner-up (float
    accumulation order differs, so near-ties may rank the other way), and the lowest index on exact ties."""
    from engine.attention import triton_top1
    g = torch.Generator(device="cuda").manual_seed(0)
    G, n, R = 6, 256, 88
    x = torch.randn(G, n, R, device="cuda", generator=g).bfloat16()
    y = torch.randn(G, S, R, device="cuda", generator=g).bfloat16()
    y[:, S // 2] = y[:, 3]                                  # an exact duplicate: ties must go to index 3
    got = triton_top1.top1(x, y)
    sc = torch.bmm(x.float(), y.float().transpose(1, 2))
    top2 = sc.topk(2, dim=-1)
    clear = (top2.values[..., 0] - top2.values[..., 1]) > 1e-2
    assert clear.float().mean() > 0.5
    assert torch.equal(got[clear], top2.indices[..., 0][clear])
    picked = sc.gather(-1, got[..., None])[..., 0]
    assert torch.all(picked >= top2.values[..., 0] - 1e-2)  # never far from the best, even in near-ties
    assert not torch.any(got == S // 2)                     # the duplicate's later copy never wins
    assert torch.equal(got, triton_top1.top1(x, y))         # deterministic
    heads = torch.tensor([4, 1], device="cuda")             # a subset of heads, read in place (tempcache.layers)
    assert torch.equal(triton_top1.top1(x[heads], y, heads), got[heads])


def test_evict_oldest_frees_the_least_recently_touched_groups() -> None:
    age = torch.tensor([[[5, 1, 3, 2]]])                       # (B, H, S): frames that last wrote each slot
    valid = torch.ones(1, 1, 4, dtype=torch.bool)
    live = torch.ones(1, 1, 2, dtype=torch.bool)
    idx = torch.tensor([[[1, 0]]])
    none = torch.zeros(1, 1, 2, dtype=torch.bool)
    assert tm.evict_oldest(none, idx, live, valid, age, 4).tolist() == [[[True, False, True, False]]]
    # a group merged into this frame is touched: it stays, and only one new group needs room
    merged = torch.tensor([[[True, False]]])
    assert tm.evict_oldest(merged, idx, live, valid, age, 4).tolist() == [[[True, True, True, False]]]
    # room left: nothing is freed
    some = torch.tensor([[[True, True, False, False]]])
    assert tm.evict_oldest(none, idx, live, some, age, 4).tolist() == some.tolist()


@pytest.mark.parametrize("name", ["tempcache", "fastar", "tempcache_quant"])
def test_evict_overflow_keeps_the_recent_frames_when_nothing_repeats(name: str) -> None:
    """overflow "evict" with distinct keys every frame (nothing merges): the cache holds exactly the last
    capacity_frames frames, like a window, and never exceeds its capacity; "merge" would blur them instead."""
    from engine.attention.tempcache import AGE
    cap_frames = 3
    mode = build_mode(name, tempcache={"capacity_frames": cap_frames, "overflow": "evict", "threshold": 1.0})
    cache = _cache(mode)
    g = torch.Generator().manual_seed(0)
    for f in range(8):
        q, k, v = (torch.randn(B, H, N, D, generator=g, dtype=F64) for _ in range(3))
        _step(mode, cache, 0, f, q, k, v)
        S = cap_frames * N
        valid = cache.valid(0, S)
        ages = cache.slot_data[AGE][0, :, :, :S]
        kept = sorted({int(a) for a in ages[valid]})
        assert kept == list(range(max(0, f - cap_frames + 1), f + 1)), (f, kept)
        assert int(valid.sum(-1).max()) <= S


def _evict_by_topk(merge, idx, live, valid, age, S):
    """The first evict_oldest (session 3): one topk of n per head over age x S + slot; the reference."""
    B, H, n = merge.shape
    new = (live & ~merge).sum(-1, keepdim=True)
    excess = (new - (S - valid.sum(-1, keepdim=True))).clamp_min(0)
    dump = torch.full_like(idx, S)
    touched = torch.zeros(B, H, S + 1, dtype=torch.bool)
    touched.scatter_(2, torch.where(merge & live, idx, dump), True)
    key = torch.where(valid & ~touched[..., :S], age * S + torch.arange(S), torch.iinfo(torch.long).max)
    oldest = torch.topk(key, n, dim=-1, largest=False, sorted=True).indices
    freed = torch.zeros(B, H, S + 1, dtype=torch.bool)
    freed.scatter_(2, torch.where(torch.arange(n) < excess, oldest, dump), True)
    return valid & ~freed[..., :S]


@pytest.mark.parametrize("seed", range(6))
def test_evict_oldest_histogram_equals_topk(seed: int) -> None:
    """The histogram cutoff frees exactly the groups the topk did: random ages with many ties, partly full
    and full caches, merges into existing groups."""
    g = torch.Generator().manual_seed(seed)
    B, H, S, n = 2, 3, 64, 8
    for trial in range(50):
        frame = 100 + int(torch.randint(0, 3000, (1,), generator=g))
        age = frame - torch.randint(0, 12 if trial % 2 else 3000, (B, H, S), generator=g)
        valid = torch.rand(B, H, S, generator=g) < (1.0 if trial % 3 else 0.9)
        idx = torch.randint(0, S, (B, H, n), generator=g)
        merge = (torch.rand(B, H, n, generator=g) < 0.3) & valid.gather(2, idx)
        live = torch.rand(B, H, n, generator=g) < 0.9
        ref = _evict_by_topk(merge, idx, live, valid, age, S)
        got = tm.evict_oldest(merge, idx, live, valid, age, S)
        assert torch.equal(got, ref), (seed, trial)
        assert int(got.sum(-1).max()) <= S


@pytest.mark.parametrize("L", [1, 7, 1024, 1025, 3000, 18432])
def test_count_up_equals_cumsum(L: int) -> None:
    """The two-level scan (rows longer than SCAN_BLOCK) counts like one cumsum, a partial last block included."""
    g = torch.Generator().manual_seed(L)
    x = torch.rand(2, 3, L, generator=g) < 0.4
    assert torch.equal(tm.count_up(x), x.long().cumsum(-1))
    n = torch.randint(0, 50, (2, L), generator=g)
    assert torch.equal(tm.count_up(n), n.cumsum(-1))
