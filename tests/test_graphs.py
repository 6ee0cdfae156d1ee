"""The pieced pass (engine/graphs.py): equal to CausalDiT.run in every attention mode, eagerly on the CPU; the
captured CUDA graphs equal the eager pass on a GPU (skipped without one)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.attention import build_mode
from engine.attention import tempcache_merge as tm
from engine.attention import triton_decay
from engine.env import make_action
from engine.sampler import Sampler
from engine.world_model import NeuralEnv
from tests.test_model_core import heading_model, random_model, time_free_model

ACTIONS = [((), 0.0), (("forward",), 0.3), (("turn_left", "run"), -0.5), (("back",), 0.0), (("strafe_right",), 0.9)]


SMALL = {"dense": {}, "window": {"sinks": 1, "window": 3}, "tempcache": {"tempcache": {"capacity_frames": 4}},
         "fastar": {"tempcache": {"capacity_frames": 4, "layers": [0]}},
         "annca": {"schedule": {"layers": None}, "metrics": {"recall_every": 3}}}
# bounded modes reach their fixed shapes early; fastar: layer 1 of the tiny model keeps a window and attends with
# no bias from frame 4 on; annca: both layers of the tiny model prune the prompt, recall measured every 3rd frame


def with_bias_layout(mode: str, layout: str) -> dict:
    """SMALL[mode] (a TempCache mode) with tempcache.bias_layout set."""
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in SMALL[mode].items()}
    params["tempcache"] = {**params["tempcache"], "bias_layout": layout}
    return params


def _roll(m: torch.nn.Module, mode: str, graphs: str, frames: int = 12, switch_to: str | None = None,
          out_sampler: list | None = None, compile: bool = False, channel: bool | None = None,
          cpu_noise: bool = False, params: dict | None = None) -> list[torch.Tensor]:
    """channel: force the cache's bias channel on or off (None: the sampler's choice). cpu_noise: draw the
    noise from a CPU generator (needs _cpu_noise), so that a CUDA roll sees the CPU roll's noise. params: the
    mode's config (default SMALL's)."""
    dev = m.latent_std.device
    s = Sampler(m, build_mode(mode, **(SMALL[mode] if params is None else params)), steps=3, graphs=graphs,
                compile=compile)
    if out_sampler is not None:
        out_sampler.append(s)
    s.reset(seed=3, prompt="night stone")
    if cpu_noise:
        s.gen = torch.Generator().manual_seed(3)
    if channel is not None:
        s.cache.set_bias_channel(channel)
    out = []
    for i in range(frames):
        if switch_to is not None and i == frames // 2:
            s.set_mode(build_mode(switch_to, **SMALL[switch_to]))
        k, dx = ACTIONS[i % len(ACTIONS)]
        out.append(s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device=dev)))
    return out


@pytest.mark.parametrize("mode", ["dense", "window", "tempcache", "fastar", "annca"])
def test_pieced_pass_equals_run(mode: str) -> None:
    m = random_model(torch.float32)
    ref, got = _roll(m, mode, "off"), _roll(m, mode, "pieces")
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_pieced_pass_with_time_free_heads_equals_run() -> None:
    """Per-head rotary (dit.rope_time_free_heads) through the pieces' static rope buffers."""
    m = time_free_model(torch.float32)
    ref, got = _roll(m, "window", "off"), _roll(m, "window", "pieces")
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_pieced_pass_with_heading_heads_equals_run() -> None:
    """Heading heads: the graphed frame inputs carry the running heading like the eager path (the actions turn)."""
    m = heading_model(torch.float32, free=1)
    keep: list = []
    ref, got = _roll(m, "window", "off"), _roll(m, "window", "pieces", out_sampler=keep)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    assert float(keep[0].heading) != 0.0


