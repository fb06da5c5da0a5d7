"""The SQLite file behind the durable outbox (agent/mqtt/outbox.py), and how it is opened.

Durability: WAL journal with ``synchronous=NORMAL``. Each ``put`` is its own transaction,
committed before ``put`` returns, so a put message survives the process being killed
(SIGKILL); after a power loss the last few commits may be rolled back but the file stays
consistent. Bounds: when full the OLDEST messages are dropped (the newest results are the
most useful) and counted in ``dropped``.

Every failure of the disk surfaces as ``sqlite3.Error`` or ``OSError``; the ``Outbox``
decides what to do with it. Not thread-safe on its own: the ``Outbox`` serializes calls.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DiskError = (sqlite3.Error, OSError)
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB

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
_COLUMNS = "id, topic, payload, qos, retain, created"


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


class CorruptOutbox(sqlite3.DatabaseError):
    """The file is not a sound SQLite database."""


def is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, CorruptOutbox) or (code is not None and code & 0xFF in _CORRUPT_CODES)


def _item(row: tuple) -> OutboxItem:
    return OutboxItem(row[0], row[1], bytes(row[2]), row[3], bool(row[4]), row[5])


def open_store(path: Path, *, max_messages: int, max_bytes: int | None,
               max_dead_letters: int) -> SqliteStore:
    """Open (or create) the outbox file. A corrupt file is moved aside, kept for inspection,
    and a fresh one started; any other refusal of the disk is raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    limits = {"max_messages": max_messages, "max_bytes": max_bytes,
              "max_dead_letters": max_dead_letters}
    try:
        return SqliteStore(path, **limits)  # type: ignore[arg-type]
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        log.error("outbox %s is corrupt (%s): moved aside to %s (kept for inspection); "
                  "starting a fresh outbox", path, exc, aside)
        return SqliteStore(path, **limits)  # type: ignore[arg-type]


class SqliteStore:
    """The ordered queue and its dead letters in one SQLite file."""

    def __init__(self, path: Path, *, max_messages: int, max_bytes: int | None,
                 max_dead_letters: int) -> None:
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_dead_letters = max_dead_letters
        self.dropped = 0
        self.expired = 0
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            check = self._db.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise CorruptOutbox(f"integrity check: {check[0][0] if check else 'no answer'}")
            self._db.executescript(_SCHEMA)
            self.depth, self.size_bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        except BaseException:
            self._db.close()
            raise

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, created: float) -> int:
        self._make_room(len(payload))
        cur = self._db.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
            (topic, payload, qos, int(retain), created))
        self.depth += 1
        self.size_bytes += len(payload)
        return int(cur.lastrowid or 0)

    def _make_room(self, incoming: int) -> None:
        excess = self.depth + 1 - self.max_messages
        if excess > 0:
            self._drop_oldest(excess)
        while self.max_bytes is not None and self.depth \
                and self.size_bytes + incoming > self.max_bytes:
            over, freed, count = self.size_bytes + incoming - self.max_bytes, 0, 0
            for (size,) in self._db.execute("SELECT LENGTH(payload) FROM outbox ORDER BY id"):
                freed, count = freed + size, count + 1
                if freed >= over:
                    break
            self._drop_oldest(max(count, 1))

    def _drop_oldest(self, count: int) -> None:
        n, size, last = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MAX(id) FROM "
            "(SELECT id, payload FROM outbox ORDER BY id LIMIT ?)", (count,)).fetchone()
        if n:
            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last,))
            self.depth -= n
            self.size_bytes -= size
            self.dropped += n

    def peek(self, limit: int, after_id: int) -> list[OutboxItem]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE id > ? ORDER BY id "
                                "LIMIT ?", (after_id, limit)).fetchall()
        return [_item(r) for r in rows]

    def all_items(self) -> list[OutboxItem]:
        return [_item(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM outbox ORDER BY id")]

    def ack_many(self, ids: list[int]) -> None:
        with self._transaction():
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                n, size = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox "
                    f"WHERE id IN ({marks})", chunk).fetchone()
                self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                self.depth -= n
                self.size_bytes -= size

    def set_aside(self, item_id: int, reason: str, now: float) -> bool:
        with self._transaction():
            row = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE id = ?",
                                   (item_id,)).fetchone()
            if row is None:
                return False
            self._db.execute(f"INSERT OR REPLACE INTO dead_letter SELECT {_COLUMNS}, ?, ? "
                             "FROM outbox WHERE id = ?", (reason, now, item_id))
            self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            self._trim_dead_letters()
        self.depth -= 1
        self.size_bytes -= row[0]
        return True

    def _trim_dead_letters(self) -> None:
        self._db.execute("DELETE FROM dead_letter WHERE id NOT IN "
                         "(SELECT id FROM dead_letter ORDER BY id DESC LIMIT ?)",
                         (self.max_dead_letters,))

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        rows = self._db.execute(f"SELECT {_COLUMNS}, reason, set_aside_at FROM dead_letter "
                                "ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [DeadLetter(_item(r), r[6], r[7]) for r in rows]

    def set_aside_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0])

    def expire(self, cutoff: float) -> int:
        n, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM "
                                   "outbox WHERE created < ?", (cutoff,)).fetchone()
        if n:
            self._db.execute("DELETE FROM outbox WHERE created < ?", (cutoff,))
            self.depth -= n
            self.size_bytes -= size
            self.dropped += n
            self.expired += n
        return int(n)

    def newest_id(self) -> int:
        """The id of the newest message queued (0 when empty)."""
        return int(self._db.execute("SELECT MAX(id) FROM outbox").fetchone()[0] or 0)

    def highest_given_id(self) -> int:
        """The highest id ever given (AUTOINCREMENT never gives it again)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def replace_all(self, items: Iterable[OutboxItem], dead: Iterable[DeadLetter]) -> None:
        """Make the file hold exactly ``items`` (ids kept) plus ``dead`` letters, in one
        transaction: how results kept in memory become durable again."""
        items = list(items)
        with self._transaction():
            self._db.execute("DELETE FROM outbox")
            self._db.executemany(f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                                 [(i.id, i.topic, i.payload, i.qos, int(i.retain), i.created)
                                  for i in items])
            self._db.executemany(
                f"INSERT OR REPLACE INTO dead_letter ({_COLUMNS}, reason, set_aside_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(d.item.id, d.item.topic, d.item.payload, d.item.qos, int(d.item.retain),
                  d.item.created, d.reason, d.set_aside_at) for d in dead])
            self._trim_dead_letters()
        self.depth = len(items)
        self.size_bytes = sum(len(i.payload) for i in items)

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
