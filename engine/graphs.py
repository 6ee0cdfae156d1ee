"""CUDA graphs for the per-frame path: the DiT pass in pieces between its attention calls, and the decoder.

Why: one 18M-parameter DiT pass over 256 tokens is a few hundred small kernels; eagerly, a frame (4 steps +
commit + decode) was bound by ~3,500 kernel launches with the GPU idle most of the time (docs/MODEL.md, Speed).
A CUDA graph replays a captured kernel sequence with one launch.

Why in pieces: the attention modes are the engine's point and stay free to do what a graph cannot hold: a
dense cache grows every frame (new shapes), the window's ring moves (new addresses), kernels.attention times
candidate kernels on a new shape, a mode can be switched at run time, recall is measured every Nth frame. So
`GraphedPass` cuts the pass at every attention call (self and cross): each piece between two calls is one graph
over static buffers, and the attention call runs eagerly in between, reading the q/k/v the previous graph
wrote and leaving its output in a static buffer the next graph reads. Nothing about the mode is captured, so a
mode switch, a reset or a new prompt never invalidates a graph. Per pass: depth + cross blocks + 1 graph
launches plus the attention calls (dense past its graphed range, and every mode while its shapes still change).

Whole-pass graphs: where the mode says its calls can be captured (AttentionMode.graph_key: fixed shapes and
addresses, no sync; TempCache-only fastar and tempcache after their first frame, the window once its ring is full,
dense by buckets of frames at short context), the pass with its attention calls is captured as one graph per key
(for fastar: denoising pass and commit pass). The mode's host bookkeeping runs once at capture and through
`graph_replayed` after each replay; host values the calls read (the frame index) go through `graph_inputs`. Each
whole-pass graph has its own memory pool (they are not replayed in capture order) and is keyed also by the mode
object and the cache's tensor addresses, so a mode switch or a cache reallocation can never replay a stale graph;
a reallocation drops them.

Lifecycle of each piece (`Graphed`): the first `warmup` calls run eagerly (lazy cuBLAS/cuDNN initialisation
must not happen inside a capture), the next call captures and then replays (a capture records, it does not
run), every later call replays. All pieces share one memory pool; that is safe because they are always replayed
in the order they were captured, and the static outputs a later piece reads stay referenced.

On the CPU (or with capture=False) the pieces run eagerly through the same buffers: the tests check there that
the pieced pass equals `CausalDiT.run` exactly; tests/test_graphs.py checks the captured pass on CUDA.

Compiled pieces (`compile=True`, `engine.compile`): inside a graph the pass is still ~25 kernels a block, most
of them elementwise (layer norm, modulation, q/k norm and rotary, casts, GELU, gated residuals) and each a few
microseconds on a 256-token frame. torch.compile (inductor, no cudagraphs of its own) fuses them into a few
Triton kernels per piece; the pieces are then captured as before. Compiled once per piece and block at the
first (eager) calls, so the first frames take ~a minute; kernels land in inductor's on-disk cache for the next run.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Any, Callable, Hashable, Iterator

import torch

from engine.attention.base import FrameAttention
from engine.compiled import compile_static
from engine.model.dit import Attn, CausalDiT, Rope

Buf = dict[str, torch.Tensor]


@contextlib.contextmanager
def capturing(g: "torch.cuda.CUDAGraph", pool: Any) -> Iterator[None]:
    """torch.cuda.graph with Python's cyclic garbage collector held off for the capture. Why: graph runners
    sit in reference cycles (pieces close over their owner), so an old sampler's graphs are freed only by the
    cyclic collector, which may run at any allocation; destroying a graph while a stream captures invalidates
    the capture (cudaErrorStreamCaptureInvalidated, "operation not permitted when stream is capturing"). Seen
    on the H100 as a flaky failure of tests/test_graphs.py::test_cuda_rollouts_are_deterministic when the
    first rollout's graphs were collected during the second rollout's capture. torch.cuda.graph collects
    once before it begins; this keeps the collector off until the capture ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(g, pool=pool, capture_error_mode="thread_local"):
            yield
    finally:
        if was:
            gc.enable()


