"""Trainer: maze episodes -> frame autoencoder -> latents -> causal DiT, in one command.

    python -m engine.train preset=base time_budget_min=25 out=runs/base          # GPU (docs/MODEL.md)
    python -m engine.train --config-name tiny                                   # CPU smoke run

Phases (each skipped when a checkpoint in `out` says it is done, so a cut run resumes where it stopped):
  1 data    render episodes with the scripted explorer in worker processes (or read `data.dir`), all in RAM
  2 ae      train the autoencoder (L1 + image-gradient L1, a little latent noise), or take it from `ae.init`
  3 encode  encode every frame once; per-channel latent mean/std go into the checkpoint; latents stay on device
  4 dit     flow matching on latent clips, diffusion-forcing style: sequence [clean | noisy] where every noisy
            frame has its own noise level and sees clean frames j < i plus itself (exactly the cache at
            inference); clean frames carry a small random noise level (told to the model) against drift;
            a share of clips are two halves far apart in the episode (long-range memory, large time distances)

Checkpoints: out/ckpt (EMA weights in model shards, raw weights + optimizer in optim shards: resumable, and
loadable by NeuralEnv as is) every `ckpt_every_min`, at phase ends, at the budget and on SIGTERM; out/export
(fp16 EMA weights only: what goes to worlds/maze/weights). Log: out/log.jsonl; previews: out/samples/*.png and *.mp4.
"""
from __future__ import annotations

import copy
import json
import math
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.checkpoint import MANIFEST, CheckpointError, load_checkpoint, load_state_into, save_checkpoint
from engine.model import WorldModel, preset
from engine.model.config import ModelConfig
from engine.model.dit import head_slopes
from engine.train_attention import TrainAttention
from engine.train_data import load_store, make_dataset, revisit_clip, revisit_pairs
from engine.train_own_context import keep_memory, pick, predict_clip, validate


@dataclass
class DataConfig:
    dir: str = "data/maze"
    make: bool = True            # render missing episodes into dir first (worlds/maze/dataset.py)
    episodes: int = 256
    frames: int = 1024           # per episode: long episodes make long-gap clips possible
    workers: int = 16
    seed: int = 0
    holdout: int = 2             # last episodes kept out of training (previews, validation PSNR)


@dataclass
class AETrainConfig:
    init: str | None = None      # take the autoencoder (and latent stats) from this checkpoint instead
    steps: int = 30000
    share: float = 0.25          # at most this share of the time budget
    batch: int = 64
    lr: float = 5e-4
    grad_weight: float = 1.0     # image-gradient L1: mortar lines and texture edges
    latent_noise: float = 0.05   # decoder sees latents + this * std noise half the time (robust to DiT error)


@dataclass
class DiTTrainConfig:
    steps: int = 1_000_000
    batch: int = 8
    clip: int = 32
    gap_prob: float = 0.25       # clips made of two halves far apart in the same episode
    min_gap: int = 64
    revisit_prob: float = 0.0    # clips around a pair of frames that see the same place far apart (train_data.py)
    revisit_min_gap: int = 24    #   frames between the two visits, at least
    revisit_pos_tol: float = 0.15  # cells
    revisit_yaw_tol: float = 6.0   # degrees
    revisit_lead: float = 0.75     # share of a revisit clip's second half before the return (0: it opens with it)
    revisit_max_gap: int = 0       # > 0: only pairs at most this far apart, each in one contiguous clip (needs
                                   # < clip): the actions between the visits stay in (train_data.revisit_clip)
    novelty_weight: float = 0.0    # loss weight 1 + w x (how much each latent differs from the previous frame's,
                                   # relative to the frame's mean): where the last frame does not explain the
                                   # target (newly revealed views, memory), the loss counts more; 0: plain MSE
    lr: float = 3e-4
    warmup: int = 300
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    t_mean: float = 0.3          # logit-normal noise levels, biased to high noise
    t_std: float = 1.0
    ctx_sigma_max: float = 0.1   # context noise augmentation: U(0, max) per clean frame...
    ctx_zero_prob: float = 0.25  # ... or exactly 0 with this probability
    context_sigma: float = 0.02  # the commit level written into the checkpoint for inference (sampler.py)
    shift: float = 3.0           # sampler timestep shift written into the checkpoint
    flex: bool = True            # FlexAttention block mask on CUDA (falls back to SDPA + mask)
    own_context_prob: float = 0.0  # share of each batch trained on its own predictions as context (exposure
    own_context_steps: int = 2     # bias, engine/train_own_context.py): Euler steps of that no-grad pass (1..4)
    own_context_rounds: int = 1    # 2: predict again from the first predictions (errors compound once)
    own_context_revisits: bool = True  # false: revisit clips always keep their true context (own_context says why)
    own_context_memory: bool = False   # true: a revisit clip given own-prediction context keeps its first visit
                                       # true (frames up to midway between the visits); only the later ones are the
                                       # model's: a true memory against drifted recent frames (train_own_context)


