"""ModelConfig: every size of the world model, stored inside each checkpoint.

Nothing about size is hard-coded in the networks: a checkpoint carries its ModelConfig (as JSON in the
manifest), and loading rebuilds the exact network from it, so any checkpoint of the family loads. Named presets
are data: "tiny" runs CPU tests in seconds, "base" is the bundled model (<= 40 MiB in fp16).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass
class AEConfig:
    """Conv frame autoencoder: (H, W, 3) <-> (H/2^k, W/2^k, latent_ch), k = len(channels) - 1."""
    image_size: int = 128
    latent_ch: int = 16
    channels: tuple[int, ...] = (32, 64, 128, 192)   # per resolution level, highest resolution first
    enc_blocks: int = 1                             # residual blocks per level in the encoder
    dec_blocks: int = 1                             # ... and in the decoder (the real-time half)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.channels) - 1)


@dataclass
class DiTConfig:
    """Causal video DiT over latent tokens. head_dim is 64 for the attention kernels and the cache."""
    width: int = 384
    depth: int = 8
    heads: int = 6
    head_dim: int = 64
    mlp_ratio: float = 2.75
    cross_every: int = 2          # cross-attention to the prompt in blocks 0, k, 2k...; the pooled prompt
                                  # also enters the conditioning vector of every block
    patch: int = 1                # latent patch size: 16x16 latents, patch 1 -> 256 tokens per frame
    rope_time_dims: int = 32      # head-dim channels rotated by the frame index (relative distances to 1000s)
    rope_time_theta: float = 10000.0
    rope_space_theta: float = 100.0  # remaining channels split evenly between height and width
    rope_time_free_heads: int = 0  # the last this many heads of every block: no rotation by the frame index,
                                   # so a key matches by content and 2-D position at any time distance
                                   # (retrieval of a place seen long ago); 0: every head rotates with time
    rope_heading_heads: int = 0   # the last this many heads: their time channels rotate with the view's heading
                                  # instead of the frame index (integer multiples 1..n of the yaw angle, so a
                                  # full turn returns the same rotation): a key matches a query that looks the
                                  # same way, however long ago (docs/MODEL.md, heading rotary); after the
                                  # time-free heads, never overlapping them
    heading_per_action: tuple[float, ...] = ()  # degrees of yaw per unit of each action entry (the world's
                                  # turn rates, e.g. worlds/maze/physics.HEADING_PER_ACTION); the heading is
                                  # their running sum over the frames' actions
    temporal_decay: bool = False  # a learned logit slope per layer and head: a key d frames back gets
                                  # -slope x d (ALiBi over frames), so most heads can discount far frames and a
                                  # long context stops diluting the near ones (docs/MODEL.md, temporal decay)


@dataclass
class PromptConfig:
    """Prompt encoder: learned word embeddings over the world's vocabulary + a small transformer."""
    width: int = 192
    depth: int = 2
    heads: int = 3
    max_tokens: int = 8
    vocabulary: dict[str, list[str]] = field(default_factory=dict)  # category -> words; first word = default


@dataclass
class ModelConfig:
    world: str = "maze"
    ae: AEConfig = field(default_factory=AEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    action_dim: int = 8
    num_keys: int = 7
    context_sigma: float = 0.0    # noise level of committed (context) frames at inference; set by the trainer
    shift: float = 1.0            # sampler timestep shift the model was trained for (1 = uniform steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelConfig":
        """Rebuild from `to_dict` output; unknown fields are an error naming them (a newer checkpoint)."""
        def build(cls: type, sub: dict[str, Any]) -> Any:
            names = {f.name for f in fields(cls)}
            extra = set(sub) - names
            if extra:
                raise ValueError(f"checkpoint config for {cls.__name__} has unknown fields {sorted(extra)}; "
                                 f"this engine version cannot build it")
            kw = dict(sub)
            for name in ("channels", "heading_per_action"):
                if name in kw:
                    kw[name] = tuple(kw[name])
            return cls(**kw)
        d = dict(d)
        return build(ModelConfig, {**d, "ae": build(AEConfig, d.get("ae", {})), "dit": build(DiTConfig, d.get("dit", {})),
                                   "prompt": build(PromptConfig, d.get("prompt", {}))})


def maze_vocabulary() -> dict[str, list[str]]:
    from worlds.maze.style import PROMPT_VOCABULARY
    return {c: list(ws) for c, ws in PROMPT_VOCABULARY.items()}


def preset(name: str, vocabulary: dict[str, list[str]] | None = None, **overrides: Any) -> ModelConfig:
    """A named size. `vocabulary` defaults to the maze's prompt words."""
    vocab = maze_vocabulary() if vocabulary is None else vocabulary
    if name == "tiny":
        cfg = ModelConfig(ae=AEConfig(latent_ch=4, channels=(8, 16, 16, 32)),
                          dit=DiTConfig(width=64, depth=2, heads=1, mlp_ratio=2.0, cross_every=1),
                          prompt=PromptConfig(width=32, depth=1, heads=2, vocabulary=vocab))
    elif name == "base":
        cfg = ModelConfig(prompt=PromptConfig(vocabulary=vocab))
    else:
        raise ValueError(f"unknown model preset {name!r}; available: tiny, base")
    return replace(cfg, **overrides) if overrides else cfg
