"""In-flight bookkeeping between the durable outbox and one MQTT connection at a time."""

from __future__ import annotations

import logging
import threading
import time

from agent.mqtt.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)


class InflightWindow:
    """Bookkeeping of what is in flight from an ``Outbox`` over one connection at a time.

    The transport (``agent/mqtt/port.py``) calls ``open`` when a connection is up, publishes what
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

    ``max_inflight`` and ``drain_rate_per_s`` have no defaults here: they come from the
    validated config (``mqtt.max_inflight``, ``outbox.drain_rate_per_s``).
    """

    def __init__(self, outbox: Outbox, *, max_inflight: int, drain_rate_per_s: float,
                 max_strikes: int = 3) -> None:
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
