"""NeuralEnv: the world model behind the Env protocol (engine/env.py).

Layers: network (engine/model) -> sampler (engine/sampler.py, the one sampling loop) -> this env -> front end.
reset() encodes the prompt once and starts from a real first frame when a `bootstrap` env is given (as
GameNGen and DIAMOND start from real context), else generates frame 0 from empty context; step() samples the
next latent for the action and decodes it.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from engine import cache_kernels
from engine.attention import MODES, build_mode
from engine.attention import kernels
from engine.checkpoint import BUNDLED, load_model
from engine.env import ACTION_DIM, Env, EnvSpec, Frame, validate_action
from engine.graphs import GraphedDecode
from engine.memory import MemoryConfig, SpatialMemory
from engine.sampler import Sampler


PLAY_ORDER = ("dense", "window", "fastar", "tempcache")   # reference, bounded baseline, the engine's mode, its cache


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


CONF_ATTENTION = Path(__file__).resolve().parent.parent / "conf" / "attention"


def _mode_spec(attention: str | dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """"dense", {"name": "window", "params": {...}} (the conf/attention node) or {"name": ..., **params}."""
    if attention is None:
        return "dense", {}
    if isinstance(attention, str):
        return attention, {}
    node = dict(attention)
    name = str(node.pop("name", "dense"))
    return name, dict(node.pop("params", None) or {}, **node)


def merge_params(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mode parameters `over` laid over `base`, nested dicts merged key by key (tools' --params overrides)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_params(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _default_params(name: str) -> dict[str, Any]:
    """A mode switched to by name alone (F-keys) takes its parameters from conf/attention/<name>.yaml."""
    path = CONF_ATTENTION / f"{name}.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return dict(node.get("params") or {}) if isinstance(node, dict) else {}


class NeuralEnv:
    """Env implemented by the world model. Same seed, prompt, actions, device, dtype and mode -> same frames."""

    def __init__(self, checkpoint: str | Path | None = None, device: str = "auto",
                 attention: str | dict[str, Any] | None = "dense", steps: int = 4, bootstrap: Env | None = None,
                 bf16: bool | None = None, model: Any = None, max_frames: int | None = None,
                 cuda_graphs: bool | None = None, compile: bool = False, noise_scale: float = 1.0,
                 noise_corr: float = 0.0, guidance: float = 0.0,
                 guide_attention: str | dict[str, Any] = "window", fused_writes: bool | None = None,
                 memory: MemoryConfig | dict[str, Any] | bool | None = None,
                 kernel_choices: str | Path | dict[str, str] | None = None) -> None:
        """bf16: cast the model's inference parts to bfloat16 once here (None: on CUDA only; False forces
        float32 on a GPU). An in-memory model is copied before the cast, so a trainer's EMA is never touched.
        max_frames: pre-size a dense cache for this many frames (no reallocation mid-run).
        cuda_graphs: run each DiT pass and the decoder as CUDA graphs (engine/graphs.py; None: on CUDA only;
        True on a CPU is an error). info()["cuda_graphs"] says whether they run.
        compile: fuse each graph piece and the decoder with torch.compile (needs cuda_graphs; the first frames
        compile for about a minute). info()["compiled"] says whether it is on.
        noise_scale: each frame's initial noise scale, a sampling temperature (Sampler; 1: as trained).
        noise_corr: correlation of consecutive frames' initial noise (Sampler; 0: independent, as trained).
        guidance: memory guidance weight (Sampler; 0: off, one pass a denoising step; > 0 doubles the passes),
        with guide_attention the memory-less condition (a mode like `attention`; its parameters from
        conf/attention when only a name is given). The guide keeps its mode when set_attention switches this
        env's.
        fused_writes: the cache's per-call scratch writes as one triton kernel (Sampler; CUDA with triton;
        None: on where it can run, and a CUDA run without triton says that it is off). info() says which.
        memory: the spatial memory (engine/memory.py: a frame at a pose seen before starts from that frame's
        latent; a MemoryConfig, its fields as a dict, or True for the defaults; None/False: off).
        kernel_choices: attention kernel choices to use instead of measuring them: a file (a bench.json[.gz] or
        a JSON object of shape bucket -> kernel) or that mapping itself (a recorded session's `kernels_chosen`,
        which replay passes); engine/attention/kernels.py: pin. On another machine of the same kind, the same
        kernels and so the same frames as the run that chose them. None: measured. info()["kernels_chosen"]
        lists this process's choices so far (a recording keeps the last in its meta.json)."""
        if isinstance(kernel_choices, dict):
            if kernel_choices:   # a CPU recording chose none: nothing to pin
                kernels.pin(dict(kernel_choices), "the recorded session's kernels_chosen")
        elif kernel_choices is not None:
            kernels.pin(kernels.load_choices(kernel_choices), str(kernel_choices))
        self.device = _resolve_device(device)
        dtype = torch.bfloat16 if (bf16 if bf16 is not None else self.device.type == "cuda") else None
        if model is None:
            model, manifest = load_model(checkpoint or BUNDLED, self.device)
            self.checkpoint_sha256 = manifest["sha256"]
        else:   # an in-memory model (trainer previews, tests)
            if dtype is not None and dtype != model.dit.dtype:
                model = copy.deepcopy(model)
            model = model.to(self.device).eval()
            self.checkpoint_sha256 = "in-memory"
        if dtype is not None:
            model.cast_for_inference(dtype)
        self.model = model
        cfg = model.cfg
        self.spec = EnvSpec(world=cfg.world, height=cfg.ae.image_size, width=cfg.ae.image_size, fps=20.0)
        if bootstrap is not None:
            b = bootstrap.spec
            if (b.world, b.height, b.width) != (cfg.world, cfg.ae.image_size, cfg.ae.image_size):
                raise ValueError(f"bootstrap env is world {b.world!r} at {b.height}x{b.width}, but the checkpoint "
                                 f"is a {cfg.world!r} model at {cfg.ae.image_size}x{cfg.ae.image_size}: play the "
                                 f"model with its own world and frame size (or engine=sim for other sizes)")
            self.spec = EnvSpec(world=cfg.world, height=cfg.ae.image_size, width=cfg.ae.image_size, fps=b.fps)
        self.bootstrap = bootstrap
        name, params = _mode_spec(attention)
        self._mode_params: dict[str, dict[str, Any]] = {name: params}
        if fused_writes is None:
            fused_writes = cache_kernels.available(self.device) and self.device.type == "cuda"
            if self.device.type == "cuda" and not fused_writes:
                print("NeuralEnv: fused_writes off: triton is not installed, so each attention call writes the "
                      "cache with three torch ops instead of one kernel (slower, same frames)", flush=True)
        graphs = self.device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        if graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=true needs a CUDA device, got device {self.device}")
        if compile and not graphs:
            raise ValueError("compile=true fuses the CUDA-graph pieces: it needs cuda_graphs (a CUDA device)")
        guide = None
        if guidance:
            g_name, g_params = _mode_spec(guide_attention)
            if g_name not in MODES:
                raise ValueError(f"guide_attention: unknown attention mode {g_name!r}; available: {sorted(MODES)}")
            guide = build_mode(g_name, **(g_params or _default_params(g_name)))
        self.sampler = Sampler(model, build_mode(name, **params), steps=steps, max_frames=max_frames,
                               graphs="cuda" if graphs else "off", compile=compile, noise_scale=noise_scale,
                               noise_corr=noise_corr, guidance=guidance, guide=guide, fused_writes=fused_writes)
        lat = (1, cfg.ae.latent_ch, cfg.ae.latent_size, cfg.ae.latent_size)
        self.memory_cfg = MemoryConfig.build(memory)
        if self.memory_cfg.enabled and not 0 < self.memory_cfg.step < steps:
            raise ValueError(f"engine.memory.step must be in 1..{steps - 1} (a step of the {steps}-step schedule), "
                             f"got {self.memory_cfg.step}")
        self.memory = SpatialMemory(self.memory_cfg, cfg.world, lat[1:], self.device, self.sampler.dtype)
        self.sampler.on_reset.append(self.memory.reset)   # a new episode, however it starts, forgets the last
        self._decode = (GraphedDecode(model.decode, lat, self.device, capture=True, compile=compile) if graphs
                        else model.decode)
        self.mode_name = name
        self.prompt = ""
        self._last_ms = 0.0
        self.last_latent: torch.Tensor | None = None
        self._host: torch.Tensor | None = None   # the frame on its way to the host (_queue_frame; pinned on CUDA)
        self._copied: Any = torch.cuda.Event() if self.device.type == "cuda" else None   # its copy's end (CUDA)

    # ---- Env protocol -------------------------------------------------------------------------------------
    @property
    def attention_modes(self) -> tuple[str, ...]:
        """Every registered mode, the ones a player compares first: front ends map F1..F4 to the first four."""
        first = [m for m in PLAY_ORDER if m in MODES]
        return tuple(first + [m for m in MODES if m not in first])

    def set_attention(self, mode: str | dict[str, Any]) -> None:
        name, params = _mode_spec(mode)
        if name not in MODES:
            raise ValueError(f"unknown attention mode {name!r}; available: {sorted(MODES)}")
        if not params:
            params = self._mode_params[name] if name in self._mode_params else _default_params(name)
        self.sampler.set_mode(build_mode(name, **params))
        self._mode_params[name] = params
        self.mode_name = name

    def set_decay(self, slopes: object) -> None:
        """Temporal-decay slopes at inference, one per head (a list or a comma-separated string), applied in
        every layer over the checkpoint's own: the probes' way to try a decay on a trained model before
        training with it. ValueError naming the count expected. Before the first frame of an episode."""
        from engine.model.dit import head_slopes
        dit = self.model.dit.cfg
        self.sampler.set_decay(head_slopes(slopes, dit.heads, "decay").expand(dit.depth, -1))

    @torch.no_grad()
    def reset(self, seed: int, prompt: str | None = None) -> Frame:
        # None: the vocabulary's defaults (the first word of each category, as the maze's default prompt)
        self.prompt = self.model.prompt.canonical(prompt or "")   # ValueError listing the vocabulary if bad
        self.sampler.reset(seed, self.prompt)
        if self.bootstrap is not None:
            first = np.asarray(self.bootstrap.reset(seed, self.prompt), dtype=np.uint8)
            self.prime([first], [np.zeros(ACTION_DIM, np.float32)])
            return first
        return self._generate(np.zeros(ACTION_DIM, np.float32))

    @torch.no_grad()
    def step(self, action: Any) -> Frame:
        if self.sampler.prompt is None:
            raise RuntimeError("NeuralEnv.step before reset(seed, prompt)")
        return self._generate(validate_action(action))

    def info(self) -> dict[str, Any]:
        cache = self.sampler.cache
        stats = self.sampler.mode.stats()
        return {"frame": self.sampler.frame - 1, "cache_tokens": cache.tokens(),
                "cache_mib": round(cache.nbytes() / 2 ** 20, 3), "attention": self.mode_name,
                "kernel": kernels.kernel_name(), "kernel_choices": kernels.pinned_source() or "measured",
                "kernels_chosen": kernels.chosen_kernels(),
                "mode_stats": stats, "gen_ms": round(self._last_ms, 2),
                "cuda_graphs": self.sampler.graphs == "cuda", "compiled": self.sampler.compiled,
                "whole_pass_replays": getattr(self.sampler.run, "whole_replays", 0),
                "noise_scale": self.sampler.noise_scale, "noise_corr": self.sampler.noise_corr,
                "guidance": self.sampler.guidance, "fused_writes": self.sampler.cache.fused_writes,
                "guide_attention": None if self.sampler.guide is None else self.sampler.guide.mode.name,
                "memory": self.memory.stats() if self.memory_cfg.enabled else None,
                "device": str(self.device), "checkpoint_sha256": self.checkpoint_sha256}

    # ---- beyond the protocol: evaluation helpers ----------------------------------------------------------
    @torch.no_grad()
    def prime(self, frames: Sequence[np.ndarray], actions: Sequence[np.ndarray]) -> None:
        """Commit true frames (uint8 (H, W, 3) each) with the actions that produced them, in order, as context.
        Used by reset(bootstrap) and by the evaluation (16 true frames, then a rollout)."""
        for f, a in zip(frames, actions, strict=True):
            z = self.model.encode(torch.as_tensor(np.asarray(f, np.uint8)[None], device=self.device))
            a = np.asarray(a, np.float32)
            self.memory.commit(a, z, self.sampler.frame)
            self.sampler.commit(z, torch.as_tensor(a[None]).to(self.device))

    @torch.no_grad()
    def follow(self, action: Any, latent: torch.Tensor) -> Frame:
        """The frame step(action) would return, then commit `latent` (1, C, h, w; another rollout's
        `last_latent` for the same frame) in its place: this env's history stays the other rollout's, so each
        frame differs from that rollout's only by what one step of this env's attention does (engine.bench's
        one-step fidelity against dense). Draws the same noise as step()."""
        host = validate_action(action)
        a = torch.as_tensor(host[None]).to(self.device)
        f = self.sampler.frame_inputs(a)                     # once for both, as Sampler.step does
        z = self.sampler.sample(a, f, *self._anchor(host))
        frame = self._decode(z)[0].cpu().numpy()
        self.memory.commit(host, latent.to(self.device), self.sampler.frame)
        self.sampler.commit(latent.to(self.device), a, f)
        return frame

    @torch.no_grad()
    def predict(self, action: Any) -> Frame:
        """The frame step(action) would return, without committing it: follow with prime([true frame],
        [action]) for teacher-forced evaluation."""
        host = validate_action(action)
        z = self.sampler.sample(torch.as_tensor(host[None]).to(self.device), None, *self._anchor(host))
        return self._decode(z)[0].cpu().numpy()

    def _anchor(self, action: np.ndarray) -> tuple[torch.Tensor | None, int]:
        """The spatial memory's start for the next frame (Sampler.sample's anchor, anchor_step)."""
        return self.memory.anchor(action, self.sampler.frame), self.memory_cfg.step

    def _generate(self, action: np.ndarray) -> Frame:
        t0 = time.perf_counter()
        a = torch.as_tensor(action[None])
        if self.device.type == "cuda":
            # pinned and queued: a plain copy from pageable memory would wait for the GPU, which is still
            # running the previous frame's commit pass (below)
            a = a.pin_memory().to(self.device, non_blocking=True)
        else:
            a = a.to(self.device)
        # the decode and the frame's copy to the host are queued before the commit pass (Sampler.step), so the
        # frame is handed out while the GPU still commits it and the next step's host work overlaps that pass
        z = self.sampler.step(a, lambda x: self._queue_frame(self._decode(x)[0]), *self._anchor(action))
        self.memory.commit(action, z, self.sampler.frame - 1)
        self.last_latent = z                                  # (1, C, h, w) what was committed (follow())
        frame = self._queued_frame()                          # the one host sync: the frame has left the device
        self._last_ms = (time.perf_counter() - t0) * 1e3
        return frame

    def _queue_frame(self, img: torch.Tensor) -> None:
        """Queue img (H, W, 3) uint8's copy to the host (_queued_frame waits for it). On CUDA into one pinned
        buffer behind one event, both reused every frame; elsewhere at once."""
        if self.device.type != "cuda":
            self._host = img.cpu()
            return
        if self._host is None or self._host.shape != img.shape or self._host.dtype != img.dtype:
            self._host = torch.empty(img.shape, dtype=img.dtype, pin_memory=True)
        self._host.copy_(img, non_blocking=True)
        self._copied.record()

    def _queued_frame(self) -> Frame:
        """The frame _queue_frame sent, once it is on the host: a copy (the pinned buffer is the next frame's)."""
        assert self._host is not None
        if self.device.type != "cuda":
            return self._host.numpy()
        self._copied.synchronize()
        return self._host.numpy().copy()
