"""The MQTT port: connect, last will, re-subscribe, publish through the durable outbox.

Design choices (why it is shaped like this):

* **One paho client per connection.** Each connection attempt gets a fresh
  ``paho.mqtt.client.Client``, run by this port's network thread (``connect`` then
  ``loop_forever`` until the link ends) with our own exponential backoff and jitter. paho
  keeps unacknowledged QoS 1 messages in memory and replays them on reconnect; a fresh
  client throws that copy away, so the outbox is the only queue and a reconnect resends
  from the outbox, in order, exactly once per session.
* **Outbox sender.** A sender thread publishes outbox items in id order while connected,
  at most ``max_inflight`` unacknowledged (and never more than the broker's Receive
  Maximum). An item is removed only when its PUBACK arrives (``on_publish``); acks are
  batched into one SQLite transaction. A PUBACK with a failure reason code (MQTT 5, e.g.
  135 Not authorized) moves the item to the dead-letter table instead of retrying it.
  Under MQTT 3.1.1 the broker drops refused messages silently and they count as sent.
* **Paced backlog.** The items already in the outbox when a connection comes up (the
  backlog) are sent at ``drain_rate_per_s`` (token bucket); items put after that are not
  paced. It is one ordered queue, so new items wait behind the backlog, but draining a
  100k backlog does not flood the link or take the CPU from the pipeline, and direct
  publishes (status, stats, command results) and inbound commands keep flowing.
* **Half-open links.** paho pings every ``keepalive``; the sender thread also watches the
  time since the last packet from the broker and cuts the socket after 1.5 keepalive
  periods without one (or ``connect_timeout_s`` without a CONNACK).
* **Handlers** run on their own thread so a slow handler never stalls pings or acks;
  an exception in a handler is logged, never fatal.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.contract import STATE_OFFLINE, STATE_ONLINE, STATE_STOPPED, Topics
from agent.errors import ConfigError
from agent.outbox import Outbox

log = logging.getLogger(__name__)

_TICK_S = 0.05
_EXPIRE_EVERY_S = 60.0
_UNSET = object()
_MAX_STRIKES = 3


@dataclass(frozen=True)
class MqttOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str | None = None
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    qos: int = 1
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    drain_rate_per_s: float = 500.0
    max_inflight: int = 100
    connect_timeout_s: float = 5.0


@dataclass(frozen=True)
class InboundMessage:
    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    retain: bool = False


Handler = Callable[[InboundMessage], None]
StatusPayload = Callable[[str, "str | None"], dict[str, Any]]
ConnectionListener = Callable[[bool, "str | None"], None]


@dataclass(eq=False)
class _Session:
    """State of one connection (one paho client). Guarded by ``MqttPort._lock``."""

    client: mqtt.Client
    connected: bool = False
    was_up: bool = False  # CONNACK accepted at some point
    cut_reason: str | None = None
    window: int = 1
    window_cap: int = 1
    max_packet: int | None = None
    inflight: dict[int, int] = field(default_factory=dict)  # mid -> outbox id
    direct: set[int] = field(default_factory=set)  # mids of direct publishes
    early: dict[int, ReasonCode | None] = field(default_factory=dict)  # acks before claim
    cursor: int = 0
    backlog_end: int = 0
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    last_inbound: float = field(default_factory=time.monotonic)
    ended: threading.Event = field(default_factory=threading.Event)


class _Client(mqtt.Client):
    """paho's client with a shorter network-loop tick, so keepalive pings go out on time."""

    loop_tick_s: float = 1.0

    def loop_forever(self, timeout: float = 1.0,
                     retry_first_connection: bool = False) -> MQTTErrorCode:
        return super().loop_forever(min(timeout, self.loop_tick_s), retry_first_connection)


