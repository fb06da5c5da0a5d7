"""The inference stage: take the newest frame per source, preprocess, invoke, postprocess, hand
the result on. Capture threads only ever ``put`` into the inbox.

Two threads, so the stages overlap: ``prepare`` takes a frame from the inbox and preprocesses
it for the current model; ``inference`` invokes, postprocesses and publishes. Between them a
one-place handoff (``agent/inference/handoff.py``) keeps the order and loses no frame.

Hot swap is a small state machine: a new ``LoadedModel`` (built and warmed elsewhere) is
handed to ``swap``; the prepare thread takes it between two frames, and every prepared frame
carries the model it was prepared for, so the frame already prepared for the old model is
still inferred with it. During the probation frames that follow, repeated failures (an
exception or non-finite output) swap the previous model back; a frame prepared for the
model just rolled back goes back to the inbox and is prepared again.
"""

from __future__ import annotations

import dataclasses
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

import cv2
import numpy as np

from agent.capture.inbox import FrameInbox
from agent.contract import SourceStatsRecord
from agent.errors import EdgeError
from agent.inference.handoff import Handoff, Prepared, SourceStats, TensorRing
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
        self._model_lock = threading.Lock()
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
        self.sources = SourceStats()
        self._sources_prev: dict[str, int] = {}
        self._sources_prev_mono = time.monotonic()
        self._last_frame: Frame | None = None
        self.last_progress = time.monotonic()
        self.busy_since: float | None = None
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._handoff = Handoff()
        self._tensors = TensorRing()
        self._threads: list[threading.Thread] = []
        self._plan_decode(model)

    # -- control ---------------------------------------------------------------

    @property
    def model(self) -> LoadedModel:
        return self._model

    @property
    def last_frame(self) -> Frame | None:
        """The last frame taken for inference, as the camera saw it: a frame decoded reduced
        is decoded again in full from its JPEG (only when asked, e.g. for a snapshot)."""
        frame = self._last_frame
        if frame is None or frame.encoded is None:
            return frame
        full = cv2.imdecode(frame.encoded.reshape(-1), cv2.IMREAD_COLOR)
        return frame if full is None else dataclasses.replace(frame, data=full, encoded=None)

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
        self._threads = [threading.Thread(target=self._prepare_loop, name="prepare",
                                          daemon=True),
                         threading.Thread(target=self._inference_loop, name="inference",
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self.inbox.close()
        self._handoff.close()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _plan_decode(self, model: LoadedModel) -> None:
        """Tell the sources how far this model lets them reduce JPEG decoding."""
        pre = model.pre
        self.inbox.decode_plan = pre.decode_plan if isinstance(pre, FramePreprocessor) else None

    def source_records(self, names: list[str] | None = None) -> dict[str, SourceStatsRecord]:
        """Per registered source (or ``names``): labels/s since the previous call, counts
        and the capture-to-publish p99 (for ``StatsRecord.sources``)."""
        counts = self.inbox.source_counts()
        now = time.monotonic()
        dt = max(now - self._sources_prev_mono, 1e-6)
        self._sources_prev_mono = now
        out = {}
        for name in names if names is not None else list(counts):
            c = counts.get(name)
            inferences, latencies = self.sources.snapshot(name)
            before = self._sources_prev.get(name, 0)
            self._sources_prev[name] = inferences
            out[name] = SourceStatsRecord(
                fps=round((inferences - before) / dt, 2), frames=c.put if c else 0,
                inferences=inferences, dropped=c.overwritten if c else 0,
                capture_to_publish_ms_p99=round(float(np.percentile(latencies, 99)), 3)
                if latencies else None)
        return out

    def _running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def swap(self, model: LoadedModel, timeout: float = 5.0) -> bool:
        """Hand a built, warmed model over; True once frames are prepared for it. On False
        the swap is withdrawn: the old model keeps serving."""
        self._swap_done.clear()
        with self._model_lock:
            self._pending_swap = model
        self.inbox.wake()
        if not self._running():
            self._apply_swap()
            return True
        if self._swap_done.wait(timeout):
            return True
        with self._model_lock:
            if self._pending_swap is model:
                self._pending_swap = None
                return False
        return True  # taken between the wait and the lock

    def _apply_swap(self) -> None:
        with self._model_lock:
            new, self._pending_swap = self._pending_swap, None
            if new is None:
                return
            self._previous, self._model = self._model, new
            self._probation_left = self.probation_frames
            self._probation_failures = 0
            self._tensors.keep_only([self._previous, new])
            self._plan_decode(new)
        log.info("model %s %s is active", new.manifest.name, new.manifest.version)
        self._swap_done.set()

    # -- the prepare thread ----------------------------------------------------

    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._next_prepared()
                if item is not None and not self._handoff.put(item):
                    return
            except Exception:  # the loop must survive anything a frame or model does
                log.exception("unexpected error in the prepare loop")
                self.counters.inference_errors += 1

    def _next_prepared(self) -> Prepared | None:
        """The next frame from the inbox, preprocessed for the current model (None: nothing
        to infer this time)."""
        if self._pending_swap is not None:
            self._apply_swap()
        frame = self.inbox.take(self._idle_poll_s)
        if frame is None:
            return None
        if self._paused.is_set():
            self.counters.paused_skipped += 1
            return None
        return self._prepare(frame)

    def _prepare(self, frame: Frame) -> Prepared | None:
        now = time.monotonic()
        if now - frame.mono > self.max_frame_age_s:
            self.counters.dropped_stale += 1
            return None
        self._last_frame = frame
        with self._model_lock:
            model = self._model
            tensor = self._tensors.next(model)
        try:
            model.pre(frame.data, out=tensor)
        except EdgeError as exc:
            self.counters.frame_errors += 1
            log.warning("frame %s#%d rejected: %s", frame.source, frame.index, exc)
            return None
        return Prepared(frame, model, tensor, now, time.monotonic())

    # -- the inference thread --------------------------------------------------

    def _inference_loop(self) -> None:
        while not self._stop.is_set():
            item = self._handoff.take(self._idle_poll_s)
            if item is None:
                continue
            try:
                self._infer(item)
            except Exception:  # the loop must survive anything a frame or model does
                log.exception("unexpected error in the inference loop")
                self.counters.inference_errors += 1

    def _process(self, frame: Frame) -> None:
        """Prepare and infer one frame on the calling thread (pipeline not started)."""
        item = self._prepare(frame)
        if item is not None:
            self._infer(item)

    def _infer(self, item: Prepared) -> None:
        model, frame = item.model, item.frame
        if model is not self._model and model is not self._previous:
            self.inbox.put_back(frame)  # prepared for a model rolled back meanwhile
            return
        t1 = time.monotonic()
        self.busy_since = t1
        try:
            if model.manifest.runtime.reset_state_per_window:
                model.engine.reset_state()
            raw = model.engine.invoke(item.tensor)
            if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                raise FloatingPointError("model output contains NaN or inf")
        except Exception as exc:
            self.busy_since = None
            self._failed(model, exc)
            return
        t2 = time.monotonic()
        self.busy_since = None
        labels = model.post(raw)
        if model is self._model:
            self._passed_probation()
        inference_ms = (t2 - t1) * 1000.0
        self.counters.inferences += 1
        self.inference_ms.append(inference_ms)
        self.frame_age_ms.append((item.taken_mono - frame.mono) * 1000.0)
        if labels:
            self.top1.append(labels[0].score)
        self.last_progress = t2
        if self.counters.inferences == 1 and self._on_first:
            self._on_first()
        self._publish(Result(next(self._seq), frame.source, frame.index, frame.ts, frame.mono,
                             labels, inference_ms,
                             (item.prepared_mono - item.taken_mono) * 1000.0,
                             model.manifest.name, model.manifest.version))
        self.sources.published(frame.source, frame.mono)

    def _passed_probation(self) -> None:
        if self._probation_left > 0:
            self._probation_left -= 1

    def _failed(self, model: LoadedModel, exc: Exception) -> None:
        log.error("inference failed with model %s %s: %s", model.manifest.name,
                  model.manifest.version, exc)
        if model is self._model and self._probation_left > 0 and self._previous is not None:
            self._probation_failures += 1
            if self._probation_failures >= self.rollback_after_failures:
                self._roll_back(exc)
        self.counters.inference_errors += 1  # last: a rollback is done once this is counted

    def _roll_back(self, exc: Exception) -> None:
        with self._model_lock:
            bad, good = self._model, self._previous
            assert good is not None
            self._model, self._previous = good, None
            self._probation_left = 0
            self._tensors.keep_only([good])
            self._plan_decode(good)
        self.counters.rollbacks += 1
        reason = f"{type(exc).__name__}: {exc}"
        log.error("rolled back from %s %s to %s %s: %s", bad.manifest.name,
                  bad.manifest.version, good.manifest.name, good.manifest.version, reason)
        if self._on_rollback:
            self._on_rollback(bad, good, reason)
