"""Dense attention kernels, chosen per shape by measurement, with a per-key logit bias that never forces a
slow path.

Why measure: on Hopper, torch SDPA picks cuDNN by default, which is fast for long query blocks but ~6x slower
than the FlashAttention-2 backend for one 256-query frame against a long cache. So on CUDA the first call for a
shape bucket times every backend that accepts the inputs and keeps the fastest (near ties, within TIE, go to a
fixed order, so that timing noise between near-equal kernels does not change the frames); `kernel_name()` says
which one ran, and the benchmark reports it. On the CPU torch's own SDPA dispatch runs (its flash kernel
where it can, else math; `sdpa_name` says which), float64 included (the tests' reference).

Per-key bias (TempCache's log(group size)): the candidates are every plain kernel on extra-channel inputs and
the SDPA kernels that take a (B, H, 1, Lk) bias mask natively; the measurement picks among them, so a bias can
cost at most the difference to the best of those. Extra channel, q' = [q, 1], k' = [k, b / scale], so
q'.k' * scale = q.k * scale + b, with the head dim zero-padded to a multiple of 8 and the softmax scale passed
explicitly (else the kernel would scale by the padded dim). Any dense or variable-length kernel then carries
the bias with no mask argument.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
import torch.nn.functional as F

try:  # optional GPU kernels: used when importable, never required
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # pragma: no cover - depends on the machine
    _flash_attn_func = None

try:  # optional: flashinfer's single-request prefill kernel, one more candidate for the measurement
    from flashinfer import single_prefill_with_kv_cache as _fi_prefill  # type: ignore
except Exception:  # pragma: no cover - depends on the machine
    _fi_prefill = None

if TYPE_CHECKING:
    from engine.cache import KVCache

_last_kernel: str = "none"
_choice: dict[tuple, str] = {}
_timings: dict[tuple, dict[str, float | None]] = {}   # every candidate's measured ms per shape bucket (benchmark)
_pinned: dict[str, str] = {}    # shape-bucket name -> kernel to use without measuring (pin(): a recorded run's)
_pinned_from = ""               # where _pinned came from (for messages)


def kernel_name() -> str:
    """Name of the kernel the last dense call ran (for the HUD, stats and the benchmark)."""
    return _last_kernel


def bucket_name(key: tuple) -> str:
    """The name of a shape bucket in chosen_kernels(), kernel_timings() and pinned choices."""
    return f"q{key[0]}_kv{key[1]}_d{key[2]}_{key[3]}"


def chosen_kernels() -> dict[str, str]:
    """Every shape bucket measured (or pinned) so far and the kernel chosen for it."""
    return {bucket_name(k): v for k, v in _choice.items()}


def pin(choices: dict[str, str], source: str) -> None:
    """Use these kernels for these shape buckets instead of measuring (a recorded run's `kernels.chosen`, so a
    later run on another machine of the same kind repeats its frames: the candidates differ in rounding, and
    timing can pick differently from one machine or process to the next, docs/BENCHMARKS.md session 23). A
    bucket not listed is measured as usual and printed. Replaces earlier pins and forgets the choices made so
    far (unless the same choices are pinned again: every env of a benchmark pins them), so call it before the
    first attention call. pin({}, "") unpins."""
    global _pinned, _pinned_from
    if choices == _pinned and source == _pinned_from:
        return
    bad = {k: v for k, v in choices.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ValueError(f"kernel choices from {source}: expected shape-bucket name -> kernel name strings, got {bad}")
    _pinned, _pinned_from = dict(choices), source
    _choice.clear()
    _timings.clear()


def pinned_source() -> str | None:
    """Where the pinned choices came from, or None when every choice is measured."""
    return _pinned_from if _pinned else None


def _take_pinned(key: tuple, allowed: "Iterable[str]") -> str | None:
    """The pinned kernel of this bucket (recorded as chosen, with no timings), None if none is pinned; a pinned
    name that is no candidate here is an error naming the bucket, the file and the candidates."""
    name = bucket_name(key)
    if not _pinned:
        return None
    kernel = _pinned.get(name)
    if kernel is None:
        print(f"kernels: {name} is not among the pinned choices ({_pinned_from}): measured", flush=True)
        return None
    allowed = list(allowed)
    if kernel not in allowed:
        raise ValueError(f"kernel choices from {_pinned_from}: {name} = {kernel!r} is not a candidate on this "
                         f"machine; candidates: {allowed}")
    _choice[key], _timings[key] = kernel, {f"{kernel} (pinned)": None}
    return kernel


def load_choices(path: str | Path) -> dict[str, str]:
    """Kernel choices from a file: a bench.json or bench.json.gz (its `kernels.chosen`), or a JSON object of
    shape-bucket name -> kernel. Errors name the file and what was expected."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"kernel_choices: {p} does not exist (expected a bench.json[.gz] or a JSON object "
                                f"of shape bucket -> kernel)")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError) as e:
        raise ValueError(f"kernel_choices: {p} is not JSON (or gzipped JSON): {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("kernels"), dict) and "chosen" in doc["kernels"]:
        doc = doc["kernels"]["chosen"]
    if not isinstance(doc, dict) or not doc or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise ValueError(f"kernel_choices: {p} holds no kernel choices (expected `kernels.chosen` of a bench.json, "
                         f"or an object like {{\"q256_kv4096_d72_bfloat16\": \"sdpa_flash\"}})")
    return doc


def with_bias_channel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold a per-key bias (B, H, Lk) into one extra q/k channel; pad q, k, v to a multiple of 8 channels."""
    D = q.shape[-1]
    Dp = (D + 1 + 7) // 8 * 8
    qp = F.pad(q, (0, Dp - D))
    kp = F.pad(k, (0, Dp - D))
    qp[..., D] = 1.0
    kp[..., D] = (bias / scale).to(k.dtype)
    vp = F.pad(v, (0, Dp - D))
    return qp, kp, vp


# torch's SDPA backend numbers (torch.nn.attention.SDPBackend), as torch._fused_sdp_choice returns them
_SDP_BACKENDS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn"}


def sdpa_name(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, where: str) -> str:
    """The name of the kernel torch's own SDPA dispatch runs for this call (on the CPU it takes its flash kernel
    where the shape, dtype and mask allow, else math; session 24 found the label had said "math" while flash ran:
    at 256 queries x 3328 keys, 6 heads, float32, 2 cores, 9-11 ms against math's 24), e.g.
    "sdpa_flash_cpu"; "sdpa_<where>" where torch does not say."""
    try:
        choice = int(torch._fused_sdp_choice(q, k, v, mask, 0.0, False))
    except Exception:   # a private helper: a torch without it still runs the call, it is only not named
        return f"sdpa_{where}"
    return f"sdpa_{_SDP_BACKENDS.get(choice, 'unknown')}_{where}"


def note_kernel(name: str) -> None:
    """Record a kernel that ran outside `attention` (masked reference paths), for `kernel_name()`."""
    global _last_kernel
    _last_kernel = name


Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


def _sdpa_backend(backend: "torch.nn.attention.SDPBackend") -> Callable[..., torch.Tensor]:
    from torch.nn.attention import sdpa_kernel

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return run


def _sdpa_mask(backend: "torch.nn.attention.SDPBackend") -> Fn:
    """Bias as a broadcast (B, H, 1, Lk) mask in q's dtype (cuDNN is silently wrong with an fp32 mask on bf16)."""
    from torch.nn.attention import sdpa_kernel

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: "torch.Tensor | None", scale: float) -> torch.Tensor:
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, :, None, :].to(q.dtype), scale=scale)
    return run


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    # flash_attn takes (B, L, H, D)
    o = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
    return o.transpose(1, 2)


