"""The agent's frame inbox: where every source puts frames and the inference side takes them.

Capture threads (and the MQTT sample handler) only ever ``put``; one consumer ``take``s. Per
source it keeps the newest frame (depth 1) or a short FIFO (sequence streams), so a slow model
never makes capture wait. Sources are served round robin: a source with a frame waiting joins
the end of the line, so no source can starve another however fast it delivers.

Registered sources (cameras) stay for the agent's life. Any other name (a stream on
``in/<stream>``) gets a queue on its first frame; beyond ``max_streams`` of them the one idle
the longest is evicted (its waiting frames counted as dropped), so a flood of new names
cannot grow memory. Evictions are logged at most once per ``log_interval_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from agent.capture.jpeg import DecodePlan
from agent.records import Frame

log = logging.getLogger(__name__)


@dataclass
class SourceCounts:
    """Per-source counters, read by stats."""

    put: int = 0
    overwritten: int = 0
    taken: int = 0


@dataclass
class _Queue:
    depth: int
    frames: deque[Frame]
    counts: SourceCounts = field(default_factory=SourceCounts)
    registered: bool = False


class EvictionLog:
    """Counts evictions and logs them at most once per interval (a summary, not a line each)."""

    def __init__(self, what: str, interval_s: float = 60.0) -> None:
        self.what = what
        self.interval_s = interval_s
        self.total = 0
        self._since_log = 0
        self._last_log = -float("inf")

    def evicted(self, name: str, bound: int) -> None:
        self.total += 1
        self._since_log += 1
        now = time.monotonic()
        if now - self._last_log >= self.interval_s:
            log.warning("%s: more than %d streams; evicted %d idle stream(s) since the last "
                        "report (latest %r, %d in all)", self.what, bound, self._since_log,
                        name, self.total)
            self._since_log = 0
            self._last_log = now


class StreamIndex:
    """The next frame index per stream name, for at most ``max_streams`` names: the name idle
    the longest is forgotten first (it restarts at 0 if it comes back)."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max(1, max_streams)
        self._next: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._next)

    def next(self, stream: str) -> int:
        index = self._next.pop(stream, 0)
        self._next[stream] = index + 1
        if len(self._next) > self.max_streams:
            self._next.popitem(last=False)
        return index


