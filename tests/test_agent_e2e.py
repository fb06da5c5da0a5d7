"""The agent as a real process against a real Mosquitto: video -> CNN -> labels; LSTM over
MQTT samples; signals and the last will."""

from __future__ import annotations

import json
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

from agent.demo import write_digits_video
from agent.inference.engine import Engine
from agent.manifest import load_manifest
from bench.support.agent_proc import DATA, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")


def labels(collector: Collector, topic: str) -> list[dict]:
    return [m.json() for m in collector.on_topic(topic)]


def test_digits_video_labels_in_order_and_accurate(tmp_path: Path,
                                                   mosquitto: Mosquitto) -> None:
    video = tmp_path / "digits.avi"
    truth = write_digits_video(video, fps=30)
    # at full speed a file waits for each frame to be taken, so none is overwritten however
    # loaded the machine is (in real time a busy machine drops frames, as it should)
    cfg = agent_config(tmp_path, mosquitto.port, [
        {"name": "digits", "type": "camera", "uri": str(video), "realtime": False}],
        pipeline={"max_frame_age_ms": 60_000})
    sub = Collector(mosquitto.port, ["edge/dev1/#"])
    agent = AgentProcess(cfg)
    try:
        sub.wait_topic("edge/dev1/labels", count=len(truth), timeout=60)
        got = labels(sub, "edge/dev1/labels")[:len(truth)]
        seqs = [m["seq"] for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        indices = [m["frame_index"] for m in got]
        assert indices == sorted(indices)
        correct = sum(m["labels"][0]["label"] == truth[m["frame_index"]] for m in got)
        assert correct / len(got) >= 0.95, f"top-1 {correct}/{len(got)}"
        first = got[0]
        assert {"seq", "run_id", "ts", "frame_ts", "source", "model", "labels",
                "inference_ms", "capture_to_publish_ms"} <= set(first)
        assert first["model"] == {"name": "digits_cnn", "version": "1.0.0"}
        status = sub.on_topic("edge/dev1/status")[-1].json()
        assert status["state"] == "online" and status["model"]["name"] == "digits_cnn"
        assert status["runtime"]["package"] == "ai_edge_litert"
        sub.wait_topic("edge/dev1/stats", timeout=10)
        stats = sub.on_topic("edge/dev1/stats")[-1].json()
        assert stats["inferences"] >= 1 and stats["rss_mb"] > 0
        code, took = agent.terminate_timed()
        assert code == 0, (code, took, agent.log())  # stop time: bench, not a test
        sub.wait_for(lambda ms: any(m.topic == "edge/dev1/status"
                                    and m.json()["state"] == "stopped" for m in ms),
                     what="stopped status")
    finally:
        agent.kill()
        sub.close()
    late = Collector(mosquitto.port, "edge/dev1/status")
    try:
        retained = late.wait_topic("edge/dev1/status")[-1]
        assert retained.retain and retained.json()["state"] == "stopped"
    finally:
        late.close()


def test_sigkill_makes_the_broker_publish_offline(tmp_path: Path,
                                                  mosquitto: Mosquitto) -> None:
    video = tmp_path / "digits.avi"
    write_digits_video(video, fps=30)
    cfg = agent_config(tmp_path, mosquitto.port, [
        {"name": "digits", "type": "camera", "uri": str(video), "loop": True,
         "realtime": True}])
    sub = Collector(mosquitto.port, ["edge/dev1/status", "edge/dev1/labels"])
    agent = AgentProcess(cfg)
    try:
        sub.wait_topic("edge/dev1/labels", count=3, timeout=30)
        agent.signal(signal.SIGKILL)
        agent.wait()
        sub.wait_for(lambda ms: any(m.topic == "edge/dev1/status"
                                    and m.json()["state"] == "offline" for m in ms),
                     timeout=15, what="offline from the last will")
    finally:
        agent.kill()
        sub.close()


def gesture_windows() -> tuple[np.ndarray, np.ndarray]:
    sample = np.load(DATA / "gestures_sample.npz")
    return sample["x"][:12].astype(np.float32), sample["y"][:12]


def test_sequences_over_mqtt_give_the_expected_classes(tmp_path: Path,
                                                       mosquitto: Mosquitto) -> None:
    manifest = load_manifest(DATA / "gestures_lstm.json")
    assert manifest.window is not None and manifest.window.stride == manifest.window.length
    xs, ys = gesture_windows()
    cfg = agent_config(tmp_path, mosquitto.port, [{"name": "imu", "type": "mqtt"}],
                       manifest="gestures_lstm.json")
    sub = Collector(mosquitto.port, ["edge/dev1/labels", "edge/dev1/status"])
    agent = AgentProcess(cfg)
    try:
        sub.wait_topic("edge/dev1/status", timeout=30)
        for i, seq in enumerate(xs):
            for step in seq:  # one timestep per message, alternating the two encodings
                payload = json.dumps(step.tolist()) if i % 2 else struct.pack(
                    f"<{step.size}f", *step)
                sub.publish("edge/dev1/in/wrist", payload)
        sub.publish("edge/dev1/in/wrist", b"[1, 2, 3]")  # wrong length: rejected
        got = [m.json() for m in sub.wait_topic("edge/dev1/labels", count=len(xs), timeout=30)]
    finally:
        agent.kill()
        sub.close()
    expected = direct_classes(manifest, xs)
    predicted = [int(m["labels"][0]["index"]) for m in got]
    assert predicted == expected
    assert sum(p == y for p, y in zip(predicted, ys, strict=True)) >= len(ys) - 1
    assert {m["source"] for m in got} == {"wrist"}
    assert "sample on edge/dev1/in/wrist rejected" in agent.log()


def direct_classes(manifest, xs: np.ndarray) -> list[int]:  # type: ignore[no-untyped-def]
    from agent.inference.preprocess import WindowPreprocessor

    engine = Engine(DATA / manifest.file, num_threads=1)
    pre = WindowPreprocessor(manifest.input, manifest.window)
    out = []
    for x in xs:
        if manifest.runtime.reset_state_per_window:
            engine.reset_state()
        out.append(int(np.argmax(engine.invoke(pre(x)))))
    return out
