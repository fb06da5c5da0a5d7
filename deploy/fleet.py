"""Fleet view from retained ``<prefix>/+/status`` and ``<prefix>/+/stats`` messages."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.contract import STATE_DEGRADED, STATE_ONLINE
from deploy.broker import MqttSession

LIVE_STATES = (STATE_ONLINE, STATE_DEGRADED)


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
                              self.stats.get("ts")) if isinstance(v, int | float)]
        return max(stamps) if stamps else None


def collect_fleet(session: MqttSession, prefix: str, wait_s: float = 1.0) -> list[DeviceView]:
    """Subscribe to the retained status and stats topics and gather for ``wait_s`` seconds."""
    views: dict[str, DeviceView] = {}
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes, retain: bool) -> None:
        parts = topic.split("/")
        if len(parts) < 2 or parts[-1] not in ("status", "stats"):
            return
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        device = str(data.get("device") or parts[-2])
        with lock:
            view = views.setdefault(device, DeviceView(device))
            setattr(view, parts[-1], data)

    session.add_handler(on_message)
    session.subscribe(f"{prefix}/+/status")
    session.subscribe(f"{prefix}/+/stats")
    time.sleep(wait_s)  # retained messages have no end marker; gather for a fixed time
    with lock:
        return sorted(views.values(), key=lambda v: v.device)


def group_members(views: Sequence[DeviceView], group: str) -> list[DeviceView]:
    return [v for v in views if group in v.groups]


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    age = max(0.0, now - ts)
    if age < 120:
        return f"{age:.0f}s ago"
    if age < 7200:
        return f"{age / 60:.0f}m ago"
    return f"{age / 3600:.1f}h ago"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def status_table(views: Sequence[DeviceView], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [[v.device, v.state, str(v.model.get("name") or "-"),
             str(v.model.get("version") or "-"), _fmt(v.stats.get("fps_out")),
             _fmt(v.stats.get("inference_ms_p95"), 2), _age(v.last_seen, now)] for v in views]
    return format_table(["DEVICE", "STATE", "MODEL", "VERSION", "FPS", "INFER_P95_MS",
                         "LAST_SEEN"], rows)