class FrameInbox:
    """Newest frames per source. Depth 1 is a latest-frame slot; sequence streams get a short
    FIFO so consecutive windows are not lost. A full queue drops its oldest entry and counts it.
    """

    def __init__(self, default_depth: int = 1, *, max_streams: int = 1024,
                 log_interval_s: float = 60.0) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._taken = threading.Condition(lock)
        self._queues: OrderedDict[str, _Queue] = OrderedDict()
        self._streams = 0  # queues of names that were not registered
        self.max_streams = max_streams
        self._hold_depth = 0
        self._hold_until = 0.0
        self._pending: deque[str] = deque()
        self._default_depth = default_depth
        self._closed = False
        self.put_count = 0
        self.overwritten = 0
        self.evicted_frames = 0
        self.evictions = EvictionLog("inbox", log_interval_s)
        self.decode_plan: DecodePlan | None = None
        """Set by the pipeline for its model: how a source may decode JPEG frames
        (``agent/capture/jpeg.py``)."""

    def register(self, source: str, depth: int = 1) -> None:
        with self._cond:
            q = self._queues.get(source)
            if q is not None and not q.registered:
                self._streams -= 1
            if q is None:
                q = self._queues[source] = _Queue(depth, self._deque(depth))
            q.depth, q.registered = depth, True

    def _deque(self, depth: int, frames: deque[Frame] | None = None) -> deque[Frame]:
        return deque(frames or (), maxlen=max(depth, self._hold_depth))

    def hold(self, depth: int, for_s: float = 60.0) -> None:
        """Queue up to ``depth`` frames per source instead of keeping only the newest, while
        a model is loaded and swapped in (which can pause inference for a few frames). The
        hold ends on ``release`` or after ``for_s``, whichever comes first."""
        with self._cond:
            self._hold_depth = depth
            self._hold_until = time.monotonic() + for_s
            for q in self._queues.values():
                if q.frames.maxlen is not None and q.frames.maxlen < depth:
                    q.frames = self._deque(depth, q.frames)

    def release(self) -> None:
        """End a hold; each queue shrinks back to its depth once drained."""
        with self._cond:
            self._hold_depth = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            q = self._queues.get(frame.source)
            if q is None:
                q = self._new_stream(frame.source)
            elif not q.registered:
                self._queues.move_to_end(frame.source)
            if not q.frames:  # a source is in line exactly while it has frames waiting
                self._pending.append(frame.source)
            elif len(q.frames) == q.frames.maxlen:
                self.overwritten += 1
                q.counts.overwritten += 1
            q.frames.append(frame)
            q.counts.put += 1
            self.put_count += 1
            self._cond.notify()

    def _new_stream(self, name: str) -> _Queue:
        if self._streams >= self.max_streams:
            self._evict_one()
        self._streams += 1
        q = self._queues[name] = _Queue(self._default_depth, self._deque(self._default_depth))
        return q

    def _evict_one(self) -> None:
        victim = next((n for n, q in self._queues.items() if not q.registered), None)
        if victim is None:
            return
        q = self._queues.pop(victim)
        self._streams -= 1
        if q.frames:
            self.evicted_frames += len(q.frames)
            self._pending.remove(victim)
        self.evictions.evicted(victim, self.max_streams)

    def take(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._pending and not self._closed:
                self._cond.wait(timeout)
            if not self._pending:
                return None
            source = self._pending.popleft()
            q = self._queues[source]
            frame = q.frames.popleft()
            q.counts.taken += 1
            self._taken.notify_all()
            if self._hold_depth and time.monotonic() > self._hold_until:
                self._hold_depth = 0  # a push that never reported back
            if q.frames:
                self._pending.append(source)
            elif not self._hold_depth and q.frames.maxlen != q.depth:
                q.frames = self._deque(q.depth)
            return frame

    def put_back(self, frame: Frame) -> None:
        """Return a taken frame to the front of its queue (it is served next for its source);
        dropped and counted if newer frames already fill the queue."""
        with self._cond:
            q = self._queues.get(frame.source)
            if q is None or len(q.frames) == q.frames.maxlen:
                self.overwritten += 1
                if q is not None:
                    q.counts.overwritten += 1
                return
            if not q.frames:
                self._pending.appendleft(frame.source)
            q.frames.appendleft(frame)
            q.counts.taken -= 1
            self._cond.notify()

    def wait_taken(self, source: str, timeout: float) -> bool:
        """Wait until no frame of ``source`` is waiting; True when none is (or closed).

        Only for sources with no clock of their own (a file read at full speed): decoding a
        frame that would only be overwritten takes CPU from inference. Live sources never
        wait: capture never waits for inference.
        """
        with self._taken:
            return self._taken.wait_for(lambda: self._closed or not self._waiting(source),
                                        timeout)

    def _waiting(self, source: str) -> bool:
        q = self._queues.get(source)
        return q is not None and bool(q.frames)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def streams(self) -> int:
        """How many unregistered stream names have a queue now (at most ``max_streams``)."""
        return self._streams

    def source_counts(self, registered_only: bool = True) -> dict[str, SourceCounts]:
        """A copy of each source's counters (cameras only, unless asked)."""
        with self._cond:
            return {n: SourceCounts(q.counts.put, q.counts.overwritten, q.counts.taken)
                    for n, q in self._queues.items() if q.registered or not registered_only}

    def pending(self) -> int:
        with self._cond:
            return sum(len(q.frames) for q in self._queues.values())

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._taken.notify_all()
