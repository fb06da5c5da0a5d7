"""Fleet view from retained ``<prefix>/+/status`` and ``<prefix>/+/stats`` messages.

A device is the one named by the topic (``<prefix>/<id>/status``); a ``device`` field in the
payload is never believed, so a device cannot make another look offline.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.contract import LIVE_STATES, FleetTopics
from agent.files import atomic_write_bytes
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
    """Keeps the latest status and stats of every device, from a live subscription.

    Mosquitto sends the retained messages of a wildcard subscription; RabbitMQ's MQTT plugin
    (3.x) sends retained messages only to subscriptions of the exact topic. ``settle`` covers
    both: when the wildcards brought no retained message, it listens for the rest of the wait
    (live stats name the devices), then subscribes each known or seen device's own topics.
    """

    def __init__(self, session: MqttSession, fleet: FleetTopics) -> None:
        self._session = session
        self._fleet = fleet
        self._cond = threading.Condition()
        self._views: dict[str, DeviceView] = {}
        self._probe = fleet.probe(session.client_id)
        self._probes = 0
        self._retained = 0
        session.add_handler(self._on_message)
        session.subscribe(fleet.status_filter)
        session.subscribe(fleet.stats_filter)
        session.subscribe(self._probe)
        self._subscribed = time.monotonic()
        session.publish(self._probe, b"end of retained")

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic == self._probe:
            with self._cond:
                self._probes += 1
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
            self._retained += retain
            self._cond.notify_all()

    def _wait(self, done: Callable[[], bool], until: float) -> bool:
        with self._cond:
            return self._cond.wait_for(done, max(0.0, until - time.monotonic()))

    def settle(self, wait_s: float, known: Iterable[str] = ()) -> bool:
        """Wait until the retained status and stats have arrived: our own probe message comes
        back after them (one connection keeps order). At most ``wait_s`` seconds after
        subscribing (twice that when exact subscriptions are needed); False when a probe did
        not come back in time."""
        deadline = self._subscribed + wait_s
        if not self._wait(lambda: self._probes >= 1, deadline):
            return False
        with self._cond:
            no_retained = self._retained == 0
        if no_retained:
            self._wait(lambda: False, deadline)
        with self._cond:
            missing = sorted((set(known) | set(self._views))
                             - {d for d, v in self._views.items() if v.status})
        if not missing:
            return True
        topics = [t for d in missing for t in (self._fleet.device(d).status,
                                               self._fleet.device(d).stats)]
        self._session.subscribe_many(topics)
        self._session.publish(self._probe, b"end of retained")
        return self._wait(lambda: self._probes >= 2, time.monotonic() + max(wait_s, 1.0))

    def views(self) -> list[DeviceView]:
        with self._cond:
            return sorted((DeviceView(v.device, dict(v.status), dict(v.stats))
                           for v in self._views.values()), key=lambda v: v.device)

    def view(self, device: str) -> DeviceView | None:
        with self._cond:
            return self._views.get(device)


class DeviceRoster:
    """The device ids seen before, kept in ``<state dir>/devices.json``: on a broker that
    sends no retained messages to wildcard subscriptions they are looked up one by one."""

    def __init__(self, state_dir: Path, limit: int = 100_000) -> None:
        self.path = Path(state_dir) / "devices.json"
        self.limit = limit

    def load(self) -> list[str]:
        try:
            ids = json.loads(self.path.read_text())
        except (OSError, ValueError, RecursionError):
            return []
        return [i for i in ids if isinstance(i, str)][:self.limit] \
            if isinstance(ids, list) else []

    def remember(self, devices: Iterable[str]) -> None:
        ids = sorted(set(self.load()) | set(devices))[:self.limit]
        with contextlib.suppress(OSError):
            atomic_write_bytes(self.path, json.dumps(ids).encode())


def group_members(views: Sequence[DeviceView], group: str) -> list[DeviceView]:
    return [v for v in views if group in v.groups]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
