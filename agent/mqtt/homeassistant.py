"""Opt-in Home Assistant MQTT discovery: a sensor for the top label and one for its score,
available while the agent's retained status says online or degraded."""

from __future__ import annotations

from agent import __version__
from agent.contract import Topics
from agent.payloads import encode

AVAILABILITY = "{{ 'online' if value_json.state in ('online', 'degraded') else 'offline' }}"


def discovery_messages(topics: Topics, discovery_prefix: str) -> list[tuple[str, bytes]]:
    """(topic, retained payload) pairs that make Home Assistant create the two sensors."""
    dev = topics.device_id
    device = {"identifiers": [f"edge-agent-{topics.prefix}-{dev}"], "name": f"Edge agent {dev}",
              "manufacturer": "edge-inference-agent", "model": "edge-agent",
              "sw_version": __version__}
    common = {"state_topic": topics.labels, "availability_topic": topics.status,
              "availability_template": AVAILABILITY, "device": device}
    sensors = {
        "top_label": {"name": "Top label", "icon": "mdi:label",
                      "value_template": "{{ value_json.labels[0].label "
                                        "if value_json.labels else 'none' }}"},
        "top_score": {"name": "Top score", "state_class": "measurement",
                      "value_template": "{{ value_json.labels[0].score "
                                        "if value_json.labels else 0 }}",
                      "json_attributes_topic": topics.labels,
                      "json_attributes_template": "{{ {'label': value_json.labels[0].label "
                                                  "if value_json.labels else none} | tojson }}"},
    }
    return [(f"{discovery_prefix}/sensor/{topics.prefix.replace('/', '_')}_{dev}/{key}/config",
             encode({**common, **sensor, "unique_id": f"{topics.prefix}_{dev}_{key}",
                     "object_id": f"edge_{dev}_{key}"}))
            for key, sensor in sensors.items()]
