"""Inbound messages, queued apart by kind (commands, model delivery, samples).

Each kind has its own bounded queue and its own handler thread, so a flood of one kind (a
sample storm, a command flood) can only drop messages of that kind: a ping is still answered
and a push still lands. What a full queue drops is counted per kind (``dropped``) and logged
once when the queue fills and once when it accepts again. A handler's exception is logged,
never fatal to its thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping

import paho.mqtt.client as mqtt

from agent.mqtt.options import INBOX_LIMITS, Handler, InboundKind, InboundMessage, InboxLimit

log = logging.getLogger(__name__)


class _KindQueue:
    """A bounded FIFO of one kind, with its drop count."""

    def __init__(self, kind: InboundKind, limit: InboxLimit) -> None:
        self.kind = kind
        self.limit = limit
        self.dropped = 0
        self._items: deque[InboundMessage | None] = deque()
        self._bytes = 0
        self._full = False
        self._cond = threading.Condition()

    def put(self, message: InboundMessage) -> None:
        size = len(message.payload)
        with self._cond:
            fits = (len(self._items) < self.limit.messages
                    and self._bytes + size <= self.limit.bytes)
            if not fits:
                self.dropped += 1
                if not self._full:
                    self._full = True
                    log.warning("inbound %s queue full (%d messages, %d bytes waiting): "
                                "dropping new %s messages", self.kind, len(self._items),
                                self._bytes, self.kind)
                return
            if self._full:
                self._full = False
                log.warning("inbound %s queue accepts again; %d dropped so far", self.kind,
                            self.dropped)
            self._items.append(message)
            self._bytes += size
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._items.append(None)
            self._cond.notify()

    def get(self) -> InboundMessage | None:
        with self._cond:
            while not self._items:
                self._cond.wait()
            message = self._items.popleft()
            if message is not None:
                self._bytes -= len(message.payload)
            return message

    @property
    def depth(self) -> int:
        return len(self._items)


class InboundQueues:
    """Handlers registered by kind and topic filter; ``put`` is called on paho's thread."""

    def __init__(self, limits: Mapping[InboundKind, InboxLimit] = INBOX_LIMITS) -> None:
        self._queues = {kind: _KindQueue(kind, limit) for kind, limit in limits.items()}
        self._handlers: dict[InboundKind, list[tuple[str, Handler]]] = {
            kind: [] for kind in self._queues}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def add(self, kind: InboundKind, topic_filter: str, handler: Handler) -> None:
        if kind not in self._queues:
            raise ValueError(f"unknown inbound kind {kind!r}; one of {sorted(self._queues)}")
        with self._lock:
            self._handlers[kind].append((topic_filter, handler))

    def put(self, message: InboundMessage) -> None:
        with self._lock:
            kinds = [kind for kind, handlers in self._handlers.items()
                     if any(mqtt.topic_matches_sub(f, message.topic) for f, _ in handlers)]
        for kind in kinds:
            self._queues[kind].put(message)

    def start(self) -> None:
        for kind, q in self._queues.items():
            thread = threading.Thread(target=self._run, args=(kind, q), daemon=True,
                                      name=f"mqtt-in-{kind}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> None:
        for q in self._queues.values():
            q.close()
        for thread in self._threads:
            thread.join(timeout)

    def dropped(self) -> dict[InboundKind, int]:
        return {kind: q.dropped for kind, q in self._queues.items()}

    def depths(self) -> dict[InboundKind, int]:
        return {kind: q.depth for kind, q in self._queues.items()}

    def _run(self, kind: InboundKind, q: _KindQueue) -> None:
        while (message := q.get()) is not None:
            with self._lock:
                handlers = [h for f, h in self._handlers[kind]
                            if mqtt.topic_matches_sub(f, message.topic)]
            for handler in handlers:
                try:
                    handler(message)
                except Exception:
                    log.exception("%s handler %r failed on %s", kind, handler, message.topic)
