"""The collector's bounded batch: rows per table plus the acknowledgements they owe.

The network thread adds; the flusher takes a whole batch, makes it durable, then sends the
acknowledgements it carried. A key seen recently is not stored again (a redelivery inside
one run, a retained status sent again on a resubscribe), so one file never repeats a key;
the views and compaction remove what a crash let through into a second file.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Batch:
    rows: dict[str, Any] = field(default_factory=dict)  # table -> row dicts, then Arrow
    acks: list[tuple[int, int, int]] = field(default_factory=list)  # (generation, mid, qos)
    count: int = 0
    opened: float = 0.0


class RecentKeys:
    """The last ``capacity`` label keys, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[tuple, None] = OrderedDict()

    def seen(self, key: tuple) -> bool:
        """True when ``key`` was added before; otherwise remember it."""
        if key in self._keys:
            return True
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return False


class BatchBuffer:
    """Bounded: ``add`` waits while ``capacity`` messages are held and not yet flushed."""

    def __init__(self, flush_rows: int, flush_seconds: float, capacity: int) -> None:
        if not 0 < flush_rows <= capacity:
            raise ValueError("need 0 < flush_rows <= capacity")
        self.flush_rows, self.flush_seconds, self.capacity = flush_rows, flush_seconds, capacity
        self._cond = threading.Condition()
        self._batch = Batch()
        self._in_flush = 0
        self._closed = False

    def add(self, table: str | None, row: dict[str, Any] | None, ack: tuple[int, int, int],
            wait_s: float = 1.0) -> None:
        """Add a row (or only an acknowledgement, for a duplicate) to the open batch."""
        with self._cond:
            while (self._batch.count + self._in_flush >= self.capacity
                   and not self._closed):
                self._cond.wait(wait_s)
            b = self._batch
            if b.count == 0:
                b.opened = time.monotonic()
            if table is not None and row is not None:
                b.rows.setdefault(table, []).append(row)
            b.acks.append(ack)
            b.count += 1
            if b.count >= self.flush_rows:
                self._cond.notify_all()

    def take(self, stop: threading.Event) -> Batch | None:
        """Wait for a batch that is full or old enough (or for ``stop``) and take it."""
        with self._cond:
            while True:
                b = self._batch
                age = time.monotonic() - b.opened if b.count else 0.0
                if b.count and (b.count >= self.flush_rows or age >= self.flush_seconds
                                or stop.is_set()):
                    self._batch = Batch()
                    self._in_flush = b.count
                    return b
                if stop.is_set():
                    return None
                self._cond.wait(self.flush_seconds - age if b.count else self.flush_seconds)

    def done(self) -> None:
        """The taken batch is durable (or given up): make room for new messages."""
        with self._cond:
            self._in_flush = 0
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return self._batch.count + self._in_flush
