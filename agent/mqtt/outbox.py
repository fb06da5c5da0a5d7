"""A durable, bounded, ordered queue of messages waiting for the broker, in SQLite.

Every result the agent produces is ``put`` here first and removed (``ack``) only when the
broker has acknowledged it, so labels survive a broker outage and a crash of the agent.

Durability: WAL journal with ``synchronous=NORMAL``. Each ``put`` is its own transaction,
committed before ``put`` returns, so a put message survives the process being killed
(SIGKILL); after a power loss the last few commits may be rolled back but the file stays
consistent. ``ack`` is cheap and may be batched (``ack_many``) by the sender.

Bounds: ``max_messages``, ``max_bytes`` (payload bytes) and ``max_age_s``. When full the
OLDEST messages are dropped (the newest results are the most useful) and counted in
``dropped``. Messages the broker refuses for good are moved to a bounded dead-letter table
(``set_aside``) so they are not retried forever.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    reason TEXT NOT NULL,
    set_aside_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxItem:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


@dataclass(frozen=True)
class DeadLetter:
    item: OutboxItem
    reason: str
    set_aside_at: float


class Outbox:
    """Ordered on-disk queue. Thread-safe: one connection guarded by one lock."""

    def __init__(self, path: Path | str, *, max_messages: int = 100_000,
                 max_age_s: float = 7 * 86400, max_bytes: int | None = None,
                 max_dead_letters: int = 1_000) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        self.path = str(path)
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.max_dead_letters = max_dead_letters
        self._lock = threading.Lock()
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != MEMORY:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        depth, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self._depth: int = depth
        self._bytes: int = size
        self._dropped = 0
        self._expired = 0
        self._closed = False

    @classmethod
    def disabled(cls, **limits: int | float | None) -> Outbox:
        """An in-memory outbox for users who opt out of durability: same API, lost on exit."""
        return cls(MEMORY, **limits)  # type: ignore[arg-type]

    @property
    def durable(self) -> bool:
        return self.path != MEMORY

    # -- producer side -------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Append a message; returns its id (monotonically increasing, never reused)."""
        payload = bytes(payload)
        with self._lock:
            self._make_room(len(payload))
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                (topic, payload, int(qos), int(retain), time.time()))
            self._depth += 1
            self._bytes += len(payload)
            return int(cur.lastrowid or 0)

    def _make_room(self, incoming: int) -> None:
        excess = self._depth + 1 - self.max_messages
        if excess > 0:
            self._drop_oldest(excess)
        if self.max_bytes is None:
            return
        while self._depth and self._bytes + incoming > self.max_bytes:
            over = self._bytes + incoming - self.max_bytes
            self._drop_oldest_bytes(over)

    def _drop_oldest(self, count: int) -> None:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MAX(id) FROM "
            "(SELECT id, payload FROM outbox ORDER BY id LIMIT ?)", (count,)).fetchone()
        n, size, last = row
        if n:
            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last,))
            self._depth -= n
            self._bytes -= size
            self._dropped += n

    def _drop_oldest_bytes(self, over: int) -> None:
        freed = 0
        count = 0
        for (size,) in self._db.execute("SELECT LENGTH(payload) FROM outbox ORDER BY id"):
            freed += size
            count += 1
            if freed >= over:
                break
        self._drop_oldest(max(count, 1))

    # -- sender side ---------------------------------------------------------------

    def peek(self, limit: int, after_id: int = 0) -> list[OutboxItem]:
        """The oldest ``limit`` messages with an id greater than ``after_id``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [OutboxItem(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, item_id: int) -> None:
        """The broker has the message: delete it. Unknown ids are ignored."""
        self.ack_many((item_id,))

    def ack_many(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    n, size = self._db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox "
                        f"WHERE id IN ({marks})", chunk).fetchone()
                    self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                    self._depth -= n
                    self._bytes -= size
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def set_aside(self, item_id: int, reason: str) -> bool:
        """Move a message the broker refused to the dead-letter table. False if unknown."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                row = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE id = ?",
                                       (item_id,)).fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return False
                self._db.execute(
                    "INSERT OR REPLACE INTO dead_letter SELECT id, topic, payload, qos, retain, "
                    "created, ?, ? FROM outbox WHERE id = ?", (reason, now, item_id))
                self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
                self._db.execute(
                    "DELETE FROM dead_letter WHERE id NOT IN "
                    "(SELECT id FROM dead_letter ORDER BY id DESC LIMIT ?)",
                    (self.max_dead_letters,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            self._bytes -= row[0]
            return True

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created, reason, set_aside_at "
                "FROM dead_letter ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [DeadLetter(OutboxItem(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]), r[6], r[7])
                for r in rows]

    def expire(self, now: float | None = None) -> int:
        """Drop messages older than ``max_age_s``; returns how many were dropped."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock:
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE created < ?",
                (cutoff,)).fetchone()
            if n:
                self._db.execute("DELETE FROM outbox WHERE created < ?", (cutoff,))
                self._depth -= n
                self._bytes -= size
                self._dropped += n
                self._expired += n
            return int(n)

    # -- figures -------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def dropped(self) -> int:
        """Messages lost to the bounds since this outbox was opened (cap, bytes and age)."""
        return self._dropped

    @property
    def expired(self) -> int:
        """The part of ``dropped`` that was older than ``max_age_s``."""
        return self._expired

    @property
    def set_aside_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0])

    def last_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM outbox").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
