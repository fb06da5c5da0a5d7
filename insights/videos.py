"""Sample videos for the demo and the tests: the held-out digits as real MJPG files.

Each camera gets its own order of the digits (a different scene), and a camera may be
given a dirty lens from some frame on (blur and noise), so the report has a drift to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import agent

DIGITS = Path(agent.__file__).parent / "data" / "digits_sample.npz"
FRAME_SIZE = 112


@dataclass(frozen=True)
class VideoPlan:
    seed: int = 0                 # 0 keeps the file's order; others shuffle it
    fps: float = 10.0
    size: int = FRAME_SIZE
    frames: int | None = None     # default: every digit once
    hold: int = 1                 # each digit stays this many frames (a scene that lingers)
    dirty_from: float | None = None  # from this fraction of the video on, blur and noise
    dirt: float = 6.0             # blur sigma of the dirty lens (plus haze and noise)


def write_digits_video(path: Path, plan: VideoPlan = VideoPlan()) -> list[str]:
    """Write the video; returns the true digit of every frame."""
    sample = np.load(DIGITS)
    images, truth = sample["x"], sample["y"]
    order = np.arange(len(images))
    rng = np.random.default_rng(plan.seed)
    if plan.seed:
        rng.shuffle(order)
    order = np.repeat(order, plan.hold)
    if plan.frames is not None:
        order = np.resize(order, plan.frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), plan.fps,
                             (plan.size, plan.size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    dirty_at = None if plan.dirty_from is None else int(plan.dirty_from * len(order))
    try:
        for n, i in enumerate(order):
            big = cv2.resize(images[i], (plan.size, plan.size), interpolation=cv2.INTER_LINEAR)
            if dirty_at is not None and n >= dirty_at:
                big = _dirty(big, plan.dirt, rng)
            writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()
    return [str(int(truth[i])) for i in order]


def _dirty(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Blur, a grey haze and sensor noise: the model's confidence drops about 0.2."""
    blurred = cv2.GaussianBlur(img, (0, 0), sigma).astype(np.float32)
    noise = rng.normal(0, 50, img.shape)
    return np.clip(blurred * 0.4 + 80 + noise, 0, 255).astype(np.uint8)
