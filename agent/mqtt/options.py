"""Message types of the MQTT port (agent/mqtt/port.py) and the kinds of inbound traffic it
queues apart. The port's settings are the validated ``MqttConfig`` section (agent/config.py):
defaults live there and nowhere else."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

InboundKind = Literal["command", "model", "sample"]


@dataclass(frozen=True)
class InboxLimit:
    """Bound of one kind's inbound queue: messages and payload bytes waiting for handlers."""

    messages: int
    bytes: int


INBOX_LIMITS: Mapping[InboundKind, InboxLimit] = MappingProxyType({
    "command": InboxLimit(1_000, 8 << 20),
    "model": InboxLimit(4_096, 96 << 20),  # a whole push at the 64 MB model limit
    "sample": InboxLimit(10_000, 32 << 20),
})


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
