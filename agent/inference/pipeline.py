"""The inference stage: take the newest frame per source, preprocess, invoke, postprocess, hand
the result on. One thread per model; capture threads only ever ``put`` into the inbox.

Hot swap is a small state machine: a new ``LoadedModel`` (built and warmed elsewhere) is
handed to ``swap``; the thread takes it between two frames; during the probation frames that
follow, repeated failures (an exception or non-finite output) swap the previous model back.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.capture.inbox import FrameInbox
from agent.errors import EdgeError
from agent.inference.postprocess import Postprocessor
from agent.inference.preprocess import FramePreprocessor, WindowPreprocessor
from agent.manifest import ModelManifest
from agent.records import Frame, Result

log = logging.getLogger(__name__)


class InferenceBackend(Protocol):
    def invoke(self, x: np.ndarray) -> np.ndarray: ...
    def reset_state(self) -> None: ...


@dataclass(frozen=True)
class LoadedModel:
    """Everything the inference thread needs for one model, built before it is swapped in."""

    manifest: ModelManifest
    folder: Path
    engine: InferenceBackend
    pre: FramePreprocessor | WindowPreprocessor
    post: Postprocessor

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.manifest.name, self.manifest.version, self.manifest.sha256)


def build_loaded_model(manifest: ModelManifest, folder: Path, engine: InferenceBackend,
                       top_k: int, min_score: float) -> LoadedModel:
    if manifest.task == "sequence":
        assert manifest.window is not None
        pre: FramePreprocessor | WindowPreprocessor = WindowPreprocessor(manifest.input,
                                                                         manifest.window)
    else:
        pre = FramePreprocessor(manifest.input)
    post = Postprocessor(manifest.output, manifest.labels, top_k=top_k, min_score=min_score)
    return LoadedModel(manifest, folder, engine, pre, post)


@dataclass
class PipelineCounters:
    inferences: int = 0
    dropped_stale: int = 0
    frame_errors: int = 0
    inference_errors: int = 0
    paused_skipped: int = 0
    rollbacks: int = 0


class Pipeline:
    def __init__(self, model: LoadedModel, inbox: FrameInbox,
                 publish: Callable[[Result], None], *, max_frame_age_ms: float = 1000.0,
                 rollback_after_failures: int = 3, probation_frames: int = 20,
                 on_rollback: Callable[[LoadedModel, LoadedModel, str], None] | None = None,
                 on_first_inference: Callable[[], None] | None = None,
                 idle_poll_s: float = 0.2) -> None:
        self._model = model
        self._previous: LoadedModel | None = None
        self._pending_swap: LoadedModel | None = None
        self._swap_done = threading.Event()
        self.inbox = inbox
        self._publish = publish
        self.max_frame_age_s = max_frame_age_ms / 1000.0
        self.rollback_after_failures = rollback_after_failures
        self.probation_frames = probation_frames
        self._on_rollback = on_rollback
        self._on_first = on_first_inference
        self._idle_poll_s = idle_poll_s
        self._probation_left = 0
        self._probation_failures = 0
        self._seq = itertools.count(1)
        self.run_id = uuid.uuid4().hex[:12]
        self.counters = PipelineCounters()
        self.inference_ms: deque[float] = deque(maxlen=512)
        self.frame_age_ms: deque[float] = deque(maxlen=512)
        self.top1: deque[float] = deque(maxlen=512)
        self.last_frame: Frame | None = None
        self.last_progress = time.monotonic()
        self.busy_since: float | None = None
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        return self._model

    @property
    def previous_model(self) -> LoadedModel | None:
        return self._previous

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self.inbox.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def swap(self, model: LoadedModel, timeout: float = 5.0) -> bool:
        """Hand a built, warmed model to the inference thread; True once it is in use."""
        self._swap_done.clear()
        self._pending_swap = model
        self.inbox.wake()
        if self._thread is None or not self._thread.is_alive():
            self._apply_swap()
            return True
        return self._swap_done.wait(timeout)

    def _apply_swap(self) -> None:
        new, self._pending_swap = self._pending_swap, None
        if new is None:
            return
        self._previous, self._model = self._model, new
        self._probation_left = self.probation_frames
        self._probation_failures = 0
        log.info("model %s %s is active", new.manifest.name, new.manifest.version)
        self._swap_done.set()

    # -- the loop --------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._pending_swap is not None:
                self._apply_swap()
            frame = self.inbox.take(self._idle_poll_s)
            if frame is None:
                continue
            if self._paused.is_set():
                self.counters.paused_skipped += 1
                continue
            try:
                self._process(frame)
            except Exception:  # the loop must survive anything a frame or model does
                log.exception("unexpected error in the inference loop")
                self.counters.inference_errors += 1

    def _process(self, frame: Frame) -> None:
        now = time.monotonic()
        age = now - frame.mono
        if age > self.max_frame_age_s:
            self.counters.dropped_stale += 1
            return
        self.last_frame = frame
        model = self._model
        try:
            x = model.pre(frame.data)
        except EdgeError as exc:
            self.counters.frame_errors += 1
            log.warning("frame %s#%d rejected: %s", frame.source, frame.index, exc)
            return
        t1 = time.monotonic()
        self.busy_since = t1
        try:
            if model.manifest.runtime.reset_state_per_window:
                model.engine.reset_state()
            raw = model.engine.invoke(x)
            if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                raise FloatingPointError("model output contains NaN or inf")
        except Exception as exc:
            self.busy_since = None
            self._failed(model, exc)
            return
        t2 = time.monotonic()
        self.busy_since = None
        labels = model.post(raw)
        self._passed_probation()
        inference_ms = (t2 - t1) * 1000.0
        self.counters.inferences += 1
        self.inference_ms.append(inference_ms)
        self.frame_age_ms.append(age * 1000.0)
        if labels:
            self.top1.append(labels[0].score)
        self.last_progress = t2
        if self.counters.inferences == 1 and self._on_first:
            self._on_first()
        self._publish(Result(next(self._seq), frame.source, frame.index, frame.ts, frame.mono,
                             labels, inference_ms, (t1 - now) * 1000.0,
                             model.manifest.name, model.manifest.version))

    def _passed_probation(self) -> None:
        if self._probation_left > 0:
            self._probation_left -= 1

    def _failed(self, model: LoadedModel, exc: Exception) -> None:
        self.counters.inference_errors += 1
        log.error("inference failed with model %s %s: %s", model.manifest.name,
                  model.manifest.version, exc)
        if self._probation_left <= 0 or self._previous is None:
            return
        self._probation_failures += 1
        if self._probation_failures >= self.rollback_after_failures:
            bad, good = self._model, self._previous
            self._model, self._previous = good, None
            self._probation_left = 0
            self.counters.rollbacks += 1
            reason = f"{type(exc).__name__}: {exc}"
            log.error("rolled back from %s %s to %s %s: %s", bad.manifest.name,
                      bad.manifest.version, good.manifest.name, good.manifest.version, reason)
            if self._on_rollback:
                self._on_rollback(bad, good, reason)
