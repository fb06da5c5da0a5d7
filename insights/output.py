"""Printing results (table, JSON, CSV) and reading times and durations from the command line."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from deploy.fleet import format_table
from deploy.status_view import parse_duration as deploy_duration
from insights.report import Report, Section

FORMATS = ("table", "json", "csv")


def parse_duration(text: str) -> float:
    """A positive duration (``30s``, ``15m``, ``1h``, ``7d``; edge-deploy's parser)."""
    seconds = deploy_duration(text)
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds, ISO 8601 (UTC unless it says otherwise), or ``-2h`` (before now)."""
    now = time.time() if now is None else now
    text = text.strip()
    if text.startswith("-"):
        return now - parse_duration(text[1:])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give Unix seconds, ISO 8601 "
                         f"(2026-12-01T08:00) or -2h") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def plain(value: Any) -> Any:
    """A value JSON can carry (NaN and infinity become null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{c: plain(v) for c, v in zip(columns, r, strict=True)}
                           for r in rows], indent=None)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in r] for r in rows])
        return out.getvalue().rstrip("\n")
    if fmt == "table":
        return format_table(list(columns), [[_cell(v) for v in r] for r in rows])
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


TIME_COLUMNS = frozenset({"bucket", "start_ts", "end_ts", "window_start", "change_ts",
                          "received_ts", "ts"})


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _readable(columns: Sequence[str], row: Sequence[Any]) -> list[Any]:
    return [utc(v) if c in TIME_COLUMNS and isinstance(v, (int, float)) and math.isfinite(v)
            else v for c, v in zip(columns, row, strict=True)]


def _section_text(section: Section, limit: int) -> str:
    head = f"== {section.title}" + (f"  ({section.note})" if section.note else "")
    if not section.rows:
        return f"{head}\n(none)"
    more = len(section.rows) - limit
    tail = f"\n... and {more} more (--format json shows all)" if more > 0 else ""
    rows = [_readable(section.columns, r) for r in section.rows[:limit]]
    return f"{head}\n{format_rows(section.columns, rows, 'table')}{tail}"


PRINTED = ("devices", "fleet_counts", "presence", "drift_flags", "model_changes", "impact",
           "pushes", "health", "offline", "quarantine")


def format_report(report: Report, fmt: str, limit: int = 30) -> str:
    if fmt == "json":
        return json.dumps(plain(report.as_json()))
    if fmt != "table":
        raise ValueError("report --format is table or json")
    return "\n\n".join(_section_text(report.sections[k], limit) for k in PRINTED)
