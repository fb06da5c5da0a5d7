"""Commands over MQTT against a real agent process: device and group topics, MQTT 5 response
topic with correlation data (and its limits), pause/resume and the paused status, snapshot,
config (strict values, unknown fields refused), model; hostile payloads that still get a
reply; retained commands ignored; Home Assistant discovery."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.demo import write_digits_video
from bench.support.agent_proc import DATA, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")
BASE = "edge/dev1"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("commands")
    broker = Mosquitto(tmp / "broker").start()
    video = tmp / "digits.avi"
    write_digits_video(video, fps=30)
    path = agent_config(tmp, broker.port, [{"name": "cam", "type": "camera", "uri": str(video),
                                            "loop": True, "realtime": True}])
    raw = yaml.safe_load(path.read_text())
    raw["device"]["groups"] = ["lobby"]
    raw["homeassistant"] = {"enabled": True, "state_interval_s": 0.5}
    raw["commands"] = {"response_topic_filters": ["replies/#"]}
    path.write_text(yaml.safe_dump(raw))
    sub = Collector(broker.port, ["edge/#", "homeassistant/#"])
    # a retained command left on the broker: the agent must not obey it when it subscribes
    sub.publish(f"{BASE}/cmd/pause", json.dumps({"id": "retained-pause"}), retain=True)
    started = time.time()
    agent = AgentProcess(path)
    agent.started_wall = started  # type: ignore[attr-defined]
    sub.wait_topic(f"{BASE}/labels", count=3, timeout=30)
    yield broker, agent, sub
    agent.terminate_timed()
    sub.close()
    broker.stop()


def wait_log(agent: AgentProcess, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in agent.log():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in the agent log:\n{agent.log()[-3000:]}")
        time.sleep(0.05)
    return agent.log()


def raw_command(sub: Collector, name: str, payload: bytes, rid: str | int,
                **publish: Any) -> dict[str, Any]:
    sub.publish(f"{BASE}/cmd/{name}", payload, **publish)
    result_topic = f"{BASE}/cmd/{name}/result"
    sub.wait_for(lambda ms: any(m.topic == result_topic and m.json().get("id") == rid
                                for m in ms), timeout=10, what=f"reply to {name} {rid}")
    return next(m.json() for m in sub.on_topic(result_topic) if m.json().get("id") == rid)


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


def _mqtt5_requests(port: int, requests: list[tuple[str, str, bytes]],
                    listen: list[str], last_reply: str) -> list[mqtt.MQTTMessage]:
    """Publish (command, response topic, payload) requests with correlation data; collect
    what arrives on ``listen`` until a message reaches ``last_reply``."""
    got: list[mqtt.MQTTMessage] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        got.append(m)
        if m.topic == last_reply:
            done.set()

    acked = threading.Semaphore(0)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: acked.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic in listen:
            client.subscribe(topic, qos=1)
            assert acked.acquire(timeout=5), f"no SUBACK for {topic}"
        for name, response, payload in requests:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response
            props.CorrelationData = f"corr-{name}".encode()
            client.publish(f"{BASE}/cmd/{name}", payload, qos=1, properties=props)
        assert done.wait(10), f"no reply on {last_reply}"
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def test_mqtt5_response_topic_and_correlation_data(running) -> None:  # type: ignore[no-untyped-def]
    broker, _, _ = running
    got = _mqtt5_requests(broker.port, [("ping", "replies/me", b'{"id": 77}')],
                          ["replies/me"], "replies/me")
    assert json.loads(got[0].payload)["id"] == 77
    assert got[0].properties.CorrelationData == b"corr-ping"


def test_response_topic_outside_the_own_tree_is_refused(running) -> None:  # type: ignore[no-untyped-def]
    broker, agent, _ = running
    own = f"{BASE}/cmd/ping/result/me"
    got = _mqtt5_requests(broker.port, [
        ("ping", "edge/dev2/cmd/pause", b'{"id": "forged"}'),
        ("ping", own, b'{"id": "own"}')], ["edge/dev2/#", own], own)
    assert [m.topic for m in got] == [own], "a reply went to another device's command topic"
    assert json.loads(got[0].payload)["id"] == "own"
    wait_log(agent, "response topic 'edge/dev2/cmd/pause' refused")


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
    assert not odd["ok"] and "action" in odd["error"] and "'rollback'" in odd["error"]


def test_home_assistant_discovery_reads_the_low_rate_summary(running) -> None:  # type: ignore[no-untyped-def]
    _, agent, sub = running
    configs = sub.wait_for(lambda ms: sum(m.topic.startswith("homeassistant/sensor/")
                                          for m in ms) >= 2, timeout=10, what="discovery")
    by_key = {m.topic.split("/")[-2]: m.json() for m in configs
              if m.topic.startswith("homeassistant/")}
    assert set(by_key) == {"top_label_cam", "top_score_cam"}
    assert by_key["top_label_cam"]["state_topic"] == f"{BASE}/summary/cam"
    assert by_key["top_score_cam"]["state_topic"] == f"{BASE}/summary/cam"
    assert by_key["top_label_cam"]["availability_topic"] == f"{BASE}/status"
    assert "'paused'" in by_key["top_label_cam"]["availability_template"]
    assert by_key["top_score_cam"]["unique_id"] == "edge_dev1_top_score_cam"
    n_labels = len(sub.on_topic(f"{BASE}/labels"))
    sub.wait_topic(f"{BASE}/labels", count=n_labels + 60, timeout=20)
    summaries = sub.wait_topic(f"{BASE}/summary/cam", count=2, timeout=10)
    # the video changes digit every frame; the agent publishes a summary at most every 0.5 s
    # since it started, whatever the load: a bound from the clock, not a timing assertion
    span = summaries[-1].ts - agent.started_wall
    assert len(summaries) <= span / 0.5 + 1, (len(summaries), span)
    assert len(summaries) < len(sub.on_topic(f"{BASE}/labels"))
    last = summaries[-1].json()
    assert set(last) == {"label", "score", "source", "ts"} and last["source"] == "cam"


def test_paused_agent_says_paused_in_status(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    status = f"{BASE}/status"
    command(sub, "pause", {})
    sub.wait_for(lambda ms: any(m.topic == status and m.json()["state"] == "paused"
                                for m in ms), timeout=10, what="paused status")
    n = len(sub.on_topic(status))
    command(sub, "resume", {})
    sub.wait_for(lambda ms: [m.json()["state"] for m in ms if m.topic == status][n:].count(
        "online") >= 1, timeout=10, what="online status after resume")


@pytest.mark.parametrize("body", [
    {"action": "set", "top_k": 1},                        # the value outside "values"
    {"set": {"top_k": 1}},                                # a made-up verb
    {"action": "get", "values": {"top_k": 1}},            # values that get would ignore
    {"action": "set", "values": {}},
])
def test_config_refuses_fields_it_would_ignore(running, body) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    before = command(sub, "config", {})["result"]
    reply = command(sub, "config", body)
    assert not reply["ok"], reply
    assert any(k in reply["error"] for k in ("top_k", "set", "values")), reply
    assert command(sub, "config", {})["result"] == before


@pytest.mark.parametrize("values, field", [
    ({"top_k": "5"}, "top_k"), ({"top_k": True}, "top_k"), ({"paused": "yes"}, "paused"),
    ({"min_score": True}, "min_score"), ({"max_frame_age_ms": 1e30}, "max_frame_age_ms"),
    ({"max_frame_age_ms": 10**30}, "max_frame_age_ms"), ({"top_k": 2.5}, "top_k"),
    ({"stats_interval_s": 1e300}, "stats_interval_s"),
])
def test_config_set_strict_types_and_finite_ranges(running, values, field) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    before = command(sub, "config", {})["result"]
    reply = command(sub, "config", {"action": "set", "values": values})
    assert not reply["ok"] and f"values.{field}" in reply["error"], reply
    assert command(sub, "config", {})["result"] == before


def test_config_set_refuses_infinity_and_nan(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    for n, literal in enumerate((b"Infinity", b"NaN", b"-Infinity")):
        rid = f"inf-{n}"
        payload = b'{"id": "%s", "action": "set", "values": {"stats_interval_s": %s}}' % (
            rid.encode(), literal)
        reply = raw_command(sub, "config", payload, rid)
        assert not reply["ok"] and "values.stats_interval_s" in reply["error"], reply
    assert command(sub, "config", {})["result"]["stats_interval_s"] == 1


@pytest.mark.parametrize("payload, rid, reason", [
    (b'{"id": "deep", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "deep", "nested"),
    (b'{"id": "bin", "x": "\xff\xfe"}', "bin", "not UTF-8"),
    (b'{"x": [1, {"id": "inner"}], "id": 42, "y": ' + b"[" * 5000 + b"}", 42, "nested"),
    (b'{"id": "big", "x": "' + b"a" * 70_000 + b'"}', "big", "exceeds"),
])
def test_hostile_payload_with_readable_id_gets_a_reply(running, payload, rid, reason) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    reply = raw_command(sub, "ping", payload, rid)
    assert not reply["ok"] and reason in reply["error"], reply
    assert command(sub, "ping", {})["ok"]


def test_message_without_id_is_logged_not_answered(running) -> None:  # type: ignore[no-untyped-def]
    _, agent, sub = running
    sub.publish(f"{BASE}/cmd/ping", b"{not json")
    log = wait_log(agent, "(no readable id: no reply sent)")
    assert "command edge/dev1/cmd/ping rejected" in log
    command(sub, "ping", {})  # replies are ordered: had the bad one been answered, it is here
    assert all(m.json().get("id") is not None for m in sub.on_topic(f"{BASE}/cmd/ping/result"))


def test_retained_command_is_ignored(running) -> None:  # type: ignore[no-untyped-def]
    _, agent, sub = running
    wait_log(agent, "command edge/dev1/cmd/pause ignored: it is retained")
    replies = sub.on_topic(f"{BASE}/cmd/pause/result")
    assert all(m.json()["id"] != "retained-pause" for m in replies)
    assert command(sub, "config", {})["result"]["paused"] is False
    sub.publish(f"{BASE}/cmd/pause", b"", retain=True)  # clearing it reaches the agent live
    wait_log(agent, "command edge/dev1/cmd/pause rejected: empty payload")
    assert command(sub, "config", {})["result"]["paused"] is False


def test_unknown_arguments_are_refused(running) -> None:  # type: ignore[no-untyped-def]
    _, _, sub = running
    for name, body in (("ping", {"verbose": 1}), ("snapshot", {"qualty": 50}),
                       ("model", {"action": "list", "all": True}), ("pause", {"now": True})):
        reply = command(sub, name, body)
        assert not reply["ok"] and "unknown field" in reply["error"], (name, reply)
    assert command(sub, "config", {})["result"]["paused"] is False