def test_pieced_pass_survives_a_mode_switch() -> None:
    m = random_model(torch.float32)
    ref, got = _roll(m, "dense", "off", switch_to="tempcache"), _roll(m, "dense", "pieces", switch_to="tempcache")
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_graph_options_are_checked() -> None:
    m = random_model(torch.float32)
    with pytest.raises(ValueError, match="graphs must be one of"):
        Sampler(m, build_mode("dense"), graphs="yes")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            Sampler(m, build_mode("dense"), graphs="cuda")
        with pytest.raises(ValueError, match="cuda_graphs=true needs a CUDA device"):
            NeuralEnv(model=m, device="cpu", cuda_graphs=True)
        assert NeuralEnv(model=m, device="cpu").info()["cuda_graphs"] is False
        with pytest.raises(ValueError, match="compile=true fuses the CUDA-graph pieces"):
            NeuralEnv(model=m, device="cpu", compile=True)
    with pytest.raises(ValueError, match="compile=True compiles the graph pieces"):
        Sampler(m, build_mode("dense"), graphs="off", compile=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled pieces are checked on the GPU")
@pytest.mark.parametrize("mode", ["window", "fastar"])
def test_compiled_pieces_equal_eager(mode: str) -> None:
    """torch.compile'd pieces (fused kernels, other rounding order) inside CUDA graphs give the eager frames to
    float32 rounding, reach whole-pass replays, and stay bit-for-bit repeatable."""
    m = random_model(torch.float32).cuda()
    samplers: list[Sampler] = []
    ref = _roll(m, mode, "off", frames=16)
    got = _roll(m, mode, "cuda", frames=16, out_sampler=samplers, compile=True)
    diffs = [float((a - b).abs().max()) for a, b in zip(ref, got)]
    assert max(diffs) < 1e-3, f"max |compiled - eager| per frame: {diffs}"
    assert samplers[0].run.captured and samplers[0].run.whole_replays > 0
    again = _roll(m, mode, "cuda", frames=16, compile=True)
    assert all(torch.equal(a, b) for a, b in zip(got, again)), \
        f"compiled run twice, max |a - b| per frame: {[float((a - b).abs().max()) for a, b in zip(got, again)]}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_with_heading_heads_equal_eager() -> None:
    """The captured frame inputs (GraphedFrameInputs) carry the heading: replays equal the eager frames."""
    m = heading_model(torch.float32, free=1).cuda()
    keep: list = []
    ref, got = _roll(m, "window", "off", frames=16), _roll(m, "window", "cuda", frames=16, out_sampler=keep)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert keep[0].run.captured and float(keep[0].heading) != 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("mode", ["dense", "window", "tempcache", "fastar", "annca"])
def test_cuda_graphs_equal_eager(mode: str) -> None:
    """Captured pieces and whole passes replay the eager kernels: same frames to float32 rounding (a capture
    may pick other cuBLAS algorithms than the eager warm-up, so not bit-exact by promise). The bounded modes
    reach whole-pass replays, and so does dense by buckets (dense.py); a mode switch mid-run drops them and
    continues correctly."""
    m = random_model(torch.float32).cuda()
    samplers: list[Sampler] = []
    ref, got = _roll(m, mode, "off", frames=16), _roll(m, mode, "cuda", frames=16, out_sampler=samplers)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    run = samplers[0].run
    assert run.captured and run.whole_replays > 0
    # Across a mode switch, in float64: TempCache's merge decisions are discrete (threshold, forced merges by
    # rank), so float32 rounding differences between captured and eager cuBLAS algorithms can flip a near-tie
    # and move later frames by ~1e-3 (seen on the H100); in float64 no decision is that close.
    m64 = random_model(torch.float64).cuda()
    other = "dense" if mode != "dense" else "fastar"
    ref, got = _roll(m64, mode, "off", frames=16, switch_to=other), _roll(m64, mode, "cuda", frames=16, switch_to=other)
    diffs = [float((a - b).abs().max()) for a, b in zip(ref, got)]
    assert max(diffs) < 1e-8, f"max |graphs - eager| per frame: {diffs}"
    env = NeuralEnv(model=random_model(torch.float32), device="cuda", attention=mode)
    assert env.info()["cuda_graphs"] is True
    assert env.sampler.run.captured is False
    env.reset(seed=1)
    for i in range(5):
        env.step(make_action(("forward",), 0.1))
    assert env.sampler.run.captured and env._decode.captured


def test_annca_keeping_every_prompt_token_rolls_out_as_dense() -> None:
    """AnnCA alone changes only the cross-attention: its self-attention is dense's own (FastARAttention._dense).
    With one bucket (every prompt token kept) its rollout is dense's, in float64; and it measured its density."""
    m = random_model(torch.float64)
    samplers: list[Sampler] = []
    ref = _roll(m, "dense", "off")
    got = _roll(m, "annca_quant", "off", out_sampler=samplers,
                params={"ann": {"centroids": 1, "probes": 1}, "schedule": {"layers": None}})
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    mode = samplers[0].mode
    assert mode._dense is not None
    st = mode.stats()
    assert st["paths"]["cross"].startswith("masked:") and st["ca_density"] == pytest.approx(1.0)


def test_annca_switched_in_mid_episode_continues_as_dense() -> None:
    """Switching to AnnCA alone mid-episode adopts the cache through dense's own adopt; keeping every prompt
    token, the rollout goes on exactly as dense's (float64), and switching away to fastar afterwards works."""
    m = random_model(torch.float64)
    ref = _roll(m, "dense", "off", frames=12)
    s = Sampler(m, build_mode("dense"), steps=3, graphs="pieces")
    s.reset(seed=3, prompt="night stone")
    got = []
    for i in range(12):
        if i == 5:
            s.set_mode(build_mode("annca_quant", ann={"centroids": 1, "probes": 1}, schedule={"layers": None}))
        k, dx = ACTIONS[i % len(ACTIONS)]
        got.append(s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float64)))
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert s.mode.stats()["ca_density"] == pytest.approx(1.0) and s.mode._frames[0] == 12
    s.set_mode(build_mode("fastar", **SMALL["fastar"]))
    frame = s.step(torch.as_tensor(make_action(("forward",), 0.0)[None], dtype=torch.float64))
    assert torch.isfinite(frame).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_annca_whole_pass_graphs_keep_counting_its_metrics() -> None:
    """AnnCA's pass is captured whole (dense's buckets plus the prompt's keep mask); its density and recall
    accumulate on the device inside the graphs (LayerMeter), so after replays they equal the eager run's."""
    m = random_model(torch.float32).cuda()
    se: list[Sampler] = []
    sg: list[Sampler] = []
    ref = _roll(m, "annca", "off", frames=16, out_sampler=se)
    got = _roll(m, "annca", "cuda", frames=16, out_sampler=sg)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert sg[0].run.whole_replays > 0
    a, b = se[0].mode.meter._totals(), sg[0].mode.meter._totals()
    assert sorted(a) == sorted(b) and any(name == "ca_recall" for _, name in a)
    for key in a:
        assert b[key][1] == a[key][1], (key, a[key], b[key])            # as many values counted
        assert b[key][0] == pytest.approx(a[key][0], rel=1e-4), (key, a[key], b[key])


