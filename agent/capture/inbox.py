"""The agent's frame inbox: where every source puts frames and the inference thread takes them.

Capture threads (and the MQTT sample handler) only ever ``put``; one consumer ``take``s. Per
source it keeps the newest frame (depth 1) or a short FIFO (sequence streams), so a slow model
never makes capture wait.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from agent.records import Frame


class FrameInbox:
    """Newest frames per source. Depth 1 is a latest-frame slot; sequence streams get a short
    FIFO so consecutive windows are not lost. A full queue drops its oldest entry and counts it.
    """

    def __init__(self, default_depth: int = 1) -> None:
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._taken = threading.Condition(lock)
        self._queues: dict[str, deque[Frame]] = {}
        self._depths: dict[str, int] = {}
        self._hold_depth = 0
        self._hold_until = 0.0
        self._pending: deque[str] = deque()
        self._default_depth = default_depth
        self._closed = False
        self.put_count = 0
        self.overwritten = 0

    def register(self, source: str, depth: int = 1) -> None:
        with self._cond:
            self._depths[source] = depth
            self._queues.setdefault(source, deque(maxlen=max(depth, self._hold_depth)))

    def hold(self, depth: int, for_s: float = 60.0) -> None:
        """Queue up to ``depth`` frames per source instead of keeping only the newest, while
        a model is loaded and swapped in (which can pause inference for a few frames). The
        hold ends on ``release`` or after ``for_s``, whichever comes first."""
        with self._cond:
            self._hold_depth = depth
            self._hold_until = time.monotonic() + for_s
            for source, q in self._queues.items():
                if q.maxlen is not None and q.maxlen < depth:
                    self._queues[source] = deque(q, maxlen=depth)

    def release(self) -> None:
        """End a hold; each queue shrinks back to its depth once drained."""
        with self._cond:
            self._hold_depth = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            q = self._queues.get(frame.source)
            if q is None:
                self._depths[frame.source] = self._default_depth
                q = self._queues[frame.source] = deque(
                    maxlen=max(self._default_depth, self._hold_depth))
            if len(q) == q.maxlen:
                self.overwritten += 1
            q.append(frame)
            self.put_count += 1
            if frame.source not in self._pending:
                self._pending.append(frame.source)
            self._cond.notify()

    def take(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._pending and not self._closed:
                self._cond.wait(timeout)
            if not self._pending:
                return None
            source = self._pending.popleft()
            q = self._queues[source]
            frame = q.popleft()
            self._taken.notify_all()
            if self._hold_depth and time.monotonic() > self._hold_until:
                self._hold_depth = 0  # a push that never reported back
            if q:
                self._pending.append(source)
            elif not self._hold_depth and q.maxlen != self._depths.get(source, q.maxlen):
                self._queues[source] = deque(maxlen=self._depths[source])
            return frame

    def wait_taken(self, source: str, timeout: float) -> bool:
        """Wait until no frame of ``source`` is waiting; True when none is (or closed).

        Only for sources with no clock of their own (a file read at full speed): decoding a
        frame that would only be overwritten takes CPU from inference. Live sources never
        wait: capture never waits for inference.
        """
        with self._taken:
            return self._taken.wait_for(
                lambda: self._closed or not self._queues.get(source), timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._taken.notify_all()