def _flashinfer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One request (B = 1): q as (n, H, D), the cache read in place as HND (H, L, D). A shape or layout it
    refuses raises, and the measurement records the candidate as failed (kernel_timings)."""
    if q.shape[0] != 1:
        raise ValueError("flashinfer single prefill: batch 1 only")
    o = _fi_prefill(q[0].transpose(0, 1).contiguous(), k[0], v[0], causal=False, kv_layout="HND", sm_scale=scale)
    return o.transpose(0, 1)[None]


def _triton_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """triton_decay with no decay: the keys split into chunks sized for the SM count (flash-decoding; torch's
    FA2 splits by its own heuristic); bias (B, H, Lk) read in place. Scale 1/sqrt(D) only."""
    from engine.attention import triton_decay
    D, n, L = q.shape[-1], q.shape[2], k.shape[2]
    if abs(scale * math.sqrt(D) - 1.0) > 1e-6:
        raise ValueError(f"triton_split: softmax scale 1/sqrt({D}) only, got {scale}")
    # the kernel attends to slots [0, length + n): all of k
    return triton_decay.decay_attention(q, k, v, None, None, None, None, L - n, n, bias=bias)


_triton: list[bool] = []


def _triton_runs() -> bool:
    """Whether triton_split can run on CUDA here (asked once: the answer does not change within a process)."""
    if not _triton:
        from engine.attention import triton_decay
        _triton.append(triton_decay.available(torch.device("cuda")))
    return _triton[0]


def _plain() -> dict[str, Callable[..., torch.Tensor]]:
    from torch.nn.attention import SDPBackend
    c: dict[str, Callable[..., torch.Tensor]] = {
        "sdpa_flash": _sdpa_backend(SDPBackend.FLASH_ATTENTION),
        "sdpa_cudnn": _sdpa_backend(SDPBackend.CUDNN_ATTENTION),
        "sdpa_efficient": _sdpa_backend(SDPBackend.EFFICIENT_ATTENTION),
    }
    if _flash_attn_func is not None:
        c["flash_attn"] = _flash_attn
    if _fi_prefill is not None:
        c["flashinfer"] = _flashinfer
    if _triton_runs():
        c["triton_split"] = _triton_split
    return c


_cands: dict[bool, dict[str, Fn]] = {}


def _candidates(biased: bool) -> dict[str, Fn]:
    """The candidate table, built once per bias flag (building it is Python work a per-call path cannot pay)."""
    if biased not in _cands:
        _cands[biased] = _make_candidates(biased)
    return _cands[biased]


def _make_candidates(biased: bool) -> dict[str, Fn]:
    """Every way to run the call on CUDA. With a bias: each plain kernel on the extra-channel inputs, and the
    kernels that take a bias mask natively, so the measurement, not the bias, picks the kernel."""
    from torch.nn.attention import SDPBackend
    plain = _plain()
    if not biased:
        return {name: (lambda f: lambda q, k, v, b, s: f(q, k, v, s))(f) for name, f in plain.items()}

    def chan(f: Callable[..., torch.Tensor]) -> Fn:
        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: "torch.Tensor | None", s: float) -> torch.Tensor:
            D = q.shape[-1]
            qp, kp, vp = with_bias_channel(q, k, v, b, s)  # type: ignore[arg-type]
            return f(qp, kp, vp, s)[..., :D]
        return run
    c: dict[str, Fn] = {name + "+bias_channel": chan(f) for name, f in plain.items() if f is not _triton_split}
    c["sdpa_efficient+bias_mask"] = _sdpa_mask(SDPBackend.EFFICIENT_ATTENTION)
    c["sdpa_cudnn+bias_mask"] = _sdpa_mask(SDPBackend.CUDNN_ATTENTION)
    if "triton_split" in plain:   # the bias read per key by the kernel itself: 64 channels
        c["triton_split+bias"] = lambda q, k, v, b, s: _triton_split(q, k, v, s, bias=b)
    return c


_SLEEP_CYCLES = 10_000_000   # ~5 ms of GPU clock: longer than the host needs to queue one round of calls


def _time(fn: Callable[[], torch.Tensor], reps: int = 10, rounds: int = 3) -> float:
    """GPU ms per call: the best of `rounds` rounds of `reps` back-to-back calls, queued behind a GPU sleep.
    Why the sleep: timed back to back, a ~30 us kernel measured 80-90 us, the host's launch overhead (Python,
    SDPA dispatch, the bias-channel padding's extra kernels), and the choice between FA2 and cuDNN then
    followed host noise: one H100 run picked cuDNN for the window's shape by 0.083 against 0.092 ms and
    played at 165 fps, the next picked FA2 and played at 246. With the GPU held by torch.cuda._sleep while
    the host queues the round, the events time the kernels alone, which is what a CUDA-graph replay runs."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(_SLEEP_CYCLES)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / reps)
    return best


