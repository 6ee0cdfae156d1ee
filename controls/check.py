"""Frame-by-frame comparison of a replay with its recording: PSNR per frame, a JSON report, a PNG strip.

PSNR because it is the standard, threshold-friendly measure of "the same picture" (identical frames are
inf dB; small numeric drift of the model on another kernel stays far above 40 dB; a wrong frame falls to
~10-20 dB). The strip shows the worst frames as recorded | replayed | diff (amplified), the quickest way
to see what broke.
"""
from __future__ import annotations

import heapq
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from engine.env import Frame
from engine.episode import EpisodeReader
from engine.metrics import psnr  # the project's one PSNR: inf for identical frames


def _db(v: float) -> float | str:
    return "inf" if math.isinf(v) else round(v, 3)


class Checker:
    """Feed it every replayed frame (`on_frame`); it keeps the PSNRs and the `worst` frames."""

    def __init__(self, reader: EpisodeReader, threshold_db: float, worst: int = 4) -> None:
        self.reader, self.threshold, self.worst_n = reader, float(threshold_db), worst
        self.psnr: list[float] = []
        self.pose_err: list[float] = []
        self._worst: list[tuple[float, int, Frame]] = []   # min-heap on -psnr: the lowest PSNRs

    def on_frame(self, index: int, frame: Frame, info: dict[str, Any]) -> None:
        if index >= self.reader.num_frames:
            return
        p = psnr(self.reader.frame(index), frame)
        self.psnr.append(p)
        pose = self.reader.trace[index].get("pose")
        if pose is not None and "pose" in info:
            self.pose_err.append(float(np.max(np.abs(np.asarray(pose, float) - np.asarray(info["pose"], float)))))
        if not math.isinf(p):
            item = (-p, index, frame.copy())
            if len(self._worst) < self.worst_n:
                heapq.heappush(self._worst, item)
            elif item[0] > self._worst[0][0]:
                heapq.heapreplace(self._worst, item)

    def first_below(self) -> int | None:
        return next((i for i, p in enumerate(self.psnr) if p < self.threshold), None)

    def strip(self, path: Path, scale: int = 4) -> Path | None:
        """PNG rows of the worst frames: recorded | replayed | |diff| x4, each scaled up; None if none differ."""
        if not self._worst:
            return None
        import cv2

        rows = []
        for neg_p, i, replayed in sorted(self._worst, key=lambda t: t[1]):
            rec = self.reader.frame(i)
            diff = np.clip(np.abs(rec.astype(np.int16) - replayed.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
            row = np.concatenate([rec, np.full((rec.shape[0], 2, 3), 255, np.uint8), replayed,
                                  np.full((rec.shape[0], 2, 3), 255, np.uint8), diff], axis=1)
            row = np.repeat(np.repeat(row, scale, 0), scale, 1)
            row = np.ascontiguousarray(row[:, :, ::-1])
            cv2.putText(row, f"frame {i}  {-neg_p:.1f} dB  (recorded / replayed / diff x4)", (4, 14),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (0, 255, 255), 1, cv2.LINE_AA)
            rows.append(row)
            rows.append(np.full((4, row.shape[1], 3), 255, np.uint8))
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.concatenate(rows[:-1], axis=0))
        return path

    def report(self, expected_frames: int, **extra: Any) -> dict[str, Any]:
        first = self.first_below()
        finite = [p for p in self.psnr if not math.isinf(p)]
        complete = len(self.psnr) >= expected_frames
        out: dict[str, Any] = {
            "session": str(self.reader.path),
            "passed": first is None and complete,
            "threshold_db": self.threshold,
            "frames_recorded": self.reader.num_frames,
            "frames_compared": len(self.psnr),
            "frames_expected": expected_frames,
            "first_below": None if first is None else {"frame": first, "psnr_db": _db(self.psnr[first])},
            "frames_below": [i for i, p in enumerate(self.psnr) if p < self.threshold],
            "min_psnr_db": _db(min(self.psnr)) if self.psnr else None,
            "mean_finite_psnr_db": round(float(np.mean(finite)), 3) if finite else None,
            "identical_frames": len(self.psnr) - len(finite),
            "max_pose_error": max(self.pose_err) if self.pose_err else None,
            "psnr_db": [_db(p) for p in self.psnr],
        }
        if not complete:
            out["incomplete"] = f"only {len(self.psnr)} of {expected_frames} frames were replayed"
        out.update(extra)
        return out


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
