"""The outbox sender thread of the MQTT port: settle acks, watch the link, publish outbox
items within the in-flight window, expire old ones."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from paho.mqtt.enums import MQTTErrorCode

from agent.mqtt.inflight import InflightWindow
from agent.mqtt.link import Session
from agent.mqtt.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)

_TICK_S = 0.05
_EXPIRE_EVERY_S = 60.0


class OutboxSender:
    """Runs on its own thread (``run``); ``wake`` makes it look again at once."""

    def __init__(self, outbox: Outbox, window: InflightWindow, *,
                 current: Callable[[], Session | None], connect_timeout_s: float,
                 probe_topic: str, on_dead: Callable[[str], None]) -> None:
        self.outbox = outbox
        self.window = window
        self.wake = threading.Event()
        self._send_lock = threading.Lock()  # one thread fills the window at a time
        self._current = current
        self._connect_timeout_s = connect_timeout_s
        self._probe_topic = probe_topic
        self._on_dead = on_dead


    def run(self, stopping: threading.Event) -> None:
        next_expiry = time.monotonic() + _EXPIRE_EVERY_S
        while not stopping.is_set():
            self.wake.wait(_TICK_S)
            self.wake.clear()
            try:
                self.outbox.retry()
                self.window.settle()
                self._watch_link()
                with self._send_lock:
                    self._fill_window()
                if time.monotonic() > next_expiry:
                    next_expiry = time.monotonic() + _EXPIRE_EVERY_S
                    if self.outbox.expire():
                        log.warning("outbox: dropped messages older than %.0fs",
                                    self.outbox.max_age_s)
            except Exception:
                log.exception("outbox sender failed; retrying")
                stopping.wait(0.5)

    def send_now(self) -> None:
        """Publish what the window allows from the calling thread (the message just put goes
        out without waiting for this thread to be scheduled); if the sender thread is at it,
        wake it instead. Used when nothing is in flight, so order and pacing are kept."""
        if not self._send_lock.acquire(blocking=False):
            self.wake.set()
            return
        try:
            self._fill_window()
        except Exception:
            log.exception("outbox: sending from the caller failed; the sender retries")
            self.wake.set()
        finally:
            self._send_lock.release()

    def _watch_link(self) -> None:
        session = self._current()
        if session is None or session.client.socket() is None:
            return
        why = session.check(self._connect_timeout_s, self._probe_topic)
        if why is not None:
            self._on_dead(why)
            session.cut(why)

    def _fill_window(self) -> None:
        session = self._current()
        if session is None or not session.connected:
            return
        for item in self.window.next_batch(session.gen):
            if not self._send(session, item):
                break

    def _send(self, session: Session, item: OutboxItem) -> bool:
        """Publish one outbox item; False when the link is gone (the item stays queued)."""
        limit = session.max_packet
        if limit is not None and len(item.payload) + len(item.topic) + 16 > int(limit):
            self.window.skipped(session.gen, item.id, f"payload too large for the broker "
                                                      f"(max packet {limit} bytes)")
            return True
        try:
            info = session.client.publish(item.topic, item.payload, qos=item.qos,
                                          retain=item.retain)
        except ValueError as exc:
            self.window.skipped(session.gen, item.id, f"refused before sending: {exc}")
            return True
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self.window.sent(session.gen, item.id, info.mid)
        return True
