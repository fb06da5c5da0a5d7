"""`edge-deploy status` for hundreds of devices: rows, filters, sorting, a summary, and
table / JSON / CSV output."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.errors import DeployError
from deploy.fleet import DeviceView, format_table

STATE_STALE = "stale"  # shown by edge-deploy: live by its retained status, but not heard from
SORT_KEYS = ("device", "state", "model", "version", "last-seen", "fps", "p95")
FORMATS = ("table", "json", "csv")
DEFAULT_STALE_S = 120.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``2h``, ``500ms``, ``7d``, ``2w`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise DeployError(f"duration {text!r}: expected a number with ms, s, m, h, d or w")
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
             "w": 604800.0}[match.group(2)]
    return float(match.group(1)) * scale


@dataclass(frozen=True)
class StatusRow:
    device: str
    state: str
    model: str | None
    version: str | None
    groups: list[str]
    fps: float | None
    inference_ms_p95: float | None
    last_seen: float | None
    age_s: float | None
    reason: str | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def to_row(view: DeviceView, now: float, stale_s: float) -> StatusRow:
    seen = view.last_seen
    age = None if seen is None else max(0.0, now - seen)
    state = view.state
    if view.live and (age is None or age >= stale_s):
        state = STATE_STALE
    return StatusRow(view.device, state, _text(view.model.get("name")),
                     _text(view.model.get("version")), view.groups,
                     _number(view.stats.get("fps_out")),
                     _number(view.stats.get("inference_ms_p95")), seen, age,
                     _text(view.status.get("reason")))


@dataclass(frozen=True)
class StatusQuery:
    group: str | None = None
    states: tuple[str, ...] = ()
    model: str | None = None
    version: str | None = None
    stale_s: float | None = None  # only devices not heard from for at least this long
    sort: str = "device"

    def select(self, rows: Sequence[StatusRow]) -> list[StatusRow]:
        kept = [r for r in rows
                if (self.group is None or self.group in r.groups)
                and (not self.states or r.state in self.states)
                and (self.model is None or r.model == self.model)
                and (self.version is None or r.version == self.version)
                and (self.stale_s is None or r.age_s is None or r.age_s >= self.stale_s)]
        return sorted(kept, key=_sort_key(self.sort))


def _sort_key(sort: str):  # type: ignore[no-untyped-def]
    if sort not in SORT_KEYS:
        raise DeployError(f"--sort {sort!r}: choose one of {', '.join(SORT_KEYS)}")
    field = {"last-seen": "age_s", "p95": "inference_ms_p95"}.get(sort, sort)
    descending = sort in ("fps", "p95")

    def key(row: StatusRow) -> tuple[bool, Any, str]:
        value = getattr(row, field)
        if value is None:
            return (True, 0, row.device)
        return (False, -value if descending else value, row.device)

    return key


def summary(rows: Sequence[StatusRow]) -> dict[str, Any]:
    states = Counter(r.state for r in rows)
    models = Counter(f"{r.model or '-'} {r.version or '-'}" for r in rows)
    return {"devices": len(rows), "states": dict(sorted(states.items())),
            "models": dict(models.most_common())}


def summary_line(rows: Sequence[StatusRow]) -> str:
    s = summary(rows)
    order = ("online", "degraded", "stale", "offline", "stopped")
    states = [f"{s['states'].get(k, 0)} {k}" for k in order]
    states += [f"{n} {k}" for k, n in s["states"].items() if k not in order]
    models = ", ".join(f"{k}: {n}" for k, n in s["models"].items()) or "none"
    return f"{s['devices']} devices: {', '.join(states)}; models: {models}"


def _age_text(age: float | None) -> str:
    if age is None:
        return "-"
    if age < 120:
        return f"{age:.0f}s ago"
    if age < 7200:
        return f"{age / 60:.0f}m ago"
    return f"{age / 3600:.1f}h ago"


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(rows: Sequence[StatusRow], fmt: str, summary_only: bool = False) -> str:
    if fmt == "json":
        body: dict[str, Any] = {"summary": summary(rows)}
        if not summary_only:
            body["devices"] = [asdict(r) for r in rows]
        return json.dumps(body, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["device", "state", "model", "version", "groups", "fps",
                         "inference_ms_p95", "last_seen", "age_s", "reason"])
        for r in rows:
            writer.writerow([r.device, r.state, r.model or "", r.version or "",
                             " ".join(r.groups), "" if r.fps is None else r.fps,
                             "" if r.inference_ms_p95 is None else r.inference_ms_p95,
                             "" if r.last_seen is None else r.last_seen,
                             "" if r.age_s is None else round(r.age_s, 3), r.reason or ""])
        return out.getvalue().rstrip("\n")
    if summary_only:
        return summary_line(rows)
    table = format_table(
        ["DEVICE", "STATE", "MODEL", "VERSION", "FPS", "INFER_P95_MS", "LAST_SEEN"],
        [[r.device, r.state, r.model or "-", r.version or "-", _fmt(r.fps, 1),
          _fmt(r.inference_ms_p95, 2), _age_text(r.age_s)] for r in rows])
    return f"{table}\n\n{summary_line(rows)}"


def status_report(views: Sequence[DeviceView], query: StatusQuery, fmt: str = "table",
                  summary_only: bool = False, now: float | None = None) -> str:
    if fmt not in FORMATS:
        raise DeployError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    now = time.time() if now is None else now
    stale_s = DEFAULT_STALE_S if query.stale_s is None else query.stale_s
    rows = [to_row(v, now, stale_s) for v in views]
    return render(query.select(rows), fmt, summary_only)
