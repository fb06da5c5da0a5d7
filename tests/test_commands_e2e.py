"""Commands over MQTT against a real agent process: device and group topics, MQTT 5 response
topic with correlation data, pause/resume, snapshot, config, model; Home Assistant discovery."""

from __future__ import annotations

import json
import threading
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.agent_proc import DATA, AgentProcess, agent_config, digits_video
from tests.support.broker import Mosquitto
from tests.support.mqtt_client import Collector

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")
BASE = "edge/dev1"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("commands")
    broker = Mosquitto(tmp / "broker").start()
    video = tmp / "digits.avi"
    digits_video(video)
    path = agent_config(tmp, broker.port, [{"name": "cam", "type": "camera", "uri": str(video),
                                            "loop": True, "realtime": True}])
    raw = yaml.safe_load(path.read_text())
    raw["device"]["groups"] = ["lobby"]
    raw["homeassistant"] = {"enabled": True}
    path.write_text(yaml.safe_dump(raw))
    agent = AgentProcess(path)
    sub = Collector(broker.port, ["edge/#", "homeassistant/#"])
    sub.wait_topic(f"{BASE}/labels", count=3, timeout=30)
    yield broker, agent, sub
    agent.terminate_timed()
    sub.close()
    broker.stop()


def command(sub: Collector, name: str, body: dict[str, Any],
            topic: str | None = None) -> dict[str, Any]:
    rid = f"{name}-{threading.get_ident()}-{len(sub.messages)}"
    sub.publish(topic or f"{BASE}/cmd/{name}", json.dumps({"id": rid, **body}))
    result_topic = f"{BASE}/cmd/{name}/result"
    sub.wait_for(lambda ms: any(m.topic == result_topic and m.json().get("id") == rid
                                for m in ms), timeout=10, what=f"reply to {name}")
    return next(m.json() for m in sub.on_topic(result_topic) if m.json().get("id") == rid)


def test_ping_on_device_and_group_topics(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    reply = command(sub, "ping", {})
    assert reply["ok"] and reply["result"]["pong"] and reply["device"] == "dev1"
    group = command(sub, "ping", {}, topic="edge/group/lobby/cmd/ping")
    assert group["ok"] and group["device"] == "dev1"


def test_mqtt5_response_topic_and_correlation_data(running) -> None:  # type: ignore[no-untyped-def]
    broker, _, _ = running
    got: list[mqtt.MQTTMessage] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: (got.append(m), done.set())
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.subscribe("replies/me", qos=1)[1]
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "replies/me"
        props.CorrelationData = b"corr-77"
        client.publish(f"{BASE}/cmd/ping", b'{"id": 77}', qos=1, properties=props)
        assert done.wait(10), "no reply on the response topic"
    finally:
        client.loop_stop()
        client.disconnect()
    assert json.loads(got[0].payload)["id"] == 77
    assert got[0].properties.CorrelationData == b"corr-77"


def test_pause_and_resume(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    assert command(sub, "pause", {})["result"] == {"paused": True}
    stats = sub.wait_for(lambda ms: any(m.topic == f"{BASE}/stats" and m.json()["paused"]
                                        for m in ms), timeout=10, what="paused stats")
    paused_at = len(sub.on_topic(f"{BASE}/labels"))
    n_stats = len([m for m in stats if m.topic == f"{BASE}/stats"])
    sub.wait_topic(f"{BASE}/stats", count=n_stats + 1, timeout=10)  # a second passes
    assert len(sub.on_topic(f"{BASE}/labels")) <= paused_at + 1
    assert command(sub, "resume", {})["result"] == {"paused": False}
    sub.wait_topic(f"{BASE}/labels", count=paused_at + 5, timeout=10)


def test_snapshot_is_a_real_jpeg(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    reply = command(sub, "snapshot", {"quality": 90})
    assert reply["ok"], reply
    jpeg = sub.wait_topic(reply["result"]["topic"], timeout=10)[-1].payload
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (112, 112, 3)
    bad = command(sub, "snapshot", {"quality": 500})
    assert not bad["ok"] and "quality" in bad["error"]


def test_config_get_set_and_refusal(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    assert command(sub, "config", {})["result"]["top_k"] == 3
    assert command(sub, "config", {"action": "set", "values": {"top_k": 1}})["ok"]
    n = len(sub.on_topic(f"{BASE}/labels"))
    sub.wait_topic(f"{BASE}/labels", count=n + 5, timeout=10)
    assert len(sub.on_topic(f"{BASE}/labels")[-1].json()["labels"]) == 1
    refused = command(sub, "config", {"action": "set", "values": {"top_k": 0, "colour": 1}})
    assert not refused["ok"]
    assert "top_k" in refused["error"] and "colour" in refused["error"]
    assert command(sub, "config", {})["result"]["top_k"] == 1
    command(sub, "config", {"action": "set", "values": {"top_k": 3}})


def test_model_commands(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    current = command(sub, "model", {})["result"]
    assert current["name"] == "digits_cnn" and len(current["sha256"]) == 64
    listed = command(sub, "model", {"action": "list"})["result"]["models"]
    assert [m["active"] for m in listed] == [True]
    rollback = command(sub, "model", {"action": "rollback"})
    assert not rollback["ok"] and "no previous model" in rollback["error"]
    odd = command(sub, "model", {"action": "explode"})
    assert not odd["ok"] and "current, list or rollback" in odd["error"]


def test_home_assistant_discovery(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    configs = sub.wait_for(lambda ms: sum(m.topic.startswith("homeassistant/sensor/")
                                          for m in ms) >= 2, timeout=10, what="discovery")
    by_key = {m.topic.split("/")[-2]: m.json() for m in configs
              if m.topic.startswith("homeassistant/")}
    assert set(by_key) == {"top_label", "top_score"}
    assert by_key["top_label"]["state_topic"] == f"{BASE}/labels"
    assert by_key["top_label"]["availability_topic"] == f"{BASE}/status"
    assert by_key["top_score"]["unique_id"] == "edge_dev1_top_score"