@dataclass
class TrainConfig:
    preset: str = "base"
    out: str = "runs/base"
    device: str = "auto"
    seed: int = 0
    time_budget_min: float = 25.0
    reserve_min: float = 1.0     # stop this long before the budget for the final save and preview
    ckpt_every_min: float = 5.0
    sample_every_min: float = 5.0
    log_every: int = 50
    preview_context: int = 16    # held-out preview: true context frames, then generated frames
    preview_frames: int = 32
    resume: bool = True
    init: str | None = None      # start from these weights (e.g. the fp16 bundle) with a fresh optimizer
    rope_time_free_heads: int | None = None  # override the preset's dit.rope_time_free_heads (same weights'
                                             # shapes, so a fine-tune from `init` may change it)
    rope_heading_heads: int | None = None    # override dit.rope_heading_heads likewise; its heading_per_action
                                             # comes from the world (worlds/<world>/physics.HEADING_PER_ACTION)
    temporal_decay: bool | None = None       # override dit.temporal_decay; from an `init` without it the slopes
                                             # start at DECAY_INIT (~no decay), so the fine-tune starts from init
    decay_slopes: list[float] | None = None  # fixed slopes, one per head for every layer (ALiBi-like; implies
                                             # temporal_decay): set after loading and frozen. Learned slopes make
                                             # FlexAttention scatter their gradient by atomic adds into depth x
                                             # heads addresses: ~200x slower a step on the H100 (docs/MODEL.md)
    max_step_s: float | None = None          # stop (after saving) when DiT steps 3..7 average more than this:
                                             # a wrong fast path must not burn a GPU session unnoticed
    progress: bool = True
    bf16: bool = True            # autocast on CUDA
    data: DataConfig = field(default_factory=DataConfig)
    ae: AETrainConfig = field(default_factory=AETrainConfig)
    dit: DiTTrainConfig = field(default_factory=DiTTrainConfig)


def world_heading(world: str) -> tuple[float, ...]:
    """The world's degrees of yaw per unit of each action entry (worlds/<world>/physics.HEADING_PER_ACTION)."""
    import importlib
    try:
        return tuple(float(x) for x in importlib.import_module(f"worlds.{world}.physics").HEADING_PER_ACTION)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"train.rope_heading_heads: world {world!r} defines no HEADING_PER_ACTION in "
                         f"worlds/{world}/physics.py ({e}); heading heads need the world's turn rates") from e


