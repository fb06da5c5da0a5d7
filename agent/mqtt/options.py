"""Options and message types of the MQTT port (agent/mqtt/port.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import ConfigError


@dataclass(frozen=True)
class MqttOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str | None = None  # default: edge-agent-<prefix>-<device id>
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
    drain_rate_per_s: float = 500.0  # 0: unpaced
    max_inflight: int = 100
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        checks = [("protocol", self.protocol in ("3.1.1", "5"), "must be 3.1.1 or 5"),
                  ("port", 0 < self.port < 65536, "must be 1-65535"),
                  ("qos", self.qos in (0, 1, 2), "must be 0, 1 or 2"),
                  ("keepalive", self.keepalive >= 0, "must be >= 0"),
                  ("max_inflight", self.max_inflight >= 1, "must be >= 1"),
                  ("reconnect_min_s", 0 < self.reconnect_min_s <= self.reconnect_max_s,
                   "must be > 0 and <= reconnect_max_s"),
                  ("drain_rate_per_s", self.drain_rate_per_s >= 0, "must be >= 0 (0: unpaced)")]
        problems = [f"mqtt.{key}: {getattr(self, key)!r}: {what}" for key, ok, what in checks
                    if not ok]
        if problems:
            raise ConfigError(problems)


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
