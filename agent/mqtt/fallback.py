"""Fall back from MQTT 5 to 3.1.1 when the broker does not speak 5.

Brokers that speak only 3.1.1 answer an MQTT 5 CONNECT in one of two ways: a CONNACK with
"unsupported protocol version" (the spec's way), or by closing the connection without any
CONNACK (RabbitMQ 3.10's MQTT plugin). After ``attempts`` such answers in a row, with no
successful connection in between, the agent switches to 3.1.1 for the rest of its run: commands
are then answered on ``<base>/cmd/<name>/result`` only (3.1.1 has no response topic).
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_V5, PROTOCOL_V311 = "5", "3.1.1"
UNSUPPORTED_PROTOCOL = (1, 132)  # CONNACK return code (3.1.1) / reason code (5)


@dataclass
class ProtocolFallback:
    protocol: str
    attempts: int = 2
    _strikes: int = 0

    def after_connection(self, tcp_connected: bool, connack: int | None, was_up: bool) -> bool:
        """Record how one connection attempt ended; True when the protocol just changed to
        3.1.1 (``self.protocol`` then says so)."""
        if self.protocol != PROTOCOL_V5 or was_up:
            self._strikes = 0
            return False
        refused_v5 = tcp_connected and (connack is None or connack in UNSUPPORTED_PROTOCOL)
        self._strikes = self._strikes + 1 if refused_v5 else 0
        if self._strikes < self.attempts:
            return False
        self.protocol = PROTOCOL_V311
        return True