def _bucket(q: torch.Tensor, k: torch.Tensor, biased: bool) -> tuple:
    lk = 1 << max(0, math.ceil(math.log2(max(k.shape[2], 1))))  # power-of-two bucket of the key count
    return (q.shape[2], lk, q.shape[-1], str(q.dtype).removeprefix("torch.") + ("_bias" if biased else ""))


_tails: dict[tuple, torch.Tensor] = {}


def _q_tail(width: int, scale: float, q: torch.Tensor) -> torch.Tensor:
    """[1/scale, 0, ...] (width,) in q's dtype and device, made once (a per-call tensor would be a copy)."""
    key = (width, scale, q.dtype, q.device)
    if key not in _tails:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():   # captured, it never ran
            raise RuntimeError("kernels: q padding first built inside a CUDA graph capture; run a pass eagerly first")
        t = torch.zeros(width, dtype=q.dtype, device=q.device)
        t[0] = 1.0 / scale
        _tails[key] = t
    return _tails[key]


def cache_attention(q: torch.Tensor, cache: "KVCache", layer: int, end: int, biased: bool,
                    committed_fresh: bool = False, runs: list[tuple[int, int, int]] | None = None,
                    kernel_decay: bool = False, in_order: bool = False) -> torch.Tensor:
    """q (B, H, n, D) against cache slots [0, end) of `layer`, with their biases when `biased`. A cache with the
    bias channel on (KVCache.set_bias_channel) runs one plain kernel on the padded storage, q padded as
    [q, 1/scale, 0...]: no mask, no copy of the cache (a mask kernel measured 0.23 ms against 0.06 ms for
    FA2 at 16.6k keys on the H100; the old per-call pad copied the whole cache). committed_fresh: the mode
    changes committed slots only when committing, so their channel is the frame's refresh (KVCache.padded).
    runs: [(h0, h1, start)], heads [h0, h1) attend to slots [start, end) only (one call per run, the outputs
    joined over heads); None: every head attends to [0, end) in one call. kernel_decay: a decayed cache without
    the channel adds the decay inside triton_decay's kernel where it can run (decay_in_kernel; the TempCache
    modes ask for it, dense has its own kernel path and keeps `decay_kernel: channel` meaning the mask path).
    in_order: the layer's slots hold consecutive frames in order, the newest last, and no bias but the decay
    (a growing cache its mode filled itself): the decay kernel then skips, per head, the slots past the decay's
    horizon (KVCache.horizon_starts), exact to float rounding, as dense does."""
    if kernel_decay and cache.decay is not None and not cache.pad and runs is None and decay_in_kernel(cache):
        return _decayed(q, cache, layer, end, biased, cache.horizon_starts(layer, q.shape[2]) if in_order else None)
    biased = biased or cache.decay is not None   # temporal decay: every slot carries a bias
    if biased and cache.pad:
        kp, vp = cache.padded(layer, end, committed_fresh)
        if runs is None:
            return padded_attention(q, kp, vp)
        return torch.cat([padded_attention(q[:, h0:h1], kp[:, h0:h1, s:], vp[:, h0:h1, s:]) for h0, h1, s in runs], 1)
    K, V, _ = cache.view(layer, end)
    bias = cache.attn_bias(layer, end) if biased else None
    if runs is None:
        return attention(q, K, V, bias=bias)
    return torch.cat([attention(q[:, h0:h1], K[:, h0:h1, s:], V[:, h0:h1, s:],
                                bias=None if bias is None else bias[:, h0:h1, s:]) for h0, h1, s in runs], 1)


