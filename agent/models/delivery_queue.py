"""The receiver's bounded queue: at most ``max_items`` messages and ``max_bytes`` of payload;
a message that does not fit is dropped and counted, never blocking the MQTT network thread."""

from __future__ import annotations

import contextlib
import queue
import threading

Item = tuple[str, str, bytes]  # via, part, payload
MAX_QUEUED = 1024
MAX_QUEUED_BYTES = 128 * 1024 * 1024


class DeliveryQueue:
    def __init__(self, max_items: int = MAX_QUEUED, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        self._queue: queue.Queue[Item | None] = queue.Queue(max_items)
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self.dropped = 0

    def offer(self, item: Item) -> bool:
        """Enqueue ``item`` unless full; False (and counted) when dropped."""
        with self._lock:
            if self._bytes + len(item[2]) > self._max_bytes:
                self.dropped += 1
                return False
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.dropped += 1
                return False
            self._bytes += len(item[2])
            return True

    def take(self, timeout: float) -> Item | None:
        """The next item; None is the stop marker. ``queue.Empty`` after ``timeout``."""
        item = self._queue.get(timeout=timeout)
        if item is not None:
            with self._lock:
                self._bytes -= len(item[2])
        return item

    def stop_marker(self, timeout: float) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)

    def empty(self) -> bool:
        return self._queue.empty()

    def qsize(self) -> int:
        return self._queue.qsize()
