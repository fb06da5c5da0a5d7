"""Capture stage: a camera source per thread, each feeding a latest-frame slot.

Capture never waits for inference: ``CameraSource`` reads as fast as its source delivers
and ``put``s every accepted frame into a sink (the agent's ``FrameInbox``), which keeps only
the newest and counts what it overwrote. The one exception is a file read at full speed,
which has no clock of its own and waits until its last frame was taken. Sources are
described by ``agent.sources.CameraOptions``.

Each frame is the array ``cv2.VideoCapture.read()`` allocates for it, marked read-only.
Decoding into a reused buffer would save that allocation, but the previous frame may still
sit in the slot or be in the consumer's hands (a snapshot keeps it for longer), so a buffer
could only be reused once nobody holds it; the copy-free handover is worth more here.
Frames dropped for ``target_fps`` are only grabbed, never converted to BGR.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from agent.capture.jpeg import JpegPackets
from agent.capture.sources import CameraOptions, CaptureFactory, VideoCaptureLike, open_capture
from agent.contract import SOURCE_ENDED, SOURCE_LOST, SOURCE_OK, SOURCE_STARTING
from agent.errors import SourceError
from agent.records import Frame

__all__ = ["ENDED", "LOST", "OK", "STARTING", "CameraOptions", "CameraSource", "FrameSink"]

log = logging.getLogger(__name__)

STARTING, OK, LOST, ENDED = SOURCE_STARTING, SOURCE_OK, SOURCE_LOST, SOURCE_ENDED
StateCallback = Callable[[str, str, "str | None"], None]

FAILED_READS_LIMIT = 5
"""Failed reads in a row before a stream counts as lost (or a file as ended). Fewer are
counted as corrupt frames: FFmpeg returns one failed read per undecodable MJPEG part."""
CORRUPT_IN_ROW_LIMIT = 50
"""Decoded but unusable frames in a row before the source is reopened."""
SHAPE_ADOPT_AFTER = 3
"""Frames of a new size in a row before the new size is taken as the stream's size."""


class FrameSink(Protocol):
    """Where a source puts frames: the agent's ``FrameInbox`` (agent/capture/inbox.py) or
    anything with a non-blocking ``put``. A sink with ``wait_taken(source, timeout)`` lets a
    file read at full speed wait until its last frame was taken."""

    def put(self, frame: Frame) -> None: ...


@dataclass
class _Pass:
    """Reading state of one open capture (one pass over a file)."""

    start_mono: float = field(default_factory=time.monotonic)
    position: int = 0
    good: int = 0
    failed_in_row: int = 0
    corrupt_in_row: int = 0
    shape: tuple[int, ...] | None = None
    odd_shape_run: int = 0


