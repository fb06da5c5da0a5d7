"""The agent and edge-deploy against a clustered broker: RabbitMQ's MQTT plugin (MQTT 3.1.1
only; retained messages only for exact-topic subscriptions), started by the test.

Real agent processes (one left at the default MQTT 5, which falls back to 3.1.1 by itself),
the real edge-deploy CLI: labels, retained status and last will, commands, pushes (one device,
a group in waves), and a broker outage with nothing lost.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.demo import write_digits_video
from agent.models.signing import generate_keypair
from bench.support.agent_proc import DATA, REPO, AgentProcess, agent_config
from bench.support.mqtt_client import Collector
from tests.support import rabbitmq
from tests.test_fleet_e2e import model_variant

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not rabbitmq.available(), reason="rabbitmq-server is not installed "
                       "(make system-deps-slow)"),
    pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                       reason="reference models not built (make models)"),
]
DEVICES = {"rb1": "5", "rb2": "3.1.1"}  # device -> mqtt.protocol in its config


class RabbitFleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker = rabbitmq.RabbitMQ(tmp / "rabbit").start()
        self.keys = generate_keypair(tmp / "keys")
        self.video = tmp / "digits.avi"
        write_digits_video(self.video, fps=30)
        # a persistent session: messages published while it reconnects wait for it
        self.sub = Collector(self.broker.port, ["edge/#"], client_id="rabbit-test-sub",
                             clean_session=False)
        self.agents = {d: AgentProcess(self.config(d, p)) for d, p in DEVICES.items()}
        for d in DEVICES:
            self.sub.wait_topic(f"edge/{d}/labels", count=3, timeout=90)

    def config(self, device: str, protocol: str) -> Path:
        path = agent_config(self.tmp, self.broker.port, [
            {"name": "cam", "type": "camera", "uri": str(self.video), "loop": True,
             "realtime": True, "target_fps": 5}], device=device)
        raw = yaml.safe_load(path.read_text())
        raw["mqtt"]["protocol"] = protocol
        raw["device"]["groups"] = ["lobby"]
        raw["delivery"] = {"trusted_keys": [str(self.keys.public)]}
        path.write_text(yaml.safe_dump(raw))
        return path

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "deploy.cli", *args, "--broker",
                               self.broker.url, "--state-dir", str(self.tmp / "deploy-state")],
                              capture_output=True, text=True, timeout=300, cwd=REPO)

    def labels(self, device: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on_topic(f"edge/{device}/labels")]

    def close(self) -> None:
        for a in self.agents.values():
            a.kill()
        self.sub.close()
        self.broker.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitFleet]:
    f = RabbitFleet(tmp_path_factory.mktemp("rabbit"))
    yield f
    f.close()


def retained(fleet: RabbitFleet, topic: str) -> dict[str, Any]:
    """The retained message on ``topic``, read by a fresh exact-topic subscription."""
    probe = Collector(fleet.broker.port, [topic])
    try:
        return probe.wait_for(lambda ms: bool(ms), timeout=10, what=f"retained {topic}")[0].json()
    finally:
        probe.close()


def test_labels_flow_and_mqtt5_falls_back_to_311(fleet: RabbitFleet) -> None:
    for device in DEVICES:
        seqs = [m["seq"] for m in fleet.labels(device)]
        assert seqs == list(range(1, len(seqs) + 1))
    assert "does not speak MQTT 5" in fleet.agents["rb1"].log()
    assert "does not speak MQTT 5" not in fleet.agents["rb2"].log()
    assert retained(fleet, "edge/rb1/status")["state"] == "online"


def test_commands_are_answered_on_the_result_topic(fleet: RabbitFleet) -> None:
    fleet.sub.publish("edge/rb1/cmd/ping", json.dumps({"id": "rabbit-ping-1"}))
    fleet.sub.wait_for(lambda ms: any(m.topic == "edge/rb1/cmd/ping/result"
                                      and m.json().get("id") == "rabbit-ping-1" for m in ms),
                       timeout=20, what="ping reply")
    fleet.sub.publish("edge/group/lobby/cmd/ping", json.dumps({"id": "rabbit-ping-2"}))
    for device in DEVICES:
        fleet.sub.wait_for(lambda ms, d=device: any(
            m.topic == f"edge/{d}/cmd/ping/result" and m.json().get("id") == "rabbit-ping-2"
            for m in ms), timeout=20, what=f"group ping reply from {device}")


def test_edge_deploy_status_and_pushes(fleet: RabbitFleet) -> None:
    out = fleet.deploy("status", "--format", "json", "--wait", "3")
    assert out.returncode == 0, out.stderr
    states = {d["device"]: d["state"] for d in json.loads(out.stdout)["devices"]}
    assert states == {"rb1": "online", "rb2": "online"}, out.stdout

    v2 = model_variant(fleet.tmp / "v2", "2.0.0")
    one = fleet.deploy("push", str(v2), "--device", "rb1", "--key", str(fleet.keys.private),
                       "--quiet", "--timeout", "60")
    assert one.returncode == 0 and " ok " in one.stdout, one.stdout + one.stderr

    v3 = model_variant(fleet.tmp / "v3", "3.0.0")
    group = fleet.deploy("push", str(v3), "--group", "lobby", "--waves", "1", "--key",
                         str(fleet.keys.private), "--quiet", "--timeout", "60", "--format",
                         "json")
    assert group.returncode == 0, group.stdout + group.stderr
    report = json.loads(group.stdout)
    assert {d["device"]: d["result"] for d in report["devices"]} == {"rb1": "ok", "rb2": "ok"}
    for device in DEVICES:
        fleet.sub.wait_for(lambda ms, d=device: any(
            m.topic == f"edge/{d}/labels" and m.json()["model"]["version"] == "3.0.0"
            for m in ms), timeout=30, what=f"labels of 3.0.0 from {device}")


def test_an_outage_loses_nothing(fleet: RabbitFleet) -> None:
    fleet.broker.stop()
    fleet.broker.start()  # same ports, same data folder: the retained store survives
    before = {d: len(fleet.labels(d)) for d in DEVICES}
    for device in DEVICES:
        fleet.sub.wait_topic(f"edge/{device}/labels", count=before[device] + 20, timeout=120)
        seqs = [m["seq"] for m in fleet.labels(device)]
        assert sorted(set(seqs)) == list(range(1, max(seqs) + 1)), f"{device}: a seq is missing"
    assert retained(fleet, "edge/rb2/status")["state"] == "online"


def test_last_will_says_offline(fleet: RabbitFleet) -> None:
    agent = fleet.agents["rb2"]
    agent.signal(signal.SIGKILL)
    agent.wait(10)
    fleet.sub.wait_for(lambda ms: any(m.topic == "edge/rb2/status"
                                      and m.json()["state"] == "offline" for m in ms),
                       timeout=60, what="last will of rb2")
    assert retained(fleet, "edge/rb2/status")["state"] == "offline"
