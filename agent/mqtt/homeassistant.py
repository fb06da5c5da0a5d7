"""Opt-in Home Assistant MQTT discovery: a sensor for the top label and one for its score,
available while the agent's retained status says it is alive (``LIVE_STATES``).

The sensors read ``<base>/summary``, not the per-frame ``labels`` topic: Home Assistant's
recorder stores every state change, and 30 labels a second per camera make a database that
grows without end. ``SummaryPublisher`` publishes the summary (retained) when the top label
changes or its score moves by ``score_step``, and at most once per ``min_interval_s``; a change
held back by the rate limit goes out with the first result after the interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.contract import LIVE_STATES, Topics
from agent.payloads import encode
from agent.records import Result

AVAILABILITY = ("{{ 'online' if value_json.state in (" + ", ".join(f"'{s}'" for s in LIVE_STATES)
                + ") else 'offline' }}")
NO_LABEL = "none"

Publish = Callable[..., Any]


def discovery_messages(topics: Topics, discovery_prefix: str) -> list[tuple[str, bytes]]:
    """(topic, retained payload) pairs that make Home Assistant create the two sensors."""
    dev = topics.device_id
    device = {"identifiers": [f"edge-agent-{topics.prefix}-{dev}"], "name": f"Edge agent {dev}",
              "manufacturer": "edge-inference-agent", "model": "edge-agent",
              "sw_version": __version__}
    common = {"state_topic": topics.summary, "availability_topic": topics.status,
              "availability_template": AVAILABILITY, "device": device}
    sensors = {
        "top_label": {"name": "Top label", "icon": "mdi:label",
                      "value_template": "{{ value_json.label }}",
                      "json_attributes_topic": topics.summary,
                      "json_attributes_template": "{{ {'source': value_json.source, "
                                                  "'score': value_json.score} | tojson }}"},
        "top_score": {"name": "Top score", "state_class": "measurement",
                      "value_template": "{{ value_json.score }}"},
    }
    return [(f"{discovery_prefix}/sensor/{topics.prefix.replace('/', '_')}_{dev}/{key}/config",
             encode({**common, **sensor, "unique_id": f"{topics.prefix}_{dev}_{key}",
                     "object_id": f"edge_{dev}_{key}"}))
            for key, sensor in sensors.items()]


class SummaryPublisher:
    """A result tap: publishes the top label to ``<base>/summary`` on change, rate-limited."""

    def __init__(self, topics: Topics, publish: Publish, min_interval_s: float,
                 score_step: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self._topic = topics.summary
        self._publish = publish
        self._min_interval_s = min_interval_s
        self._score_step = score_step
        self._clock = clock
        self._sent: tuple[str, float] | None = None
        self._sent_at = float("-inf")
        self.published = 0

    def __call__(self, result: Result, published: bool = True) -> None:
        top = result.labels[0] if result.labels else None
        label, score = (top.label, round(top.score, 4)) if top else (NO_LABEL, 0.0)
        if self._sent is not None and label == self._sent[0] \
                and abs(score - self._sent[1]) < self._score_step:
            return
        now = self._clock()
        if now - self._sent_at < self._min_interval_s:
            return
        body = {"label": label, "score": score, "source": result.source,
                "ts": round(result.frame_ts, 3)}
        if self._publish(self._topic, encode(body), qos=1, retain=True):
            self._sent, self._sent_at = (label, score), now
            self.published += 1