def test_bias_channel_layout_equals_mask_path() -> None:
    """The padded bias-channel cache (used on CUDA by the TempCache modes) gives the mask path's attention."""
    from engine.attention import kernels
    from engine.cache import NEG_BIAS, KVCache
    outs = []
    for channel in (False, True):
        c = KVCache(2, 1, 3, 16, 40, dtype=torch.float64, bias_channel=channel)
        c.k[1, :, :, :40] = torch.randn(1, 3, 40, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        c.v[1, :, :, :40] = torch.randn(1, 3, 40, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        c.bias[1] = torch.log(torch.arange(1, 41, dtype=torch.float32)).expand(1, 3, 40)
        c.bias[1, :, 1, 5:9] = NEG_BIAS
        q = torch.randn(1, 3, 7, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        outs.append(kernels.cache_attention(q, c, 1, 40, biased=True))
        assert c.pad == (8 if channel else 0) and c.k.shape[-1] == 16
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)


def test_tempcache_on_bias_channel_cache_equals_plain() -> None:
    """A whole TempCache rollout on the padded layout (CUDA's) matches the plain layout (CPU's) in float64."""
    m = random_model(torch.float64)
    outs = []
    for channel in (False, True):
        s = Sampler(m, build_mode("tempcache", **SMALL["tempcache"]), steps=2)
        s.reset(seed=3, prompt="night stone")
        s.cache.set_bias_channel(channel)
        outs.append([s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float64))
                     for k, dx in ACTIONS * 2])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode", ["dense", "window", "tempcache", "fastar", "annca"])
@pytest.mark.parametrize("graphs", ["off", "cuda"])
def test_cuda_rollouts_are_deterministic(mode: str, graphs: str) -> None:
    """Same seed, actions, device and mode -> the same frames, bit for bit (replay checks rely on it; TempCache's
    merge uses no float atomics for this reason)."""
    m = random_model(torch.float32).cuda()
    a, b = _roll(m, mode, graphs, frames=16), _roll(m, mode, graphs, frames=16)
    diffs = [float((x - y).abs().max()) for x, y in zip(a, b)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)), f"max |a - b| per frame: {diffs}"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("mode", ["dense", "fastar"])
