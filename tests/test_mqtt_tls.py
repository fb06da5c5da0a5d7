"""TLS with a client certificate, a password file and an ACL, on a real Mosquitto."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import ConfigError
from agent.mqtt.outbox import Outbox
from agent.mqtt.port import MqttPort
from bench.support.broker import Mosquitto
from tests.support.certs import Certs, add_password, make_certs
from tests.test_mqtt import (
    TOPICS,
    PortFactory,
    make_port,
    mqtt_config,
    status_payload,
    wait_until,
)

__all__ = ["make_port"]


def tls_options(certs: Certs, **overrides: Any) -> dict[str, Any]:
    return {"tls": True, "ca_file": str(certs.ca_cert), "cert_file": str(certs.client_cert),
            "key_file": str(certs.client_key), "username": "agent", "password": "s3cret",
            **overrides}


class Reader:
    """A TLS subscriber logged in as ``reader``."""

    def __init__(self, broker: Mosquitto, certs: Certs, topic: str) -> None:
        self.payloads: list[bytes] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.tls_set(str(certs.ca_cert), str(certs.client_cert), str(certs.client_key))
        self.client.username_pw_set("reader", "r3ader")
        self.client.on_message = lambda c, u, m: self.payloads.append(bytes(m.payload))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5), "TLS reader did not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_good_login_over_tls_publishes(tls_broker: Mosquitto, certs: Certs,
                                       make_port: PortFactory) -> None:
    reader = Reader(tls_broker, certs, TOPICS.labels)
    port = make_port(tls_broker.port, **tls_options(certs))
    for seq in range(10):
        port.publish_durable(TOPICS.labels, json.dumps({"seq": seq}).encode())
    wait_until(lambda: len(reader.payloads) == 10, 5, "labels over TLS")
    assert [json.loads(p)["seq"] for p in reader.payloads] == list(range(10))
    reader.close()


def test_wrong_password_is_logged_and_retried_until_fixed(
        tls_broker: Mosquitto, certs: Certs, make_port: PortFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="agent.mqtt.port"):
        port = make_port(tls_broker.port, start=False, **tls_options(certs, password="wrong"))
        port.start()
        wait_until(lambda: caplog.text.count("refused connection") >= 2, 10, "two refusals")
    assert not port.connected
    assert "Not authorized" in caplog.text or "Bad user name or password" in caplog.text
    assert "refused connection" in (port.stats()["last_error"] or "")
    add_password(tls_broker.workdir.parent / "passwd", "agent", "wrong")
    assert tls_broker.proc is not None
    tls_broker.proc.send_signal(signal.SIGHUP)  # Mosquitto reloads the password file
    assert port.wait_connected(10), port.stats()


def test_untrusted_server_certificate_is_a_clear_error(
        tls_broker: Mosquitto, certs: Certs, tmp_path: Path, make_port: PortFactory) -> None:
    other = make_certs(tmp_path / "other", ca_name="other-ca")
    port = make_port(tls_broker.port, start=False,
                     **tls_options(certs, ca_file=str(other.ca_cert)))
    port.start()
    wait_until(lambda: "certificate verify failed" in (port.stats()["last_error"] or ""), 10)
    assert not port.connected


def test_missing_tls_file_fails_at_start(tmp_path: Path, certs: Certs) -> None:
    options = mqtt_config(1, tmp_path, **tls_options(certs, ca_file=str(tmp_path / "nope.crt")))
    port = MqttPort(options, TOPICS, outbox=Outbox.disabled(), status_payload=status_payload)
    with pytest.raises(ConfigError, match=r"nope\.crt"):
        port.start()


def test_tls_files_gone_after_start_do_not_end_the_reconnects(
        tls_broker: Mosquitto, certs: Certs, tmp_path: Path, make_port: PortFactory) -> None:
    """The network thread survives a client it cannot build (its TLS files were removed) and
    connects again once they are back."""
    ca = tmp_path / "ca-copy.crt"
    ca.write_bytes(certs.ca_cert.read_bytes())
    port = make_port(tls_broker.port, reconnect_max_s=0.3,
                     **tls_options(certs, ca_file=str(ca)))
    hidden = ca.with_suffix(".hidden")
    ca.rename(hidden)
    tls_broker.stop()
    tls_broker.start()
    wait_until(lambda: "cannot set up the MQTT client" in (port.stats()["last_error"] or ""), 10)
    hidden.rename(ca)
    wait_until(lambda: port.connected and port.stats()["reconnects"] >= 1, 15, "reconnect")
