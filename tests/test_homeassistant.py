"""Home Assistant's summary topic: published on change, at most once per interval, and a
change held back by the rate limit is not lost."""

from __future__ import annotations

import itertools
import json

from agent.contract import Topics
from agent.mqtt.homeassistant import SummaryPublisher
from agent.records import LabelScore, Result


def result(label: str, score: float = 0.9, source: str = "cam") -> Result:
    return Result(seq=0, source=source, frame_index=0, frame_ts=1.0, frame_mono=1.0,
                  labels=(LabelScore(label, 0, score),), inference_ms=1.0, preprocess_ms=0.1,
                  model_name="m", model_version="1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_summary_on_change_at_most_once_per_interval() -> None:
    sent: list[tuple[float, dict]] = []
    clock = Clock()

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        assert topic == "edge/dev1/summary/cam" and retain
        sent.append((clock.now, json.loads(payload)))
        return True

    tap = SummaryPublisher(Topics("edge", "dev1"), publish, min_interval_s=1.0, cameras=["cam"],
                           clock=clock)
    for i in range(100):  # 10 results a second, the label changing every time
        tap(result(str(i % 10)))
        clock.now += 0.1
    times = [t for t, _ in sent]
    assert len(sent) == 10
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
    for _ in range(30):  # steady label, small score jitter: nothing more
        tap(result("7", 0.9 + 0.01 * (_ % 2)))
        clock.now += 0.1
    assert sent[-1][1]["label"] == "7" and len(sent) <= 11
    n = len(sent)
    tap(result("3"))  # a change within the interval is held back...
    assert len(sent) == n + (1 if clock.now - times[-1] >= 1.0 else 0)
    clock.now += 1.0
    tap(result("3"))  # ...and goes out with the next result after it
    assert sent[-1][1] == {"label": "3", "score": 0.9, "source": "cam", "ts": 1.0}


def test_summary_retries_when_not_connected() -> None:
    ok = [False]
    sent: list[dict] = []

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        if ok[0]:
            sent.append(json.loads(payload))
        return ok[0]

    tap = SummaryPublisher(Topics("edge", "dev1"), publish, min_interval_s=0.0)
    tap(result("a"))
    ok[0] = True
    tap(result("a"))
    assert [s["label"] for s in sent] == ["a"]
    tap(result("a", score=0.0))  # no labels above min_score also counts as a state
    tap(Result(seq=1, source="cam", frame_index=1, frame_ts=2.0, frame_mono=2.0, labels=(),
               inference_ms=1.0, preprocess_ms=0.1, model_name="m", model_version="1"))
    assert sent[-1]["label"] == "none"


def test_each_camera_has_its_own_summary_and_rate() -> None:
    sent: list[tuple[str, str]] = []

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        sent.append((topic, json.loads(payload)["label"]))
        return True

    clock = Clock()
    tap = SummaryPublisher(Topics("edge", "dev1"), publish, min_interval_s=1.0,
                           cameras=["front", "back"], clock=clock)
    for _ in range(20):  # two cameras that see different things: no flip-flop between them
        tap(result("cat", source="front"))
        tap(result("dog", source="back"))
        tap(result("x", source="stream-42"))  # not a camera: the device-level summary
        clock.now += 0.1
    assert sent == [("edge/dev1/summary/front", "cat"), ("edge/dev1/summary/back", "dog"),
                    ("edge/dev1/summary", "x")]


def test_discovery_has_a_sensor_pair_per_camera() -> None:
    from agent.mqtt.homeassistant import discovery_messages

    msgs = dict(discovery_messages(Topics("edge", "dev1"), "homeassistant", ["front", "back"]))
    assert sorted(msgs) == sorted(f"homeassistant/sensor/edge_dev1/{k}_{c}/config"
                                  for c in ("back", "front") for k in ("top_label", "top_score"))
    front = json.loads(msgs["homeassistant/sensor/edge_dev1/top_label_front/config"])
    assert front["state_topic"] == "edge/dev1/summary/front"
    assert front["unique_id"] == "edge_dev1_top_label_front"
    device = dict(discovery_messages(Topics("edge", "dev1"), "homeassistant"))
    assert json.loads(device["homeassistant/sensor/edge_dev1/top_score/config"])[
        "state_topic"] == "edge/dev1/summary"