DECAY_KERNEL_DEVICES = ("cuda",)   # where cache_attention computes a decay in the kernel (tests add the interpreter's)


def decay_in_kernel(cache: "KVCache") -> bool:
    """Whether cache_attention can add the cache's temporal decay inside triton_decay's kernel (with the bias
    array besides), so that a decayed cache needs no bias channel: 64 channels read, nothing refreshed per frame.
    CUDA (DECAY_KERNEL_DEVICES) with triton, a bf16/fp16/fp32 cache (not float64, the tests' reference)."""
    from engine.attention import triton_decay
    return cache.decay is not None and cache.device.type in DECAY_KERNEL_DEVICES \
        and cache.dtype in (torch.bfloat16, torch.float16, torch.float32) and triton_decay.available(cache.device)


def _decayed(q: torch.Tensor, cache: "KVCache", layer: int, end: int, biased: bool,
             horizon: "tuple[torch.Tensor, list[int]] | None" = None) -> torch.Tensor:
    """q (B, H, n, D) against slots [0, end) = the committed slots and the n scratch slots after them, the decay
    max(slope x (frame - now), floor) added in the kernel over the committed ones (KVCache.attn_bias's
    definition), and the bias array over all of them when `biased` (TempCache's group weights). horizon: per
    head the horizon and first slot read (KVCache.horizon_starts) for slots in frame order, or None."""
    from engine.attention import triton_decay
    global _last_kernel
    n, length = q.shape[2], cache.length[layer]
    if end != length + n:
        raise ValueError(f"cache_attention: the decay kernel reads the committed slots and the frame's {n}, "
                         f"[0, {length + n}), asked for [0, {end})")
    K, V, _ = cache.view(layer, end)
    assert cache.decay is not None
    _last_kernel = ("triton_split+bias+decay" if biased else "triton_split+decay") + ("+horizon" if horizon else "")
    return triton_decay.decay_attention(q, K, V, cache.frame[layer, :end], cache.now, cache.decay[layer].float(),
                                        None if horizon is None else horizon[0], length, n,
                                        starts=None if horizon is None else horizon[1],
                                        bias=cache.bias[layer, :, :, :end] if biased else None)


