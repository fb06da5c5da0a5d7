"""A bounded, ordered queue of messages waiting for the broker: durable on disk, in memory
while the disk refuses.

Every result the agent produces is ``put`` here first and removed (``ack``) only when the
broker has acknowledged it, so labels survive a broker outage and a crash of the agent.
The file is SQLite (agent/mqtt/outbox_store.py). Messages the broker refuses for good are
moved to a bounded dead-letter table (``set_aside``) so they are not retried forever.

When the disk refuses (full, read-only, I/O error, a corrupt file that cannot be moved
aside), the outbox keeps going in memory: what the file held is taken over where it can be
read, new results go to a memory queue bounded by ``outbox.memory_max_messages`` and
``memory_max_bytes`` (oldest dropped first, counted in ``memory_dropped``), ``health`` says
why, and listeners hear of each change once. ``retry`` (called by the sender every tick, it
acts every ``retry_disk_s``) writes the memory queue back to the file when the disk takes
writes again, and the outbox is durable again. Nothing is lost silently: what cannot be
kept is counted in ``dropped``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path

from agent.config import OutboxConfig
from agent.mqtt.outbox_store import DeadLetter, DiskError, OutboxItem, SqliteStore, open_store

__all__ = ["DeadLetter", "Outbox", "OutboxItem"]

log = logging.getLogger(__name__)

HealthListener = Callable[["str | None"], None]
_FLAP_S = 60.0  # the disk refusing again this soon after recovering: retry less often
_MAX_RETRY_S = 300.0


class MemoryQueue:
    """Ordered messages in memory, bounded by count and payload bytes (oldest dropped)."""

    def __init__(self, max_messages: int, max_bytes: int | None) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.items: OrderedDict[int, OutboxItem] = OrderedDict()
        self.size_bytes = 0
        self.dropped = 0
        self.expired = 0

    def add(self, item: OutboxItem) -> None:
        while self.items and (len(self.items) >= self.max_messages or (
                self.max_bytes is not None
                and self.size_bytes + len(item.payload) > self.max_bytes)):
            self.pop(next(iter(self.items)))
            self.dropped += 1
        self.items[item.id] = item
        self.size_bytes += len(item.payload)

    def pop(self, item_id: int) -> OutboxItem | None:
        item = self.items.pop(item_id, None)
        if item is not None:
            self.size_bytes -= len(item.payload)
        return item

    def peek(self, limit: int, after_id: int) -> list[OutboxItem]:
        return list(islice((i for k, i in self.items.items() if k > after_id), limit))

    def expire(self, cutoff: float) -> int:
        old = [k for k, i in self.items.items() if i.created < cutoff]
        for k in old:
            self.pop(k)
        self.dropped += len(old)
        self.expired += len(old)
        return len(old)


class Outbox:
    """Ordered queue, durable while the disk allows. Thread-safe (one lock)."""

    def __init__(self, path: Path | str | None, limits: OutboxConfig | None = None, *,
                 max_bytes: int | None = None, max_dead_letters: int = 1_000) -> None:
        self.limits = limits or OutboxConfig()
        self.path = Path(path) if path is not None else None
        self.max_messages = self.limits.max_messages
        self.max_age_s = self.limits.max_age_s
        self.max_bytes = max_bytes
        self.max_dead_letters = max_dead_letters
        self._lock = threading.RLock()
        self._store: SqliteStore | None = None
        self._memory = MemoryQueue(self.max_messages, max_bytes)
        self._dead: deque[DeadLetter] = deque(maxlen=max_dead_letters)
        self._listeners: list[HealthListener] = []
        self._problem: str | None = None
        self._changed = False
        self._last_id = 0
        self._lost = self._dropped_before = self._expired_before = 0
        self._memory_dropped_before = self._dead_before = 0
        self._retry_s = self.limits.retry_disk_s
        self._retry_at = self._restored_at = 0.0
        self._closed = False
        if self.path is not None:
            try:
                self._use_store(self._open())
            except DiskError as exc:
                self._degrade(exc, None)

    @classmethod
    def disabled(cls, limits: OutboxConfig | None = None) -> Outbox:
        """A memory-only outbox for users who opt out of durability: same API, lost on exit,
        never ``degraded`` (it was chosen)."""
        return cls(None, limits)

    @property
    def durable(self) -> bool:
        return self._store is not None

    @property
    def health(self) -> str | None:
        """Why the outbox is not durable although it should be (None when all is well)."""
        return self._problem

    def on_health(self, listener: HealthListener) -> None:
        """``listener(problem or None)`` on every change between durable and memory."""
        self._listeners.append(listener)

    # -- producer side -------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Append a message; returns its id (monotonically increasing, never reused)."""
        payload, created = bytes(payload), time.time()
        with self._lock:
            if self._store is not None:
                try:
                    self._last_id = self._store.put(topic, payload, int(qos), retain, created)
                    return self._last_id
                except DiskError as exc:
                    self._degrade(exc, self._store)
            self._last_id += 1
            dropped = self._memory.dropped
            self._memory.add(OutboxItem(self._last_id, topic, payload, int(qos), retain,
                                        created))
            if self._problem is not None and dropped == 0 < self._memory.dropped:
                log.error("outbox %s: the memory queue is full (%d messages): dropping the "
                          "oldest results, counted in outbox_memory_dropped", self.path,
                          self._memory.max_messages)
            item_id = self._last_id
        self._tell()
        return item_id

    # -- sender side ---------------------------------------------------------------

    def peek(self, limit: int, after_id: int = 0) -> list[OutboxItem]:
        """The oldest ``limit`` messages with an id greater than ``after_id``, in order."""
        with self._lock:
            if self._store is not None:
                try:
                    return self._store.peek(limit, after_id)
                except DiskError as exc:
                    self._degrade(exc, self._store)
            items = self._memory.peek(limit, after_id)
        self._tell()
        return items

    def ack(self, item_id: int) -> None:
        """The broker has the message: delete it. Unknown ids are ignored."""
        self.ack_many((item_id,))

    def ack_many(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            if self._store is not None:
                try:
                    self._store.ack_many(ids)
                    return
                except DiskError as exc:
                    self._degrade(exc, self._store)
            for item_id in ids:
                self._memory.pop(item_id)
        self._tell()

    def set_aside(self, item_id: int, reason: str) -> bool:
        """Move a message the broker refused to the dead letters. False if unknown."""
        now = time.time()
        with self._lock:
            if self._store is not None:
                try:
                    return self._store.set_aside(item_id, reason, now)
                except DiskError as exc:
                    self._degrade(exc, self._store)
            item = self._memory.pop(item_id)
            if item is not None:
                self._dead.append(DeadLetter(item, reason, now))
        self._tell()
        return item is not None

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            if self._store is not None:
                try:
                    return self._store.dead_letters(limit)
                except DiskError:
                    return []
            return list(self._dead)[:limit]

    def expire(self, now: float | None = None) -> int:
        """Drop messages older than ``max_age_s``; returns how many were dropped."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock:
            if self._store is not None:
                try:
                    return self._store.expire(cutoff)
                except DiskError as exc:
                    self._degrade(exc, self._store)
            expired = self._memory.expire(cutoff)
        self._tell()
        return expired

    def last_id(self) -> int:
        """The id of the newest message (0 when empty)."""
        with self._lock:
            if self._store is not None:
                try:
                    return self._store.newest_id()
                except DiskError as exc:
                    self._degrade(exc, self._store)
            last = next(reversed(self._memory.items), 0)
        self._tell()
        return last

    # -- disk refusing and recovering ---------------------------------------------------

    def _open(self) -> SqliteStore:
        assert self.path is not None
        return open_store(self.path, max_messages=self.max_messages, max_bytes=self.max_bytes,
                          max_dead_letters=self.max_dead_letters)

    def _use_store(self, store: SqliteStore) -> None:
        self._store = store
        self._last_id = max(self._last_id, store.highest_given_id())

    def _degrade(self, exc: BaseException, store: SqliteStore | None) -> None:
        """The disk refused: carry on in memory with what the file holds."""
        self._store = None
        memory = MemoryQueue(self.limits.memory_max_messages, self.limits.memory_max_bytes)
        if store is not None:
            self._dropped_before += store.dropped
            self._expired_before += store.expired
            try:
                self._dead_before = store.set_aside_count()
                for item in store.all_items():
                    memory.add(item)
            except DiskError:
                self._lost += store.depth - len(memory.items)
            with contextlib.suppress(*DiskError):
                store.close()
        self._memory = memory
        now = time.monotonic()
        flapping = now - self._restored_at < _FLAP_S and self._restored_at > 0
        self._retry_s = min(2 * self._retry_s, _MAX_RETRY_S) if flapping \
            else self.limits.retry_disk_s
        self._retry_at = now + self._retry_s
        self._problem = (f"outbox {self.path}: the disk refuses writes ({exc}); results kept "
                         f"in memory (at most {memory.max_messages}) until it takes them again")
        log.error("%s", self._problem)
        self._changed = True

    def retry(self) -> bool:
        """When the disk has refused: every ``retry_disk_s``, try to write what memory holds
        back to the file. True when the outbox became durable again."""
        with self._lock:
            if self._store is not None or self.path is None or self._closed \
                    or time.monotonic() < self._retry_at:
                return False
            self._retry_at = time.monotonic() + self._retry_s
            store = None
            try:
                store = self._open()
                store.replace_all(self._memory.items.values(), self._dead)
            except DiskError as exc:
                if store is not None:
                    store.close()
                log.debug("outbox %s: the disk still refuses: %s", self.path, exc)
                return False
            moved = len(self._memory.items)
            self._memory_dropped_before += self._memory.dropped
            self._dropped_before += self._memory.dropped
            self._expired_before += self._memory.expired
            self._memory = MemoryQueue(self.max_messages, self.max_bytes)
            self._dead.clear()
            self._use_store(store)
            self._problem, self._changed = None, True
            self._restored_at = time.monotonic()
            log.warning("outbox %s: the disk takes writes again; %d results moved from "
                        "memory, durable again", self.path, moved)
        self._tell()
        return True

    def _tell(self) -> None:
        with self._lock:
            if not self._changed:
                return
            self._changed, problem = False, self._problem
        for listener in list(self._listeners):
            try:
                listener(problem)
            except Exception:
                log.exception("outbox health listener failed")

    # -- figures -------------------------------------------------------------------

    @property
    def depth(self) -> int:
        store = self._store
        return store.depth if store is not None else len(self._memory.items)

    @property
    def size_bytes(self) -> int:
        store = self._store
        return store.size_bytes if store is not None else self._memory.size_bytes

    @property
    def dropped(self) -> int:
        """Messages lost since this outbox was opened: to the bounds (count, bytes, age), to
        the memory queue's bound while the disk refused, or unreadable when it failed."""
        store = self._store
        current = store.dropped if store is not None else self._memory.dropped
        return self._dropped_before + current + self._lost

    @property
    def memory_dropped(self) -> int:
        """The part of ``dropped`` lost to the memory queue while the disk refused."""
        degraded = self._problem is not None
        return self._memory_dropped_before + (self._memory.dropped if degraded else 0)

    @property
    def expired(self) -> int:
        """The part of ``dropped`` that was older than ``max_age_s``."""
        store = self._store
        return self._expired_before + (store.expired if store is not None
                                       else self._memory.expired)

    @property
    def set_aside_count(self) -> int:
        with self._lock:
            if self._store is not None:
                try:
                    return self._store.set_aside_count()
                except DiskError:
                    return self._dead_before
            return self._dead_before + len(self._dead)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._store is not None:
                    self._store.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
