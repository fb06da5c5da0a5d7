"""The MQTT port: connect, last will, re-subscribe, publish through the durable outbox.

* **One paho client per connection.** The network thread connects a fresh client, runs
  its loop until the link ends, then backs off (exponential, with jitter) and starts over.
  paho keeps unacknowledged QoS 1 messages in memory and replays them on reconnect; a fresh
  client drops that copy, so the outbox is the only queue and a new connection resends
  from the outbox, in order. Duplicates are possible; consumers dedupe on run_id + seq.
* **Outbox sender.** A sender thread publishes outbox items in order while connected,
  within the window kept by ``inflight.Delivery`` (``max_inflight``, slow start after a
  dropped link, paced backlog, poison-message strikes). An item leaves the outbox only when
  its PUBACK arrives; a PUBACK with a failure code (MQTT 5, e.g. 135 Not authorized) sets it
  aside. Under MQTT 3.1.1 the broker drops refused messages silently: they count as sent.
* **Paced backlog.** What was queued when the connection came up drains at
  ``drain_rate_per_s``; it is one ordered queue, so newer items wait behind it, but the
  drain does not flood the link or take the CPU from the pipeline, and status, stats,
  command results and inbound commands keep flowing.
* **Half-open links.** paho pings every ``keepalive``; the sender thread also cuts the
  socket after 1.5 keepalives without any packet from the broker, or ``connect_timeout_s``
  without a CONNACK.
* **Handlers** run on their own thread (a slow one never stalls pings or acks); an
  exception in a handler is logged, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.contract import STATE_OFFLINE, STATE_ONLINE, STATE_STOPPED, Topics
from agent.errors import ConfigError
from agent.mqtt.inflight import Delivery
from agent.mqtt.options import (
    ConnectionListener,
    Handler,
    InboundMessage,
    MqttOptions,
    StatusPayload,
)
from agent.mqtt.outbox import Outbox, OutboxItem

__all__ = ["InboundMessage", "MqttOptions", "MqttPort"]

log = logging.getLogger(__name__)

_TICK_S = 0.05
_EXPIRE_EVERY_S = 60.0
_INBOX_SIZE = 10_000


def _valid_topic(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic


class _Client(mqtt.Client):
    """paho's client with a shorter network-loop tick, so keepalive pings go out on time."""

    loop_tick_s: float = 1.0

    def loop_forever(self, timeout: float = 1.0,
                     retry_first_connection: bool = False) -> MQTTErrorCode:
        return super().loop_forever(min(timeout, self.loop_tick_s), retry_first_connection)


@dataclass(eq=False)
class _Session:
    """One connection: one paho client."""

    client: _Client
    gen: int = 0  # Delivery generation, set on CONNACK
    connected: bool = False
    was_up: bool = False
    cut_reason: str | None = None
    max_packet: int | None = None
    started: float = field(default_factory=time.monotonic)
    last_inbound: float = field(default_factory=time.monotonic)
    ended: threading.Event = field(default_factory=threading.Event)


