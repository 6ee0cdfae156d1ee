"""The in-kernel temporal decay (engine/attention/triton_decay.py): the kernel against a float64 reference;
dense through it (past the graphed range, by buckets with the length on the device, and decay_kernel=auto's
one-time measurement) against plain dense; its CUDA graphs. Needs triton: on CUDA directly; on a CPU with
triton installed the checks run under triton's interpreter (TRITON_INTERPRET=1, in a subprocess because the
variable is read when a kernel is defined), and the kernels are compiled to PTX for sm_90. CI has neither
triton nor a GPU: only the option checks run there."""
from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from engine.attention import build_mode
from engine.cache import DECAY_FLOOR
from engine.env import make_action
from engine.sampler import Sampler
from tests.test_model_core import random_model
from tests.test_model_decay import _steep_decay_model
from tests.triton_checks import worst_error_of

HAS_TRITON = importlib.util.find_spec("triton") is not None


def kernel_check(device: str) -> float:
    """Largest |kernel - reference| over cases with horizons, a frame index past `now`'s floor, key chunks
    1 and 3, storage padded to 72 channels (the cache's bias-channel layout, read in place), slots past the
    frame that must not be read (a bucket's tail, filled with huge values), and no decay at all."""
    from engine.attention import triton_decay as td
    torch.manual_seed(0)
    worst = 0.0
    for B, H, n, D, frames, tail, decay in ((1, 3, 20, 16, 9, 0, True), (2, 2, 33, 32, 5, 40, True),
                                            (1, 3, 20, 16, 6, 25, False)):
        L = (frames + 1) * n + tail
        q = torch.randn(B, H, n, D, device=device)
        kp, vp = torch.randn(B, H, L, D + 8, device=device), torch.randn(B, H, L, D + 8, device=device)
        kp[:, :, L - tail:] = 1e4                                       # past the frame: never read
        vp[:, :, L - tail:] = 1e4
        k, v = kp[..., :D], vp[..., :D]
        frame = torch.cat([torch.arange(frames).repeat_interleave(n), torch.full((n + tail,), -1)]).to(device)
        now = torch.tensor(frames, device=device)
        slopes = torch.tensor([0.5, 300.0, 0.1][:H], device=device)     # 300: the floor binds a frame back
        hz = torch.tensor([0, 3, 2][:H], dtype=torch.int32, device=device) if decay else None
        length = frames * n
        starts = [0 if w == 0 else max(0, length - int(w) * n) for w in hz.tolist()] if decay else [0] * H
        back = (frame - now).clamp(max=0).double()
        bias = torch.zeros(H, L, dtype=torch.float64, device=device)
        if decay:
            bias = (slopes.double()[:, None] * back[None]).clamp(min=DECAY_FLOOR)
        bias[:, length:] = 0.0
        end = length + n
        ref = torch.empty(B, H, n, D, dtype=torch.float64)
        for b in range(B):
            for h in range(H):
                s = starts[h]
                lg = q[b, h].double() @ k[b, h, s:end].double().T / math.sqrt(D) + bias[h, s:end]
                ref[b, h] = (torch.softmax(lg, -1) @ v[b, h, s:end].double()).cpu()
        for splits in (1, 3):
            out = td.decay_attention(q, k, v, frame if decay else None, now if decay else None,
                                     slopes if decay else None, hz, torch.tensor(length, device=device), n,
                                     starts=starts, num_splits=splits)
            assert out.shape == (B, H, n, D) and out.dtype == q.dtype
            assert out.transpose(1, 2).is_contiguous()   # (B, n, H, D) memory: the output projection's layout
            worst = max(worst, float((out.double().cpu() - ref).abs().max()))
    return worst


def worst_error(check: str) -> float:
    """Run the check named `check` (a function of this module taking a device) where triton runs; its largest
    error (tests/triton_checks.py)."""
    return worst_error_of("tests.test_triton_decay", check, globals()[check])


