"""What passes between the pipeline's two threads, and the per-source figures it keeps.

The prepare thread takes a frame, preprocesses it into one of a few reused tensors and hands
it over through a one-place ``Handoff``; the inference thread invokes it. So the preprocess of
frame n+1 overlaps the invoke of frame n, and a frame is never dropped between the two: the
prepare thread waits with its prepared frame until the place is free. Taking before waiting
keeps a frame out of the inbox one invoke earlier (a file read at full speed decodes the next
one meanwhile; a live source's frame is not overwritten while a thread waits to be scheduled),
at the cost of at most one invoke of extra age when the model is the bottleneck.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.records import Frame

TENSORS_PER_MODEL = 3
"""Enough for one tensor in the handoff, one being copied into the interpreter and one being
written: the one written is always the third oldest, which the inference thread has finished
copying before it took the second."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A frame and its input tensor, prepared for ``model`` (a ``LoadedModel``)."""

    frame: Frame
    model: Any
    tensor: np.ndarray
    taken_mono: float
    prepared_mono: float


class Handoff:
    """One place between two threads. ``put`` waits while it is full; ``take`` while empty."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Prepared | None = None
        self._closed = False

    def put(self, item: Prepared) -> bool:
        """False if closed before the place was free."""
        with self._cond:
            while self._item is not None and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._item = item
            self._cond.notify_all()
            return True

    def take(self, timeout: float) -> Prepared | None:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            if item is not None:
                self._cond.notify_all()
            return item

    @property
    def full(self) -> bool:
        return self._item is not None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class TensorRing:
    """A few reused input tensors per model, handed out in turn (see ``TENSORS_PER_MODEL``)."""

    def __init__(self) -> None:
        self._rings: dict[int, tuple[list[np.ndarray], list[int]]] = {}

    def next(self, model: Any) -> np.ndarray:
        key = id(model.pre)
        ring = self._rings.get(key)
        if ring is None:
            spec = model.manifest.input
            tensors = [np.zeros(spec.shape, np.dtype(spec.dtype))
                       for _ in range(TENSORS_PER_MODEL)]
            ring = self._rings[key] = (tensors, [0])
        tensors, turn = ring
        turn[0] = (turn[0] + 1) % len(tensors)
        return tensors[turn[0]]

    def keep_only(self, models: list[Any]) -> None:
        """Forget the tensors of models no longer in use (after a swap or a rollback)."""
        keep = {id(m.pre) for m in models if m is not None}
        for key in [k for k in self._rings if k not in keep]:
            del self._rings[key]


@dataclass
class _SourceFigures:
    inferences: int = 0
    latencies_ms: deque[float] | None = None


class SourceStats:
    """Per source: inferences and recent capture-to-publish latencies (for a p99), for at most
    ``max_sources`` names (the one idle the longest is forgotten first)."""

    def __init__(self, max_sources: int = 256, window: int = 512) -> None:
        self.max_sources = max_sources
        self._window = window
        self._figures: OrderedDict[str, _SourceFigures] = OrderedDict()
        self._lock = threading.Lock()

    def published(self, source: str, capture_mono: float) -> None:
        latency = (time.monotonic() - capture_mono) * 1000.0
        with self._lock:
            f = self._figures.pop(source, None)
            if f is None:
                f = _SourceFigures(0, deque(maxlen=self._window))
                if len(self._figures) >= self.max_sources:
                    self._figures.popitem(last=False)
            self._figures[source] = f
            f.inferences += 1
            assert f.latencies_ms is not None
            f.latencies_ms.append(latency)

    def snapshot(self, source: str) -> tuple[int, list[float]]:
        """(inferences, recent capture-to-publish latencies in ms) of one source."""
        with self._lock:
            f = self._figures.get(source)
            if f is None or f.latencies_ms is None:
                return 0, []
            return f.inferences, list(f.latencies_ms)
