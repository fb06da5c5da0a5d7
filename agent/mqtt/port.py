"""The MQTT port: connect, last will, re-subscribe, publish through the durable outbox.

* **Settings** are the validated ``mqtt`` config section (``MqttConfig``) and the outbox's
  drain rate (``OutboxConfig``): their defaults live in agent/config.py and nowhere else.
* **One paho client per connection.** The network thread connects a fresh client, runs
  its loop until the link ends, then backs off (exponential, with jitter) and starts over.
  paho keeps unacknowledged QoS 1 messages in memory and replays them on reconnect; a fresh
  client drops that copy, so the outbox is the only queue and a new connection resends
  from the outbox, in order. Duplicates are possible; consumers dedupe on run_id + seq.
* **Outbox sender.** A sender thread publishes outbox items in order while connected,
  within the ``InflightWindow`` (``max_inflight``, slow start after a dropped link, paced
  backlog, poison-message strikes). An item leaves the outbox only when its PUBACK arrives;
  a PUBACK with a failure code (MQTT 5, e.g. 135 Not authorized) sets it aside. Under MQTT
  3.1.1 the broker drops refused messages silently: they count as sent.
* **Paced backlog.** What was queued when the connection came up drains at
  ``drain_rate_per_s``; newer items wait behind it, but the drain does not flood the link
  or take the CPU from the pipeline.
* **Half-open links** are found from the packets the client receives and the port's own
  probe (agent/mqtt/link.py), never from paho's log text.
* **Handlers** run on one thread per kind of inbound traffic (agent/mqtt/inbound.py): a
  slow or flooded kind never stalls pings, acks or the other kinds; an exception in a
  handler is logged, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig, OutboxConfig
from agent.contract import STATE_OFFLINE, STATE_ONLINE, STATE_STOPPED, Topics
from agent.mqtt.fallback import ProtocolFallback
from agent.mqtt.inbound import InboundQueues
from agent.mqtt.inflight import InflightWindow
from agent.mqtt.link import PahoClient, Session, logged, new_client, valid_topic
from agent.mqtt.options import (
    INBOX_LIMITS,
    ConnectionListener,
    Handler,
    InboundKind,
    InboundMessage,
    InboxLimit,
    StatusPayload,
)
from agent.mqtt.outbox import Outbox
from agent.mqtt.sender import OutboxSender

__all__ = ["InboundMessage", "MqttPort"]

log = logging.getLogger(__name__)


class MqttPort:
    """publish / subscribe / stop, with a durable outbox behind ``publish_durable``."""

    def __init__(self, cfg: MqttConfig, topics: Topics, *, outbox: Outbox,
                 status_payload: StatusPayload, outbox_cfg: OutboxConfig | None = None,
                 on_connection: ConnectionListener | None = None,
                 inbox_limits: Mapping[InboundKind, InboxLimit] = INBOX_LIMITS) -> None:
        self.cfg = cfg
        self._fallback = ProtocolFallback(cfg.protocol)
        self.topics = topics
        self.outbox = outbox
        pacing = outbox_cfg or OutboxConfig()
        self.window = InflightWindow(outbox, max_inflight=cfg.max_inflight,
                                     drain_rate_per_s=pacing.drain_rate_per_s)
        self._status_payload = status_payload
        self._on_connection = on_connection
        self._client_id = cfg.client_id or f"edge-agent-{topics.prefix}-{topics.device_id}"
        self._password: str | None = None
        self._lock = threading.Lock()
        self._sender = OutboxSender(outbox, self.window, current=lambda: self._session,
                                    connect_timeout_s=cfg.connect_timeout_s,
                                    probe_topic=topics.liveness_probe, on_dead=self._error)
        self._wake = self._sender.wake
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._session: Session | None = None
        self._filters: dict[str, int] = {}
        self._inbound = InboundQueues(inbox_limits)
        self._threads: list[threading.Thread] = []
        self._state, self._reason = STATE_ONLINE, None
        self._will = b""
        self._connects = 0
        self._last_error: str | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Return at once; connect in the background and keep reconnecting forever."""
        self._will = json.dumps(self._status_payload(STATE_OFFLINE, None)).encode()
        self._password = self.cfg.password()
        self._new_client()  # raise configuration errors (TLS files) here, not in a thread
        self._inbound.start()
        for name, target in (("mqtt-net", self._run_network),
                             ("mqtt-send", lambda: self._sender.run(self._stopping))):
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
        while self.connected and time.monotonic() < flush_end and self.window.pending():
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
        session = self._session
        if session is not None:
            session.client.disconnect()
        self._inbound.stop(timeout=0.1)
        for thread in self._threads:
            thread.join(timeout=max(0.05, deadline - time.monotonic()))
        self.window.settle()
        self._connected.clear()

    # -- public API ----------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1,
                  kind: InboundKind = "command") -> None:
        """Register once; (re)subscribed on every connect. Messages are queued by ``kind``
        (``command``, ``model``, ``sample``), each kind in its own bounded queue."""
        self._inbound.add(kind, topic_filter, handler)
        with self._lock:
            self._filters[topic_filter] = max(qos, self._filters.get(topic_filter, 0))
        session = self._session
        if session is not None and session.connected:
            session.client.subscribe(topic_filter, qos)

    def publish_durable(self, topic: str, payload: bytes, qos: int | None = None) -> int:
        """Queue in the outbox (survives outages and restarts); returns the outbox id."""
        if not valid_topic(topic):
            raise ValueError(f"cannot publish to {topic!r}: empty or has a wildcard")
        item_id = self.outbox.put(topic, payload, self.cfg.qos if qos is None else qos)
        if self.window.inflight == 0:  # an idle link: send it now, committed first
            self._sender.send_now()
        else:
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
        session = self._session
        return {
            "connected": self.connected,
            "reconnects": max(0, self._connects - 1),
            "published": self.window.delivered,
            "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped,
            "set_aside": self.outbox.set_aside_count,
            "outbox_durable": self.outbox.durable,
            "outbox_memory_dropped": self.outbox.memory_dropped,
            "inbound_dropped": self._inbound.dropped(),
            "link_probes": session.probes if session is not None else 0,
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
        if not valid_topic(topic):
            log.warning("not published to %r: empty or has a wildcard", topic)
            return None
        props = None
        if correlation_data is not None and self.cfg.protocol == "5":
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
        self.window.direct(session.gen, info.mid)
        return info

    # -- network thread: one paho client per connection ------------------------------

    def _new_client(self) -> PahoClient:
        client = new_client(self.cfg, self._client_id, will_topic=self.topics.status,
                            will=self._will, password=self._password)
        client.on_connect = logged(self._on_connect)
        client.on_disconnect = logged(self._on_disconnect)
        client.on_publish = logged(self._on_publish)
        client.on_message = logged(self._on_message)
        client.on_subscribe = client.on_unsubscribe = logged(self._on_ack_packet)
        return client

    def _run_network(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                session = Session(self._new_client())
            except Exception as exc:  # e.g. TLS files gone since start: keep retrying
                self._error(f"cannot set up the MQTT client: {exc}", logging.ERROR)
                self._stopping.wait(self.cfg.reconnect_max_s)
                continue
            self._session = session
            self._connect_and_loop(session)
            session.connected = False
            self._connected.clear()
            if session.was_up:
                self.window.close(count_strike=not self._stopping.is_set())
                failures = 0
                self._notify(False, self._last_error)
            if self._fallback.after_connection(session.tcp_connected, session.connack,
                                               session.was_up):
                self.cfg = self.cfg.model_copy(update={"protocol": self._fallback.protocol})
                log.warning("broker %s:%s does not speak MQTT 5; using 3.1.1 (set "
                            "mqtt.protocol: \"3.1.1\")", self.cfg.host, self.cfg.port)
                continue
            if self._stopping.is_set():
                break
            delay = min(self.cfg.reconnect_max_s,
                        self.cfg.reconnect_min_s * 2 ** min(failures, 20))
            failures += 1
            self._stopping.wait(random.uniform(delay / 2, delay))

    def _connect_and_loop(self, session: Session) -> None:
        """Connect, run paho's loop thread until this connection ends, then join it."""
        cfg = self.cfg
        kw: dict[str, Any] = {"clean_start": True} if cfg.protocol == "5" else {}
        try:
            session.client.connect(cfg.host, cfg.port, cfg.keepalive_s, **kw)
        except (OSError, ValueError) as exc:
            self._error(f"cannot connect to MQTT broker {cfg.host}:{cfg.port}: {exc}")
            return
        session.started = session.last_inbound = time.monotonic()
        session.tcp_connected = True
        session.client.loop_start()
        closed_checks = 0
        while not session.ended.wait(0.2) and closed_checks < 5:
            if self._stopping.is_set():  # stop() raced with this connection
                session.client.disconnect()
            closed_checks = closed_checks + 1 if session.client.socket() is None else 0
        session.client.loop_stop()

    def _session_of(self, client: mqtt.Client) -> Session | None:
        """The current session when ``client`` is its client (callbacks of an old one are
        ignored); every callback is an inbound packet, so the link is alive."""
        session = self._session
        if session is None or client is not session.client:
            return None
        session.heard()
        return session

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        session = self._session_of(client)
        if session is None:
            return
        session.connack = reason_code.value
        if reason_code.is_failure:
            self._error(f"broker {self.cfg.host}:{self.cfg.port} refused connection: "
                        f"{reason_code}; retrying", logging.ERROR)
            return
        session.gen = self.window.open(getattr(properties, "ReceiveMaximum", None))
        session.max_packet = getattr(properties, "MaximumPacketSize", None)
        session.connected = session.was_up = True
        with self._lock:
            filters = list(self._filters.items())
        if filters:
            client.subscribe(filters)
        self._connects += 1
        info = self._publish_status()  # wait_connected() returns once the broker has it
        if info is None:
            self._connected.set()
        else:
            session.status_mid = info.mid
        log.info("connected to MQTT broker %s:%s as %s", self.cfg.host, self.cfg.port,
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
        session = self._session_of(client)
        if session is None:
            return
        if mid == session.status_mid:
            self._connected.set()
        refusal = None
        if reason_code is not None and reason_code.is_failure:
            refusal = f"broker refused: {reason_code} ({reason_code.value})"
        self.window.acked(session.gen, mid, refusal)
        self._wake.set()

    def _on_ack_packet(self, client: mqtt.Client, *_args: Any) -> None:
        """SUBACK or UNSUBACK (the answer to the liveness probe)."""
        self._session_of(client)

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._session_of(client)
        props = getattr(msg, "properties", None)
        self._inbound.put(InboundMessage(
            topic=msg.topic, payload=bytes(msg.payload),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None),
            retain=bool(msg.retain)))

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