def split_check(device: str) -> float:
    """kernels.py's triton_split against a float64 reference: plain (all of k, the length a host int), with a
    per-key bias (B, H, L), and on bias-channel storage (64 channels and the bias read in place from channel
    64 of 72, as padded_attention uses it), for a frame's queries against more keys than queries and fewer
    (cross-attention's shape). Returns the largest error."""
    from engine.attention import kernels
    torch.manual_seed(1)
    worst = 0.0
    for B, H, n, L, D in ((1, 3, 20, 70, 16), (2, 2, 33, 9, 32)):
        q = torch.randn(B, H, n, D, device=device)
        kp, vp = torch.randn(B, H, L, D + 8, device=device), torch.randn(B, H, L, D + 8, device=device)
        kp[..., D] = torch.randn(B, H, L, device=device) * 3      # the channel: a bias per key
        k, v, b = kp[..., :D], vp[..., :D], kp[..., D]

        def ref(bias: torch.Tensor | None) -> torch.Tensor:
            lg = q.double() @ k.double().transpose(-1, -2) / math.sqrt(D)
            if bias is not None:
                lg = lg + bias.double()[:, :, None, :]
            return torch.softmax(lg, -1) @ v.double()
        for out, r in ((kernels._triton_split(q, k.contiguous(), v.contiguous(), 1 / math.sqrt(D)), ref(None)),
                       (kernels._triton_split(q, k, v, 1 / math.sqrt(D), bias=b.contiguous()), ref(b)),
                       (kernels._padded_triton(q, kp, vp), ref(b))):
            assert out.shape == (B, H, n, D)
            worst = max(worst, float((out.double() - r).abs().max()))
    with pytest.raises(ValueError, match="softmax scale"):
        kernels._triton_split(q, k, v, 0.5)
    return worst


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_triton_split_equals_the_reference() -> None:
    assert worst_error("split_check") < (1e-4 if torch.cuda.is_available() else 1e-5)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_kernel_equals_the_reference() -> None:
    """float32 inputs, full-precision dots (no tf32): 1e-4 on the GPU, 1e-5 in the interpreter."""
    assert worst_error("kernel_check") < (1e-4 if torch.cuda.is_available() else 1e-5)


def dense_call() -> int:
    """1 when the counted triton_decay.decay_attention call comes from dense itself, 0 from the kernel chooser's
    triton_split candidate (kernels._triton_split, measured on CUDA for every plain attention shape)."""
    return int(sys._getframe(2).f_code.co_name != "_triton_split")


def dense_check(device: str) -> float:
    """Largest |frame difference| between dense by buckets on triton_decay (bucket_kernel=triton: the length
    read on the device, slots past the frame never read, the channel off) and plain dense on the mask path,
    over 12 frames of a tiny float32 model with and without decay: buckets of 3 frames to frame 8 (edges
    crossed), then the long-context path. Eager passes (graphs off): what a captured call would run."""
    from engine.attention import triton_decay as td
    from tests.test_graphs import _decay_model, _roll
    worst = 0.0
    plain = td.decay_attention
    calls = [0]

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += dense_call()
        return plain(*args, **kwargs)
    td.decay_attention = counted   # dense calls it through the module: count that the kernel path ran
    try:
        for decay in (False, True):
            m = (_decay_model(torch.float32) if decay else random_model(torch.float32)).to(device)
            ref = _roll(m, "dense", "off", frames=12, channel=False,
                        params={"graph_frames": 0, "decay_kernel": "channel"})
            assert calls[0] == 0
            kept: list[Sampler] = []
            got = _roll(m, "dense", "off", frames=12, channel=False, out_sampler=kept,
                        params={"graph_frames": 8, "bucket_frames": 3, "bucket_kernel": "triton"})
            # 2 layers x 4 passes (3 steps + commit) a frame; frames 1-6 lie in buckets that end by frame 8
            # (3 and 6; frame 7's would end at 9), later frames take the kernel only for a decay
            assert calls[0] == 2 * 4 * (12 if decay else 6), calls[0]
            calls[0] = 0
            assert kept[0].mode.stats()["decay_kernel"] == ("triton" if decay else "none")
            worst = max(worst, max(float((a - b).abs().max()) for a, b in zip(ref, got)))
    finally:
        td.decay_attention = plain
    return worst


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_dense_triton_buckets_equal_plain_dense() -> None:
    assert worst_error("dense_check") < 1e-4