class MqttPort:
    """publish / subscribe / stop, with a durable outbox behind ``publish_durable``."""

    def __init__(self, options: MqttOptions, topics: Topics, *, outbox: Outbox,
                 status_payload: StatusPayload,
                 on_connection: ConnectionListener | None = None) -> None:
        self.options = options
        self.topics = topics
        self.outbox = outbox
        self._delivery = Delivery(outbox, max_inflight=options.max_inflight,
                                  drain_rate_per_s=options.drain_rate_per_s)
        self._status_payload = status_payload
        self._on_connection = on_connection
        self._client_id = options.client_id or f"edge-agent-{topics.prefix}-{topics.device_id}"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._session: _Session | None = None
        self._handlers: list[tuple[str, int, Handler]] = []
        self._inbox: queue.Queue[InboundMessage | None] = queue.Queue(_INBOX_SIZE)
        self._inbound_dropped = 0
        self._threads: list[threading.Thread] = []
        self._state, self._reason = STATE_ONLINE, None
        self._will = b""
        self._connects = 0
        self._last_error: str | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Return at once; connect in the background and keep reconnecting forever."""
        self._will = json.dumps(self._status_payload(STATE_OFFLINE, None)).encode()
        self._new_client()  # raise configuration errors (TLS files) here, not in a thread
        for name, target in (("mqtt-net", self._run_network), ("mqtt-send", self._run_sender),
                             ("mqtt-handlers", self._run_handlers)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, final_state: str = STATE_STOPPED, flush_timeout: float = 1.5) -> None:
        """Deliver what can be delivered in ``flush_timeout``, publish the final retained
        status, disconnect cleanly (so the broker does not send the last will)."""
        flush_end = time.monotonic() + flush_timeout
        while self.connected and time.monotonic() < flush_end and self._delivery.pending():
            self._wake.set()
            self._stopping.wait(0.01)
        self._state, self._reason = final_state, None
        info = self._publish_status()
        deadline = time.monotonic() + 0.5
        if info is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(0.4)
        self._stopping.set()
        self._wake.set()
        with contextlib.suppress(queue.Full):
            self._inbox.put(None, timeout=0.1)
        session = self._session
        if session is not None:
            session.client.disconnect()
        for thread in self._threads:
            thread.join(timeout=max(0.05, deadline - time.monotonic()))
        self._delivery.settle()
        self._connected.clear()

    # -- public API ----------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Register once; (re)subscribed on every connect."""
        with self._lock:
            self._handlers.append((topic_filter, qos, handler))
        session = self._session
        if session is not None and session.connected:
            session.client.subscribe(topic_filter, qos)

    def publish_durable(self, topic: str, payload: bytes, qos: int | None = None) -> int:
        """Queue in the outbox (survives outages and restarts); returns the outbox id."""
        if not _valid_topic(topic):
            raise ValueError(f"cannot publish to {topic!r}: empty or has a wildcard")
        item_id = self.outbox.put(topic, payload, self.options.qos if qos is None else qos)
        self._wake.set()
        return item_id

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                correlation_data: bytes | None = None) -> bool:
        """Best effort, not queued: False when not connected."""
        return self._direct(topic, payload, qos, retain, correlation_data) is not None

    def set_state(self, state: str, reason: str | None = None) -> None:
        """Remember the state (re-published on every connect) and publish it retained."""
        self._state, self._reason = state, reason
        self._publish_status()

    @property
    def state(self) -> str:
        return self._state

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "reconnects": max(0, self._connects - 1),
            "published": self._delivery.delivered,
            "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped,
            "set_aside": self.outbox.set_aside_count,
            "inbound_dropped": self._inbound_dropped,
            "last_error": self._last_error,
        }

    def _publish_status(self) -> mqtt.MQTTMessageInfo | None:
        try:
            body = json.dumps(self._status_payload(self._state, self._reason)).encode()
        except Exception:
            log.exception("status_payload(%r) failed; status not published", self._state)
            return None
        return self._direct(self.topics.status, body, 1, True, None)

    def _direct(self, topic: str, payload: bytes, qos: int, retain: bool,
                correlation_data: bytes | None) -> mqtt.MQTTMessageInfo | None:
        session = self._session
        if session is None or not session.connected:
            return None  # never let paho queue it in memory
        if not _valid_topic(topic):
            log.warning("not published to %r: empty or has a wildcard", topic)
            return None
        props = None
        if correlation_data is not None and self.options.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        try:
            info = session.client.publish(topic, payload, qos=qos, retain=retain,
                                          properties=props)
        except ValueError as exc:  # a payload above the MQTT limit
            log.warning("not published to %r: %s", topic, exc)
            return None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        self._delivery.direct(session.gen, info.mid)
        return info

    # -- network thread: one paho client per connection ------------------------------

    def _new_client(self) -> _Client:
        o = self.options
        v5 = o.protocol == "5"
        client = _Client(CallbackAPIVersion.VERSION2, client_id=self._client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                         clean_session=None if v5 else True, reconnect_on_failure=False)
        client.suppress_exceptions = True
        client.loop_tick_s = min(1.0, max(0.05, o.keepalive / 10))
        client.connect_timeout = o.connect_timeout_s
        client.max_inflight_messages_set(o.max_inflight + 20)
        client.will_set(self.topics.status, self._will, qos=1, retain=True)
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        if o.tls:
            try:
                client.tls_set(ca_certs=o.ca_file, certfile=o.cert_file, keyfile=o.key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError([f"mqtt.tls: {o.ca_file}, {o.cert_file}, {o.key_file}: "
                                   f"cannot load TLS files: {exc}"]) from exc
            client.tls_insecure_set(o.tls_insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    def _run_network(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            session = _Session(self._new_client())
            self._session = session
            self._connect_and_loop(session)
            session.connected = False
            self._connected.clear()
            if session.was_up:
                self._delivery.close(count_strike=not self._stopping.is_set())
                failures = 0
                self._notify(False, self._last_error)
            if self._stopping.is_set():
                break
            delay = min(self.options.reconnect_max_s,
                        self.options.reconnect_min_s * 2 ** min(failures, 20))
            failures += 1
            self._stopping.wait(random.uniform(delay / 2, delay))

    def _connect_and_loop(self, session: _Session) -> None:
        """Connect, run paho's loop thread until this connection ends, then join it."""
        o = self.options
        kw: dict[str, Any] = {"clean_start": True} if o.protocol == "5" else {}
        try:
            session.client.connect(o.host, o.port, o.keepalive, **kw)
        except (OSError, ValueError) as exc:
            self._error(f"cannot connect to MQTT broker {o.host}:{o.port}: {exc}")
            return
        session.started = session.last_inbound = time.monotonic()
        session.client.loop_start()
        closed_checks = 0
        while not session.ended.wait(0.2) and closed_checks < 5:
            if self._stopping.is_set():  # stop() raced with this connection
                session.client.disconnect()
            closed_checks = closed_checks + 1 if session.client.socket() is None else 0
        session.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        session = self._session
        if session is None or client is not session.client:
            return
        if reason_code.is_failure:
            self._error(f"broker {self.options.host}:{self.options.port} refused connection: "
                        f"{reason_code}; retrying", logging.ERROR)
            return
        session.gen = self._delivery.open(getattr(properties, "ReceiveMaximum", None))
        session.max_packet = getattr(properties, "MaximumPacketSize", None)
        session.connected = session.was_up = True
        with self._lock:
            filters = {f: q for f, q, _ in self._handlers}
        if filters:
            client.subscribe(list(filters.items()))
        self._connects += 1
        self._connected.set()
        self._publish_status()
        log.info("connected to MQTT broker %s:%s as %s", self.options.host, self.options.port,
                 self._client_id)
        self._notify(True, None)
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason_code: ReasonCode, _properties: Properties | None) -> None:
        session = self._session
        if session is None or client is not session.client:
            return
        was_connected, session.connected = session.connected, False
        self._connected.clear()
        session.ended.set()
        if was_connected and not self._stopping.is_set():
            self._error(f"disconnected from MQTT broker: {session.cut_reason or reason_code}")

    def _on_publish(self, client: mqtt.Client, _userdata: Any, mid: int,
                    reason_code: ReasonCode | None, _properties: Properties | None) -> None:
        session = self._session
        if session is None or client is not session.client:
            return
        refusal = None
        if reason_code is not None and reason_code.is_failure:
            refusal = f"broker refused: {reason_code} ({reason_code.value})"
        self._delivery.acked(session.gen, mid, refusal)
        self._wake.set()

    def _on_log(self, client: mqtt.Client, _userdata: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_DEBUG and buf.startswith("Received "):
            session = self._session
            if session is not None and client is session.client:
                session.last_inbound = time.monotonic()
        elif level == mqtt.MQTT_LOG_ERR and not buf.startswith("Client is not connected"):
            log.warning("paho: %s", buf)

    def _notify(self, connected: bool, reason: str | None) -> None:
        if self._on_connection is None:
            return
        try:
            self._on_connection(connected, reason)
        except Exception:
            log.exception("on_connection listener failed")

    def _error(self, message: str, level: int = logging.WARNING) -> None:
        self._last_error = message
        log.log(level, message)

    # -- sender thread -------------------------------------------------------------

    def _run_sender(self) -> None:
        next_expiry = time.monotonic() + _EXPIRE_EVERY_S
        while not self._stopping.is_set():
            self._wake.wait(_TICK_S)
            self._wake.clear()
            try:
                self._delivery.settle()
                self._watch_link()
                self._fill_window()
                if time.monotonic() > next_expiry:
                    next_expiry = time.monotonic() + _EXPIRE_EVERY_S
                    if self.outbox.expire():
                        log.warning("outbox: dropped messages older than %.0fs",
                                    self.outbox.max_age_s)
            except Exception:
                log.exception("outbox sender failed; retrying")
                self._stopping.wait(0.5)

    def _watch_link(self) -> None:
        session = self._session
        if session is None or session.client.socket() is None:
            return
        now = time.monotonic()
        keepalive = session.client.keepalive
        if session.connected and keepalive > 0:
            silent = now - session.last_inbound
            if silent > 1.5 * keepalive:
                self._cut(session, f"no packet from the broker for {silent:.1f}s (keepalive "
                                   f"{keepalive}s): half-open link, reconnecting")
        elif not session.connected and now - session.started > self.options.connect_timeout_s:
            self._cut(session, f"no CONNACK within {self.options.connect_timeout_s}s")

    def _cut(self, session: _Session, why: str) -> None:
        """Shut the socket down under paho's loop, which then reports the link lost. A
        second cut of the same connection means paho's loop is gone: end the session."""
        self._error(why)
        if session.cut_reason is not None:
            session.ended.set()
        session.cut_reason = why
        sock = session.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]
        session.started = session.last_inbound = time.monotonic()

    def _fill_window(self) -> None:
        session = self._session
        if session is None or not session.connected:
            return
        for item in self._delivery.next_batch(session.gen):
            if not self._send(session, item):
                break

    def _send(self, session: _Session, item: OutboxItem) -> bool:
        """Publish one outbox item; False when the link is gone (the item stays queued)."""
        limit = session.max_packet
        if limit is not None and len(item.payload) + len(item.topic) + 16 > int(limit):
            self._delivery.skipped(session.gen, item.id, f"payload too large for the broker "
                                                         f"(max packet {limit} bytes)")
            return True
        try:
            info = session.client.publish(item.topic, item.payload, qos=item.qos,
                                          retain=item.retain)
        except ValueError as exc:
            self._delivery.skipped(session.gen, item.id, f"refused before sending: {exc}")
            return True
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self._delivery.sent(session.gen, item.id, info.mid)
        return True

    # -- handler thread ------------------------------------------------------------

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        try:
            self._inbox.put_nowait(InboundMessage(
                topic=msg.topic, payload=bytes(msg.payload),
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=getattr(props, "CorrelationData", None),
                retain=bool(msg.retain)))
        except queue.Full:
            self._inbound_dropped += 1
            if self._inbound_dropped % 1000 == 1:
                log.warning("handlers are %d messages behind: dropped %d inbound messages",
                            _INBOX_SIZE, self._inbound_dropped)

    def _run_handlers(self) -> None:
        while (message := self._inbox.get()) is not None:
            with self._lock:
                handlers = [h for f, _, h in self._handlers
                            if mqtt.topic_matches_sub(f, message.topic)]
            for handler in handlers:
                try:
                    handler(message)
                except Exception:
                    log.exception("handler %r failed on %s", handler, message.topic)
