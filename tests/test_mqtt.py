"""The MQTT port against a real Mosquitto: status, last will, subscriptions, outbox flow."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttConfig, OutboxConfig, TlsConfig
from agent.contract import Topics
from agent.mqtt.options import INBOX_LIMITS, InboundKind, InboxLimit
from agent.mqtt.outbox import Outbox
from agent.mqtt.port import InboundMessage, MqttPort
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector

ROOT = Path(__file__).resolve().parents[1]
TOPICS = Topics("edge", "dev1")


def status_payload(state: str, reason: str | None) -> dict[str, Any]:
    return {"state": state, "reason": reason, "device": TOPICS.device_id, "ts": time.time()}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


def send_until(sender: Collector, topic: str, payload: bytes, done: Callable[[], bool],
               timeout: float = 5.0) -> None:
    """Publish (again) until ``done``: the port's SUBACK may still be on its way."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}: not handled within {timeout}s")
        sender.publish(topic, payload)
        wait_until_or(done, 0.2)


def wait_until_or(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


PortFactory = Callable[..., MqttPort]
CollectorFactory = Callable[..., Collector]


@pytest.fixture
def collect() -> Iterator[CollectorFactory]:
    """Test subscribers, closed at teardown (disconnect first: paho's loop exits at once)."""
    made: list[Collector] = []

    def make(*args: Any, **kwargs: Any) -> Collector:
        made.append(Collector(*args, **kwargs))
        return made[-1]

    yield make
    for collector in made:
        collector.client.disconnect()
        collector.client.loop_stop()


def mqtt_config(broker_port: int, secrets: Path, **options: Any) -> MqttConfig:
    """The validated ``mqtt`` section from flat test options (``tls``, ``ca_file``,
    ``password``... as a test writes them)."""
    tls_keys = {"tls": "enabled", "ca_file": "ca_file", "cert_file": "cert_file",
                "key_file": "key_file", "tls_insecure": "insecure"}
    tls = {tls_keys[k]: options.pop(k) for k in list(options) if k in tls_keys}
    password = options.pop("password", None)
    if password is not None:
        secret = secrets / f"mqtt-password-{time.monotonic_ns()}"
        secret.write_text(password)
        options["password_file"] = secret
    return MqttConfig(port=broker_port, tls=TlsConfig(**tls), **options)


@pytest.fixture
def make_port(tmp_path: Path) -> Iterator[PortFactory]:
    ports: list[MqttPort] = []

    def make(broker_port: int, *, outbox: Outbox | None = None, start: bool = True,
             on_connection: Callable[[bool, str | None], None] | None = None,
             drain_rate_per_s: float | None = None,
             inbox_limits: Mapping[InboundKind, InboxLimit] = INBOX_LIMITS,
             **options: Any) -> MqttPort:
        opts = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 5, **options}
        box = outbox or Outbox(tmp_path / f"outbox-{len(ports)}.db")
        pacing = None if drain_rate_per_s is None else OutboxConfig(
            drain_rate_per_s=drain_rate_per_s)
        port = MqttPort(mqtt_config(broker_port, tmp_path, **opts), TOPICS, outbox=box,
                        outbox_cfg=pacing, status_payload=status_payload,
                        on_connection=on_connection, inbox_limits=inbox_limits)
        ports.append(port)
        if start:
            port.start()
            assert port.wait_connected(5), port.stats()
        return port

    yield make
    for port in ports:
        port.stop(flush_timeout=0.2)
        port.outbox.close()


def last_state(state: str) -> Callable[[list[Any]], bool]:
    return lambda ms: bool(ms) and ms[-1].json()["state"] == state


def labels(collector: Collector) -> list[int]:
    return [m.json()["seq"] for m in collector.on_topic(TOPICS.labels)]


def first_seen(seqs: list[int]) -> list[int]:
    """Duplicates are allowed by the contract (consumers dedupe on run_id + seq)."""
    return list(dict.fromkeys(seqs))


