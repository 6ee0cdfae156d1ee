"""Checkpoints: safetensors shards of at most 16 MiB each plus a JSON manifest.

    <dir>/manifest.json           {"format", "version", "config": ModelConfig dict, "meta": {...},
                                   "shards": [{"file", "bytes", "sha256", "tensors": [names]}], "sha256"}
    <dir>/model-00000.safetensors ...        weights (fp16 for the bundle, fp32 while training)
    <dir>/optim-00000.safetensors ...        optimizer state (training checkpoints only; optional on load)

Why shards of 16 MiB: every file fits through size-limited transfers and git hosting without LFS. Why a
manifest with hashes: a truncated download or a half-copied directory is caught at load with the file named,
instead of surfacing as garbage frames. "sha256" (the checkpoint's identity, reported by NeuralEnv.info()) is
the sha256 of the shard hashes in order, so it is stable however the files were copied.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_NAME = "neural-engine-checkpoint"
FORMAT_VERSION = 1
SHARD_BYTES = 16 * 2 ** 20
MANIFEST = "manifest.json"
BUNDLED = Path(__file__).resolve().parent.parent / "worlds" / "maze" / "weights"
RETRAIN_HINT = "retrain with `python -m engine.train preset=base out=runs/base` (see docs/MODEL.md)"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def _hint(path: Path) -> str:
    if path.resolve().is_relative_to(BUNDLED):
        return "restore the bundled weights with `git checkout worlds/maze/weights` (or re-download them)"
    return f"copy the directory again completely, or {RETRAIN_HINT}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shards(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Greedy packing in name order; a tensor larger than `limit` is an error (none of ours comes close)."""
    out: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        n = t.numel() * t.element_size() + 1024   # + header allowance
        if n > limit:
            raise CheckpointError(f"tensor {name!r} ({n} bytes) exceeds the {limit}-byte shard limit")
        if size + n > limit and out[-1]:
            out.append({})
            size = 0
        out[-1][name] = t.detach().contiguous().cpu()
        size += n
    return out


def save_checkpoint(path: str | Path, model_state: dict[str, torch.Tensor], config: dict[str, Any],
                    meta: dict[str, Any] | None = None, optim_state: dict[str, torch.Tensor] | None = None,
                    dtype: torch.dtype | None = None, shard_bytes: int = SHARD_BYTES) -> str:
    """Write a checkpoint directory atomically (temp dir + rename) and return its sha256.

    `dtype` casts floating model tensors (torch.float16 for the bundle); optimizer tensors keep theirs."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        for f in tmp.iterdir():
            f.unlink()
    tmp.mkdir(parents=True, exist_ok=True)
    cast = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in model_state.items()}
    entries = []
    for prefix, state in (("model", cast), ("optim", optim_state or {})):
        if not state:
            continue
        for i, shard in enumerate(_shards(state, shard_bytes)):
            name = f"{prefix}-{i:05d}.safetensors"
            save_file(shard, str(tmp / name))
            entries.append({"file": name, "bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name),
                            "tensors": sorted(shard)})
    total = hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest()
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": config, "meta": meta or {},
                "shards": entries, "sha256": total}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    return total


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist; {_hint(path)}")
    if not mf.exists():
        raise CheckpointError(f"{mf} is missing: {path} is not a checkpoint directory; {_hint(path)}")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mf}: not valid JSON ({e.msg} at line {e.lineno}); {_hint(path)}") from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{mf}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                              f"this engine reads {FORMAT_NAME!r} version {FORMAT_VERSION}")
    for field in ("config", "shards", "sha256"):
        if field not in manifest:
            raise CheckpointError(f"{mf}: field {field!r} is missing; {_hint(path)}")
    return manifest


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", optimizer: bool = False,
                    verify: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (manifest, model tensors, optimizer tensors) after checking every shard's size and sha256.

    Optimizer shards are read only when `optimizer` is True (resuming); a bundle has none."""
    path = Path(path)
    manifest = read_manifest(path)
    model: dict[str, torch.Tensor] = {}
    optim: dict[str, torch.Tensor] = {}
    for e in manifest["shards"]:
        f = path / e["file"]
        is_optim = e["file"].startswith("optim-")
        if is_optim and not optimizer:
            continue
        if not f.exists():
            raise CheckpointError(f"{f} is missing (listed in {path / MANIFEST}); {_hint(path)}")
        size = f.stat().st_size
        if size != e["bytes"]:
            raise CheckpointError(f"{f} has {size} bytes, the manifest says {e['bytes']} (truncated or replaced); "
                                  f"{_hint(path)}")
        if verify and _sha256(f) != e["sha256"]:
            raise CheckpointError(f"{f}: sha256 does not match the manifest (corrupted or from another "
                                  f"checkpoint); {_hint(path)}")
        try:
            tensors = load_file(str(f), device=str(device))
        except Exception as ex:  # safetensors raises several types on bad headers
            raise CheckpointError(f"{f}: unreadable safetensors file ({ex}); {_hint(path)}") from None
        (optim if is_optim else model).update(tensors)
    return manifest, model, optim


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict with an error that names the checkpoint and the mismatched tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or bad:
        detail = "; ".join(x for x in (
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}" if missing else "",
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}" if extra else "",
            f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in bad[:3]]}" if bad else "")
            if x)
        raise CheckpointError(f"{where}: weights do not match the config in its manifest ({detail}); the files "
                              f"come from different checkpoints: {_hint(Path(where))}")
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k].to(t.dtype))


def load_model(path: str | Path | None = None, device: torch.device | str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Build the WorldModel described by a checkpoint and load its weights (float32). Returns (model, manifest)."""
    from engine.model import ModelConfig, WorldModel

    path = Path(path) if path else BUNDLED
    manifest, state, _ = load_checkpoint(path, device="cpu")
    try:
        cfg = ModelConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / MANIFEST}: bad model config ({e}); {_hint(path)}") from None
    model = WorldModel(cfg)
    load_state_into(model, state, str(path))
    return model.to(device).eval(), manifest
