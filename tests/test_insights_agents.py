"""Real agents on real videos publish; the lake holds exactly what went over the wire."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from bench.support.agent_proc import AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector as WireTap
from deploy.connection import BrokerOptions
from insights.collector import Collector, CollectorOptions
from insights.lake import Lake
from insights.videos import VideoPlan, write_digits_video
from tests.support.insights_fleet import lake_rows, wait_until

FRAMES = 120


def test_real_agents_labels_stats_and_status_arrive_in_the_lake(mosquitto: Mosquitto,
                                                                 tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    collector = Collector(BrokerOptions.from_url(mosquitto.url), Lake(lake, "c"),
                          CollectorOptions(client_id="c", flush_rows=100, flush_seconds=0.2))
    collector.start()
    assert collector.subscribed.wait(10)
    tap = WireTap(mosquitto.port, ["edge/+/labels"])
    agents = []
    for i, device in enumerate(("cam-a", "cam-b")):
        video = tmp_path / f"{device}.avi"
        write_digits_video(video, VideoPlan(seed=i + 1, fps=40, frames=FRAMES))
        cfg = agent_config(tmp_path, mosquitto.port, [
            {"name": "door", "type": "camera", "uri": str(video), "realtime": True}],
            device=device, pipeline={"max_frame_age_ms": 2000})
        agents.append(AgentProcess(cfg))
    try:
        tap.wait_for(lambda ms: sum(m.json()["frame_index"] == FRAMES - 1 for m in ms) == 2,
                     timeout=60, what="the last frame of both videos")
        for agent in agents:
            assert agent.terminate_timed()[0] == 0, agent.log()
        wait_until(lambda: len(lake_rows(lake, "SELECT device FROM status WHERE state = "
                                               "'stopped'")) == 2, 20, "both 'stopped'")
    finally:
        for agent in agents:
            agent.kill()
        collector.stop()
        tap.client.disconnect()
    wire = sorted((m.topic.split("/")[1], m.json()["run_id"], m.json()["seq"],
                   m.json()["labels"][0]["label"]) for m in tap.messages)
    stored = sorted(lake_rows(lake, "SELECT device, run_id, seq, top_label FROM labels"))
    assert stored == wire and len(stored) >= 1.8 * FRAMES  # a stale frame may be dropped
    stats = dict(lake_rows(lake, "SELECT device, max(inferences) FROM stats GROUP BY device"))
    assert set(stats) == {"cam-a", "cam-b"} and all(v >= 1 for v in stats.values())
    [(model,)] = lake_rows(lake, "SELECT DISTINCT model_name || ' ' || model_version FROM labels")
    assert model == "digits_cnn 1.0.0"