class Graphed:
    """fn() -> Any over tensors whose addresses never change, replayed as a CUDA graph after `warmup` eager
    calls (capture=False: always eager)."""

    def __init__(self, fn: Callable[[], Any], pool: Any, capture: bool, warmup: int = 2) -> None:
        self.fn, self.pool, self.capture, self.warmup = fn, pool, capture, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: Any = None

    def __call__(self) -> Any:
        if self.graph is not None:
            self.graph.replay()
            return self.out
        self.calls += 1
        if not self.capture or self.calls <= self.warmup:
            self.out = self.fn()
            return self.out
        g = torch.cuda.CUDAGraph()
        with capturing(g, self.pool):
            self.out = self.fn()
        self.graph = g
        g.replay()
        return self.out


def compile_piece(fn: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile for a piece that a CUDA graph will capture: no graph breaks, static shapes, and no
    cudagraphs of inductor's own (ours capture the result). Pieces of different blocks share code objects and
    differ in the module they close over, so dynamo keeps one entry per block: the recompile limit is raised
    to hold a deep model's worth."""
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    return compile_static(fn, fullgraph=True)


def _pool(capture: bool) -> Any:
    return torch.cuda.graph_pool_handle() if capture else None


class GraphedPass:
    """`CausalDiT.run` for one frame (T = 1) as graphs between eager attention calls (module docstring).

    Call with the same arguments as `dit.run`; x, c and rope are copied into static buffers (one copy each),
    the output v is a static buffer overwritten by the next call (use it before calling again)."""

    def __init__(self, dit: CausalDiT, batch: int, latent_ch: int, latent_size: int, capture: bool,
                 compile: bool = False) -> None:
        self.dit, self.capture, self.compiled = dit, capture, compile
        dev, dt = dit.out.weight.device, dit.dtype
        D, H, Dh, N = dit.cfg.width, dit.cfg.heads, dit.cfg.head_dim, dit.tokens_per_frame
        rdt = torch.float64 if dt == torch.float64 else torch.float32
        self.x = torch.zeros(batch, 1, latent_ch, latent_size, latent_size, device=dev, dtype=dt)
        self.c = torch.zeros(batch, 1, D, device=dev, dtype=dt)
        rh = H if dit.rotary.per_head else 1                                  # per-head rotary (Rotary.forward)
        self.rope = (torch.zeros(batch, N, 1, rh, Dh, device=dev, dtype=rdt),
                     torch.zeros(batch, N, 1, rh, Dh, device=dev, dtype=rdt))
        # the last attention call's output, (B, H, N, Dh) over (B, N, H, Dh) memory: the output projection reads it
        # as (B, N, H Dh) without a transpose kernel, and FA2's outputs (and triton_decay's) come in that layout
        self.o = torch.zeros(batch, N, H, Dh, device=dev, dtype=dt).transpose(1, 2)
        self.buf: dict[str, Any] = {}       # what the last piece run or replayed wrote (graph pool memory)
        pool = _pool(capture)
        self.calls: list[tuple[str, int]] = []   # the attention call after each piece but the last
        pieces: list[Callable[[], Buf]] = [self._first]
        for i, blk in enumerate(dit.blocks):
            self.calls.append(("self", i))
            if blk.cross:
                pieces.append(self._cross_piece(i))
                self.calls.append(("cross", i))
            pieces.append(self._after_piece(i))
        if compile:
            pieces = [compile_piece(p) for p in pieces]
        self.pieces = [Graphed(p, pool, capture) for p in pieces]
        # whole-pass graphs: key -> (graph, its output), for the mode object held in _mode
        self.whole: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.seen: dict[Hashable, int] = {}
        self._mode: Any = None
        self._ptrs: tuple[int, ...] = ()
        self._ckv_src: Any = None
        self._rope_src: Any = None
        self.ckv: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self.whole_replays = 0

    # ---- the pieces: each reads self.buf (the earlier pieces' outputs) and the static inputs (self.x, self.c,
    # self.rope, self.o) and returns its own outputs as a dict, which the caller puts into self.buf. A replayed
    # graph returns the tensors it wrote (those of its capture), so self.buf always names what was just computed.
    def _first(self) -> Buf:
        tok, mods = self.dit.embed(self.x, self.c)
        return {"tok": tok, "mods": mods, **self._qkv(0, tok, mods)}

    def _qkv(self, layer: int, tok: torch.Tensor, mods: torch.Tensor) -> Buf:
        q, k, v = self.dit.blocks[layer].self_qkv(tok, mods[layer], self.rope)
        return {"q": q, "k": k, "v": v}

    def _cross_piece(self, layer: int) -> Callable[[], Buf]:
        blk = self.dit.blocks[layer]

        def piece() -> Buf:
            tok = blk.after_self(self.buf["tok"], self.o, self.buf["mods"][layer])
            return {"tok": tok, "cq": blk.cross_q(tok)}
        return piece

    def _after_piece(self, layer: int) -> Callable[[], Buf]:
        blk = self.dit.blocks[layer]
        last = layer == len(self.dit.blocks) - 1

        def piece() -> Buf:
            mods = self.buf["mods"]
            tok = self.buf["tok"]
            tok = blk.after_cross(tok, self.o) if blk.cross else blk.after_self(tok, self.o, mods[layer])
            tok = blk.mlp_part(tok, mods[layer])
            if last:
                return {"tok": tok, "out": self.dit.head(tok, self.c, self.x.shape)}
            return {"tok": tok, **self._qkv(layer + 1, tok, mods)}
        return piece

    # ---- one pass -----------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, c: torch.Tensor, rope: Rope,
                 ckv: list[tuple[torch.Tensor, torch.Tensor] | None], attn: Attn) -> torch.Tensor:
        """x (B, 1, C, h, w) model dtype, c (B, 1, D), rope from dit.rope -> v (B, 1, C, h, w) (static)."""
        self.x.copy_(x)
        self.c.copy_(c)
        if rope is not self._rope_src:   # rotary changes per frame, not per pass
            self.rope[0].copy_(rope[0])
            self.rope[1].copy_(rope[1])
            self._rope_src = rope
        self._bind_prompt(ckv)
        key = self._whole_key(attn)
        if key is None:
            return self._run_pieces(attn, [p.__call__ for p in self.pieces])
        fa: FrameAttention = attn  # type: ignore[assignment]
        fa.mode.graph_inputs(fa.info)
        if key in self.whole:
            g, out = self.whole[key]
            g.replay()
            fa.mode.graph_replayed(fa.info)
            self.whole_replays += 1
            return out
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] == 1:   # once eagerly with this key: kernel choices and lazy state happen outside capture
            return self._run_pieces(attn, [p.__call__ for p in self.pieces])
        for old in [k for k in self.whole if fa.mode.graph_stale(k[0], key[0])]:
            del self.whole[old]   # a graph the mode will not replay again: its pool is freed (before the capture)
        g = torch.cuda.CUDAGraph()
        with capturing(g, torch.cuda.graph_pool_handle()):
            out = self._run_pieces(attn, [p.fn for p in self.pieces])
        self.whole[key] = (g, out)
        g.replay()
        return out

    def _bind_prompt(self, ckv: list[tuple[torch.Tensor, torch.Tensor] | None]) -> None:
        """The prompt's cross K/V into static buffers (a whole-pass graph reads them by address); once per
        prompt context (the Sampler makes a new list at every reset)."""
        if ckv is self._ckv_src:
            return
        if len(self.ckv) != len(ckv) or any((a is None) != (b is None) or (a is not None and a[0].shape != b[0].shape)
                                            for a, b in zip(self.ckv, ckv)):
            self.ckv = [None if kv is None else (kv[0].clone(), kv[1].clone()) for kv in ckv]
            self.whole.clear()
        else:
            for dst, src in zip(self.ckv, ckv):
                if dst is not None and src is not None:
                    dst[0].copy_(src[0])
                    dst[1].copy_(src[1])
        self._ckv_src = ckv

    def _whole_key(self, attn: Attn) -> Hashable | None:
        if not self.capture or not isinstance(attn, FrameAttention):
            return None
        key = attn.mode.graph_key(attn.info, attn.cache)
        if key is None:
            return None
        if attn.mode is not self._mode:   # a switched-in mode: its graphs would read another mode's tensors
            self.whole.clear()
            self.seen.clear()
            self._mode = attn.mode
        cache = attn.cache
        ptrs = tuple(t.data_ptr() for t in (cache.k, cache.v, cache.bias, cache.frame, *cache.slot_data.values()))
        if ptrs != self._ptrs:   # the cache was reallocated (a dense cache grew): no earlier graph can replay
            self.whole.clear()
            self.seen.clear()
            self._ptrs = ptrs
        return (key, ptrs)

    def _run_pieces(self, attn: Attn, pieces: list[Callable[[], Any]]) -> torch.Tensor:
        for piece, call in zip(pieces, self.calls + [None]):
            self.buf.update(piece())
            if call is None:
                break
            kind, layer = call
            b = self.buf
            if kind == "self":
                o = attn.self_attn(layer, b["q"], b["k"], b["v"])
            else:
                ck, cv = self.ckv[layer]  # type: ignore[misc]
                o = attn.cross_attn(layer, b["cq"], ck, cv)
            self.o.copy_(o)
        return self.buf["out"]

    @property
    def captured(self) -> bool:
        return all(p.graph is not None for p in self.pieces)