class MqttPort:
    """publish / subscribe / stop, with a durable outbox behind ``publish_durable``."""

    def __init__(self, options: MqttOptions, topics: Topics, *, outbox: Outbox,
                 status_payload: StatusPayload,
                 on_connection: ConnectionListener | None = None) -> None:
        self.options = options
        self.topics = topics
        self.outbox = outbox
        self._status_payload = status_payload
        self._on_connection = on_connection
        self._client_id = options.client_id or f"edge-agent-{topics.prefix}-{topics.device_id}"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._sender_done = threading.Event()
        self._session: _Session | None = None
        self._handlers: list[tuple[str, int, Handler]] = []
        self._inbox: queue.Queue[InboundMessage | None] = queue.Queue()
        self._acked: list[int] = []
        self._refused: list[tuple[int, str]] = []
        self._strikes: dict[int, int] = {}
        self._slow_start = False
        self._threads: list[threading.Thread] = []
        self._state, self._reason = STATE_ONLINE, None
        self._will = b""
        self._connects = 0
        self._published = 0
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
        deadline = time.monotonic() + flush_timeout
        while self.connected and time.monotonic() < deadline and self._pending():
            self._wake.set()
            self._stopping.wait(0.01)
        self._state, self._reason = final_state, None
        info = self._publish_status()
        if info is not None and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            try:
                info.wait_for_publish(0.5)
            except (RuntimeError, ValueError):
                log.warning("final status %r was not confirmed by the broker", final_state)
        self._stopping.set()
        self._wake.set()
        self._inbox.put(None)
        session = self._session
        if session is not None:
            session.client.disconnect()
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline + 0.5 - time.monotonic()))
        self._settle_outcomes()
        self._connected.clear()

    def _pending(self) -> bool:
        with self._lock:
            inflight = len(self._session.inflight) if self._session else 0
        return self.outbox.depth > 0 or inflight > 0

    # -- public API ----------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Register once; (re)subscribed on every connect."""
        with self._lock:
            self._handlers.append((topic_filter, qos, handler))
            session = self._session if self.connected else None
        if session is not None:
            session.client.subscribe(topic_filter, qos)

    def publish_durable(self, topic: str, payload: bytes, qos: int | None = None) -> int:
        """Queue in the outbox (survives outages and restarts); returns the outbox id."""
        item_id = self.outbox.put(topic, payload, self.options.qos if qos is None else qos)
        self._wake.set()
        return item_id

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                correlation_data: bytes | None = None) -> bool:
        """Best effort, not queued: False when not connected."""
        return self._direct(topic, payload, qos, retain, correlation_data) is not None

    def set_state(self, state: str, reason: str | None = None) -> None:
        self._state, self._reason = state, reason
        self._publish_status()

    @property
    def state(self) -> str:
        return self._state

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "reconnects": max(0, self._connects - 1),
            "published": self._published,
            "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped,
            "set_aside": self.outbox.set_aside_count,
            "last_error": self._last_error,
        }

    def _publish_status(self) -> mqtt.MQTTMessageInfo | None:
        body = json.dumps(self._status_payload(self._state, self._reason)).encode()
        return self._direct(self.topics.status, body, 1, True, None)

    def _direct(self, topic: str, payload: bytes, qos: int, retain: bool,
                correlation_data: bytes | None) -> mqtt.MQTTMessageInfo | None:
        session = self._session
        if session is None or not session.connected:
            return None
        props = None
        if correlation_data is not None and self.options.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        info = session.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        with self._lock:
            self._claim(session, info.mid, None)
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
            with self._lock:
                self._session = session
            self._connect_and_loop(session)
            with self._lock:
                session.connected = False
            self._connected.clear()
            if session.was_up:
                self._count_strike(session)
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
        while not session.ended.wait(0.5) and closed_checks < 3:
            closed_checks = closed_checks + 1 if session.client.socket() is None else 0
        session.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        session = self._session
        if session is None or client is not session.client:
            return
        if reason_code.is_failure:
            self._error(f"broker {self.options.host}:{self.options.port} refused connection: "
                        f"{reason_code}; retrying")
            return
        receive_max = int(getattr(properties, "ReceiveMaximum", 65535) or 65535)
        with self._lock:
            session.connected = session.was_up = True
            session.window_cap = max(1, min(self.options.max_inflight, receive_max * 3 // 4))
            session.window = 1 if self._slow_start else session.window_cap
            session.max_packet = getattr(properties, "MaximumPacketSize", None)
            session.backlog_end = self.outbox.last_id()
            handlers = [(f, q) for f, q, _ in self._handlers]
        if handlers:
            client.subscribe(list(dict(handlers).items()))
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
        with self._lock:
            was_connected, session.connected = session.connected, False
        self._connected.clear()
        session.ended.set()
        if was_connected and not self._stopping.is_set():
            self._error(f"disconnected from MQTT broker: {session.cut_reason or reason_code}")

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

    def _error(self, message: str) -> None:
        self._last_error = message
        log.log(logging.ERROR if "refused" in message else logging.WARNING, message)

    # -- acknowledgements ----------------------------------------------------------

    def _on_publish(self, client: mqtt.Client, _userdata: Any, mid: int,
                    reason_code: ReasonCode | None, _properties: Properties | None) -> None:
        session = self._session
        if session is None or client is not session.client:
            return
        with self._lock:
            if mid in session.direct:
                session.direct.discard(mid)
                return
            item_id = session.inflight.pop(mid, None)
            if item_id is None:
                session.early[mid] = reason_code
                return
            self._settle(session, item_id, reason_code)
        self._wake.set()

    def _claim(self, session: _Session, mid: int, item_id: int | None) -> None:
        """After ``publish`` returned: the PUBACK may already have come (under the lock)."""
        reason_code = session.early.pop(mid, _UNSET)
        if reason_code is not _UNSET:
            if item_id is not None:
                self._settle(session, item_id, reason_code)  # type: ignore[arg-type]
        elif item_id is None:
            session.direct.add(mid)
        else:
            session.inflight[mid] = item_id

    def _settle(self, session: _Session, item_id: int, reason_code: ReasonCode | None) -> None:
        if reason_code is not None and reason_code.is_failure:
            self._refused.append((item_id, f"broker refused: {reason_code} "
                                           f"({reason_code.value})"))
        else:
            self._acked.append(item_id)
            self._published += 1
        if self._strikes:
            self._strikes.pop(item_id, None)
        if session.window < session.window_cap:
            session.window += 1

    def _count_strike(self, session: _Session) -> None:
        """A connection ended with messages in flight: the oldest may be what the broker
        chokes on (a poison message). Send one at a time until acks flow again; set a
        message aside when the link died ``_MAX_STRIKES`` times with it the oldest in flight.
        """
        with self._lock:
            self._slow_start = bool(session.inflight)
            if not session.inflight or self._stopping.is_set():
                return
            oldest = min(session.inflight.values())
            self._strikes = {oldest: self._strikes.get(oldest, 0) + 1}
            if self._strikes[oldest] >= _MAX_STRIKES:
                self._refused.append((oldest, f"the broker closed the connection each time "
                                              f"this message was sent ({_MAX_STRIKES} times)"))
                self._strikes = {}

    def _settle_outcomes(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
            refused, self._refused = self._refused, []
        self.outbox.ack_many(acked)
        for item_id, reason in refused:
            log.warning("outbox message %d set aside: %s", item_id, reason)
            self.outbox.set_aside(item_id, reason)

    # -- sender thread -------------------------------------------------------------

    def _run_sender(self) -> None:
        next_expiry = time.monotonic() + _EXPIRE_EVERY_S
        while not self._stopping.is_set():
            self._wake.wait(_TICK_S)
            self._wake.clear()
            try:
                self._settle_outcomes()
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
        self._error(why)
        session.cut_reason = why
        sock = session.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]
        session.started = session.last_inbound = time.monotonic()

    def _fill_window(self) -> None:
        session = self._session
        if session is None:
            return
        with self._lock:
            if not session.connected:
                return
            room, cursor = session.window - len(session.inflight), session.cursor
        room = self._pace(session, room, cursor)
        if room <= 0:
            return
        for item in self.outbox.peek(room, after_id=cursor):
            if not self._send_item(session, item.id, item.topic, item.payload, item.qos,
                                   item.retain):
                break
            if item.id <= session.backlog_end:
                session.tokens -= 1

    def _send_item(self, session: _Session, item_id: int, topic: str, payload: bytes, qos: int,
                   retain: bool) -> bool:
        too_big = session.max_packet is not None and len(payload) + len(topic) + 16 > int(
            session.max_packet)
        try:
            if too_big:
                raise ValueError(f"payload too large for the broker (max packet "
                                 f"{session.max_packet} bytes)")
            info = session.client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:
            with self._lock:
                self._refused.append((item_id, f"refused before sending: {exc}"))
                session.cursor = item_id
            self._wake.set()
            return True
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False  # link gone: the item stays in the outbox for the next connection
        with self._lock:
            session.cursor = item_id
            self._claim(session, info.mid, item_id)
        return True

    def _pace(self, session: _Session, room: int, cursor: int) -> int:
        rate = self.options.drain_rate_per_s
        if room <= 0 or not rate or cursor >= session.backlog_end:
            return room
        now = time.monotonic()
        burst = max(1.0, rate * 4 * _TICK_S)
        session.tokens = min(burst, session.tokens + (now - session.refilled) * rate)
        session.refilled = now
        return min(room, int(session.tokens))

    # -- handler thread ------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        self._inbox.put(InboundMessage(
            topic=msg.topic, payload=bytes(msg.payload),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None), retain=bool(msg.retain)))

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
