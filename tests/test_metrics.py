"""Prometheus metrics: scrape a real running agent over HTTP and parse the exposition with
prometheus_client's own parser."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.demo import write_digits_video
from bench.support.agent_proc import DATA, AgentProcess, agent_config
from bench.support.broker import Mosquitto, free_port, wait_for_port
from bench.support.mqtt_client import Collector

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")
BASE = "edge/dev1"


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Collector]]:
    tmp = tmp_path_factory.mktemp("metrics")
    broker = Mosquitto(tmp / "broker").start()
    video = tmp / "digits.avi"
    write_digits_video(video, fps=30)
    port = free_port()
    path = agent_config(tmp, broker.port, [{"name": "cam", "type": "camera", "uri": str(video),
                                            "loop": True, "realtime": True}],
                        metrics={"enabled": True, "port": port, "max_label_series": 4})
    sub = Collector(broker.port, [f"{BASE}/#"])
    agent = AgentProcess(path)
    try:
        wait_for_port(port, timeout=30)
        sub.wait_topic(f"{BASE}/labels", count=40, timeout=30)
        yield port, sub
    finally:
        agent.terminate_timed()
        sub.close()
        broker.stop()


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    """A sample of family ``name``: the counter's ``_total``, the gauge, or ``suffix``."""
    family = families[name]
    wanted = (f"{name}{suffix}",) if suffix else (name, f"{name}_total")
    for s in family.samples:
        if s.name in wanted and all(s.labels.get(k) == v
                                                      for k, v in labels.items()):
            return float(s.value)
    raise KeyError(f"{name} {labels}: {[s for s in family.samples]}")


def test_counters_follow_the_agent(scraped) -> None:  # type: ignore[no-untyped-def]
    port, sub = scraped
    first = scrape(port)
    assert first["edge_agent_frames_inferred"].type == "counter"
    inferred = value(first, "edge_agent_frames_inferred")
    assert value(first, "edge_agent_frames_captured") >= inferred > 0
    n = len(sub.on_topic(f"{BASE}/labels"))
    sub.wait_topic(f"{BASE}/labels", count=n + 10, timeout=20)
    deadline = time.monotonic() + 10
    while value(second := scrape(port), "edge_agent_labels_published") < n + 10:
        assert time.monotonic() < deadline, "labels_published does not follow the labels"
    assert value(second, "edge_agent_frames_inferred") > inferred
    reasons = {s.labels["reason"] for s in second["edge_agent_frames_dropped"].samples}
    assert {"stale", "skipped", "frame_error", "paused"} <= reasons
    assert value(second, "edge_agent_labels_lost") == 0
    assert value(second, "edge_agent_outbox_dropped") == 0
    assert value(second, "edge_agent_outbox_memory_dropped") == 0
    assert value(second, "edge_agent_outbox_durable") == 1
    assert second["edge_agent_outbox_depth"].type == "gauge"
    assert value(second, "edge_agent_uptime_seconds") > 0
    assert value(second, "edge_agent_mqtt_connected") == 1
    assert 0 <= value(second, "edge_agent_frame_age_seconds") < 60


def test_model_info_histograms_and_bounded_labels(scraped) -> None:  # type: ignore[no-untyped-def]
    port, _ = scraped
    families = scrape(port)
    info = families["edge_agent_model_info"]  # an info metric: a gauge of 1 with labels
    assert info.samples[0].value == 1
    labels = info.samples[0].labels
    assert labels["name"] == "digits_cnn" and len(labels["sha256"]) == 64 and labels["version"]
    for name in ("edge_agent_inference_seconds", "edge_agent_capture_to_publish_seconds"):
        assert families[name].type == "histogram"
        count = value(families, name, "_count")
        assert count > 0 and value(families, name, "_bucket", le="+Inf") == count
    detections = families["edge_agent_label_detections"].samples
    names = {s.labels["label"] for s in detections if s.name.endswith("_total")}
    assert len(names) <= 5 and "other" in names  # ten digits seen, four kept, the rest other
    assert "process_resident_memory_bytes" in families
    for family in families.values():  # no device id on any series
        for s in family.samples:
            assert "dev1" not in s.labels.values() and "device" not in s.labels


def test_metrics_port_in_use_is_a_clear_start_error(tmp_path, scraped) -> None:  # type: ignore[no-untyped-def]
    port, _ = scraped
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        path = agent_config(tmp_path, broker.port, [{"name": "cam", "type": "camera",
                                                     "uri": str(tmp_path / "none.avi")}],
                            device="dev2", metrics={"enabled": True, "port": port})
        agent = AgentProcess(path)
        assert agent.wait(30) == 1
        assert f"metrics: cannot listen on 127.0.0.1:{port}" in agent.log()
    finally:
        broker.stop()


def test_labels_lost_counts_what_the_outbox_drops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker = Mosquitto(tmp_path / "broker").start()
    video = tmp_path / "digits.avi"
    write_digits_video(video, fps=30)
    port = free_port()
    path = agent_config(tmp_path, broker.port, [{"name": "cam", "type": "camera",
                                                 "uri": str(video), "loop": True,
                                                 "realtime": True}],
                        device="dev3", metrics={"enabled": True, "port": port},
                        outbox={"max_messages": 10})
    sub = Collector(broker.port, ["edge/dev3/labels"])
    agent = AgentProcess(path)
    try:
        sub.wait_topic("edge/dev3/labels", count=3, timeout=30)
        sub.close()
        broker.stop()  # labels now wait in an outbox of 10: the oldest are dropped
        deadline = time.monotonic() + 30
        while (lost := value(families := scrape(port), "edge_agent_labels_lost")) < 5:
            assert time.monotonic() < deadline, "no labels counted as lost"
            time.sleep(0.2)
        assert value(families, "edge_agent_outbox_dropped") == lost
        assert value(families, "edge_agent_mqtt_connected") == 0
        assert 5 <= value(families, "edge_agent_outbox_depth") <= 10
    finally:
        agent.kill()
        broker.stop()  # idempotent
