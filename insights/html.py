"""``report --html FILE``: one self-contained page (charts inline as PNG data URIs, styles
inline, no scripts or fonts from the network)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.files import atomic_write_bytes
from insights import charts
from insights.output import TIME_COLUMNS, utc
from insights.report import Report, Section

TABLE_ROWS = 40

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cf}main{max-width:1100px;margin:0 auto;padding:16px 32px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:8px 0 16px}
.card{background:#fff;border-radius:8px;padding:12px 16px;min-width:140px;
box-shadow:0 1px 2px #0002}.card b{display:block;font-size:24px}.card span{color:#667}
.card.alert b{color:#c62828}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:14px 0;
box-shadow:0 1px 2px #0002}section h2{margin:0 0 4px;font-size:18px}
section p.note{margin:0 0 8px;color:#667}img{max-width:100%;display:block;margin:6px 0}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin-top:6px}
th,td{padding:3px 8px;border-bottom:1px solid #e6e8ec;text-align:left}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.flag td{background:#fdecea}.empty{color:#889;font-style:italic}
details{margin-top:8px}summary{cursor:pointer;color:#4C78A8}
nav a{color:#b8c0cf;margin-right:14px;text-decoration:none}
"""
# Marks each section whose images all decoded: what the browser test reads back.
SCRIPT = """
window.addEventListener('load',function(){document.querySelectorAll('section').forEach(
function(s){var ok=Array.from(s.querySelectorAll('img')).every(function(i){
return i.complete&&i.naturalWidth>0});s.setAttribute('data-rendered',ok?'yes':'no');});});
"""


def _fmt(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if column in TIME_COLUMNS and isinstance(value, (int, float)) and math.isfinite(value):
        return utc(value)
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)


def table(section: Section, limit: int = TABLE_ROWS, flag: str | None = None) -> str:
    if not section.rows:
        return '<p class="empty">No data in this range.</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
    body = []
    for row in section.records()[:limit]:
        cls = ' class="flag"' if flag and row.get(flag) else ""
        cells = "".join(
            f'<td{" class=num" if isinstance(v, (int, float)) else ""}>'
            f"{html.escape(_fmt(c, v))}</td>" for c, v in row.items())
        body.append(f"<tr{cls}>{cells}</tr>")
    more = len(section.rows) - limit
    tail = f'<p class="note">… and {more} more rows (use --format json for all).</p>' \
        if more > 0 else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{tail}"


def details(section: Section, summary: str, flag: str | None = None) -> str:
    """A long table folded away: the chart and the summary come first."""
    if not section.rows:
        return ""
    return (f"<details><summary>{html.escape(summary)} ({len(section.rows):,} rows)</summary>"
            f"{table(section, flag=flag)}</details>")


def top(section: Section, column: str, limit: int = 12) -> Section:
    """The ``limit`` rows with the largest ``column``: what to read first."""
    i = section.columns.index(column)
    rows = sorted(section.rows, key=lambda r: -(r[i] if isinstance(r[i], (int, float)) else 0))
    title = f"{section.title} (top {limit} by {column})"
    return Section(title, section.columns, rows[:limit], section.note)


def label_matrix(report: Report) -> str:
    """Labels per device (rows) and label (columns): the whole range at a glance."""
    totals: dict[str, dict[str, int]] = {}
    for r in report.sections["counts"].records():
        row = totals.setdefault(r["device"], {})
        row[r["label"]] = row.get(r["label"], 0) + r["n"]
    labels = sorted({lab for row in totals.values() for lab in row})
    section = Section("labels per device", ["device", *labels, "total"],
                      [(d, *(row.get(lab, 0) for lab in labels), sum(row.values()))
                       for d, row in sorted(totals.items())])
    return table(section, limit=200)


