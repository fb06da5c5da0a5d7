"""Real video files for capture tests, written with ``cv2.VideoWriter``.

Each synthetic frame carries its own number as a row of black/white blocks, coarse
enough to survive JPEG compression, so a test can read a decoded frame back to the
index it was written with (``frame_number``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

BITS = 12


def numbered_frame(n: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A BGR frame whose top band encodes ``n`` in ``BITS`` black/white blocks."""
    img = np.full((height, width, 3), 96, np.uint8)
    block = width // BITS
    band = max(8, height // 4)
    for bit in range(BITS):
        if (n >> bit) & 1:
            img[:band, bit * block:(bit + 1) * block] = 255
        else:
            img[:band, bit * block:(bit + 1) * block] = 0
    img[band:, :, 1] = (n * 7) % 256
    return img


def frame_number(img: np.ndarray) -> int:
    """Read back the number written by ``numbered_frame`` (tolerant of JPEG loss)."""
    height, width = img.shape[:2]
    block = width // BITS
    band = max(8, height // 4)
    n = 0
    for bit in range(BITS):
        cell = img[2:band - 2, bit * block + 2:(bit + 1) * block - 2]
        if float(cell.mean()) > 128:
            n |= 1 << bit
    return n


def numbered_frames(count: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    return [numbered_frame(i, width, height) for i in range(count)]


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float,
                fourcc: str = "MJPG") -> Path:
    """Write BGR ``frames`` to ``path`` (MJPG ``.avi`` by default) and return the path."""
    path = Path(path)
    frames = list(frames)
    if not frames:
        raise ValueError("write_video needs at least one frame")
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter could not open {path} with {fourcc}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def write_numbered_video(path: str | Path, count: int, fps: float,
                         size: Sequence[int] = (160, 120)) -> Path:
    """A video of ``count`` numbered frames (see ``numbered_frame``)."""
    return write_video(path, numbered_frames(count, size[0], size[1]), fps)
