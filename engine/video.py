"""An mp4 written frame by frame (cv2, mp4v): a recorded session's video.mp4 beside its episode, so a session
is watchable as it stands (controls/recorder.py), and the trainer's preview videos (engine/train.py).

The frames are scaled up (nearest neighbour) because players blur or refuse tiny videos. The episode
frames stay the ground truth; the video is a convenience and never blocks a recording or a training run: if
the codec is missing it is skipped with one notice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.env import Frame


class Video:
    def __init__(self, path: Path, fps: float, scale: int = 4) -> None:
        self.path, self.fps, self.scale = path, float(fps), max(1, int(scale))
        self._writer = None
        self.disabled = False

    def write(self, frame: Frame) -> None:
        if self.disabled:
            return
        import cv2

        big = np.repeat(np.repeat(frame, self.scale, axis=0), self.scale, axis=1) if self.scale > 1 else frame
        if self._writer is None:
            h, w = big.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                print(f"notice: cannot write {self.path} (no mp4v encoder); going on without the video")
                self.disabled, self._writer = True, None
                return
        self._writer.write(np.ascontiguousarray(big[:, :, ::-1]))

    def close(self) -> None:
        """Finalise the file (writes the mp4 index); safe to call twice."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