def choice_check(device: str) -> float:
    """decay_kernel=auto measures once, at the first call past the graphed range with the channel still on:
    with a timer that finds the kernel faster, dense takes it, lists the choice among the measured kernels and
    switches the channel off from the next frame; with one that finds the channel faster, it keeps the
    channel. Both give plain dense's frames. Returns the largest frame difference (asserts the rest)."""
    from engine.attention import kernels
    from tests.test_graphs import ACTIONS, _decay_model, _roll
    m = _decay_model(torch.float32).to(device)
    ref = _roll(m, "dense", "off", frames=6, channel=False, params={"graph_frames": 0, "decay_kernel": "channel"})
    worst = 0.0
    orig = kernels.record_choice
    for kernel_ms, expect in ((0.1, "triton_decay"), (0.3, "channel")):
        timed: list[float] = []
        recorded: list[str] = []

        def timer(fn, kernel_ms=kernel_ms, timed=timed):  # type: ignore[no-untyped-def]
            fn()
            timed.append(0.2 if not timed else kernel_ms)   # the channel is timed first, then the kernel
            return timed[-1]
        s = Sampler(m, build_mode("dense", graph_frames=0, decay_kernel="auto"), steps=3)
        s.reset(seed=3, prompt="night stone")
        s.cache.set_bias_channel(True)
        s.mode._timer = timer
        kernels.record_choice = lambda q, keys, tag, choice, times, r=recorded: r.append(f"{tag}:{choice}")  # type: ignore
        try:
            got = []
            for i in range(6):
                k, dx = ACTIONS[i % len(ACTIONS)]
                got.append(s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device=device)))
        finally:
            kernels.record_choice = orig
        assert s.mode.decay_choice == expect and recorded == [f"decay:{expect}"] and len(timed) == 2, \
            (s.mode.decay_choice, recorded, timed)
        assert (s.cache.pad == 0) == (expect == "triton_decay")
        worst = max(worst, max(float((a - b).abs().max()) for a, b in zip(ref, got)))
    return worst


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_auto_decay_kernel_is_chosen_by_measurement() -> None:
    assert worst_error("choice_check") < 1e-4


