"""Every counter the agent keeps reaches its retained stats: a real agent process, a real
broker, a real interpreter, real video files and samples, each counter driven above zero where
a test can do so."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.contract import StatsRecord
from bench.support.agent_proc import DATA, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector
from tests.support.videos import write_numbered_video

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")

BASE = "edge/dev1"
FIELDS = {f.name for f in dataclasses.fields(StatsRecord)}


def wait_stats(sub: Collector, positive: set[str], timeout: float = 30) -> dict[str, Any]:
    """The first stats message in which every field of ``positive`` is above zero."""
    def done(body: dict[str, Any]) -> bool:
        return all((body.get(name) or 0) > 0 for name in positive)
    sub.wait_for(lambda ms: any(m.topic == f"{BASE}/stats" and done(m.json()) for m in ms),
                 timeout=timeout, what=f"stats with {sorted(positive)} above zero")
    return next(m.json() for m in sub.on_topic(f"{BASE}/stats") if done(m.json()))


def command(sub: Collector, name: str) -> None:
    rid = f"{name}-{threading.get_ident()}-{len(sub.messages)}"
    sub.publish(f"{BASE}/cmd/{name}", json.dumps({"id": rid}))
    sub.wait_for(lambda ms: any(m.topic == f"{BASE}/cmd/{name}/result"
                                and m.json().get("id") == rid for m in ms),
                 what=f"reply to {name}")


def test_camera_command_and_publish_counters_reach_stats(tmp_path: Path,
                                                         mosquitto: Mosquitto) -> None:
    video = write_numbered_video(tmp_path / "short.avi", 6, fps=30)
    cfg = agent_config(tmp_path, mosquitto.port, [
        {"name": "cam", "type": "camera", "uri": str(video), "loop": True, "realtime": True,
         "target_fps": 5},
        {"name": "gone", "type": "camera", "uri": str(tmp_path / "missing.avi"),
         "reconnect_min_s": 0.05, "reconnect_max_s": 0.1}],
        publish={"on_change": True, "stats_interval_s": 0.5})
    sub = Collector(mosquitto.port, [f"{BASE}/#"])
    # retained before the agent subscribes, so it arrives as retained: ignored, not run
    sub.publish(f"{BASE}/cmd/ping", json.dumps({"id": "retained"}), retain=True)
    agent = AgentProcess(cfg)
    try:
        sub.wait_topic(f"{BASE}/labels", timeout=30)
        command(sub, "ping")
        command(sub, "no-such-command")
        command(sub, "pause")
        wait_stats(sub, {"dropped_paused"})
        command(sub, "resume")
        stats = wait_stats(sub, {
            "frames_read", "frames_in", "inferences", "dropped_target_fps", "dropped_paused",
            "file_loops", "source_reconnects", "suppressed", "published", "commands_handled",
            "commands_rejected", "commands_ignored"})
    finally:
        agent.kill()
        sub.close()
    assert set(stats) == FIELDS
    assert stats["frames_read"] >= stats["dropped_target_fps"] + stats["inferences"]
    assert stats["corrupt_frames"] == 0 and stats["rollbacks"] == 0
    assert stats["link_probes"] is not None and stats["link_probes"] >= 0
    assert stats["sample_errors"] == stats["samples_in"] == stats["streams_evicted"] == 0


def test_sample_counters_reach_stats(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = agent_config(tmp_path, mosquitto.port,
                       [{"name": "imu", "type": "mqtt", "max_streams": 1}],
                       manifest="gestures_lstm.json", publish={"stats_interval_s": 0.5})
    sub = Collector(mosquitto.port, [f"{BASE}/#"])
    agent = AgentProcess(cfg)
    try:
        sub.wait_topic(f"{BASE}/status", timeout=30)
        features = json.loads((DATA / "gestures_lstm.json").read_text())["window"]["features"]
        step = json.dumps([0.0] * features)
        sub.publish(f"{BASE}/in/wrist", step)
        sub.publish(f"{BASE}/in/ankle", step)  # one stream allowed: wrist is evicted
        sub.publish(f"{BASE}/in/ankle", b"[1, 2, 3, 4, 5]")  # wrong length: rejected
        stats = wait_stats(sub, {"samples_in", "sample_errors", "streams_evicted"})
    finally:
        agent.kill()
        sub.close()
    assert set(stats) == FIELDS
    assert stats["samples_in"] == 2 and stats["sample_errors"] == 1
    assert stats["streams_evicted"] == 1 and stats["frames_read"] == 0