def test_connects_and_publishes_retained_online(mosquitto: Mosquitto,
                                                make_port: PortFactory,
                                                collect: CollectorFactory) -> None:
    make_port(mosquitto.port)
    late = collect(mosquitto.port, TOPICS.status)
    status = late.wait_topic(TOPICS.status)[0]
    assert status.retain and status.json()["state"] == "online"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_durable_publishes_arrive_in_order(mosquitto: Mosquitto, make_port: PortFactory,
                                           protocol: str, collect: CollectorFactory) -> None:
    col = collect(mosquitto.port, TOPICS.labels)
    port = make_port(mosquitto.port, protocol=protocol)
    for seq in range(500):
        port.publish_durable(TOPICS.labels, json.dumps({"seq": seq}).encode())
    col.wait_topic(TOPICS.labels, 500)
    assert labels(col) == list(range(500))
    wait_until(lambda: port.outbox.depth == 0, 5, "outbox drained")
    stats = port.stats()
    assert stats["published"] == 500 and stats["connected"] and stats["set_aside"] == 0


def test_stop_publishes_stopped_and_no_last_will(mosquitto: Mosquitto,
                                                 make_port: PortFactory,
                                                 collect: CollectorFactory) -> None:
    col = collect(mosquitto.port, TOPICS.status)
    port = make_port(mosquitto.port)
    col.wait_for(lambda ms: any(m.json()["state"] == "online" for m in ms), what="online")
    port.stop()
    col.wait_for(last_state("stopped"), what="stopped")
    late = collect(mosquitto.port, TOPICS.status)
    assert late.wait_topic(TOPICS.status)[0].json()["state"] == "stopped"
    assert all(m.json()["state"] != "offline" for m in col.messages)


CHILD = """
import sys, time
from agent.contract import Topics
from agent.config import MqttConfig
from agent.mqtt.port import MqttPort
from agent.mqtt.options import INBOX_LIMITS, InboundKind, InboxLimit
from agent.mqtt.outbox import Outbox
port = MqttPort(MqttConfig(port=int(sys.argv[1])), Topics("edge", "dev1"),
                outbox=Outbox(sys.argv[2]),
                status_payload=lambda state, reason: {"state": state, "reason": reason})
port.start()
assert port.wait_connected(5)
print("ready", flush=True)
time.sleep(60)
"""


def test_last_will_offline_when_the_process_is_killed(mosquitto: Mosquitto,
                                                      tmp_path: Path,
                                                      collect: CollectorFactory) -> None:
    col = collect(mosquitto.port, TOPICS.status)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(mosquitto.port), str(tmp_path / "o.db")],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        col.wait_for(lambda ms: any(m.json()["state"] == "online" for m in ms), what="online")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    col.wait_for(last_state("offline"), what="last will")
    late = collect(mosquitto.port, TOPICS.status)
    assert late.wait_topic(TOPICS.status)[0].json()["state"] == "offline"


def test_set_state_republishes_retained_status(mosquitto: Mosquitto,
                                               make_port: PortFactory,
                                               collect: CollectorFactory) -> None:
    col = collect(mosquitto.port, TOPICS.status)
    port = make_port(mosquitto.port)
    port.set_state("degraded", "camera lost")
    col.wait_for(last_state("degraded"), what="degraded")
    assert col.messages[-1].json()["reason"] == "camera lost"
    mosquitto.restart()
    wait_until(lambda: port.stats()["reconnects"] >= 1, 10, "reconnect")
    late = collect(mosquitto.port, TOPICS.status)
    assert late.wait_topic(TOPICS.status)[0].json()["state"] == "degraded"


def test_resubscribes_after_broker_restart(mosquitto: Mosquitto,
                                           make_port: PortFactory,
                                           collect: CollectorFactory) -> None:
    got: list[InboundMessage] = []
    port = make_port(mosquitto.port)
    port.subscribe(TOPICS.cmd("+"), got.append)
    sender = collect(mosquitto.port, "unused/#")
    send_until(sender, TOPICS.cmd("ping"), b'{"id": "1"}', lambda: bool(got))
    mosquitto.stop(kill=True)
    mosquitto.start()
    wait_until(lambda: port.stats()["reconnects"] >= 1 and port.connected, 10, "reconnect")
    wait_until(sender.client.is_connected, 10, "test client reconnect")
    send_until(sender, TOPICS.cmd("ping"), b'{"id": "2"}',
               lambda: got[-1].payload == b'{"id": "2"}')
    assert got[-1].topic == TOPICS.cmd("ping")


def test_handler_exception_is_logged_not_fatal(mosquitto: Mosquitto, make_port: PortFactory,
                                               caplog: pytest.LogCaptureFixture,
                                               collect: CollectorFactory) -> None:
    port = make_port(mosquitto.port)
    seen: list[bytes] = []

    def handler(msg: InboundMessage) -> None:
        if msg.payload == b"boom":
            raise RuntimeError("handler bug")
        seen.append(msg.payload)

    port.subscribe(TOPICS.cmd("+"), handler)
    sender = collect(mosquitto.port, "unused/#")
    with caplog.at_level(logging.ERROR, logger="agent.mqtt.inbound"):
        send_until(sender, TOPICS.cmd("x"), b"boom", lambda: "handler bug" in caplog.text)
        sender.publish(TOPICS.cmd("x"), b"fine")
        wait_until(lambda: seen == [b"fine"], 5, "the command after the failing one")


