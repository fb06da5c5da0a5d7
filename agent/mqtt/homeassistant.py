"""Opt-in Home Assistant MQTT discovery: a sensor for the top label and one for its score,
available while the agent's retained status says it is alive (``LIVE_STATES``).

The sensors read ``<base>/summary/<camera>`` (``<base>/summary`` without cameras), not the
per-frame ``labels`` topic: Home Assistant's
recorder stores every state change, and 30 labels a second per camera make a database that
grows without end. ``SummaryPublisher`` publishes the summary (retained) when the top label
changes or its score moves by ``score_step``, and at most once per ``min_interval_s``; a change
held back by the rate limit goes out with the first result after the interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from agent import __version__
from agent.contract import LIVE_STATES, Topics, discovery_topic
from agent.payloads import encode
from agent.records import Result

AVAILABILITY = ("{{ 'online' if value_json.state in (" + ", ".join(f"'{s}'" for s in LIVE_STATES)
                + ") else 'offline' }}")
NO_LABEL = "none"

Publish = Callable[..., Any]


def discovery_messages(topics: Topics, discovery_prefix: str,
                       cameras: Sequence[str] = ()) -> list[tuple[str, bytes]]:
    """(topic, retained payload) pairs that make Home Assistant create a top-label and a
    top-score sensor per camera source (reading ``<base>/summary/<camera>``), or one pair for
    the device (``<base>/summary``) when it has no cameras (sequence models)."""
    dev = topics.device_id
    device = {"identifiers": [f"edge-agent-{topics.prefix}-{dev}"], "name": f"Edge agent {dev}",
              "manufacturer": "edge-inference-agent", "model": "edge-agent",
              "sw_version": __version__}
    node = f"{topics.prefix.replace('/', '_')}_{dev}"
    out = []
    for camera in cameras or (None,):
        state = topics.summary(camera)
        suffix, title = (f"_{camera}", f" {camera}") if camera else ("", "")
        common = {"state_topic": state, "availability_topic": topics.status,
                  "availability_template": AVAILABILITY, "device": device}
        sensors = {
            "top_label": {"name": f"Top label{title}", "icon": "mdi:label",
                          "value_template": "{{ value_json.label }}",
                          "json_attributes_topic": state,
                          "json_attributes_template": "{{ {'source': value_json.source, "
                                                      "'score': value_json.score} | tojson }}"},
            "top_score": {"name": f"Top score{title}", "state_class": "measurement",
                          "value_template": "{{ value_json.score }}"},
        }
        out += [(discovery_topic(discovery_prefix, node, f"{key}{suffix}"),
                 encode({**common, **sensor, "unique_id": f"{topics.prefix}_{dev}_{key}{suffix}",
                         "object_id": f"edge_{dev}_{key}{suffix}"}))
                for key, sensor in sensors.items()]
    return out


class SummaryPublisher:
    """A result tap: publishes the top label of each camera to ``<base>/summary/<camera>``
    (of any other source, such as sample streams, to ``<base>/summary``) on change,
    rate-limited per topic."""

    def __init__(self, topics: Topics, publish: Publish, min_interval_s: float,
                 cameras: Sequence[str] = (), score_step: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._topics = {name: topics.summary(name) for name in cameras}
        self._device_topic = topics.summary()
        self._publish = publish
        self._min_interval_s = min_interval_s
        self._score_step = score_step
        self._clock = clock
        self._sent: dict[str, tuple[str, float]] = {}
        self._sent_at: dict[str, float] = {}

    def __call__(self, result: Result, published: bool = True) -> None:
        topic = self._topics.get(result.source, self._device_topic)
        top = result.labels[0] if result.labels else None
        label, score = (top.label, round(top.score, 4)) if top else (NO_LABEL, 0.0)
        sent = self._sent.get(topic)
        if sent is not None and label == sent[0] and abs(score - sent[1]) < self._score_step:
            return
        now = self._clock()
        if now - self._sent_at.get(topic, float("-inf")) < self._min_interval_s:
            return
        body = {"label": label, "score": score, "source": result.source,
                "ts": round(result.frame_ts, 3)}
        if self._publish(topic, encode(body), qos=1, retain=True):
            self._sent[topic], self._sent_at[topic] = (label, score), now