def padded_attention(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor) -> torch.Tensor:
    """q (B, H, n, D) against bias-channel storage kp, vp (B, H, L, Dp) (KVCache.padded): q padded as
    [q, 1/scale, 0...], so a plain kernel adds each key's channel-D bias to its logit; or, where triton runs
    and the measurement finds it faster, triton_split reading 64 channels and the channel as a per-key bias,
    both in place. Returns (B, H, n, D)."""
    global _last_kernel
    if q.device.type == "cuda" and q.dtype != torch.float64 and _triton_runs():
        key = _tag_key(q, kp.shape[2], "padded")
        if key not in _choice and _take_pinned(key, _PADDED) is None:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"attention shape {key} first seen inside a CUDA graph capture: run the pass "
                                   f"eagerly once first")
            D = q.shape[-1]
            ref = lambda: _reference(q, kp[..., :D], vp[..., :D], kp[..., D].float(), 1.0 / math.sqrt(D))  # noqa: E731
            _choice[key], _timings[key] = choose(_PADDED, q, kp, vp, None, 1.0 / math.sqrt(D), reference=ref)
        if _choice[key] == "triton_split+channel":
            out = _PADDED[_choice[key]](q, kp, vp, None, 0.0)
            _last_kernel = "triton_split+channel"
            return out
    return _padded_plain(q, kp, vp)


def _padded_plain(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor) -> torch.Tensor:
    """padded_attention on the plain kernels: q padded as [q, 1/scale, 0...] (their choice is attention's)."""
    D, Dp = q.shape[-1], kp.shape[-1]
    scale = 1.0 / math.sqrt(D)
    qp = torch.cat([q, _q_tail(Dp - D, scale, q).expand(*q.shape[:-1], Dp - D)], -1)   # one kernel
    return attention(qp, kp, vp, scale=scale)[..., :D]