def test_response_topic_and_correlation_data_round_trip(mosquitto: Mosquitto,
                                                        make_port: PortFactory) -> None:
    port = make_port(mosquitto.port)
    port.subscribe(TOPICS.cmd("+"), lambda m: port.publish(
        m.response_topic or "", b"pong", qos=1, correlation_data=m.correlation_data))
    replies: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, msg: replies.append(msg)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.subscribe("reply/me", qos=1)
    assert subscribed.wait(5)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "reply/me"
    props.CorrelationData = b"req-42"
    deadline = time.monotonic() + 5
    while not replies and time.monotonic() < deadline:  # until the port's SUBACK is in
        client.publish(TOPICS.cmd("ping"), b"{}", qos=1, properties=props)
        wait_until_or(lambda: bool(replies), 0.2)
    assert replies[0].payload == b"pong"
    assert replies[0].properties.CorrelationData == b"req-42"
    client.disconnect()
    client.loop_stop()


def test_refused_by_acl_is_set_aside_and_the_rest_flows(tmp_path: Path,
                                                        make_port: PortFactory,
                                                        collect: CollectorFactory) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edge/#\n")
    broker = Mosquitto(tmp_path / "b", extra_conf=[f"acl_file {acl}"]).start()
    try:
        col = collect(broker.port, TOPICS.labels)
        port = make_port(broker.port, protocol="5")
        for seq in range(20):
            port.publish_durable(TOPICS.labels, json.dumps({"seq": seq}).encode())
            if seq == 5:
                port.publish_durable("forbidden/topic", b"secret")
        # Mosquitto 2.0.11 drops the connection right after its PUBACK 135: the port
        # sends one message at a time after such a drop and still sets the culprit aside.
        wait_until(lambda: port.stats()["set_aside"] == 1 and port.outbox.depth == 0, 15)
        col.wait_for(lambda ms: len(set(labels(col))) == 20, what="all labels")
        assert first_seen(labels(col)) == list(range(20))
        dead = port.outbox.dead_letters()
        assert dead[0].item.topic == "forbidden/topic"
        assert "135" in dead[0].reason and "authori" in dead[0].reason.lower()
    finally:
        broker.stop()


def test_payload_above_the_broker_packet_limit_is_set_aside(tmp_path: Path,
                                                            make_port: PortFactory,
                                                            collect: CollectorFactory) -> None:
    broker = Mosquitto(tmp_path / "b", extra_conf=["max_packet_size 2000"]).start()
    try:
        col = collect(broker.port, TOPICS.labels)
        port = make_port(broker.port)
        port.publish_durable(TOPICS.labels, json.dumps({"seq": 0}).encode())
        port.publish_durable(TOPICS.labels, b"x" * 5000)
        port.publish_durable(TOPICS.labels, json.dumps({"seq": 1}).encode())
        col.wait_topic(TOPICS.labels, 2)
        assert labels(col) == [0, 1]
        wait_until(lambda: port.stats()["set_aside"] == 1, 5)
        assert "too large" in port.outbox.dead_letters()[0].reason
    finally:
        broker.stop()


def test_the_port_takes_its_defaults_from_the_config(tmp_path: Path) -> None:
    """One source of defaults: the pace and window the port uses are the config's."""
    with Outbox(tmp_path / "o.db") as box:
        port = MqttPort(MqttConfig(), TOPICS, outbox=box, status_payload=status_payload)
        assert port.window.drain_rate_per_s == OutboxConfig().drain_rate_per_s
        assert port.window.max_inflight == MqttConfig().max_inflight


def test_stop_while_the_broker_is_unreachable_does_not_hang(mosquitto: Mosquitto,
                                                             make_port: PortFactory) -> None:
    mosquitto.stop()
    port = make_port(mosquitto.port, start=False)
    port.start()
    wait_until(lambda: "cannot connect" in (port.stats()["last_error"] or ""), 5)
    assert not port.publish(TOPICS.stats, b"{}")  # best effort: not queued anywhere
    item_id = port.publish_durable(TOPICS.labels, b'{"seq": 0}')
    stopping = threading.Thread(target=port.stop, daemon=True)
    stopping.start()
    stopping.join(30)  # a hang detector, not a timing test: how quick is the bench's job
    assert not stopping.is_alive(), "stop() hangs while the broker is unreachable"
    assert [i.id for i in port.outbox.peek(10)] == [item_id]  # kept for the next run


