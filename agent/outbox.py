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


class Delivery:
    """Bookkeeping of what is in flight from an ``Outbox`` over one connection at a time.

    The transport (``agent/mqtt.py``) calls ``open`` when a connection is up, publishes what
    ``next_batch`` returns, reports each message id with ``sent`` and each acknowledgement
    with ``acked``, and calls ``close`` when the connection ends. Every ``open`` starts a new
    generation; calls carrying an older generation are ignored, so a late ack from a dead
    connection can never be taken for one of the new connection (ids restart per client).
    ``settle`` applies acks (one transaction) and refusals to the outbox. Thread-safe.

    * Window: at most ``max_inflight`` unacknowledged (and 3/4 of the broker's Receive
      Maximum). After a connection died with messages in flight, the next one starts with a
      window of 1 that grows by one per ack (slow start).
    * Poison messages: when connections die ``max_strikes`` times in a row with the same
      message the oldest in flight, it is set aside instead of being resent forever.
    * Pacing: the backlog that was queued when the connection came up is sent at
      ``drain_rate_per_s`` (0: unpaced); what is put after that is not paced.
    """

    def __init__(self, outbox: Outbox, *, max_inflight: int = 100,
                 drain_rate_per_s: float = 500.0, max_strikes: int = 3) -> None:
        self.outbox = outbox
        self.max_inflight = max(1, max_inflight)
        self.drain_rate_per_s = drain_rate_per_s
        self.max_strikes = max_strikes
        self.delivered = 0
        self._lock = threading.Lock()
        self._gen = 0
        self._open = False
        self._window = self._cap = 1
        self._inflight: dict[int, int] = {}  # message id -> outbox id
        self._direct: set[int] = set()  # message ids of publishes that bypass the outbox
        self._early: dict[int, str | None] = {}  # acks that beat ``sent``: id -> refusal
        self._cursor = self._backlog_end = 0
        self._tokens, self._refilled = 0.0, time.monotonic()
        self._acked: list[int] = []
        self._refused: list[tuple[int, str]] = []
        self._strikes: dict[int, int] = {}
        self._slow_start = False

    def open(self, receive_maximum: int | None = None) -> int:
        """A connection is up: resend from the oldest message. Returns its generation."""
        backlog_end = self.outbox.last_id()
        with self._lock:
            limit = receive_maximum * 3 // 4 if receive_maximum else self.max_inflight
            self._cap = max(1, min(self.max_inflight, limit))
            self._window = 1 if self._slow_start else self._cap
            self._inflight, self._direct, self._early = {}, set(), {}
            self._cursor, self._backlog_end = 0, backlog_end
            self._tokens, self._refilled = 0.0, time.monotonic()
            self._gen += 1
            self._open = True
            return self._gen

    def close(self, *, count_strike: bool = True) -> None:
        """The connection ended; what was in flight will be resent by the next one."""
        with self._lock:
            self._open = False
            self._slow_start = bool(self._inflight)
            if not self._inflight or not count_strike:
                return
            oldest = min(self._inflight.values())
            strikes = self._strikes.get(oldest, 0) + 1
            self._strikes = {oldest: strikes}
            if strikes >= self.max_strikes:
                self._refused.append((oldest, f"the broker closed the connection each time this "
                                              f"message was sent ({strikes} times)"))
                self._strikes = {}

    def next_batch(self, gen: int) -> list[OutboxItem]:
        """The next messages to publish, in order, within the window and the pace."""
        with self._lock:
            if gen != self._gen or not self._open:
                return []
            room, cursor = self._window - len(self._inflight), self._cursor
            rate = self.drain_rate_per_s
            if room > 0 and rate and cursor < self._backlog_end:
                now = time.monotonic()
                burst = max(1.0, rate * 0.2)
                self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
                self._refilled = now
                room = min(room, int(self._tokens))
        return self.outbox.peek(room, after_id=cursor) if room > 0 else []

    def sent(self, gen: int, item_id: int, mid: int) -> None:
        """``item_id`` went out as message ``mid`` (its ack may already have come)."""
        with self._lock:
            if gen != self._gen:
                return
            self._cursor = max(self._cursor, item_id)
            if item_id <= self._backlog_end:
                self._tokens -= 1
            if mid in self._early:
                self._settle(item_id, self._early.pop(mid))
            else:
                self._inflight[mid] = item_id

    def skipped(self, gen: int, item_id: int, reason: str) -> None:
        """``item_id`` cannot be sent at all (too large): set it aside."""
        with self._lock:
            if gen == self._gen:
                self._cursor = max(self._cursor, item_id)
            self._refused.append((item_id, reason))

    def direct(self, gen: int, mid: int) -> None:
        """Message ``mid`` bypassed the outbox; its ack is not ours."""
        with self._lock:
            if gen != self._gen:
                return
            if mid in self._early:
                del self._early[mid]
            else:
                self._direct.add(mid)

    def acked(self, gen: int, mid: int, refusal: str | None = None) -> None:
        """The broker answered message ``mid``; ``refusal`` when it said no."""
        with self._lock:
            if gen != self._gen:
                return
            if mid in self._direct:
                self._direct.discard(mid)
                return
            item_id = self._inflight.pop(mid, None)
            if item_id is None:
                self._early[mid] = refusal
            else:
                self._settle(item_id, refusal)

    def _settle(self, item_id: int, refusal: str | None) -> None:
        if refusal is None:
            self._acked.append(item_id)
            self.delivered += 1
        else:
            self._refused.append((item_id, refusal))
        self._strikes.pop(item_id, None)
        if self._window < self._cap:
            self._window += 1

    def settle(self) -> None:
        """Apply the acks (one transaction) and refusals collected since the last call."""
        with self._lock:
            acked, self._acked = self._acked, []
            refused, self._refused = self._refused, []
        self.outbox.ack_many(acked)
        for item_id, reason in refused:
            log.warning("outbox message %d set aside: %s", item_id, reason)
            self.outbox.set_aside(item_id, reason)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def pending(self) -> bool:
        """Anything left to deliver (queued, in flight or not yet settled)."""
        return self.outbox.depth > 0 or bool(self._inflight or self._acked or self._refused)
