"""One MQTT connection: its paho client, and whether the link to the broker is alive.

Liveness is measured from what the client does, never from paho's log text: every inbound
packet that paho reports through a callback (CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK)
counts as proof the link works. When the broker has been silent for half a keepalive the
port sends its own probe, an UNSUBSCRIBE of a topic it never subscribed to (the broker
answers with an UNSUBACK and nothing else happens); when it stays silent for 1.5 keepalives
the link is half-open and the socket is cut.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import MqttConfig
from agent.errors import ConfigError

log = logging.getLogger(__name__)
Callback = TypeVar("Callback", bound=Callable[..., None])


def valid_topic(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic


def logged(callback: Callback) -> Callback:
    """paho callbacks: an exception is logged here (paho would only pass it to its log)."""
    @functools.wraps(callback)
    def run(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("MQTT callback %s failed", callback.__name__)
    return run  # type: ignore[return-value]


class PahoClient(mqtt.Client):
    """paho's client with a shorter network-loop tick, so keepalive pings go out on time."""

    loop_tick_s: float = 1.0

    def loop_forever(self, timeout: float = 1.0,
                     retry_first_connection: bool = False) -> MQTTErrorCode:
        return super().loop_forever(min(timeout, self.loop_tick_s), retry_first_connection)


@dataclass(eq=False)
class Session:
    """One connection: one paho client and what the port knows about its link."""

    client: PahoClient
    gen: int = 0  # InflightWindow generation, set on CONNACK
    connected: bool = False
    was_up: bool = False
    cut_reason: str | None = None
    max_packet: int | None = None
    status_mid: int | None = None  # the retained status sent on CONNACK
    tcp_connected: bool = False
    connack: int | None = None  # the CONNACK's reason code value, when one came
    started: float = field(default_factory=time.monotonic)
    last_inbound: float = field(default_factory=time.monotonic)
    probe_sent: float | None = None
    probes: int = 0
    ended: threading.Event = field(default_factory=threading.Event)

    def heard(self) -> None:
        """A packet came in from the broker."""
        self.last_inbound = time.monotonic()
        self.probe_sent = None

    def check(self, connect_timeout_s: float, probe_topic: str) -> str | None:
        """Probe a quiet link; the reason to cut it when it is dead (None while it lives)."""
        now = time.monotonic()
        keepalive = self.client.keepalive
        if self.connected and keepalive > 0:
            silent = now - self.last_inbound
            if silent > 1.5 * keepalive:
                return (f"no packet from the broker for {silent:.1f}s (keepalive "
                        f"{keepalive}s): half-open link, reconnecting")
            if silent > keepalive / 2 and self.probe_sent is None:
                self.probe_sent = now
                self.probes += 1
                self.client.unsubscribe(probe_topic)
        elif not self.connected and now - self.started > connect_timeout_s:
            return f"no CONNACK within {connect_timeout_s}s"
        return None

    def cut(self, why: str) -> None:
        """Shut the socket down under paho's loop, which then reports the link lost. A
        second cut of the same connection means paho's loop is gone: end the session."""
        if self.cut_reason is not None:
            self.ended.set()
        self.cut_reason = why
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]
        self.started = self.last_inbound = time.monotonic()
        self.probe_sent = None


def new_client(cfg: MqttConfig, client_id: str, *, will_topic: str, will: bytes,
               password: str | None) -> PahoClient:
    """A paho client set up from the validated ``mqtt`` config section (callbacks unset)."""
    v5 = cfg.protocol == "5"
    client = PahoClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                        clean_session=None if v5 else True, reconnect_on_failure=False)
    client.suppress_exceptions = True  # the port's callbacks log their own exceptions
    client.loop_tick_s = min(1.0, max(0.05, cfg.keepalive_s / 10))
    client.connect_timeout = cfg.connect_timeout_s
    client.max_inflight_messages_set(cfg.max_inflight + 20)
    client.will_set(will_topic, will, qos=1, retain=True)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    tls = cfg.tls
    if tls.enabled:
        files = [str(p) if p is not None else None
                 for p in (tls.ca_file, tls.cert_file, tls.key_file)]
        try:
            client.tls_set(ca_certs=files[0], certfile=files[1], keyfile=files[2])
        except (OSError, ValueError) as exc:
            raise ConfigError([f"mqtt.tls: {', '.join(map(str, files))}: "
                               f"cannot load TLS files: {exc}"]) from exc
        client.tls_insecure_set(tls.insecure)
    return client
