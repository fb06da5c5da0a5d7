"""Faults between the agent and the broker: outages, half-open links, a full outbox.

The guarantee under test is producer-side: every label put in the outbox reaches the
broker, in order (duplicates allowed). The test subscriber keeps a persistent session
(fixed client id, clean session off, QoS 1) so the broker queues for it while it is away.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import OutboxConfig
from agent.mqtt.outbox import Outbox
from agent.mqtt.port import MqttPort
from bench.support.broker import Mosquitto
from tests.support.tcp_proxy import TcpProxy
from tests.test_mqtt import (
    TOPICS,
    CollectorFactory,
    PortFactory,
    collect,
    first_seen,
    make_port,
    wait_until,
)

__all__ = ["collect", "make_port"]  # fixtures shared with tests/test_mqtt.py


class DurableSubscriber:
    """Fixed client id, persistent session, QoS 1, re-subscribes on every connect."""

    def __init__(self, port: int, topic: str, client_id: str = "test-durable-sub") -> None:
        self.seqs: list[int] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, u, f, rc, p: rc.is_failure or c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self._subscribed.wait(5), "durable subscriber did not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.seqs.append(json.loads(msg.payload)["seq"])
            self._cond.notify_all()

    def wait_all(self, count: int, timeout: float = 15.0) -> list[int]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(set(self.seqs)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(range(count)) - set(self.seqs))
                    raise TimeoutError(f"missing {len(missing)} seqs: {missing[:20]}")
                self._cond.wait(left)
            return list(self.seqs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Producer:
    """Puts ``{"seq": n}`` labels through ``publish_durable`` at a steady rate."""

    def __init__(self, port: MqttPort, rate: float = 30.0) -> None:
        self.port = port
        self.period = 1.0 / rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.port.publish_durable(TOPICS.labels, json.dumps({"seq": self.sent}).encode())
            self.sent += 1
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(2)
        return self.sent


@pytest.fixture
def produce(make_port: PortFactory) -> Iterator[type[Producer]]:
    """``Producer`` whose threads are stopped before the ports and outboxes close."""
    made: list[Producer] = []

    class Tracked(Producer):
        def __init__(self, port: MqttPort, rate: float = 30.0) -> None:
            super().__init__(port, rate)
            made.append(self)

    yield Tracked
    for producer in made:
        producer.stop()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[DurableSubscriber]:
    sub = DurableSubscriber(mosquitto.port, TOPICS.labels)
    yield sub
    sub.close()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_broker_outage_loses_nothing(mosquitto: Mosquitto, subscriber: DurableSubscriber,
                                     make_port: PortFactory, produce: type[Producer],
                                     kill: bool) -> None:
    subscribed_at = time.time()
    port = make_port(mosquitto.port)
    producer = produce(port)
    wait_until(lambda: len(subscriber.seqs) >= 40, 5, "traffic before the outage")
    if kill:  # SIGKILL keeps only what the last autosave wrote: the subscriber's session
        saved = mosquitto.workdir / "mosquitto.db"
        wait_until(lambda: saved.exists() and saved.stat().st_mtime > subscribed_at, 5,
                   "the broker to save the test subscriber's session")
    mosquitto.stop(kill=kill)
    wait_until(lambda: not port.connected, 5, "port notices the outage")
    wait_until(lambda: port.outbox.depth > 30, 30, "labels kept on disk during the outage")
    mosquitto.start()
    wait_until(lambda: port.connected, 10, "reconnect")
    wait_until(lambda: port.outbox.depth < 5, 10, "backlog drained")
    total = producer.stop()
    seqs = subscriber.wait_all(total)
    assert first_seen(seqs) == list(range(total))
    assert port.stats()["reconnects"] >= 1 and port.stats()["outbox_dropped"] == 0


def test_half_open_link_is_detected_and_recovered(mosquitto: Mosquitto,
                                                  subscriber: DurableSubscriber,
                                                  make_port: PortFactory,
                                                  produce: type[Producer],
                                                  collect: CollectorFactory) -> None:
    proxy = TcpProxy(mosquitto.port).start()
    changes: list[tuple[bool, str | None]] = []
    port = make_port(proxy.port, keepalive_s=2, connect_timeout_s=1.0,
                     on_connection=lambda up, why: changes.append((up, why)))
    producer = produce(port)
    wait_until(lambda: len(subscriber.seqs) >= 15, 5, "traffic before the fault")
    swallowed_at = time.monotonic()
    proxy.set_mode("swallow")
    wait_until(lambda: not port.connected, 30, "half-open detected")
    wait_until(lambda: any(not up for up, _ in changes), 2, "on_connection(False)")
    assert "half-open" in (port.stats()["last_error"] or "")
    proxy.set_mode("pass")
    wait_until(lambda: port.connected, 10, "reconnect through the proxy")
    wait_until(lambda: port.outbox.depth < 5, 10, "backlog drained")
    total = producer.stop()
    assert first_seen(subscriber.wait_all(total)) == list(range(total))
    status = collect(mosquitto.port, TOPICS.status)
    try:
        # the broker would time out the swallowed connection 1.5 keepalives after the
        # swallow; no other state than online may be retained until then, nor after
        broker_timeout = swallowed_at + 1.5 * 2 + 0.5 - time.monotonic()
        with pytest.raises(TimeoutError):
            status.wait_for(lambda ms: any(m.json()["state"] != "online" for m in ms),
                            timeout=max(0.1, broker_timeout), what="a state other than online")
        assert status.wait_topic(TOPICS.status)[-1].json()["state"] == "online"
    finally:
        proxy.stop()


def test_full_outbox_drops_oldest_and_keeps_running(mosquitto: Mosquitto,
                                                    subscriber: DurableSubscriber,
                                                    make_port: PortFactory,
                                                    tmp_path: Path) -> None:
    mosquitto.stop()
    small = Outbox(tmp_path / "small.db", OutboxConfig(max_messages=50))
    port = make_port(mosquitto.port, outbox=small, start=False)
    port.start()
    for seq in range(80):
        port.publish_durable(TOPICS.labels, json.dumps({"seq": seq}).encode())
    assert port.outbox.depth == 50 and port.stats()["outbox_dropped"] == 30
    mosquitto.start()
    assert port.wait_connected(10)
    wait_until(lambda: len(set(subscriber.seqs)) >= 50, 10, "the 50 newest")
    assert first_seen(subscriber.seqs) == list(range(30, 80))
    port.publish_durable(TOPICS.labels, json.dumps({"seq": 80}).encode())
    wait_until(lambda: 80 in subscriber.seqs, 5, "a new label after the drops")


def test_backlog_is_paced_and_in_order(mosquitto: Mosquitto, subscriber: DurableSubscriber,
                                       make_port: PortFactory) -> None:
    mosquitto.stop()
    port = make_port(mosquitto.port, drain_rate_per_s=200, start=False)
    port.start()
    for seq in range(200):
        port.publish_durable(TOPICS.labels, json.dumps({"seq": seq}).encode())
    mosquitto.start()
    assert port.wait_connected(10)
    connected_at = time.monotonic()
    port.publish_durable(TOPICS.labels, json.dumps({"seq": 200}).encode())
    seqs = subscriber.wait_all(201)
    assert time.monotonic() - connected_at >= 0.6  # 200 at 200/s with a small burst
    assert first_seen(seqs) == list(range(201))