def bucket_choice_check(device: str) -> float:
    """bucket_kernel=auto measures once, at the first call (before any capture): with a timer that finds the
    kernel faster, dense's buckets run on triton_decay (the kernel is called for the bucketed frames) and the
    choice is listed among the measured kernels; with one that finds the channel faster, they stay on the
    channel (the kernel is called only by the measurement). Both give plain dense's frames. Returns the
    largest frame difference (asserts the rest)."""
    from engine.attention import kernels
    from engine.attention import triton_decay as td
    from tests.test_graphs import ACTIONS
    m = random_model(torch.float32).to(device)
    orig_record, orig_kernel = kernels.record_choice, td.decay_attention

    def roll(params: dict, timer=None) -> tuple[list[torch.Tensor], Sampler]:  # type: ignore[no-untyped-def]
        s = Sampler(m, build_mode("dense", **params), steps=3)
        s.reset(seed=3, prompt="night stone")
        s.mode._timer = timer
        acts = [ACTIONS[i % len(ACTIONS)] for i in range(10)]
        return [s.step(torch.as_tensor(make_action(k, dx)[None], dtype=torch.float32, device=device))
                for k, dx in acts], s
    ref, _ = roll({"graph_frames": 0, "bucket_kernel": "channel"})
    worst = 0.0
    for kernel_ms, expect in ((0.1, "triton_decay"), (0.3, "channel")):
        timed: list[float] = []
        recorded: list[str] = []
        calls = [0]

        def timer(fn, kernel_ms=kernel_ms, timed=timed):  # type: ignore[no-untyped-def]
            fn()
            timed.append(0.2 if not timed else kernel_ms)   # the channel is timed first, then the kernel
            return timed[-1]

        def counted(*args, calls=calls, **kwargs):  # type: ignore[no-untyped-def]
            calls[0] += dense_call()
            return orig_kernel(*args, **kwargs)
        kernels.record_choice = lambda q, keys, tag, choice, times, r=recorded: r.append(f"{tag}:{choice}")  # type: ignore
        td.decay_attention = counted
        try:
            got, s = roll({"graph_frames": 8, "bucket_frames": 3}, timer)
        finally:
            kernels.record_choice, td.decay_attention = orig_record, orig_kernel
        assert s.mode.bucket_choice == expect and recorded == [f"buckets:{expect}"] and len(timed) == 2, \
            (s.mode.bucket_choice, recorded, timed)
        # the measurement calls the kernel twice (the agreement check, the injected timer's call); with triton
        # chosen, also 2 layers x 4 passes a frame for the frames whose buckets end by frame 8 (frames 0-5, in
        # the buckets ending at 3 and 6; frame 6's would end at 9), frame 0 included: the choice precedes it
        assert calls[0] == 2 + (2 * 4 * 6 if expect == "triton_decay" else 0), calls[0]
        # bucket_frames unset: the chosen path's default length (a longer bucket only on triton, which never
        # reads the masked slots)
        s.mode.cfg.bucket_frames = None
        assert s.mode.bucket_frames(s.cache.k) == (64 if expect == "triton_decay" else 16)
        worst = max(worst, max(float((a - b).abs().max()) for a, b in zip(ref, got)))
    return worst


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_auto_bucket_kernel_is_chosen_by_measurement() -> None:
    assert worst_error("bucket_choice_check") < 1e-4


def test_decay_kernel_option_is_checked() -> None:
    with pytest.raises(ValueError, match="decay_kernel must be auto, triton or channel, got 'fast'"):
        build_mode("dense", decay_kernel="fast")
    with pytest.raises(ValueError, match="bucket_kernel must be auto, triton or channel, got 'fast'"):
        build_mode("dense", bucket_kernel="fast")
    if not HAS_TRITON and not torch.cuda.is_available():
        s = Sampler(_steep_decay_model(), build_mode("dense", graph_frames=0, decay_kernel="triton"), steps=2)
        s.reset(seed=3, prompt="night stone")
        with pytest.raises(RuntimeError, match="decay_kernel=triton needs triton and a CUDA device"):
            s.step(torch.tensor([make_action(("forward",), 0.0)], dtype=torch.float64))