class CameraSource:
    """Reads one camera, file or stream on a daemon thread into a ``FrameSink``.

    States: ``starting`` until the first frame, ``ok`` while frames arrive, ``lost`` while
    the source cannot be opened or read (it is released and reopened with exponential
    backoff and jitter), ``ended`` when a file without ``loop`` is finished. ``on_state``
    (called on the capture thread, exceptions logged) sees every change. ``slot.put`` must
    never block: capture never waits for inference.

    For a health watchdog: ``last_frame_mono`` is when the last frame was accepted (the
    construction time until the first one);
    ``last_progress_mono`` is when the thread last came back from OpenCV or from a wait, so
    it goes stale only if the thread hangs inside OpenCV beyond the open and read timeouts;
    ``waiting_legitimately`` is True while it backs off, paces a file, or has ended.
    ``reconnects`` counts open attempts after the first (each failed retry counts).

    ``Frame.index`` is the frame's number within the file for files (0-based, restarting on
    every loop) and a running count of frames read for live sources (skipped ones included,
    so gaps show drops).
    """

    def __init__(self, opts: CameraOptions, slot: FrameSink, *,
                 on_state: StateCallback | None = None,
                 capture_factory: CaptureFactory | None = None,
                 rng: random.Random | None = None) -> None:
        self.options = opts
        self._slot = slot
        self._on_state = on_state
        self._factory = capture_factory
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = STARTING
        self.reason: str | None = None
        self.frames_read = 0
        self.frames_emitted = 0
        self.frames_skipped = 0
        self.corrupt_frames = 0
        self.reconnects = 0
        self.loops = 0
        self.last_frame_mono = time.monotonic()
        self.last_progress_mono = time.monotonic()
        self.waiting_legitimately = False
        self._live_index = 0
        self._jpeg_refused = False
        self._period = 1.0 / opts.target_fps if opts.target_fps else None
        self._next_emit = 0.0

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def state(self) -> str:
        return self._state

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise SourceError(f"camera source {self.name!r} was already started")
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to finish; True if it did within ``timeout``.

        A thread blocked in OpenCV ends once its open or read timeout expires.
        """
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- thread ----------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        opened_before = False
        while not self._stop.is_set():
            if opened_before:
                self.reconnects += 1
            opened_before = True
            try:
                cap = open_capture(self.options, self._factory)
            except Exception as exc:
                if not isinstance(exc, SourceError):
                    log.exception("camera %s: open failed", self.name)
                self._set_state(LOST, str(exc) if isinstance(exc, SourceError)
                                else f"cannot open: {type(exc).__name__}: {exc}")
                self.last_progress_mono = time.monotonic()
                attempt = self._backoff(attempt)
                continue
            good_before = self.frames_read
            outcome, reason = self._read_safely(cap)
            if outcome == "stop":
                return
            if outcome == ENDED:
                self.waiting_legitimately = True
                self._set_state(ENDED, reason)
                return
            if outcome == "reopen":
                opened_before = False
                continue
            self._set_state(LOST, reason)
            if self.frames_read > good_before:
                attempt = 0
            attempt = self._backoff(attempt)

    def _read_safely(self, cap: VideoCaptureLike) -> tuple[str, str | None]:
        """Run one session; any exception becomes a loss, never the end of the thread."""
        try:
            return self._session(cap)
        except Exception as exc:
            log.exception("camera %s: capture failed", self.name)
            return LOST, f"capture failed: {type(exc).__name__}: {exc}"
        finally:
            try:
                cap.release()
            except Exception:
                log.exception("camera %s: release failed", self.name)

    def _backoff(self, attempt: int) -> int:
        opts = self.options
        ceiling = min(opts.reconnect_max_s, opts.reconnect_min_s * 2 ** min(attempt, 30))
        delay = self._rng.uniform(max(opts.reconnect_min_s, ceiling / 2), ceiling)
        log.info("camera %s: reconnecting in %.2f s", self.name, delay)
        self.waiting_legitimately = True
        try:
            self._stop.wait(delay)
        finally:
            self.waiting_legitimately = False
            self.last_progress_mono = time.monotonic()
        return attempt + 1

    def _session(self, cap: VideoCaptureLike) -> tuple[str, str | None]:
        is_file = self.options.kind == "file"
        fps = self._file_fps(cap) if is_file and self.options.realtime else None
        p = _Pass()
        backpressure = is_file and not self.options.realtime and \
            getattr(self._slot, "wait_taken", None)
        packets = None if self.options.kind == "device" or self._jpeg_refused else \
            JpegPackets.open(cap, getattr(self._slot, "decode_plan", None))
        while not self._stop.is_set():
            if fps and p.failed_in_row == 0 and not self._pace(p, fps):
                break
            if backpressure and not self._wait_taken(backpressure):
                break
            emit = self._due()
            t0 = time.monotonic()
            ok, img = cap.read() if emit else (cap.grab(), None)
            encoded = None
            if ok and emit and packets is not None:
                encoded, img = img, packets.decode(img)
                if img is None and p.good == 0:
                    return self._refuse_jpeg()
            self.last_progress_mono = time.monotonic()
            elapsed = self.last_progress_mono - t0
            index = p.position
            p.position += 1
            if not ok:
                outcome = self._failed_read(cap, p, elapsed, is_file)
                if outcome == ("rewind", None):
                    p = _Pass()
                elif outcome is not None:
                    return outcome
                continue
            self.corrupt_frames += p.failed_in_row
            p.failed_in_row = 0
            p.good += 1
            self.frames_read += 1
            if not is_file:
                index = self._live_index
                self._live_index += 1
            if not emit:
                self.frames_skipped += 1
                continue
            problem = self._accept(img, p, index, encoded)
            if problem:
                return LOST, problem
        return "stop", None

    def _refuse_jpeg(self) -> tuple[str, str | None]:
        """The first packet did not decode as JPEG: reopen, and let FFmpeg decode from now on."""
        log.warning("camera %s: packets are not plain JPEG; decoding through FFmpeg",
                    self.name)
        self._jpeg_refused = True
        return "reopen", None

    def _wait_taken(self, wait_taken: Callable[[str, float], bool]) -> bool:
        """A file at full speed reads the next frame once the last one was taken; False if
        stopped meanwhile."""
        self.waiting_legitimately = True
        try:
            while not self._stop.is_set():
                if wait_taken(self.name, 0.1):
                    return True
                self.last_progress_mono = time.monotonic()
            return False
        finally:
            self.waiting_legitimately = False
            self.last_progress_mono = time.monotonic()

    def _failed_read(self, cap: VideoCaptureLike, p: _Pass, elapsed: float,
                     is_file: bool) -> tuple[str, str | None] | None:
        p.failed_in_row += 1
        if is_file:
            return self._end_of_file(cap, p) if p.failed_in_row >= FAILED_READS_LIMIT else None
        if elapsed >= 0.9 * self.options.read_timeout_ms / 1000:
            return LOST, f"no frame from {self.options.display_uri} for {elapsed:.1f} s"
        if p.failed_in_row >= FAILED_READS_LIMIT:
            return LOST, f"{p.failed_in_row} reads from {self.options.display_uri} failed in a row"
        return None

    def _end_of_file(self, cap: VideoCaptureLike, p: _Pass) -> tuple[str, str | None]:
        if p.good == 0:
            return LOST, f"no readable frame in {self.options.display_uri}"
        if not self.options.loop:
            return ENDED, f"end of file after {p.position - p.failed_in_row} frames"
        self.loops += 1
        if cap.set(cv2.CAP_PROP_POS_FRAMES, 0) and cap.get(cv2.CAP_PROP_POS_FRAMES) == 0:
            return "rewind", None
        return "reopen", None

    def _accept(self, img: np.ndarray | None, p: _Pass, index: int,
                encoded: np.ndarray | None = None) -> str | None:
        """Publish a decoded frame, or count it as corrupt; a reason when the source is hopeless."""
        problem = _frame_problem(img, p)
        if problem is not None or img is None:
            self.corrupt_frames += 1
            p.corrupt_in_row += 1
            log.debug("camera %s: skipped frame %d: %s", self.name, index, problem)
            if p.corrupt_in_row >= CORRUPT_IN_ROW_LIMIT:
                return f"{p.corrupt_in_row} unusable frames in a row (last: {problem})"
            return None
        p.corrupt_in_row = 0
        img.flags.writeable = False
        if encoded is not None:
            encoded.flags.writeable = False
        frame = Frame(source=self.name, index=index, ts=time.time(), mono=time.monotonic(),
                      data=img, encoded=encoded)
        self.last_frame_mono = frame.mono
        self.frames_emitted += 1
        self._slot.put(frame)
        if self._state != OK:
            self._set_state(OK, None)
        return None

    def _due(self) -> bool:
        """Whether this frame is emitted under ``target_fps`` (wall clock, no drift)."""
        if self._period is None:
            return True
        now = time.monotonic()
        if now < self._next_emit:
            return False
        self._next_emit = max(self._next_emit + self._period, now)
        return True

    def _pace(self, p: _Pass, fps: float) -> bool:
        """Wait until this file frame is due at the file's rate; False if stopped meanwhile."""
        now = time.monotonic()
        due = p.start_mono + p.position / fps
        if due < now - 1.0:
            p.start_mono = now - p.position / fps
            return True
        if due <= now:
            return True
        self.waiting_legitimately = True
        try:
            return not self._stop.wait(due - now)
        finally:
            self.waiting_legitimately = False
            self.last_progress_mono = time.monotonic()

    def _file_fps(self, cap: VideoCaptureLike) -> float:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 0.1 <= fps <= 1000:
            log.warning("camera %s: file reports %.3g fps; pacing at 25", self.name, fps)
            return 25.0
        return fps

    def _set_state(self, state: str, reason: str | None) -> None:
        if state == self._state:
            return
        self._state = state
        self.reason = reason
        level = logging.WARNING if state == LOST else logging.INFO
        log.log(level, "camera %s: %s%s", self.name, state, f" ({reason})" if reason else "")
        if self._on_state is None:
            return
        try:
            self._on_state(self.name, state, reason)
        except Exception:
            log.exception("camera %s: on_state callback failed", self.name)


def _frame_problem(img: np.ndarray | None, p: _Pass) -> str | None:
    if img is None or img.size == 0:
        return "empty frame"
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        return f"not a BGR or gray uint8 image (shape {img.shape}, dtype {img.dtype})"
    if p.shape is None or img.shape == p.shape:
        p.shape = img.shape
        p.odd_shape_run = 0
        return None
    p.odd_shape_run += 1
    if p.odd_shape_run >= SHAPE_ADOPT_AFTER:
        log.info("frame size changed from %s to %s", p.shape, img.shape)
        p.shape = img.shape
        p.odd_shape_run = 0
        return None
    return f"frame is {img.shape[1]}x{img.shape[0]}, the stream is {p.shape[1]}x{p.shape[0]}"
