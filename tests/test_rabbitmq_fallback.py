"""The agent's MQTT 5 -> 3.1.1 fallback decision (agent/mqtt/fallback.py); the end-to-end
check against RabbitMQ is in tests/test_rabbitmq.py (slow)."""

from __future__ import annotations

from agent.mqtt.fallback import ProtocolFallback


def test_two_closes_before_connack_switch_to_311() -> None:
    fb = ProtocolFallback("5")
    assert not fb.after_connection(tcp_connected=True, connack=None, was_up=False)
    assert fb.after_connection(tcp_connected=True, connack=None, was_up=False)
    assert fb.protocol == "3.1.1"
    assert not fb.after_connection(tcp_connected=True, connack=None, was_up=False)


def test_unsupported_protocol_connack_counts_too() -> None:
    fb = ProtocolFallback("5", attempts=1)
    assert fb.after_connection(tcp_connected=True, connack=132, was_up=False)


def test_an_unreachable_broker_or_a_refused_login_is_not_a_reason() -> None:
    fb = ProtocolFallback("5")
    for _ in range(5):
        assert not fb.after_connection(tcp_connected=False, connack=None, was_up=False)
        assert not fb.after_connection(tcp_connected=True, connack=135, was_up=False)
    assert fb.protocol == "5"


def test_a_connection_that_was_up_resets_the_count() -> None:
    fb = ProtocolFallback("5")
    fb.after_connection(tcp_connected=True, connack=None, was_up=False)
    fb.after_connection(tcp_connected=True, connack=0, was_up=True)
    assert not fb.after_connection(tcp_connected=True, connack=None, was_up=False)
    assert fb.protocol == "5"


def test_311_stays_311() -> None:
    fb = ProtocolFallback("3.1.1", attempts=1)
    assert not fb.after_connection(tcp_connected=True, connack=None, was_up=False)
