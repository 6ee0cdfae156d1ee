"""Temporal decay (dit.temporal_decay): a learned logit slope per layer and head times the frame distance.
The cached inference path (KVCache.attn_bias, every attention mode) must give what the whole-sequence
reference gives (SequenceAttention / TrainAttention with decay_mask), and the slopes must learn."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.attention import FrameAttention, SequenceAttention, StepInfo, build_mode
from engine.attention.base import decay_mask
from engine.cache import KVCache
from engine.env import make_action
from engine.model import frame_mask
from engine.sampler import Sampler
from tests.test_model_core import _cached_equals_full, _training_matches_cache, random_model


def decay_model(seed: int = 0) -> torch.nn.Module:
    m = random_model(seed=seed, temporal_decay=True)
    with torch.no_grad():   # slopes of different sizes per head, large enough to matter over a few frames
        m.dit.decay.copy_(torch.linspace(0.05, 0.8, m.dit.decay.numel()).view_as(m.dit.decay))
    return m


def test_cached_generation_with_decay_equals_full_recomputation() -> None:
    """The sampler (cache.now per frame, decay over the committed slots) against the whole sequence."""
    _cached_equals_full(decay_model())


def test_cached_generation_with_decay_equals_training_sequence() -> None:
    """Frame distances far beyond a clip (a gap of ~900 frames, as in training's gap clips)."""
    _training_matches_cache(decay_model(), torch.tensor([[3, 4, 900, 901]]))


def _rollout(m: torch.nn.Module, mode: str, frames: int = 6, **params: object) -> list[torch.Tensor]:
    s = Sampler(m, build_mode(mode, **params), steps=2, context_sigma=0.05, shift=2.0)
    s.reset(seed=3, prompt="night stone")
    acts = [(("forward",), 0.0), (("turn_left",), 0.2), ((), -0.4), (("back", "run"), 0.0)]
    return [s.step(torch.tensor([make_action(*acts[i % len(acts)])], dtype=torch.float64)) for i in range(frames)]


def test_decay_changes_the_frames_and_zero_slopes_do_not() -> None:
    plain_model = random_model()
    m = decay_model()
    m.load_state_dict(plain_model.state_dict(), strict=False)   # the same weights but the slopes
    with_decay = _rollout(m, "dense")
    with torch.no_grad():
        m.dit.decay.zero_()
    zero = _rollout(m, "dense")
    plain = _rollout(plain_model, "dense")
    assert max(float((a - b).abs().max()) for a, b in zip(with_decay, zero)) > 1e-3
    for a, b in zip(zero, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode,params", [
    ("window", {"window": 16}),                                                 # the window holds every frame
    ("tempcache", {"tempcache": {"capacity_frames": 16, "threshold": 1e9, "metric": "dot"}}),   # no merge
])
def test_modes_that_drop_nothing_equal_dense_with_decay(mode: str, params: dict) -> None:
    """Window and TempCache read the decay through the same attn_bias; with nothing evicted or merged they
    must give dense's frames (TempCache's empty slots stay empty under the decay)."""
    m = decay_model(1)
    ref = _rollout(m, "dense")
    for a, b in zip(_rollout(m, mode, **params), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


TC = {"tempcache": {"capacity_frames": 3, "layers": [0]}}   # full after 3 frames: evictions at every commit
PLAIN = {"graph_frames": 0}                                    # dense without buckets: padded() every call
BUCKETS = {"graph_frames": 6, "bucket_frames": 2}              # buckets to frame 6, then plain


@pytest.mark.parametrize("mode,params,switch", [
    ("dense", PLAIN, None),                      # the cache grows (reallocates) inside passes
    ("dense", BUCKETS, None),                    # dense by buckets (dense.py): its own channel writes, then plain
    ("window", {"sinks": 1, "window": 3}, None),  # the ring wraps: slots are overwritten at commit
    ("dense", PLAIN, "window"),                  # a mode switch mid-episode (window.adopt moves slots)
    ("tempcache", TC, None),                     # the layout made at the first call, groups evicted at commit
    ("dense", PLAIN, "fastar"),                  # fastar lays out (compresses) the dense cache at its first call
])
def test_decay_on_the_bias_channel_equals_the_plain_layout(mode: str, params: dict, switch: str | None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's layout (each slot's bias in a key channel) against the CPU's (a bias mask), with a decay: the modes
    write only the scratch frame's channel per call and rely on the once-a-frame refresh
    (KVCache.refresh_channel) for the committed slots, except where a call changed them first (TempCache's
    layout), so a refresh that is missed, a growth that drops the channel or a layout left unwritten shows
    here as different frames."""
    m = decay_model(6)
    fresh_calls = []
    padded = KVCache.padded

    def counting(self: KVCache, layer: int, end: int, committed_fresh: bool = False) -> tuple:
        fresh_calls.append(committed_fresh)
        return padded(self, layer, end, committed_fresh)
    monkeypatch.setattr(KVCache, "padded", counting)
    outs = []
    for channel in (False, True):
        s = Sampler(m, build_mode(mode, **params), steps=2, context_sigma=0.05, shift=2.0)
        s.reset(seed=3, prompt="night stone")
        s.cache.set_bias_channel(channel)
        if mode == "dense":
            s.cache.resize(0)   # so that it grows (doubling) inside the passes of frames 1, 2, 4 and 8
        acts = [(("forward",), 0.0), (("turn_left",), 0.2), ((), -0.4), (("back", "run"), 0.0)]
        out = []
        for i in range(9):
            if switch and i == 4:
                s.set_mode(build_mode(switch, **({"sinks": 1, "window": 2} if switch == "window" else TC)))
            out.append(s.step(torch.tensor([make_action(*acts[i % len(acts)])], dtype=torch.float64)))
        outs.append(out)
    assert fresh_calls and sum(fresh_calls) > len(fresh_calls) // 2   # the channel path ran, mostly refreshed
    # (by buckets, frames 0-5 write their own channel (padded_bucket); the plain padded() path runs after them)
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", ["annsa", "fastar"])
def test_fastar_modes_run_with_decay(mode: str) -> None:
    out = _rollout(decay_model(2), mode, frames=5)
    assert all(bool(torch.isfinite(x).all()) for x in out)


def test_attn_bias_decays_committed_slots_only() -> None:
    """Slots committed at frames 0 and 2, the scratch frame at 3: bias + max(slope x (frame - now), floor)."""
    c = KVCache(1, 1, 2, 4, 0, dtype=torch.float64)
    c.set_decay(torch.tensor([[0.5, 2000.0]]))
    for f in (0, 2):
        c.write_scratch(0, torch.randn(1, 2, 1, 4).double(), torch.randn(1, 2, 1, 4).double())
        c.commit_scratch(0, 1, f)
    c.bias[0, :, :, 1] = 0.25                                                   # a group weight stays
    end = c.write_scratch(0, torch.randn(1, 2, 1, 4).double(), torch.randn(1, 2, 1, 4).double())
    c.now.fill_(3)
    b = c.attn_bias(0, end)[0]
    torch.testing.assert_close(b[0], torch.tensor([-1.5, 0.25 - 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(b[1], torch.tensor([-1000.0, 0.25 - 1000.0, 0.0], dtype=torch.float64))  # floor
    with pytest.raises(ValueError, match="expected \\(layers, heads\\)"):
        c.set_decay(torch.zeros(2, 2))


def test_decay_mask_is_causal_and_linear_in_distance() -> None:
    T, N = 3, 2
    mask = frame_mask(torch.ones(T, dtype=torch.bool), torch.arange(T), N)
    m = decay_mask(torch.tensor([0.5]), torch.tensor([[0, 4, 5]]), N, mask, torch.float64)   # (1, 1, 6, 6)
    assert m[0, 0, 4, 0] == -0.5 * 5 and m[0, 0, 4, 3] == -0.5 and m[0, 0, 5, 5] == 0
    assert m[0, 0, 0, 2] == float("-inf")


def test_slopes_learn_through_the_sequence_attention() -> None:
    m = random_model(seed=5, temporal_decay=True).train()
    T, N = 3, m.tokens_per_frame
    C, h = m.cfg.ae.latent_ch, m.cfg.ae.latent_size
    x = torch.randn(1, 2 * T, C, h, h, dtype=torch.float64)
    order = torch.arange(T).repeat(2)
    clean = torch.arange(2 * T) < T
    frames = torch.tensor([[0, 1, 40] * 2])
    v = m.dit(x, torch.rand(1, 2 * T, dtype=torch.float64), torch.rand(1, 2 * T, 8, dtype=torch.float64), frames,
              m.encode_prompt(["night"]), SequenceAttention(frame_mask(clean, order, N)))
    v.square().mean().backward()
    assert m.dit.decay.grad is not None and float(m.dit.decay.grad.abs().min()) > 0


def test_frame_attention_takes_the_decay_from_forward() -> None:
    """forward() one frame at a time through FrameAttention (as test_model_core's reference does) hands the
    slopes and the frame to the cache."""
    m = decay_model()
    cache = KVCache(m.cfg.dit.depth, 1, m.cfg.dit.heads, m.cfg.dit.head_dim, 0, dtype=torch.float64)
    C, h = m.cfg.ae.latent_ch, m.cfg.ae.latent_size
    m.dit(torch.randn(1, 1, C, h, h, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
          torch.zeros(1, 1, 8, dtype=torch.float64), torch.tensor([[7]]), m.encode_prompt(["night"]),
          FrameAttention(build_mode("dense"), cache, StepInfo(7, 0, 4, False)))
    assert int(cache.now) == 7 and torch.equal(cache.decay, m.dit.decay_slopes())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA"))])
def test_train_attention_decay_equals_the_masked_reference(device: str) -> None:
    """Training's FlexAttention score_mod (per-row frame indices, a gap) against decay_mask with SDPA: outputs,
    and on CUDA the gradients of q and of the slopes."""
    from engine.train_attention import TrainAttention
    T, N, H, D, B = 4, 16, 2, 16, 2
    clean, order = torch.arange(2 * T, device=device) < T, torch.arange(T, device=device).repeat(2)
    frames = torch.tensor([[0, 1, 5, 300] * 2, [3, 4, 5, 6] * 2], device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, H, 2 * T * N, D, generator=g).to(device) for _ in range(3))
    slopes = torch.tensor([[0.1, 0.02], [0.7, 0.3]], device=device)
    outs, grads = [], []
    for attn in (TrainAttention(clean, order, N, use_flex=True), SequenceAttention(frame_mask(clean, order, N))):
        qq, ss = q.clone().requires_grad_(device == "cuda"), slopes.clone().requires_grad_(device == "cuda")
        attn.set_decay(ss, frames)
        o = attn.self_attn(1, qq, k, v)
        outs.append(o.detach())
        if device == "cuda":
            o.square().sum().backward()
            grads.append((qq.grad, ss.grad))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    if grads:
        assert float(grads[0][1][1].abs().min()) > 0   # the layer's slopes get a gradient through the kernel


def test_set_decay_tool_writes_a_playable_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tools/set_decay.py: a checkpoint without decay gets fixed slopes in every layer, the rest unchanged,
    its origin in the meta; a wrong slope count is refused naming --slopes."""
    import sys

    from engine.checkpoint import load_checkpoint, save_checkpoint
    from tools import set_decay
    m = random_model(seed=3)
    heads, depth = m.cfg.dit.heads, m.cfg.dit.depth
    src_sha = save_checkpoint(tmp_path / "src", m.state_dict(), m.cfg.to_dict())
    slopes = ",".join(["0.5"] + ["0"] * (heads - 1))
    monkeypatch.setattr(sys, "argv", ["set_decay", "--checkpoint", str(tmp_path / "src"), "--slopes", slopes,
                                      "--out", str(tmp_path / "out")])
    set_decay.main()
    manifest, state, _ = load_checkpoint(tmp_path / "out")
    assert manifest["config"]["dit"]["temporal_decay"] is True and manifest["meta"]["derived_from"] == src_sha
    want = torch.tensor([0.5] + [0.0] * (heads - 1)).expand(depth, -1)
    assert torch.equal(state["dit.decay"].float(), want)
    src = m.state_dict()
    assert all(torch.equal(state[k].float(), v.half().float()) for k, v in src.items() if v.is_floating_point())
    env_model = random_model(seed=4, temporal_decay=True)
    env_model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    assert torch.equal(env_model.dit.decay_slopes(), want)
    monkeypatch.setattr(sys, "argv", ["set_decay", "--checkpoint", str(tmp_path / "src"), "--slopes",
                                      ",".join(["0.1"] * (heads + 1)), "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit):
        set_decay.main()
    assert not (tmp_path / "bad").exists()


def test_stability_probe_writes_chunks_and_refuses_a_wrong_slope_count(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """tools/stability_probe.py over a tiny checkpoint: the evaluation's stability rows, with an inference
    decay applied (its frames differ from the checkpoint's own), written as JSON; a wrong count exits."""
    import json
    import sys

    from engine.checkpoint import save_checkpoint
    from tools import stability_probe
    m = random_model(seed=5)
    save_checkpoint(tmp_path / "ck", m.state_dict(), m.cfg.to_dict())
    heads = m.cfg.dit.heads
    runs = {}
    for name, decay in (("plain", None), ("decay", ",".join(["3.0"] * heads))):
        argv = ["stability_probe", "--checkpoint", str(tmp_path / "ck"), "--frames", "3", "--device", "cpu",
                "--out", str(tmp_path / f"{name}.json")] + ([] if decay is None else ["--decay", decay])
        monkeypatch.setattr(sys, "argv", argv)
        stability_probe.main()
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for r in runs.values():
        assert [c["frames_to"] for c in r["chunks"]] == [3] and r["frames"] == 3
        assert isinstance(r["chunks"][0]["collapsed"], bool)
    assert runs["decay"]["decay"] is not None and runs["plain"]["decay"] is None
    assert runs["decay"]["chunks"][0]["gen_mean"] != runs["plain"]["chunks"][0]["gen_mean"]
    monkeypatch.setattr(sys, "argv", ["stability_probe", "--checkpoint", str(tmp_path / "ck"), "--frames", "3",
                                      "--device", "cpu", "--decay", ",".join(["0.1"] * (heads + 1))])
    with pytest.raises(SystemExit):
        stability_probe.main()


def _steep_decay_model() -> torch.nn.Module:
    """Head 0 with a slope steep enough that its horizon (KVCache.set_decay) is a few frames, head 1 with none:
    a run of heads that skips keys beside one that reads everything."""
    m = random_model(seed=2, temporal_decay=True, heads=2, head_dim=32, rope_time_dims=16)
    with torch.no_grad():
        d = torch.zeros_like(m.dit.decay)                               # (depth, heads)
        d[:, 0] = 8.0
        m.dit.decay.copy_(d)
    return m


def _roll_dense(m: torch.nn.Module, frames: int, horizon: bool, channel: bool) -> tuple[list[torch.Tensor], Sampler]:
    s = Sampler(m, build_mode("dense", graph_frames=0), steps=2, context_sigma=0.05, shift=2.0)
    s.reset(seed=3, prompt="night stone")
    s.cache.set_bias_channel(channel)
    if not horizon:
        s.cache.horizon = None
    acts = [(("forward",), 0.0), (("turn_left",), 0.2), ((), -0.4), (("back", "run"), 0.0)]
    out = [s.step(torch.tensor([make_action(*acts[i % len(acts)])], dtype=torch.float64)) for i in range(frames)]
    return out, s


@pytest.mark.parametrize("channel", [False, True])
def test_dense_skips_keys_past_the_decay_horizon_exactly(channel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dense with a decay skips, per head, the keys whose weight the logit bound (CausalDiT.logit_bound) puts
    below e^-50 of the newest key's: the frames equal reading every key (float64, 1e-10), on the mask path
    and the bias-channel path, while most old keys of the steep heads are skipped. With no margin the same
    skipping changes the frames: the test can tell."""
    m = _steep_decay_model()
    ref, _ = _roll_dense(m, 24, horizon=False, channel=channel)
    got, s = _roll_dense(m, 24, horizon=True, channel=channel)
    horizon = s.cache.horizon
    assert horizon is not None and all(h[1] is None for h in horizon)
    assert max(h[0] for h in horizon) < 20                            # the steep head skips within 24 frames
    assert s.mode.stats()["horizon_skipped"] > 0.05
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    import engine.cache as cache_mod
    monkeypatch.setattr(cache_mod, "HORIZON_MARGIN", -20.0)          # skip keys that do matter
    bad, _ = _roll_dense(m, 24, horizon=True, channel=channel)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, bad)) > 1e-6


ANNSA_BUCKETED = {"ann": {"bits": 2, "probes": 2}, "schedule": {"dense_until": 0.0, "layers": None},
                  "annsa": {"path": "bucketed", "kernel": "loop", "recent_frames": 2, "chunks": 2}}


def _roll_annsa(m: torch.nn.Module, frames: int, horizon: bool,
                dense_until: float) -> tuple[list[torch.Tensor], Sampler]:
    params = {**ANNSA_BUCKETED, "schedule": {"dense_until": dense_until, "layers": None}}
    s = Sampler(m, build_mode("annsa", **params), steps=2, context_sigma=0.05, shift=2.0)
    s.reset(seed=3, prompt="night stone")
    if not horizon:
        s.cache.horizon = None
    acts = [(("forward",), 0.0), (("turn_left",), 0.2), ((), -0.4), (("back", "run"), 0.0)]
    out = [s.step(torch.tensor([make_action(*acts[i % len(acts)])], dtype=torch.float64)) for i in range(frames)]
    return out, s


@pytest.mark.parametrize("dense_until", [0.0, 0.6])
def test_annsa_bucket_order_skips_keys_past_the_decay_horizon_exactly(dense_until: float,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """AnnSA over a cache kept in bucket order skips, per head and bucket, the oldest keys past the head's
    horizon (each bucket holds its keys oldest first: FastARAttention._horizon_skip_fn), as dense skips the
    slots before it: the frames equal reading every key of the probed buckets (float64, 1e-10) while it
    computes fewer pairs, in the sparse steps and (dense_until 0.6: the first of 2 steps) in the schedule's
    dense steps, which probe every bucket. With no margin the same skipping changes the frames: the test can
    tell."""
    m = _steep_decay_model()
    ref, rs = _roll_annsa(m, 24, horizon=False, dense_until=dense_until)
    got, s = _roll_annsa(m, 24, horizon=True, dense_until=dense_until)
    assert s.cache.horizon is not None and max(h[0] for h in s.cache.horizon) < 20
    paths = s.mode.stats()["paths"]
    assert paths["self"].startswith("bucketed:") and s.mode._sorted[1][0] > 0
    assert paths.get("every_bucket", "").startswith("bucketed:") == (dense_until > 0)
    dens = [x.mode.meter.mean("sa_density") for x in (rs, s)]
    assert dens[1] < 0.9 * dens[0], dens                               # the steep head's old keys are skipped
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    import engine.cache as cache_mod
    monkeypatch.setattr(cache_mod, "HORIZON_MARGIN", -20.0)          # skip keys that do matter
    bad, _ = _roll_annsa(m, 24, horizon=True, dense_until=dense_until)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, bad)) > 1e-6


def test_logit_bound_holds_for_real_queries_and_keys() -> None:
    """CausalDiT.logit_bound bounds |q.k| / sqrt(head_dim) of the keys a rollout actually stores."""
    m = _steep_decay_model()
    _, s = _roll_dense(m, 6, horizon=True, channel=False)
    bound = m.dit.logit_bound()
    for layer in range(s.cache.n_layers):
        k = s.cache.view(layer)[0]                                     # (B, H, L, D), rotary applied
        worst = (k @ k.transpose(-1, -2)).abs().max() / k.shape[-1] ** 0.5   # |k.k'| bounds as q.k does here
        assert float(worst) <= float(bound[layer]) * (1 + 1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernels' check")
def test_cuda_dense_horizon_equals_reading_every_key() -> None:
    """The same on the GPU's bias-channel path (float32, the chosen SDPA kernels on head slices)."""
    m = _steep_decay_model().float().cuda()

    def roll(horizon: bool) -> list[torch.Tensor]:
        s = Sampler(m, build_mode("dense", graph_frames=0), steps=2, context_sigma=0.05, shift=2.0)
        s.reset(seed=3, prompt="night stone")
        assert s.cache.pad and s.cache.horizon is not None
        if not horizon:
            s.cache.horizon = None
        acts = [(("forward",), 0.0), (("turn_left",), 0.2), ((), -0.4), (("back", "run"), 0.0)]
        return [s.step(torch.tensor([make_action(*acts[i % len(acts)])], dtype=torch.float32, device="cuda"))
                for i in range(24)]
    for a, b in zip(roll(False), roll(True)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decay kernel runs on CUDA")
@pytest.mark.parametrize("mode", ["annca", "annsa"])
def test_cuda_fastar_growing_cache_horizon_equals_reading_every_key(mode: str) -> None:
    """A FAST-AR mode over a growing cache (annca; annsa's layers outside its schedule, not in bucket order)
    runs its dense self-attention on the decay kernel, which skips each head's keys past the horizon when the
    slots are in frame order: float32 frames equal reading every key, and the kernel column says it."""
    pytest.importorskip("triton")
    m = _steep_decay_model().float().cuda()

    def roll(horizon: bool) -> tuple[list[torch.Tensor], Sampler]:
        # the tiny model has 2 layers, both AnnSA's by default: its layer 0 is left dense (in frame order) here
        params = {"schedule": {"layers": [1]}} if mode == "annsa" else {}
        s = Sampler(m, build_mode(mode, metrics={"recall_every": 0}, **params), steps=2, context_sigma=0.05,
                    shift=2.0)
        s.reset(seed=3, prompt="night stone")
        if not horizon:
            s.cache.horizon = None
        acts = [(("forward",), 0.0), (("turn_left",), 0.2), ((), -0.4), (("back", "run"), 0.0)]
        out = [s.step(torch.tensor([make_action(*acts[i % len(acts)])], dtype=torch.float32, device="cuda"))
               for i in range(24)]
        return out, s
    ref, _ = roll(False)
    got, s = roll(True)
    st = s.mode.stats()
    if mode == "annca":   # dense's own self-attention (FastARAttention._dense): its decay kernel and horizon
        assert st["decay_kernel"] == "triton" and st["horizon_skipped"] > 0, st
    else:
        assert st["paths"]["dense"].endswith("+horizon"), st["paths"]
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