def test_direct_publish_to_a_bad_topic_returns_false(mosquitto: Mosquitto,
                                                     make_port: PortFactory) -> None:
    port = make_port(mosquitto.port)
    assert not port.publish("edge/+/oops", b"{}")
    assert not port.publish("", b"{}")
    assert port.publish(TOPICS.stats, b"{}")
    with pytest.raises(ValueError, match="wildcard"):
        port.publish_durable("edge/#", b"{}")


def test_a_flood_of_one_kind_never_drops_another(mosquitto: Mosquitto, make_port: PortFactory,
                                                collect: CollectorFactory) -> None:
    """Samples flood a stuck sample handler: samples are dropped and counted, a command
    still gets through on its own queue."""
    small = InboxLimit(10, 1 << 20)
    port = make_port(mosquitto.port, inbox_limits={"command": small, "model": small,
                                                   "sample": small})
    unblock = threading.Event()
    commands: list[bytes] = []
    port.subscribe(TOPICS.inputs("+"), lambda _m: unblock.wait(10) and None, kind="sample")
    port.subscribe(TOPICS.cmd("+"), lambda m: commands.append(m.payload), kind="command")
    sender = collect(mosquitto.port, "unused/#")
    send_until(sender, TOPICS.cmd("ping"), b"first", lambda: bool(commands))
    for i in range(60):
        sender.publish(TOPICS.inputs("imu"), json.dumps([i]).encode())
    wait_until(lambda: port.stats()["inbound_dropped"]["sample"] >= 40, 10, "sample drops")
    send_until(sender, TOPICS.cmd("ping"), b"during the flood", lambda: len(commands) >= 2)
    unblock.set()
    assert port.stats()["inbound_dropped"]["command"] == 0


def test_liveness_does_not_read_pahos_log_text(mosquitto: Mosquitto, make_port: PortFactory,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A paho release that rewords its debug lines must not make an idle, healthy link look
    dead: the port proves the link with its own probe."""
    easy_log = mqtt.Client._easy_log

    def reworded(self: mqtt.Client, level: int, fmt: object, *args: object) -> None:
        easy_log(self, level, str(fmt).replace("Received ", "Got "), *args)

    monkeypatch.setattr(mqtt.Client, "_easy_log", reworded)
    port = make_port(mosquitto.port, keepalive_s=2)
    quiet_until = time.monotonic() + 2.5 * 2  # well past 1.5 keepalives without traffic
    while time.monotonic() < quiet_until:
        assert port.connected and port.stats()["reconnects"] == 0, port.stats()
        time.sleep(0.1)
    assert port.stats()["link_probes"] >= 1


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_the_liveness_probe_works_under_the_fleet_acl(tmp_path: Path) -> None:
    """The deploy ACL lets a device read only its own cmd/model/in topics: the probe (an
    UNSUBSCRIBE) must still be answered, under MQTT 5 and 3.1.1, so an idle link lives."""
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "cam-lobby-1", "pw"], check=True)
    broker = Mosquitto(tmp_path / "broker", extra_conf=[
        "allow_anonymous false", f"password_file {passwd}",
        f"acl_file {ROOT / 'deploy' / 'mosquitto.acl'}"]).start()
    topics = Topics("edge", "cam-lobby-1")
    ports = [MqttPort(mqtt_config(broker.port, tmp_path, username="cam-lobby-1", password="pw",
                                  keepalive_s=2, protocol=protocol, client_id=f"c-{protocol}"),
                      topics, outbox=Outbox.disabled(), status_payload=status_payload)
             for protocol in ("5", "3.1.1")]
    try:
        for port in ports:
            port.start()
            assert port.wait_connected(5), port.stats()
        quiet_until = time.monotonic() + 2.5 * 2
        while time.monotonic() < quiet_until:
            assert all(p.connected and p.stats()["reconnects"] == 0 for p in ports), \
                [p.stats() for p in ports]
            time.sleep(0.1)
        assert all(p.stats()["link_probes"] >= 1 for p in ports)
    finally:
        for port in ports:
            port.stop(flush_timeout=0.2)
        broker.stop()
