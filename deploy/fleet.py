"""Fleet view from retained ``<prefix>/+/status`` and ``<prefix>/+/stats`` messages.

A device is the one named by the topic (``<prefix>/<id>/status``); a ``device`` field in the
payload is never believed, so a device cannot make another look offline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.contract import LIVE_STATES, FleetTopics
from deploy.broker import MqttSession


@dataclass
class DeviceView:
    device: str
    status: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return str(self.status.get("state", "unknown"))

    @property
    def groups(self) -> list[str]:
        groups = self.status.get("groups")
        return [str(g) for g in groups] if isinstance(groups, list) else []

    @property
    def model(self) -> dict[str, Any]:
        model = self.status.get("model")
        return model if isinstance(model, dict) else {}

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def last_seen(self) -> float | None:
        stamps = [v for v in (self.status.get("ts"), self.status.get("since"),
                              self.stats.get("ts")) if isinstance(v, int | float)
                  and not isinstance(v, bool)]
        return max(stamps) if stamps else None


class FleetWatch:
    """Keeps the latest status and stats of every device, from a live subscription."""

    def __init__(self, session: MqttSession, fleet: FleetTopics) -> None:
        self._fleet = fleet
        self._cond = threading.Condition()
        self._views: dict[str, DeviceView] = {}
        self._probe = fleet.probe(session.client_id)
        self._probed = False
        session.add_handler(self._on_message)
        session.subscribe(fleet.status_filter)
        session.subscribe(fleet.stats_filter)
        session.subscribe(self._probe)
        self._subscribed = time.monotonic()
        session.publish(self._probe, b"end of retained")

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic == self._probe:
            with self._cond:
                self._probed = True
                self._cond.notify_all()
            return
        for kind in (FleetTopics.STATUS, FleetTopics.STATS):
            device = self._fleet.device_of(topic, kind)
            if device is not None:
                break
        else:
            return
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return
        if not isinstance(data, dict):
            return
        with self._cond:
            view = self._views.setdefault(device, DeviceView(device))
            setattr(view, kind, data)
            self._cond.notify_all()

    def settle(self, wait_s: float) -> bool:
        """Wait until every retained status and stats has arrived: our own probe message comes
        back after them (one connection keeps order). At most ``wait_s`` seconds after
        subscribing; False when the probe did not come back in time."""
        left = self._subscribed + wait_s - time.monotonic()
        with self._cond:
            return self._cond.wait_for(lambda: self._probed, max(0.0, left))

    def views(self) -> list[DeviceView]:
        with self._cond:
            return sorted((DeviceView(v.device, dict(v.status), dict(v.stats))
                           for v in self._views.values()), key=lambda v: v.device)

    def view(self, device: str) -> DeviceView | None:
        with self._cond:
            return self._views.get(device)


def collect_fleet(session: MqttSession, prefix: str, wait_s: float = 1.0) -> list[DeviceView]:
    """Subscribe to the retained status and stats topics and gather what is there."""
    watch = FleetWatch(session, FleetTopics(prefix))
    watch.settle(wait_s)
    return watch.views()


def group_members(views: Sequence[DeviceView], group: str) -> list[DeviceView]:
    return [v for v in views if group in v.groups]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