def test_env_step_frames_equal_the_plain_order(device: str, mode: str) -> None:
    """NeuralEnv.step queues the decode and the frame's copy to the host before the commit pass and waits for
    the copy only after queuing that pass (on CUDA through a pinned buffer and an event, with the action copied
    in without a wait), so that the next step's host work overlaps the commit. Its frames and committed latents
    equal the plain order's: sample, decode, copy to the host, commit. On CUDA with graphs and, where triton
    is installed, the default fused cache writes."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from engine import cache_kernels
    m = random_model(torch.float32)
    env, ref = (NeuralEnv(model=m, device=device, attention={"name": mode, **SMALL[mode]}) for _ in range(2))
    assert env.info()["fused_writes"] is (device == "cuda" and cache_kernels.available(env.device))
    env.reset(seed=2)
    ref.reset(seed=2)
    s = ref.sampler
    for i in range(10):
        act = make_action(*ACTIONS[i % len(ACTIONS)])
        got = env.step(act)
        a = torch.as_tensor(act[None]).to(ref.device)
        f = s.frame_inputs(a)
        z = s.sample(a, f)
        want = ref._decode(z)[0].cpu().numpy()
        s.commit(z, a, f)
        diff = np.abs(got.astype(int) - want.astype(int)).max()
        assert np.array_equal(got, want), f"frame {i}: max |step - plain order| {diff}"
        assert env.last_latent is not None and torch.equal(env.last_latent, z), f"frame {i}: committed latents differ"


@pytest.mark.parametrize("device,dtype,overflow,block", [
    ("cpu", torch.float64, "merge", None), ("cpu", torch.float64, "evict", None),
    ("cuda", torch.float64, "merge", None), ("cuda", torch.float64, "evict", None),
    ("cpu", torch.float64, "merge", 5), ("cuda", torch.float64, "merge", 5), ("cuda", torch.float64, "evict", 5)])
def test_compiled_merge_equals_eager_merge(device: str, dtype: torch.dtype, overflow: str, block: int | None,
                                           monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """TempCache's commit through torch.compile (the CUDA default; `tempcache.compile=on` anywhere) gives the
    eager commit's frames. Merges start at frame 3 here and forced ones at frame 5 (capacity 4 frames): the
    first compiled version, which compiled the in-place writes too, was off by 0.08-0.2 from frame 3 on, on
    the CPU and on the H100 alike (tempcache_merge.fold_plan). In float64: in float32 the compiled kernels
    round the stored search rows differently in the last bit, and with this random model's near-tied top-1
    candidates that flips a forced merge at frame 5 (seen on the H100 once the commit covered all layers at
    once; the compiled and eager plans were equal on equal inputs at every commit). The float32 compiled
    path is checked for bit-for-bit repeatability below. block: a short tempcache_merge.SCAN_BLOCK, so that
    this small model's rows take the two-level scan that the engine's long rows take (72 frames x 256 slots:
    one long int64 scan failed to compile on the H100)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    if block is not None:
        monkeypatch.setattr(tm, "SCAN_BLOCK", block)
        torch._dynamo.reset()                  # the compiled plan read the block size as a constant
        request.addfinalizer(torch._dynamo.reset)
    m = random_model(dtype).to(device)

    def roll(compile: str) -> list[torch.Tensor]:
        s = Sampler(m, build_mode("tempcache", tempcache={"capacity_frames": 4, "compile": compile,
                                                          "overflow": overflow}), steps=3)
        s.reset(seed=3, prompt="night stone")
        out = []
        for i in range(8):
            k, dx = ACTIONS[i % len(ACTIONS)]
            out.append(s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device=device)))
        assert s.mode.stats()["merge"] == ("compiled" if compile == "on" else "eager")
        return out

    eager, compiled = roll("off"), roll("on")
    diffs = [float((a - b).abs().max()) for a, b in zip(eager, compiled)]
    assert max(diffs) < 1e-10, f"max |compiled - eager| per frame: {diffs}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_compiled_merge_is_repeatable_in_float32() -> None:
    m = random_model(torch.float32).cuda()

    def roll() -> list[torch.Tensor]:
        s = Sampler(m, build_mode("tempcache", tempcache={"capacity_frames": 4, "compile": "on"}), steps=3)
        s.reset(seed=3, prompt="night stone")
        return [s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device="cuda")).clone()
                for k, dx in (ACTIONS * 2)[:8]]
    a, b = roll(), roll()
    assert all(torch.equal(x, y) for x, y in zip(a, b)), [float((x - y).abs().max()) for x, y in zip(a, b)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_evict_overflow_under_cuda_graphs() -> None:
    """tempcache.overflow=evict inside whole-pass CUDA graphs: the eager frames (float64: no near-tie flips)
    and bit-for-bit repeatable in float32."""
    small = {"tempcache": {"capacity_frames": 4, "overflow": "evict"}}

    def roll(m: torch.nn.Module, graphs: str) -> list[torch.Tensor]:
        s = Sampler(m, build_mode("fastar", **small), steps=3, graphs=graphs)
        s.reset(seed=3, prompt="night stone")
        out = []
        for i in range(14):
            k, dx = ACTIONS[i % len(ACTIONS)]
            out.append(s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device="cuda")))
        if graphs == "cuda":
            assert s.run.whole_replays > 0
        return out

    m64 = random_model(torch.float64).cuda()
    diffs = [float((a - b).abs().max()) for a, b in zip(roll(m64, "off"), roll(m64, "cuda"))]
    assert max(diffs) < 1e-8, f"max |graphs - eager| per frame: {diffs}"
    m32 = random_model(torch.float32).cuda()
    assert all(torch.equal(a, b) for a, b in zip(roll(m32, "cuda"), roll(m32, "cuda")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton search runs on CUDA")
def test_bf16_fastar_takes_the_triton_search_inside_whole_pass_graphs() -> None:
    """The engine's own configuration (bf16, `top1: auto`): the fused Triton search runs, inside whole-pass
    graphs, bit-for-bit repeatably, and the frames before the first merge decisions match the eager pass to
    bf16 rounding (later ones may differ where rounding flips a near-tied match)."""
    m = random_model(torch.float32).cast_for_inference(torch.bfloat16).cuda()

    def roll(graphs: str) -> tuple[list[torch.Tensor], Sampler]:
        s = Sampler(m, build_mode("fastar", **SMALL["fastar"]), steps=3, graphs=graphs)
        s.reset(seed=3, prompt="night stone")
        out = [s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device="cuda")).clone()
               for k, dx in (ACTIONS * 2)[:10]]
        return out, s
    (a, sa), (b, _), (eager, _) = roll("cuda"), roll("cuda"), roll("off")
    assert sa.mode.stats()["top1"] == "triton" and sa.run.whole_replays > 0
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.isfinite(x).all() for x in a)
    assert max(float((x - y).abs().max()) for x, y in zip(a[:2], eager[:2])) < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bucketed AnnSA path runs on CUDA")