def _padded_triton(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor) -> torch.Tensor:
    D = q.shape[-1]
    return _triton_split(q, kp[..., :D], vp[..., :D], 1.0 / math.sqrt(D), bias=kp[..., D])


_PADDED: dict[str, Fn] = {"bias_channel": lambda q, kp, vp, b, s: _padded_plain(q, kp, vp),
                          "triton_split+channel": lambda q, kp, vp, b, s: _padded_triton(q, kp, vp)}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v.  q (B, H, Nq, D); k, v (B, H, Lk, D); bias None or (B, H, Lk).

    Returns (B, H, Nq, D). Non-causal: callers pass exactly the keys each query may see."""
    global _last_kernel
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if q.device.type != "cuda" or q.dtype == torch.float64:   # float64: the reference path (tests), any device
        mask = None if bias is None else bias[:, :, None, :].to(q.dtype)
        _last_kernel = sdpa_name(q, k, v, mask, "cpu" if q.device.type != "cuda" else "float64")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    biased = bias is not None
    key = _bucket(q, k, biased)
    cands = _candidates(biased)
    if key not in _choice and _take_pinned(key, cands) is None:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"attention shape {key} first seen inside a CUDA graph capture: its kernel is chosen "
                               f"by timing, which cannot be captured; run the pass eagerly once first")
        _choice[key], _timings[key] = choose(cands, q, k, v, bias, scale)
    _last_kernel = _choice[key]
    return cands[_last_kernel](q, k, v, bias, scale)


def choose(cands: dict[str, Fn], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           scale: float, timer: Callable[[Callable[[], torch.Tensor]], float] | None = None,
           reference: Callable[[], torch.Tensor] | None = None) -> tuple[str, dict[str, float | None]]:
    """The fastest candidate that computes the call (`pick`: a near tie goes to the earlier in `cands`), and
    every candidate's ms (None: failed or wrong).
    Each candidate is first checked against the float32 reference: a kernel that runs but computes
    something else is never chosen; the bound follows the best candidate's error, so the inputs' own
    rounding never rules out every kernel. timer: GPU ms of a call (default _time, CUDA). reference: the
    float32 result when the candidates' inputs are not plain q, k, v, bias (padded_attention's storage)."""
    timer = _time if timer is None else timer
    times: dict[str, float] = {}
    times_failed: list[str] = []
    errs: dict[str, float] = {}
    ref = _reference(q, k, v, bias, scale) if reference is None else reference()
    for name, fn in cands.items():
        try:
            errs[name] = relative_error(fn(q, k, v, bias, scale), ref)
        except Exception:   # backend does not accept this shape/dtype/mask (all listed in kernel_timings)
            times_failed.append(name)
    del ref
    bound = max(tolerance(q.dtype), 3 * min((e for e in errs.values() if math.isfinite(e)), default=0.0))
    wrong = {n: e for n, e in errs.items() if not e <= bound}   # NaN too
    for name in errs:
        if name not in wrong:
            try:
                times[name] = timer(lambda: cands[name](q, k, v, bias, scale))
            except Exception:
                times_failed.append(name)
    if not times:
        raise RuntimeError(f"no attention kernel accepts q{tuple(q.shape)} k{tuple(k.shape)} {q.dtype} "
                           f"(failed: {times_failed}; wrong: {wrong})")
    return pick(times), {**times, **{f"{n} (failed)": None for n in times_failed},
                         **{f"{n} (wrong: relative error {e:.2g})": None for n, e in wrong.items()}}


# Candidates whose times are within TIE of the fastest count as tied; a tie goes to the first of them in the
# candidate table's fixed order. Why: candidates differ in rounding, so the choice decides the frames, and two
# kernels within a few percent (the window's 72-channel bias_channel and 64-channel triton_split+channel on the
# H100: 0.0304 and 0.0304 ms at 8K keys, 0.0421 and 0.0416 at 16K) were picked differently by timing noise in
# different processes, and the window's frames with them (docs/BENCHMARKS.md, session 23).
TIE = 0.10


# How close to the tie margin a measured ratio must lie for the choice to be reported as fragile (near_ties).
# Measured on the H100 (docs/BENCHMARKS.md, session 24): the 16-key prompt call's sdpa_cudnn against the
# fastest, sdpa_efficient, at 1.106x on one machine and 1.087x on another, which chose it.
NEAR_TIE = 0.03


def pick(times: dict[str, float | None], tie: float = TIE) -> str:
    """The first candidate, in the dict's order, whose ms is within `tie` of the fastest (None: not timed)."""
    timed = {n: t for n, t in times.items() if t is not None}
    best = min(timed.values())
    return next(n for n, t in timed.items() if t <= best * (1.0 + tie))


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               scale: float) -> torch.Tensor:
    """The call in float32 (bias as a float32 mask): what every candidate must agree with before it is timed."""
    mask = None if bias is None else bias[:, :, None, :].float()
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (one host read: measurement time only)."""
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def tolerance(dtype: torch.dtype) -> float:
    """Relative error against the float32 reference that a candidate may always show. Measured on the CPU
    at a frame's shape (256 queries, 8192 keys, head dim 64): bf16 inputs ~0.7e-2, the bias channel in bf16
    with TempCache-sized biases ~1e-2, the padded head dim's softmax scale (1/sqrt(72) for 1/8) 0.10-0.13,
    a wrong layout ~1."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 4e-2