def episode_headings(dit: Any, store: Any) -> torch.Tensor | None:
    """Each store row's heading (radians, float64, on dit's device): the running sum of dit.turn over its
    episode's actions from the episode's first frame, which is what the sampler keeps at inference (its
    reset starts at 0; only differences matter). Gap and revisit clips read it per row, so the frames they
    skip still count. None when the model has no heading heads."""
    acts = torch.from_numpy(np.asarray(store.actions)).to(dit.out.weight.device)
    inc = dit.turn(acts[None])
    if inc is None:
        return None
    total = inc[0].cumsum(0)                                                     # (rows,)
    start = torch.as_tensor(store.start, device=total.device)
    ep = torch.repeat_interleave(torch.arange(len(start), device=total.device),
                                 torch.as_tensor(store.length, device=total.device))
    return total - (total[start] - inc[0, start])[ep]       # minus the sum before each episode's first frame


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        validate(cfg.dit.own_context_prob, cfg.dit.own_context_steps, cfg.dit.own_context_rounds)
        if cfg.dit.own_context_memory and not cfg.dit.own_context_revisits:
            raise ValueError("dit.own_context_memory=true needs dit.own_context_revisits=true (false keeps every "
                             "revisit clip wholly true, so there is no own-prediction context to keep memory in)")
        if not 0.0 <= cfg.dit.revisit_lead <= 1.0 or cfg.dit.novelty_weight < 0 or not 0.0 <= cfg.dit.revisit_prob <= 1.0:
            raise ValueError(f"dit.revisit_prob and dit.revisit_lead must be in [0, 1] and dit.novelty_weight >= 0; "
                             f"got {cfg.dit.revisit_prob}, {cfg.dit.revisit_lead}, {cfg.dit.novelty_weight}")
        if cfg.dit.revisit_max_gap > 0 and not cfg.dit.revisit_min_gap <= cfg.dit.revisit_max_gap < cfg.dit.clip:
            raise ValueError(f"dit.revisit_max_gap must be 0 (off) or in [dit.revisit_min_gap, dit.clip): contiguous "
                             f"revisit clips hold both visits; got {cfg.dit.revisit_max_gap} with revisit_min_gap "
                             f"{cfg.dit.revisit_min_gap}, clip {cfg.dit.clip}")
        self.own_stats = [0, 0, 0.0]   # since the last log: samples with own context, samples, seconds spent
        self.t0 = time.time()
        self.deadline = self.t0 + 60 * (cfg.time_budget_min - cfg.reserve_min)
        self.out = Path(cfg.out)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if cfg.device == "auto" else cfg.device))
        self.amp = self.device.type == "cuda" and cfg.bf16
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.stop = False
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.log_file = open(self.out / "log.jsonl", "a")
        self.state: dict[str, Any] = {"phase": "ae", "ae_step": 0, "dit_step": 0, "latent_stats": False}
        model_cfg = preset(cfg.preset)
        if cfg.rope_time_free_heads is not None:
            model_cfg = replace(model_cfg, dit=replace(model_cfg.dit, rope_time_free_heads=cfg.rope_time_free_heads))
        if cfg.rope_heading_heads is not None:
            model_cfg = replace(model_cfg, dit=replace(model_cfg.dit, rope_heading_heads=cfg.rope_heading_heads,
                                                       heading_per_action=world_heading(model_cfg.world)
                                                       if cfg.rope_heading_heads else ()))
        if cfg.decay_slopes is not None and cfg.temporal_decay is False:
            raise ValueError("train.decay_slopes needs the temporal decay; got temporal_decay=false")
        decay = True if cfg.decay_slopes is not None else cfg.temporal_decay
        if decay is not None:
            model_cfg = replace(model_cfg, dit=replace(model_cfg.dit, temporal_decay=decay))
        self.model = WorldModel(model_cfg).to(self.device)
        self.optim_tensors: dict[str, torch.Tensor] = {}
        self.optim_groups: Any = None
        self._load_start()
        if cfg.decay_slopes is not None:
            self._fix_decay(cfg.decay_slopes)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self._ema_init is not None:
            load_state_into(self.ema, self._ema_init, str(self.out / "ckpt"))

    # ---- bookkeeping -----------------------------------------------------------------------------------
    def _on_sigterm(self, *_: Any) -> None:
        self.log({"event": "sigterm"})
        self.stop = True

    def log(self, rec: dict[str, Any]) -> None:
        rec = {"t": round(time.time() - self.t0, 1), **rec}
        line = json.dumps(rec)
        self.log_file.write(line + "\n")
        self.log_file.flush()
        if not self.cfg.progress:   # background runs (GPU box): the log file tail is the progress report
            print(line, flush=True)

    def out_of_time(self) -> bool:
        return self.stop or time.time() > self.deadline

    def ctx(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else torch.autocast("cpu", enabled=False)

    def _load_start(self) -> None:
        """Resume from out/ckpt, else load `init` weights (fresh optimizer), else start from scratch."""
        ckpt = self.out / "ckpt"
        if self.cfg.resume and (ckpt / MANIFEST).exists():
            manifest, model, optim = load_checkpoint(ckpt, optimizer=True)
            self._check_config(manifest, ckpt)
            raw = {k[4:]: v for k, v in optim.items() if k.startswith("raw.")}
            load_state_into(self.model, raw or model, str(ckpt))
            self._ema_init = model
            self.optim_tensors = {k[4:]: v for k, v in optim.items() if k.startswith("opt.")}
            self.optim_groups = manifest["meta"].get("optim_groups")
            self.state.update(manifest["meta"].get("state", {}))
            self.log({"event": "resume", "from": str(ckpt), **self.state})
            return
        self._ema_init = None
        if self.cfg.init:
            manifest, model, _ = load_checkpoint(self.cfg.init)
            self._check_config(manifest, Path(self.cfg.init), init=True)
            if self.model.dit.decay is not None and "dit.decay" not in model:   # switched on by this fine-tune
                model["dit.decay"] = self.model.dit.decay.detach().cpu().clone()
            load_state_into(self.model, model, self.cfg.init)
            self.state.update(phase="dit", latent_stats=True)
            self.log({"event": "init", "from": self.cfg.init})

    def _fix_decay(self, slopes: list[float]) -> None:
        """Set every layer's decay slopes to `slopes` (one per head) and freeze them (train.decay_slopes)."""
        dit = self.model.dit
        vals = head_slopes(slopes, dit.cfg.heads, "train.decay_slopes")
        with torch.no_grad():
            dit.decay.copy_(vals.expand(dit.cfg.depth, -1))
        dit.decay.requires_grad_(False)
        self.log({"event": "decay_fixed", "slopes": vals.tolist()})

    def _check_config(self, manifest: dict[str, Any], path: Path, init: bool = False) -> None:
        """The checkpoint's network must be this run's. From `init` (fresh optimizer) the rotary choice of
        time-free and heading heads and the temporal decay may differ: the first two have no weights, the decay's
        slopes start at ~0 (or keep init's), so the fine-tune starts from the same function."""
        mine = ModelConfig.from_dict(manifest["config"])
        own = self.model.cfg.dit
        dit = replace(mine.dit, rope_time_free_heads=own.rope_time_free_heads, rope_heading_heads=own.rope_heading_heads,
                      heading_per_action=own.heading_per_action, temporal_decay=own.temporal_decay) if init else mine.dit
        if dit != self.model.cfg.dit or mine.ae != self.model.cfg.ae:
            raise CheckpointError(f"{path}: its model config differs from preset={self.cfg.preset!r}; use the "
                                  f"matching preset, another out= directory, or resume=false")

    def save(self, phase_optim: torch.optim.Optimizer | None = None) -> None:
        cfg = self.model.cfg
        cfg.context_sigma, cfg.shift = self.cfg.dit.context_sigma, self.cfg.dit.shift
        ema = self.ema.state_dict()
        optim: dict[str, torch.Tensor] = {f"raw.{k}": v for k, v in self.model.state_dict().items()}
        meta: dict[str, Any] = {"state": self.state, "train_config": asdict(self.cfg)}
        if phase_optim is not None:
            sd = phase_optim.state_dict()
            for i, st in sd["state"].items():
                for k, v in st.items():
                    optim[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
            meta["optim_groups"] = sd["param_groups"]
        save_checkpoint(self.out / "ckpt", ema, cfg.to_dict(), meta=meta, optim_state=optim)
        sha = save_checkpoint(self.out / "export", ema, cfg.to_dict(), dtype=torch.float16,
                              meta={"state": self.state, "preset": self.cfg.preset})
        self.log({"event": "save", "export_sha256": sha, **self.state})

    def restore_optim(self, opt: torch.optim.Optimizer, phase: str) -> None:
        if not self.optim_tensors or self.optim_groups is None or self.state.get("optim_phase") != phase:
            return
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, t in self.optim_tensors.items():
            i, k = name.split(".", 1)
            state.setdefault(int(i), {})[k] = t.to(self.device) if k != "step" else t
        try:
            opt.load_state_dict({"state": state, "param_groups": self.optim_groups})
        except (ValueError, KeyError) as e:
            self.log({"event": "optimizer_not_restored", "why": str(e)})

    # ---- phases ------------------------------------------------------------------------------------------
    def data(self) -> None:
        d = self.cfg.data
        if d.make:
            make_dataset(d.dir, d.episodes, d.frames, d.workers, d.seed, self.cfg.progress)
        store = load_store(d.dir, workers=max(1, min(d.workers, 16)))
        self.train_store, self.val_store = store.split(d.holdout)
        r = self.cfg.dit
        self.revisits = (revisit_pairs(self.train_store, r.revisit_min_gap, r.revisit_pos_tol, r.revisit_yaw_tol)
                         if r.revisit_prob > 0 else np.zeros((0, 3), np.int64))
        self.revisits = self.revisits[self.train_store.length[self.revisits[:, 0]] >= r.clip]
        if r.revisit_max_gap > 0:
            self.revisits = self.revisits[self.revisits[:, 2] - self.revisits[:, 1] <= r.revisit_max_gap]
        if r.revisit_prob > 0 and len(self.revisits) == 0:
            raise ValueError(f"dit.revisit_prob={r.revisit_prob} but no pair of frames in {d.dir} revisits a "
                             f"place within {r.revisit_pos_tol} cells / {r.revisit_yaw_tol} deg at a gap >= "
                             f"{r.revisit_min_gap}; loosen the tolerances or set dit.revisit_prob=0")
        self.log({"event": "data", "frames": store.num_frames, "episodes": len(store.start),
                  "train_frames": self.train_store.num_frames, "revisit_pairs": len(self.revisits)})

    def lr_at(self, base: float, step: int, frac: float, warmup: int) -> float:
        w = min(1.0, (step + 1) / max(1, warmup))
        return base * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def train_ae(self) -> None:
        from tqdm import tqdm
        a = self.cfg.ae
        if self.state["phase"] != "ae":
            return
        if a.init:
            _, st, _ = load_checkpoint(a.init)
            load_state_into(self.model, st, a.init)
            self.state.update(phase="encode", latent_stats=True)
            return
        ae = self.model.ae
        opt = torch.optim.AdamW(ae.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.restore_optim(opt, "ae")
        self.state["optim_phase"] = "ae"
        end = self.t0 + 60 * self.cfg.time_budget_min * a.share
        frames = self.train_store.frames
        bar = tqdm(total=a.steps, initial=self.state["ae_step"], desc="ae", disable=not self.cfg.progress)
        last_save = time.time()
        t_phase = time.time()
        while self.state["ae_step"] < a.steps and time.time() < end and not self.out_of_time():
            step = self.state["ae_step"]
            frac = max(step / a.steps, (time.time() - t_phase) / max(1.0, end - t_phase))
            for g in opt.param_groups:
                g["lr"] = self.lr_at(a.lr, step, frac, 200)
            idx = self.rng.integers(0, len(frames), a.batch)
            x = ae.to_input(torch.from_numpy(frames[np.sort(idx)]).to(self.device))
            with self.ctx():
                z = ae.encoder(x)
                noise = torch.randn_like(z) * z.detach().float().std() * a.latent_noise
                noise[: a.batch // 2] = 0
                y = ae.decoder(z + noise).float()
            loss_px = (y - x).abs().mean()
            dy = lambda t, d: t.diff(dim=d)  # noqa: E731
            loss_gr = sum((dy(y, d) - dy(x, d)).abs().mean() for d in (2, 3))
            loss = loss_px + a.grad_weight * loss_gr + 1e-4 * z.float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
            opt.step()
            self.state["ae_step"] = step + 1
            bar.update(1)
            if step % self.cfg.log_every == 0:
                psnr = float(-10 * torch.log10(((y[: a.batch // 2] - x[: a.batch // 2]) / 2).pow(2).mean().detach()))
                self.log({"phase": "ae", "step": step, "loss": float(loss.detach()), "l1": float(loss_px.detach()),
                          "psnr_db": round(psnr, 2), "lr": opt.param_groups[0]["lr"]})
                bar.set_postfix(loss=f"{float(loss):.4f}", psnr=f"{psnr:.1f}")
            if time.time() - last_save > 60 * self.cfg.ckpt_every_min:
                self.ema.load_state_dict(self.model.state_dict())
                self.save(opt)
                last_save = time.time()
        bar.close()
        if self.stop:
            self.ema.load_state_dict(self.model.state_dict())
            self.save(opt)
            return
        self.state.update(phase="encode", optim_phase=None)

    @torch.no_grad()
    def encode(self) -> None:
        """All frames -> raw latents once; set the normalisation (unless the DiT already trained on one)."""
        m = self.model.eval()
        lat = []
        with self.ctx():
            for s in range(0, self.train_store.num_frames, 256):
                x = m.ae.to_input(torch.from_numpy(self.train_store.frames[s:s + 256]).to(self.device))
                lat.append(m.ae.encoder(x).float())
        z = torch.cat(lat)                                                         # (F, C, h, w)
        if not self.state["latent_stats"]:
            m.latent_mean.copy_(z.mean((0, 2, 3)))
            m.latent_std.copy_(z.std((0, 2, 3)).clamp_min(1e-4))
            self.state["latent_stats"] = True
        self.latents = ((z - m.latent_mean.view(1, -1, 1, 1)) / m.latent_std.view(1, -1, 1, 1)).to(
            torch.bfloat16 if self.amp else torch.float32)
        self.actions = torch.from_numpy(self.train_store.actions).to(self.device)
        self.headings = episode_headings(self.model.dit, self.train_store)
        self.prompt_ids = m.prompt.tokenize(self.train_store.prompts, self.device)
        self.log({"event": "encoded", "frames": len(z), "latent_mean": m.latent_mean.tolist(),
                  "latent_std": m.latent_std.tolist()})
        if self.state["phase"] == "encode":
            self.state["phase"] = "dit"
            self.ema.load_state_dict(self.model.state_dict())
            self.save(None)

    def sample_clips(self, B: int, T: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(episode (B,), absolute frame index (B, T), row in the store (B, T), is a revisit clip (B,) bool,
        memory (B,) int64: a revisit clip's leading frames up to midway between its two visits, 0 for other
        clips); a share are revisit clips (dit.revisit_prob: a place seen again far apart), a share long-gap
        clips, the rest contiguous."""
        st, d = self.train_store, self.cfg.dit
        ok = np.flatnonzero(st.length >= T)
        eps = self.rng.choice(ok, B, p=st.length[ok] / st.length[ok].sum())
        idx = np.zeros((B, T), np.int64)
        revisit = np.zeros(B, bool)
        memory = np.zeros(B, np.int64)
        h = T // 2
        for b, e in enumerate(eps):
            n = int(st.length[e])
            gap_room = n - T - d.min_gap
            if d.revisit_prob > 0 and self.rng.random() < d.revisit_prob:
                e, i, j = (int(v) for v in self.revisits[self.rng.integers(len(self.revisits))])
                eps[b], revisit[b] = e, True
                idx[b] = revisit_clip(int(st.length[e]), T, i, j, d.revisit_lead, d.revisit_max_gap > 0)
                memory[b] = int((idx[b] <= (i + j) // 2).sum())
            elif self.rng.random() < d.gap_prob and gap_room > 0:
                s0 = int(self.rng.integers(0, gap_room + 1))
                s1 = int(self.rng.integers(s0 + h + d.min_gap, n - (T - h) + 1))
                idx[b] = np.concatenate([np.arange(s0, s0 + h), np.arange(s1, s1 + T - h)])
            else:
                s0 = int(self.rng.integers(0, n - T + 1))
                idx[b] = np.arange(s0, s0 + T)
        rows = idx + st.start[eps][:, None]
        return (torch.from_numpy(eps).to(self.device), torch.from_numpy(idx).to(self.device),
                torch.from_numpy(rows).to(self.device), torch.from_numpy(revisit).to(self.device),
                torch.from_numpy(memory).to(self.device))

    def dit_loss(self, B: int, T: int, attn: Any) -> torch.Tensor:
        d, m = self.cfg.dit, self.model
        eps_i, frames, rows, revisit, memory = self.sample_clips(B, T)
        z = self.latents[rows].float()                                             # (B, T, C, h, w)
        acts = self.actions[rows]                                                   # (B, T, 8)
        heading = None if self.headings is None else self.headings[rows]           # (B, T) radians
        dev = self.device
        t = torch.sigmoid(d.t_mean + d.t_std * torch.randn(B, T, device=dev))      # noisy levels (B, T)
        tc = torch.rand(B, T, device=dev) * d.ctx_sigma_max
        tc = torch.where(torch.rand(B, T, device=dev) < d.ctx_zero_prob, torch.zeros_like(tc), tc)
        e1, e2 = torch.randn_like(z), torch.randn_like(z)
        bc = lambda s: s[:, :, None, None, None]  # noqa: E731
        prompt = m.prompt(self.prompt_ids[eps_i])
        z_ctx = self.own_context(z, acts, frames, prompt, attn, heading,            # z unless own_context_prob
                                 None if d.own_context_revisits else revisit,
                                 memory if d.own_context_memory else None)
        x_clean = (1 - bc(tc)) * z_ctx + bc(tc) * e1
        x_noisy = (1 - bc(t)) * z + bc(t) * e2                                     # targets stay the true z
        with self.ctx():
            v = m.dit(torch.cat([x_clean, x_noisy], 1), torch.cat([tc, t], 1), torch.cat([acts, acts], 1),
                      torch.cat([frames, frames], 1), prompt, attn,
                      None if heading is None else torch.cat([heading, heading], 1))[:, T:]
        if d.novelty_weight <= 0:
            return F.mse_loss(v.float(), e2 - z)
        w = self.novelty(z, rows, frames, d.novelty_weight)
        return ((v.float() - (e2 - z)) ** 2 * w).sum() / w.sum()

    def novelty(self, z: torch.Tensor, rows: torch.Tensor, frames: torch.Tensor, weight: float) -> torch.Tensor:
        """Per-latent loss weights (B, T, C, h, w): 1 + weight x |z - z_prev| / its mean over the frame, with
        z_prev the episode's previous frame (not the clip's: a revisit or gap clip jumps), 0 novelty for an
        episode's first frame. Large where the previous frame does not explain the target: newly revealed
        parts of a view, which only memory (or invention) can supply."""
        prev = self.latents[(rows - 1).clamp_min(0)].float()                       # (B, T, C, h, w)
        diff = (z - prev).abs() * (frames > 0)[:, :, None, None, None]
        rel = diff / diff.mean((2, 3, 4), keepdim=True).clamp_min(1e-6)
        return 1.0 + weight * rel

    def own_context(self, z: torch.Tensor, acts: torch.Tensor, frames: torch.Tensor,
                    prompt: tuple[torch.Tensor, torch.Tensor], attn: Any,
                    heading: torch.Tensor | None = None, keep_true: torch.Tensor | None = None,
                    memory: torch.Tensor | None = None) -> torch.Tensor:
        """Clean-half latents: z, with a picked share of the samples replaced by the model's own no-grad
        predictions (frame 0 kept true). Nothing is drawn from any RNG when own_context_prob == 0.
        keep_true (B,) bool (dit.own_context_revisits=false: the revisit clips): samples that keep their true
        context; the pick takes the others first, and a kept one it still takes (the pass keeps one batch
        size, one compile) is predicted and left true. Why: a revisit clip's target is the true view again,
        and with a predicted first visit as memory the best answer is a hedge between memory and a guess,
        which teaches the model not to copy; the revisit test asks for the copy (docs/MODEL.md).
        memory (B,) int64 (dit.own_context_memory): leading frames of each sample kept true (keep_memory)."""
        d = self.cfg.dit
        self.own_stats[1] += z.shape[0]
        idx = pick(z.shape[0], d.own_context_prob, z.device, last=keep_true)
        if len(idx) == 0:
            return z
        if self.device.type == "cuda":   # time only this pass (costs a sync per step, only when enabled)
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x_hat = predict_clip(self.model.dit, z[idx], acts[idx], frames[idx],
                             (prompt[0][idx].detach(), prompt[1][idx].detach()), attn, d.own_context_steps,
                             d.shift, d.context_sigma, d.own_context_rounds, self.ctx,
                             None if heading is None else heading[idx])
        if memory is not None:
            x_hat = keep_memory(x_hat, z[idx], memory[idx])
        if keep_true is not None:
            kept = keep_true[idx]
            x_hat = torch.where(kept[:, None, None, None, None], z[idx], x_hat)
            applied = len(idx) - int(kept.sum())   # a host sync; on CUDA the pass syncs for its timing anyway
        else:
            applied = len(idx)
        z = z.index_copy(0, idx, x_hat)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.own_stats[0] += applied
        self.own_stats[2] += time.perf_counter() - t0
        return z

    def train_dit(self) -> None:
        from tqdm import tqdm
        d = self.cfg.dit
        if self.state["phase"] != "dit":
            return
        m = self.model.train()
        m.ae.requires_grad_(False)
        params = list(m.dit.parameters()) + list(m.prompt.parameters())
        opt = torch.optim.AdamW(params, lr=d.lr, betas=(0.9, 0.95), weight_decay=d.weight_decay)
        self.restore_optim(opt, "dit")
        self.state["optim_phase"] = "dit"
        T, N = d.clip, m.tokens_per_frame
        order = torch.arange(T, device=self.device).repeat(2)
        clean = torch.arange(2 * T, device=self.device) < T
        attn = TrainAttention(clean, order, N, use_flex=d.flex and self.device.type == "cuda")
        if attn.fallback is None and m.dit.decay is not None and m.dit.decay.requires_grad:
            msg = ("learned decay slopes under FlexAttention: their gradient is an atomic scatter into depth x heads "
                   "addresses, measured ~200x slower a step on the H100; train.decay_slopes fixes them")
            warnings.warn(msg)
            self.log({"event": "warning", "why": msg})
        ema_p = [p for n, p in self.ema.named_parameters() if n.startswith(("dit.", "prompt."))]
        raw_p = [p for n, p in m.named_parameters() if n.startswith(("dit.", "prompt."))]
        bar = tqdm(total=None, initial=self.state["dit_step"], desc="dit", disable=not self.cfg.progress)
        t_phase, last_save, last_sample = time.time(), time.time(), time.time()
        total = max(1.0, self.deadline - t_phase)
        first, t_probe = self.state["dit_step"], 0.0
        while self.state["dit_step"] < d.steps and not self.out_of_time():
            step = self.state["dit_step"]
            if step in (first + 3, first + 8):   # steps 0..2 compile; time 3..7 (synchronised at both ends)
                t_probe = self._step_time(step - first == 8, t_probe, opt)
            frac = (time.time() - t_phase) / total
            for g in opt.param_groups:
                g["lr"] = self.lr_at(d.lr, step, max(frac, step / d.steps), d.warmup)
            try:
                loss = self.dit_loss(d.batch, T, attn)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            except Exception as e:
                if attn.fallback is not None:
                    raise
                self.log({"event": "flex_failed", "why": str(e).splitlines()[0][:300]})
                attn = TrainAttention(clean, order, N, use_flex=False)
                continue
            gn = torch.nn.utils.clip_grad_norm_(params, d.grad_clip)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_p, raw_p, 1 - min(d.ema, (1 + step) / (10 + step)))
            self.state["dit_step"] = step + 1
            bar.update(1)
            if step % self.cfg.log_every == 0:
                own, seen, secs = self.own_stats
                self.log({"phase": "dit", "step": step, "loss": float(loss.detach()), "grad_norm": float(gn),
                          "lr": opt.param_groups[0]["lr"], "own_share": round(own / max(1, seen), 3),
                          "own_ms_per_step": round(1000 * secs * d.batch / max(1, seen), 1)})
                self.own_stats = [0, 0, 0.0]
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if time.time() - last_save > 60 * self.cfg.ckpt_every_min:
                self.save(opt)
                last_save = time.time()
            if time.time() - last_sample > 60 * self.cfg.sample_every_min:
                self.preview(f"step{step:07d}")
                last_sample = time.time()
        bar.close()
        self.save(opt)

    def _step_time(self, end: bool, start: float, opt: torch.optim.Optimizer) -> float:
        """At the probe's start return the time; at its end log the mean step time and, above max_step_s,
        save and stop with an error that says what to check."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.time()
        if not end:
            return now
        per = (now - start) / 5
        self.log({"event": "step_time", "s_per_step": round(per, 3)})
        if self.cfg.max_step_s is not None and per > self.cfg.max_step_s:
            self.save(opt)
            msg = (f"train.max_step_s: DiT steps average {per:.1f} s (bar {self.cfg.max_step_s} s); saved to "
                   f"{self.out}. Check the attention path (log events 'warning'/'flex_failed') before training on")
            self.log({"event": "too_slow", "why": msg})
            raise RuntimeError(msg)
        return now

    @torch.no_grad()
    def preview(self, name: str) -> dict[str, float]:
        """Held-out episode: prime `context` true frames, roll out with the true actions (EMA weights);
        PNG strip truth / model (every 4th frame), an mp4 of every frame side by side, PSNR vs truth and vs the
        copy-last-frame baseline."""
        from engine.metrics import mean_psnr
        from engine.world_model import NeuralEnv
        context, rollout = self.cfg.preview_context, self.cfg.preview_frames
        st = self.val_store if len(self.val_store.start) else self.train_store
        n = min(int(st.length[0]), context + rollout)
        if n <= context:
            return {}
        s = int(st.start[0])
        truth, acts = st.frames[s:s + n], st.actions[s:s + n]
        env = NeuralEnv(model=self.ema, device=str(self.device), steps=4, bf16=self.amp)
        env.sampler.reset(1234, st.prompts[0])
        env.prime(list(truth[:context]), list(acts[:context]))
        gen = np.stack([env.step(acts[i]) for i in range(context, n)])
        p_model = mean_psnr(gen, truth[context:])
        p_copy = mean_psnr(np.broadcast_to(truth[context - 1], gen.shape), truth[context:])
        p16 = mean_psnr(gen[:16], truth[context:context + 16])
        pick = slice(0, n - context, 4)
        strip = np.concatenate([np.concatenate(list(truth[context:][pick]), 1),
                                np.concatenate(list(gen[pick]), 1)], 0)
        from PIL import Image
        Image.fromarray(strip).save(self.out / "samples" / f"{name}.png")
        # the same rollout as a video, truth | model side by side at the world's 25 fps: motion (turns, walking,
        # a frozen or flickering rollout) shows in a video and not in every 4th frame
        from engine.video import Video
        video = Video(self.out / "samples" / f"{name}.mp4", fps=25.0, scale=2)
        for t, g in zip(truth[context:], gen):
            video.write(np.concatenate([t, g], 1))
        video.close()
        rec = {"preview": name, "rollout_psnr_db": round(p_model, 2), "rollout16_psnr_db": round(p16, 2),
               "copy_psnr_db": round(p_copy, 2)}
        self.log(rec)
        self.model.train()
        return rec

    def run(self) -> dict[str, Any]:
        self.data()
        self.train_ae()
        if self.stop:
            return self.state
        self.encode()
        self.train_dit()
        if not self.stop:
            self.preview("final")
        self.log({"event": "done", **self.state})
        return self.state


def train(cfg: TrainConfig) -> dict[str, Any]:
    return Trainer(cfg).run()


def _main() -> None:
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf/train", config_name="base")
    def run(c: Any) -> None:
        node = OmegaConf.merge(OmegaConf.structured(TrainConfig), c)
        print(json.dumps(train(OmegaConf.to_object(node)), default=str))  # type: ignore[arg-type]

    run()


if __name__ == "__main__":
    _main()
