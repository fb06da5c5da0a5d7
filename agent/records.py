"""Frozen records that cross thread boundaries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured image (BGR uint8 as OpenCV decodes it) or one sequence window (float32).

    ``ts`` is the capture time (Unix seconds, ``time.time()``); ``mono`` the same instant on
    the monotonic clock, used for ages and latencies. ``truth`` carries a known label (demo,
    tests); ``index`` is the frame's number in its source.
    """

    source: str
    index: int
    ts: float
    mono: float
    data: np.ndarray
    truth: str | None = None
    encoded: np.ndarray | None = None
    """The JPEG the frame was decoded from, when ``data`` was decoded reduced (see
    agent/capture/jpeg.py): a snapshot decodes it in full."""


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class Result:
    seq: int
    source: str
    frame_index: int
    frame_ts: float
    frame_mono: float
    labels: tuple[LabelScore, ...]
    inference_ms: float
    preprocess_ms: float
    model_name: str
    model_version: str