def test_bucketed_annsa_inside_the_engine_compiles_and_captures() -> None:
    """AnnSA's bucketed call in a bf16 rollout with compiled, graphed pieces: its packing compiles, its own CUDA
    graph captures and replays, nothing falls back (on the H100 a recompile inside the capture once did)."""
    from engine.attention import sparse_kernels
    m = random_model(torch.float32).cast_for_inference(torch.bfloat16).cuda()
    mode = build_mode("annsa", schedule={"dense_until": 0.0, "layers": [0, 1]}, annsa={"recent_frames": 2})
    s = Sampler(m, mode, steps=3, graphs="cuda", compile=True)
    s.reset(seed=3, prompt="night stone")
    out = [s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device="cuda"))
           for k, dx in (ACTIONS * 2)[:8]]
    assert all(torch.isfinite(x).all() for x in out)
    assert mode.stats()["paths"]["self"].startswith("bucketed:")
    assert not any(k.startswith(("compile", "capture")) for k in sparse_kernels.errors()), sparse_kernels.errors()
    assert all(memo["graph"].graph is not None for memo in mode._memo.values())


@pytest.fixture
def _cpu_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.randn with a CPU generator draws on the CPU and moves to the asked device: a device generator
    gives other numbers on CUDA than on the CPU for one seed."""
    real = torch.randn

    def randn(*shape, generator=None, device=None, **kw):  # type: ignore[no-untyped-def]
        if generator is not None and generator.device.type == "cpu":
            return real(*shape, generator=generator, **kw).to(device)
        return real(*shape, generator=generator, device=device, **kw)
    monkeypatch.setattr(torch, "randn", randn)


def _decay_model(dtype: torch.dtype) -> torch.nn.Module:
    m = random_model(dtype, temporal_decay=True)
    with torch.no_grad():
        m.dit.decay.copy_(torch.linspace(0.05, 0.8, m.dit.decay.numel()).view_as(m.dit.decay))
    return m


@pytest.mark.parametrize("mode", ["window", "fastar"])
def test_pieced_pass_with_decay_equals_run(mode: str) -> None:
    """Temporal decay: the pieces read the cache's frame index (cache.now) like the eager path."""
    m = _decay_model(torch.float32)
    for a, b in zip(_roll(m, mode, "off"), _roll(m, mode, "pieces")):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("mode", ["dense", "window", "fastar"])