def _img(png: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def _chart(report: Report, key: str, make: Callable[[], bytes], alt: str) -> str:
    return _img(make(), alt) if report.sections[key].rows else ""


def _cards(report: Report) -> str:
    s = report.sections
    n_labels = sum(r[s["counts"].columns.index("n")] for r in s["counts"].rows)
    flagged = {(r[0], r[1]) for r in s["drift_flags"].rows if r[0] != "*"}
    quarantined = sum(r[1] for r in s["quarantine"].rows)
    cards = [("devices", len({r[0] for r in s["counts"].rows} | {r[0] for r in
                                                                   s["devices"].rows}), False),
             ("labels", f"{n_labels:,}", False),
             ("presence episodes", f"{len(s['episodes'].rows):,}", False),
             ("drifting device·label", len(flagged), bool(flagged)),
             ("model changes", len(s["model_changes"].rows), False),
             ("offline periods", len(s["offline"].rows), bool(s["offline"].rows)),
             ("quarantined", f"{quarantined:,}", bool(quarantined))]
    return '<div class="cards">' + "".join(
        f'<div class="card{" alert" if alert else ""}"><b>{v}</b><span>{k}</span></div>'
        for k, v, alert in cards) + "</div>"


def _section(sid: str, title: str, note: str, body: str) -> str:
    return (f'<section id="{sid}"><h2>{html.escape(title)}</h2>'
            f'<p class="note">{html.escape(note)}</p>{body}</section>')


def render(report: Report) -> str:
    s, o = report.sections, report.options
    parts = [
        _section("seen", "What was seen", f"labels per {o.bucket_s:g} s bucket, whole fleet",
                 _chart(report, "fleet_counts", lambda: charts.counts_chart(report),
                        "labels per bucket") + label_matrix(report)
                 + details(s["counts"], "per device and bucket")),
        _section("presence", "Presence", s["episodes"].note + "; how often, how long",
                 _chart(report, "episodes", lambda: charts.presence_chart(report),
                        "presence episodes") + table(top(s["presence"], "total_s"))
                 + details(s["presence"], "per device and label")
                 + details(s["episodes"], "every episode")),
        _section("drift", "Confidence drift", s["drift"].note + "; red rings are flagged",
                 _chart(report, "drift", lambda: charts.drift_chart(report), "drift")
                 + table(top(s["drift_flags"], "drop"), flag="flagged")
                 + details(s["drift_flags"], "every flagged window", flag="flagged")
                 + details(s["drift"], "every window", flag="flagged")),
        _section("impact", "Model impact", s["impact"].note,
                 _chart(report, "impact", lambda: charts.impact_chart(report), "impact")
                 + table(s["model_changes"]) + table(s["impact"]) + table(s["pushes"])),
        _section("health", "Device health", "per bucket from stats; shaded: offline",
                 _chart(report, "health", lambda: charts.health_chart(
                     report, "fps_out", "fps out"), "fps")
                 + _chart(report, "health", lambda: charts.health_chart(
                     report, "outbox_depth", "outbox depth"), "outbox")
                 + table(s["devices"]) + table(s["offline"])
                 + details(s["health"], "per device and bucket")),
        _section("quarantine", "Quarantined input", "bad messages kept aside, by kind",
                 table(s["quarantine"])),
    ]
    scope = report.scope
    span = " – ".join(_fmt("ts", t) if t is not None else "…" for t in (scope.since,
                                                                          scope.until))
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("seen", "Seen"), ("presence", "Presence"), ("drift", "Drift"), ("impact", "Models"),
        ("health", "Health"), ("quarantine", "Quarantine")))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Fleet insights</title><style>{STYLE}</style><script>{SCRIPT}</script>"
            f"</head><body><header><h1>Fleet insights</h1><p>{html.escape(span)} · "
            f"{'device ' + html.escape(scope.device) if scope.device else 'all devices'} · "
            f"generated {_fmt('ts', report.generated)} UTC by {report.engine}</p>"
            f"<nav>{nav}</nav></header><main>{_cards(report)}{''.join(parts)}</main>"
            f"</body></html>")


def write_html(report: Report, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, render(report).encode())
    return path