def tempcache_decay_check(device: str) -> float:
    """Largest |frame difference| between fastar (TempCache, group biases in the bias array) on a decay model with
    the decay added inside triton_decay's kernel and the same rollout without it (the key channel on CUDA, the
    mask path on the CPU), over 12 frames of a tiny float32 model, eager: merges from frame 4 (capacity 4),
    the second layer a window. With the kernel the cache has no channel and every self-attention call took it."""
    from engine.attention import kernels
    from tests.test_graphs import SMALL, _decay_model, _roll
    m = _decay_model(torch.float32).to(device)
    plain, calls = kernels._decayed, [0]

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return plain(*args, **kwargs)
    saved = kernels.DECAY_KERNEL_DEVICES
    kernels._decayed = counted
    try:
        kernels.DECAY_KERNEL_DEVICES = ()
        ref_s: list[Sampler] = []
        ref = _roll(m, "fastar", "off", frames=12, out_sampler=ref_s, params=SMALL["fastar"])
        assert calls[0] == 0 and ref_s[0].cache.pad == (8 if device == "cuda" else 0)
        kernels.DECAY_KERNEL_DEVICES = (device,)
        got_s: list[Sampler] = []
        got = _roll(m, "fastar", "off", frames=12, out_sampler=got_s, params=SMALL["fastar"])
        assert calls[0] == 2 * 4 * 12, calls[0]       # 2 layers x (3 steps + commit) x 12 frames
        assert got_s[0].cache.pad == 0
    finally:
        kernels._decayed = plain
        kernels.DECAY_KERNEL_DEVICES = saved
    return max(float((a - b).abs().max()) for a, b in zip(ref, got))


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_tempcache_decay_in_kernel_equals_the_channel() -> None:
    assert worst_error("tempcache_decay_check") < 1e-4


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="the CUDA kernel's check")
def test_cuda_dense_in_kernel_decay_equals_the_channel() -> None:
    """Dense past its graphed range with the decay computed in the kernel gives the channel path's frames
    (float32, 1e-4), with and without the horizon; the channel is off there and the stats say triton."""
    m = _steep_decay_model().float().cuda()
    acts = [(("forward",), 0.0), (("turn_left",), 0.2), ((), -0.4), (("back", "run"), 0.0)]

    def roll(kernel: str, horizon: bool) -> tuple[list[torch.Tensor], Sampler]:
        s = Sampler(m, build_mode("dense", graph_frames=4, bucket_frames=2, decay_kernel=kernel), steps=2,
                    context_sigma=0.05, shift=2.0)
        s.reset(seed=3, prompt="night stone")
        if not horizon:
            s.cache.horizon = None
        out = [s.step(torch.tensor([make_action(*acts[i % len(acts)])], dtype=torch.float32, device="cuda"))
               for i in range(24)]
        return out, s
    for horizon in (False, True):
        ref, sc = roll("channel", horizon)
        got, st = roll("triton", horizon)
        assert sc.mode.stats()["decay_kernel"] == "channel"
        assert st.mode.stats()["decay_kernel"] == "triton" and st.cache.pad == 0
        assert (st.mode.stats()["horizon_skipped"] > 0.05) == horizon
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="the CUDA kernel's check")
@pytest.mark.parametrize("decay", [False, True])
def test_cuda_dense_triton_buckets_are_captured(decay: bool) -> None:
    """Dense by buckets on triton_decay, captured as whole-pass graphs over a graphed range longer than
    MAX_PRESIZE: the frames equal eager plain dense (1e-4), the graphs replay, the buckets behind the frame
    are dropped (graph_stale: at most the current bucket's two graphs, the pass and the commit, stay) and
    the channel is off."""
    from tests.test_graphs import _decay_model, _roll
    m = (_decay_model(torch.float32) if decay else random_model(torch.float32)).cuda()
    ref = _roll(m, "dense", "off", frames=14, params={"graph_frames": 0, "decay_kernel": "channel"})
    kept: list[Sampler] = []
    got = _roll(m, "dense", "cuda", frames=14, out_sampler=kept,
                params={"graph_frames": 300, "bucket_frames": 3, "bucket_kernel": "triton"})
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    s = kept[0]
    assert s.run.whole_replays > 0 and len(s.run.whole) <= 2 and s.cache.pad == 0


@pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available(), reason="needs triton; on a GPU the kernels run")
def test_kernels_compile_for_hopper() -> None:
    """With triton but no GPU (the interpreter runs Python, not the compiler): the attention kernels, with and
    without a decay, and the cache's fused write compile to PTX for sm_90, the H100's target, so a GPU run does
    not meet a compile error first."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from engine.attention import triton_decay as td

    def compile_(fn, types: dict[str, str], const: dict[str, object], warps: int) -> str:  # type: ignore[no-untyped-def]
        sig = {p.name: "constexpr" if p.name in const else types.get(p.name, "i32") for p in fn.params}
        src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}).asm["ptx"]
    ptrs = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*fp32", "LSE": "*fp32", "FRAME": "*i64",
            "SLOPE": "*fp32", "HZ": "*i32", "NOW": "*i64", "LEN": "*i64", "BIAS": "*i32", "qk_scale": "fp32"}
    # dense's decay and buckets (length on the device); a plain call with a host length and the bias channel
    for decay, bias, on_device in ((True, False, True), (False, False, True), (False, True, False)):
        types = {**ptrs, **({"BIAS": "*bf16"} if bias else {}), **({} if on_device else {"LEN": "i32"})}
        const = {"D": 64, "BLOCK_M": td.BLOCK_M, "BLOCK_N": td.BLOCK_N, "FLOOR": -1000.0, "PREC": "tf32",
                 "HAS_DECAY": decay, "HAS_BIAS": bias, "LEN_ON_DEVICE": on_device}
        assert ".entry" in compile_(td._decay_fwd, types, const, td.LAUNCH["num_warps"])
    assert ".entry" in compile_(td._combine, {"O": "*fp32", "LSE": "*fp32", "OUT": "*bf16"},
                                {"D": 64, "BLOCK_R": td.COMBINE_ROWS, "S_BLOCK": 32, "UNROLL": td.COMBINE_UNROLL},
                                td.COMBINE_WARPS)
    # the cache's fused scratch write (engine/cache_kernels.py), with the start on the host and on the device
    from engine import cache_kernels as ck
    for on_device in (False, True):
        types = {"KC": "*bf16", "VC": "*bf16", "BC": "*fp32", "KS": "*bf16", "VS": "*bf16",
                 "START": "*i64" if on_device else "*fp32"}
        const = {"D": 64, "DP": 64, "BLOCK": ck.BLOCK, "START_ON_DEVICE": on_device}
        assert ".entry" in compile_(ck._write_kv, types, const, 4)


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="the CUDA kernel's check")
def test_cuda_padded_attention_is_chosen_by_measurement(monkeypatch) -> None:
    """On bias-channel storage (TempCache's groups, a decay) the plain kernels on 72 channels and triton_split
    reading 64 channels plus the channel are both checked against the reference and timed; the faster runs,
    and agrees with the reference at a bf16 frame shape."""
    from engine.attention import kernels
    monkeypatch.setattr(kernels, "_choice", {})
    monkeypatch.setattr(kernels, "_timings", {})
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 6, 256, 64, device="cuda", generator=g).bfloat16()
    kp, vp = (torch.randn(1, 6, 8192, 72, device="cuda", generator=g).bfloat16() for _ in range(2))
    kp[..., 64] = torch.rand(1, 6, 8192, device="cuda", generator=g).bfloat16() * 2   # log(group size)-like
    kp[..., 65:] = 0
    vp[..., 64:] = 0
    out = kernels.padded_attention(q, kp, vp)
    timings = next(v for k, v in kernels._timings.items() if "padded" in k[3])
    assert set(timings) == {"bias_channel", "triton_split+channel"}, timings
    ref = kernels._reference(q, kp[..., :64], vp[..., :64], kp[..., 64].float(), 0.125)
    assert kernels.relative_error(out, ref) <= kernels.tolerance(torch.bfloat16)


def test_short_key_ranges_take_the_short_tile() -> None:
    """The bounded modes' ~34-frame calls take the tile measured fastest there; long ranges keep the long one."""
    from engine.attention import triton_decay as td
    assert td.tile(34 * 256) == td.SHORT_TILE and td.tile(td.SHORT_KEYS) == td.SHORT_TILE
    assert td.tile(td.SHORT_KEYS + 1) == (td.BLOCK_M, td.BLOCK_N, td.LAUNCH)