def test_cuda_graphs_with_decay_equal_eager(mode: str) -> None:
    """Whole-pass replays read cache.now (filled before each frame, outside the capture): a frame index frozen
    into the capture would decay every later frame as if it were the captured one."""
    m = _decay_model(torch.float32).cuda()
    samplers: list[Sampler] = []
    ref, got = _roll(m, mode, "off", frames=16), _roll(m, mode, "cuda", frames=16, out_sampler=samplers)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert samplers[0].run.captured and samplers[0].run.whole_replays > 0   # dense: its buckets (dense.py)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("mode", ["dense", "window"])
def test_cuda_decay_channel_refreshed_once_a_frame_equals_the_mask_path(mode: str) -> None:
    """Dense and window write the committed slots' bias channel once a frame, outside any capture
    (KVCache.refresh_channel), and only the scratch frame's inside the calls: under CUDA graphs (whole-pass
    replays for the window) the frames must equal the bias-mask path's, which has no channel at all."""
    m = _decay_model(torch.float32).cuda()
    samplers: list[Sampler] = []
    # dense attends by buckets through the channel while graphed: its reference never buckets
    ref = _roll(m, mode, "cuda", frames=16, channel=False, params={"graph_frames": 0} if mode == "dense" else None)
    # dense's buckets through the channel (on CUDA with triton they default to triton_decay, tested there)
    got = _roll(m, mode, "cuda", frames=16, out_sampler=samplers,
                params={"bucket_kernel": "channel"} if mode == "dense" else None)
    assert samplers[0].cache.pad > 0
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("mode", ["tempcache", "fastar"])
def test_cuda_decay_channel_with_tempcache_equals_the_cpu_mask_path(mode: str, _cpu_noise: None) -> None:
    """TempCache modes with tempcache.bias_layout=channel turn the channel on by themselves on CUDA, so the
    reference is the CPU's mask path, in float64 (no merge decision is that close) and with the CPU's noise:
    the layout written in full at its first call, then the frame's refresh under graph replays. The bar is not
    float64's: this model's frames differ by 2-5e-4 between the CPU and CUDA in float64 even in eager dense
    mode (measured on the H100)."""
    m = _decay_model(torch.float64)
    ref = _roll(m, mode, "off", frames=16, cpu_noise=True)
    samplers: list[Sampler] = []
    got = _roll(m.cuda(), mode, "cuda", frames=16, out_sampler=samplers, cpu_noise=True,
                params=with_bias_layout(mode, "channel"))
    assert samplers[0].cache.pad > 0 and samplers[0].run.whole_replays > 0
    diffs = [float((a - b.cpu()).abs().max()) for a, b in zip(ref, got)]
    assert max(diffs) < 2e-3, f"max |cuda channel - cpu mask| per frame: {diffs}"


# ---- dense by buckets (engine/attention/dense.py) ---------------------------------------------------------------
BUCKETS = {"graph_frames": 8, "bucket_frames": 3}   # buckets of 3 frames to frame 8, then plain dense


