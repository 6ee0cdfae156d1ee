"""Write a copy of an export with fixed temporal-decay slopes (ALiBi over frames, docs/MODEL.md):

    python tools/set_decay.py --checkpoint runs/base9/export --slopes 0.1,0.1,0.1,0.1,0,0 --out runs/run9_decay/export

The slopes (one per head, the same in every layer, logits per frame of distance) replace the checkpoint's own,
or switch the decay on for a checkpoint without it. Nothing else changes: the result is a checkpoint of the
same family that play, evaluate and bench load like any other, with a new sha256 and its origin in the
manifest's meta. Use it to measure what a decay does to a trained model before training with it
(`python -m engine.train ... decay_slopes=[...]` then adapts the network to the same fixed slopes).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.model.config import ModelConfig
from engine.model.dit import head_slopes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="export folder to start from")
    ap.add_argument("--slopes", required=True, help="comma-separated slope per head, e.g. 0.1,0.1,0.1,0.1,0,0")
    ap.add_argument("--out", required=True, help="folder to write (must not be --checkpoint)")
    a = ap.parse_args()
    if Path(a.out).resolve() == Path(a.checkpoint).resolve():
        ap.error("--out must differ from --checkpoint: the source export stays as it is")
    manifest, model, _ = load_checkpoint(a.checkpoint)
    cfg = ModelConfig.from_dict(manifest["config"])
    try:
        slopes = head_slopes(a.slopes, cfg.dit.heads, "--slopes")
    except ValueError as e:
        ap.error(str(e))
    config = manifest["config"]
    config["dit"]["temporal_decay"] = True
    model["dit.decay"] = slopes.expand(cfg.dit.depth, -1).clone()
    meta = {**manifest.get("meta", {}), "derived_from": manifest["sha256"], "decay_slopes": slopes.tolist()}
    sha = save_checkpoint(a.out, model, config, meta=meta, dtype=torch.float16)
    print(f"{a.out}: slopes {[round(x, 6) for x in slopes.tolist()]} in every layer, sha256 {sha} "
          f"(from {manifest['sha256']})")


if __name__ == "__main__":
    main()