class GraphedFrameInputs:
    """Sampler.frame_inputs (the action part of the conditioning and the rotary tables) as one graph over a
    static action, frame index and prompt pool. Why: computed eagerly it was ~25 small kernels whose launches
    took ~1 ms of host time at the start of every frame, with the GPU idle (the previous frame ended in the
    frame's copy to the host); replayed, it is one launch. Returns fresh tuples over the static outputs, so
    GraphedPass sees a new rotary object per frame and copies it (it skips the copy for the same object)."""

    def __init__(self, dit: CausalDiT, batch: int, num_actions: int, device: torch.device, capture: bool) -> None:
        self.dit = dit
        self.action = torch.zeros(batch, 1, num_actions, device=device)
        self.frames = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.heading = torch.zeros(batch, 1, dtype=torch.float64, device=device)   # the last committed frame's
        self.pool: torch.Tensor | None = None
        self._pool_src: torch.Tensor | None = None
        self.capture = capture
        self.g = Graphed(self._compute, _pool(capture), capture)

    def _compute(self) -> tuple[torch.Tensor, Rope, torch.Tensor | None]:
        assert self.pool is not None
        turn = self.dit.turn(self.action)
        heading = None if turn is None else self.heading + turn                 # (B, 1)
        return (self.dit.frame_condition(self.action, self.pool), self.dit.rope(self.frames, heading),
                None if heading is None else heading[:, 0])

    def __call__(self, action: torch.Tensor, frame: int, pool: torch.Tensor,
                 heading: torch.Tensor) -> tuple[torch.Tensor, Rope, torch.Tensor | None]:
        """action (B, A) on the device, frame: the frame index, pool (B, D): the prompt's pooled vector,
        heading (B,) the last committed frame's (Sampler.heading). Returns cond, rope and this frame's
        heading (a static buffer: the sampler copies it at the commit)."""
        if pool is not self._pool_src:   # a new prompt context (every reset): into the static buffer
            if self.pool is None or self.pool.shape != pool.shape or self.pool.dtype != pool.dtype:
                self.pool = pool.clone()
                self.g = Graphed(self._compute, _pool(self.capture), self.capture)
            else:
                self.pool.copy_(pool)
            self._pool_src = pool
        self.action.copy_(action[:, None])
        self.frames.fill_(frame)
        if self.dit.cfg.rope_heading_heads:   # only heading heads read it: no copy per frame otherwise
            self.heading.copy_(heading[:, None])
        cond, rope, turned = self.g()
        return cond, (rope[0], rope[1]), turned


class GraphedDecode:
    """model.decode for a fixed latent shape as one graph: static latent in, static uint8 frames out."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], z_shape: tuple[int, ...],
                 device: torch.device, capture: bool, compile: bool = False) -> None:
        self.z = torch.zeros(z_shape, device=device)
        fn = compile_piece(decode) if compile else decode
        self.g = Graphed(lambda: fn(self.z), _pool(capture), capture)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.z.copy_(z)
        return self.g()

    @property
    def captured(self) -> bool:
        return self.g.graph is not None