@pytest.mark.parametrize("decay", [False, True])
def test_dense_buckets_equal_plain_dense(decay: bool) -> None:
    """Attending to a whole bucket with the slots past the frame masked gives the plain dense frames (float64:
    the masked slots' weights are exactly 0), across bucket edges and past graph_frames; the cache holds the
    same keys, lengths and frame indices."""
    m = _decay_model(torch.float64) if decay else random_model(torch.float64)
    plain: list[Sampler] = []
    bucketed: list[Sampler] = []
    ref = _roll(m, "dense", "off", frames=12, channel=True, params={"graph_frames": 0}, out_sampler=plain)
    got = _roll(m, "dense", "off", frames=12, channel=True, params=BUCKETS, out_sampler=bucketed)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    a, b = plain[0].cache, bucketed[0].cache
    assert a.length == b.length
    n = a.length[0]
    assert torch.equal(a.frame[:, :n], b.frame[:, :n])
    torch.testing.assert_close(b.k[..., :n, :], a.k[..., :n, :], rtol=1e-10, atol=1e-10)


def test_dense_bucket_masks_what_lies_past_the_frame() -> None:
    """Slots past the frame's end inside its bucket hold leftovers (a stale episode, here noise): they must
    get no weight. The padded_bucket channel is what masks them."""
    m = random_model(torch.float64)
    ref = _roll(m, "dense", "off", frames=5, channel=True, params=BUCKETS)
    keep: list[Sampler] = []
    dev = m.latent_std.device
    s = Sampler(m, build_mode("dense", **BUCKETS), steps=3)
    keep.append(s)
    s.reset(seed=3, prompt="night stone")
    s.cache.set_bias_channel(True)
    s.cache.ensure_capacity(64 * s.N)
    s.cache.k.normal_()
    s.cache.v.normal_()
    got = []
    for i in range(5):
        k, dx = ACTIONS[i % len(ACTIONS)]
        got.append(s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device=dev)))
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_dense_config_is_checked() -> None:
    with pytest.raises(ValueError, match="bucket_frames must be >= 1|bucket_frames=0"):
        build_mode("dense", bucket_frames=0)
    with pytest.raises(ValueError, match="bad config field"):
        build_mode("dense", window=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("decay", [False, True])
def test_cuda_dense_buckets_are_captured_and_equal_eager(decay: bool) -> None:
    """Dense replays whole-pass graphs per bucket (the channel is on for the graphed range; after it dense
    switches it off, unless a decay still rides in it), and its frames equal the eager plain dense frames across bucket edges,
    cache growth (new addresses: graphs dropped) and the end of the graphed range."""
    m = (_decay_model(torch.float32) if decay else random_model(torch.float32)).cuda()
    samplers: list[Sampler] = []
    ref = _roll(m, "dense", "off", frames=14, params={"graph_frames": 0})
    got = _roll(m, "dense", "cuda", frames=14, params=BUCKETS, out_sampler=samplers)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    s = samplers[0]
    assert s.run.whole_replays > 0
    # past graph_frames dense reads unpadded K/V again: a model without decay always, one with decay when its
    # decay is computed in the kernel (engine/attention/triton_decay.py, chosen by measurement at these tiny
    # shapes; else it rides in the channel)
    in_kernel = triton_decay.available(torch.device("cuda")) and s.mode.decay_choice == "triton_decay"
    assert (s.cache.pad > 0) == (decay and not in_kernel)


def test_window_commit_has_one_graph_key_for_every_ring_slot() -> None:
    """Once the ring is full the window's commit pass has one key for all its slots: the slot it overwrites is a
    device scalar that graph_inputs sets before each capture or replay (one capture instead of `window`). The
    scalar names the oldest ring frame, and the commit writes the frame there (its frame index included)."""
    from engine.attention.base import StepInfo
    m = random_model(torch.float32)
    keep: list = []
    _roll(m, "window", "off", frames=6, out_sampler=keep)          # sinks 1 + window 3: the ring wrapped twice
    s = keep[0]
    mode, cache, n = s.mode, s.cache, s.cache.length[0] // 4
    keys = set()
    for f in range(6, 12):
        info = StepInfo(f, 3, 3, True)
        keys.add(mode.graph_key(info, cache))
        mode.graph_inputs(info)
        done = mode._frames[0]
        assert int(mode._dst_t) == (1 + (done - 1) % 3) * n        # the oldest frame of the ring
        mode.graph_replayed(info)
    assert keys == {("commit", 0)}
    assert mode.graph_key(StepInfo(12, 0, 3, False), cache) == ("pass", -1)
    # what the 6 frames left in the cache: the sink (0), then the ring, where frames 4 and 5 overwrote 1 and 2
    frames = cache.frame[0, :cache.length[0]].reshape(4, n)
    assert frames[:, 0].tolist() == [0, 4, 5, 3] and bool((frames == frames[:, :1]).all())


def test_window_fills_a_fixed_layout_with_one_graph_key() -> None:
    """While the ring fills, the window already has its fixed length (sinks + window frames of slots, the empty
    ones masked and frame -1), so its passes have one key and its commits one key (capturable as the full ring's
    are); commit number c writes frame slot c, through the device scalar graph_inputs sets."""
    from engine.attention.base import StepInfo
    from engine.cache import NEG_BIAS
    m = random_model(torch.float32)
    keep: list = []
    fixed = {**SMALL["window"], "fill": "fixed"}                   # what fill: auto takes on CUDA
    _roll(m, "window", "off", frames=2, out_sampler=keep, params=fixed)   # sinks 1 + window 3: two of four in
    s = keep[0]
    mode, cache = s.mode, s.cache
    n = m.tokens_per_frame
    assert cache.length == [4 * n] * cache.n_layers
    assert cache.frame[0, :4 * n].reshape(4, n)[:, 0].tolist() == [0, 1, -1, -1]
    assert bool((cache.bias[0, :, :, 2 * n:4 * n] == NEG_BIAS).all()) and bool((cache.bias[0, :, :, :2 * n] == 0).all())
    assert mode.graph_key(StepInfo(2, 0, 3, False), cache) == ("pass", -2)
    for f in (2, 3):
        info = StepInfo(f, 3, 3, True)
        assert mode.graph_key(info, cache) == ("commit", 1)
        mode.graph_inputs(info)
        assert int(mode._dst_t) == f * n                              # the next empty frame slot
        mode.graph_replayed(info)
    assert mode.graph_key(StepInfo(4, 0, 3, False), cache) == ("pass", -1)   # full: the ring's keys
    assert mode.graph_key(StepInfo(4, 3, 3, True), cache) == ("commit", 0)
    # fill: auto grows on the CPU: the frames so far, no key until the ring is full
    keep = []
    _roll(m, "window", "off", frames=2, out_sampler=keep)
    assert keep[0].cache.length == [2 * n] * cache.n_layers and keep[0].mode.graph_key(StepInfo(2, 0, 3, False),
                                                                                     keep[0].cache) is None
    with pytest.raises(ValueError, match="fill must be auto, fixed or grow"):
        build_mode("window", fill="sometimes")


def test_window_repeats_its_frames_after_a_reset_with_the_bias_channel() -> None:
    """A reset leaves the last episode's keys and bias channel in the storage; the window's fresh layout masks
    them (channel included, which committed_fresh reads as this frame's), so the second episode repeats the
    first frame for frame, and equals the growing path without a channel to rounding."""
    m = _decay_model(torch.float32)

    def episode(s: Sampler) -> list[torch.Tensor]:
        s.reset(seed=3, prompt="night stone")
        s.cache.set_bias_channel(True)
        return [s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32))
                for k, dx in ACTIONS + ACTIONS[:2]]
    fixed = {**SMALL["window"], "fill": "fixed"}
    s = Sampler(m, build_mode("window", **fixed), steps=3, graphs="off")
    first, second = episode(s), episode(s)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    plain = _roll(m, "window", "off", frames=len(first), channel=False)   # grows, no channel
    for a, b in zip(plain, first):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_env_pins_kernel_choices_from_a_file(tmp_path) -> None:
    """NeuralEnv(kernel_choices=...) pins the file's kernels for the process and says so in info() (a session's
    meta records it); without it the choices are measured."""
    import json

    from engine.attention import kernels
    from engine.world_model import NeuralEnv
    f = tmp_path / "choices.json"
    f.write_text(json.dumps({"q256_kv16_d64_bfloat16": "sdpa_efficient"}))
    m = random_model(torch.float32)
    try:
        env = NeuralEnv(model=m, device="cpu", kernel_choices=f)
        env.reset(seed=0, prompt=None)
        assert env.info()["kernel_choices"] == str(f)
    finally:
        kernels.pin({}, "")
    env = NeuralEnv(model=m, device="cpu")
    env.reset(seed=0, prompt=None)
    assert env.info()["kernel_choices"] == "measured"
