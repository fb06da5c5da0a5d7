"""The agent process over TLS with a client certificate, a password from the environment or a
file, and an ACL: the config's TLS and secret keys reach the MQTT port end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from agent.demo import write_digits_video
from bench.support.agent_proc import DATA, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from tests.support.certs import Certs
from tests.test_mqtt_tls import Reader

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")


def tls_agent(tmp_path: Path, broker: Mosquitto, certs: Certs, **mqtt: object) -> Path:
    video = tmp_path / "digits.avi"
    write_digits_video(video, fps=30)
    path = agent_config(tmp_path, broker.port, [{"name": "cam", "type": "camera",
                                                 "uri": str(video), "loop": True,
                                                 "realtime": True}])
    raw = yaml.safe_load(path.read_text())
    raw["mqtt"].update({"username": "agent", "tls": {
        "enabled": True, "ca_file": str(certs.ca_cert), "cert_file": str(certs.client_cert),
        "key_file": str(certs.client_key)}, **mqtt})
    path.write_text(yaml.safe_dump(raw))
    return path


def test_labels_flow_over_tls_with_the_password_from_the_environment(
        tmp_path: Path, tls_broker: Mosquitto, certs: Certs) -> None:
    reader = Reader(tls_broker, certs, "edge/dev1/labels")
    agent = AgentProcess(tls_agent(tmp_path, tls_broker, certs,
                                   password_env="EDGE_TEST_MQTT_PASSWORD"),
                         env={"EDGE_TEST_MQTT_PASSWORD": "s3cret"})
    try:
        deadline = time.monotonic() + 30
        while len(reader.payloads) < 5:
            assert time.monotonic() < deadline, agent.log()[-2000:]
            assert agent.proc.poll() is None, agent.log()[-2000:]
            time.sleep(0.05)
    finally:
        agent.terminate_timed()
        reader.close()


def test_wrong_password_is_a_clear_error_and_a_retry(tmp_path: Path, tls_broker: Mosquitto,
                                                     certs: Certs) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("wrong\n")
    agent = AgentProcess(tls_agent(tmp_path, tls_broker, certs, password_file=str(secret)))
    try:
        deadline = time.monotonic() + 30
        while agent.log().count("Not authorized") < 2:  # refused, and retried
            assert time.monotonic() < deadline, agent.log()[-2000:]
            assert agent.proc.poll() is None, agent.log()[-2000:]
            time.sleep(0.05)
    finally:
        code, _ = agent.terminate_timed()
    assert code == 0
    assert "Traceback" not in agent.log()