def _tag_key(q: torch.Tensor, keys: int, tag: str) -> tuple:
    lk = 1 << max(0, math.ceil(math.log2(max(keys, 1))))
    return (q.shape[2], lk, q.shape[-1], str(q.dtype).removeprefix("torch.") + "_" + tag)


def record_choice(q: torch.Tensor, keys: int, tag: str, choice: str, times: dict[str, float | None]) -> None:
    """A choice made by measurement outside `attention` (dense's decay path and buckets:
    engine/attention/dense.py), listed with the others by chosen_kernels() and kernel_timings(); `tag` names
    what was chosen between."""
    key = _tag_key(q, keys, tag)
    _choice[key], _timings[key] = choice, times


def recorded_choice(q: torch.Tensor, keys: int, tag: str) -> str | None:
    """The choice record_choice kept for this shape and tag, if any: a later env of the same process reuses it
    rather than timing again, as `attention` does, so that two rollouts with one seed draw the same frames.
    A pinned choice (pin()) counts as recorded."""
    key = _tag_key(q, keys, tag)
    if key in _choice:
        return _choice[key]
    return _take_pinned(key, ("channel", "triton_decay"))


def kernel_timings() -> dict[str, dict[str, float | None]]:
    """Measured ms of every candidate per shape bucket (what the choice was made from), for the benchmark."""
    return {bucket_name(k): v for k, v in _timings.items()}


def near_ties(tie: float = TIE, near: float = NEAR_TIE) -> dict[str, dict[str, Any]]:
    """The measured choices that another machine of the same kind may make differently (`pick`'s rule): a
    candidate ahead of the chosen one in the order, at a ratio to the fastest just above 1 + tie (elsewhere it
    may tie and win), or the chosen one itself just inside the tie, not the fastest (elsewhere it may fall
    out). {bucket: {"chosen": kernel, "ratios": {candidate: ratio to the fastest}}}; pinned buckets (no
    timings) never are. Runs whose frames must match across machines should pin these (kernel_choices)."""
    out: dict[str, dict[str, Any]] = {}
    for key, times in _timings.items():
        timed = {n: t for n, t in times.items() if t is not None}
        chosen = _choice.get(key)
        if len(timed) < 2 or chosen not in timed:
            continue
        best = min(timed.values())
        names = list(timed)
        ratios: dict[str, float] = {}
        for i, name in enumerate(names):
            r = timed[name] / best
            ahead = i < names.index(chosen) and 1.0 + tie < r <= 1.0 + tie + near
            leaving = name == chosen and r > 1.0 and r >= 1.0 + tie - near
            if ahead or leaving:
                ratios[name] = round(r, 4)
        if ratios:
            out[bucket_name(key)] = {"chosen": chosen, "ratios": ratios}
    return out
