"""``edge-insights report``: the answers, per device and for the fleet, as named sections.

The engines do the scanning (``queries``); what is left here is small: merging the drift
moments into baselines and flags, and putting each model change's before and after side by
side. A section is a title, column names and rows, so the table, JSON and HTML outputs
are three views of one thing.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from insights import queries
from insights.engines import Engine
from insights.queries import Scope


@dataclass(frozen=True)
class ReportOptions:
    bucket_s: float = 3600.0
    min_score: float = 0.5           # presence: a frame counts when its top score is this high
    gap_s: float = 5.0               # presence: a longer gap ends the episode
    min_frames: int = 1              # presence: shorter episodes are left out
    drift_window_s: float | None = None   # default: the bucket
    baseline_windows: int = 3        # drift: the first N windows of a device and label
    min_drop: float = 0.05           # drift: flag a mean drop of at least this much ...
    min_z: float = 4.0               # ... that is also this many standard errors
    min_n: int = 20                  # ... in a window with at least this many labels
    impact_window_s: float | None = None  # model impact: before/after span; default: bucket

    @property
    def drift_s(self) -> float:
        return self.drift_window_s or self.bucket_s

    @property
    def impact_s(self) -> float:
        return self.impact_window_s or self.bucket_s


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    note: str = ""

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


@dataclass
class Report:
    scope: Scope
    options: ReportOptions
    engine: str
    generated: float = field(default_factory=time.time)
    sections: dict[str, Section] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"generated": self.generated, "engine": self.engine,
                "scope": vars(self.scope), "options": vars(self.options),
                "sections": {k: s.records() for k, s in self.sections.items()}}


def _section(engine: Engine, title: str, sql: str, note: str = "") -> Section:
    columns, rows = engine.rows(sql)
    return Section(title, columns, [tuple(r) for r in rows], note)


def build_report(engine: Engine, scope: Scope, options: ReportOptions) -> Report:
    o = options
    report = Report(scope, o, engine.name)
    s = report.sections
    s["devices"] = _section(engine, "Devices (latest status)", queries.last_status())
    s["counts"] = _section(engine, "What was seen: labels per bucket",
                           queries.label_counts(scope, o.bucket_s))
    s["fleet_counts"] = fleet_counts(s["counts"])
    episodes = _section(engine, "Presence episodes",
                        queries.presence_episodes(scope, o.min_score, o.gap_s),
                        f"top label with score >= {o.min_score:g}, gaps up to {o.gap_s:g} s")
    episodes.rows = [r for r in episodes.rows if r[episodes.columns.index("frames")]
                     >= o.min_frames]
    s["episodes"] = episodes
    s["presence"] = presence_summary(episodes)
    moments = _section(engine, "Score moments", queries.score_moments(scope, o.drift_s))
    s["drift"] = drift(moments, o)
    s["drift_flags"] = Section("Confidence drift: flagged windows", s["drift"].columns,
                               [r for r in s["drift"].rows if r[-1]],
                               s["drift"].note)
    changes = queries.model_changes(scope)
    s["model_changes"] = _section(engine, "Model changes (from the labels)", changes)
    s["impact"] = impact(_section(engine, "impact", queries.model_impact(changes, o.impact_s)),
                         o.impact_s)
    s["pushes"] = _section(engine, "Model pushes (model/result)", queries.push_results(scope))
    s["health"] = _section(engine, "Device health per bucket",
                           queries.device_health(scope, o.bucket_s))
    s["offline"] = _section(engine, "Offline periods (from status)",
                            queries.offline_periods(scope))
    s["quarantine"] = _section(engine, "Quarantined input", queries.quarantine_counts(scope))
    return report


def fleet_counts(counts: Section) -> Section:
    total: dict[tuple[float, str], int] = defaultdict(int)
    for r in counts.records():
        total[(r["bucket"], r["label"])] += r["n"]
    return Section("What was seen: the fleet", ["bucket", "label", "n"],
                   [(b, lab, n) for (b, lab), n in sorted(total.items())])


def presence_summary(episodes: Section) -> Section:
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in episodes.records():
        acc[(r["device"], r["label"])].append(float(r["duration_s"]))
    rows = [(d, lab, len(v), round(sum(v), 3), round(sum(v) / len(v), 3), round(max(v), 3))
            for (d, lab), v in sorted(acc.items())]
    return Section("Presence: how often and how long", ["device", "label", "episodes",
                                                         "total_s", "mean_s", "longest_s"], rows)


@dataclass
class Moments:
    """Mergeable: n, sum and sum of squares add across windows and devices."""

    n: int = 0
    s: float = 0.0
    ss: float = 0.0

    def add(self, n: int, s: float, ss: float) -> None:
        self.n, self.s, self.ss = self.n + n, self.s + s, self.ss + ss

    @property
    def mean(self) -> float:
        return self.s / self.n if self.n else math.nan

    @property
    def var(self) -> float:
        if self.n < 2:
            return 0.0
        return max(0.0, (self.ss - self.s * self.s / self.n) / (self.n - 1))


DRIFT_COLUMNS = ["device", "label", "window_start", "n", "mean", "std", "baseline_mean",
                 "baseline_std", "drop", "z", "flagged"]


def drift(moments: Section, o: ReportOptions) -> Section:
    """Each window's mean top score against the device-and-label baseline (its first
    ``baseline_windows`` windows). Merged series: all labels of a device as label ``*``,
    all devices as device ``*``."""
    series: dict[tuple[str, str], dict[float, Moments]] = defaultdict(dict)
    for r in moments.records():
        for key in ((r["device"], r["label"]), (r["device"], "*"), ("*", r["label"]),
                    ("*", "*")):
            m = series[key].setdefault(r["window_start"], Moments())
            m.add(int(r["n"]), float(r["s"]), float(r["ss"]))
    rows = []
    for (device, label), windows in sorted(series.items()):
        starts = sorted(windows)
        base = Moments()
        for w in starts[:o.baseline_windows]:
            m = windows[w]
            base.add(m.n, m.s, m.ss)
        for w in starts[o.baseline_windows:]:
            m = windows[w]
            drop = base.mean - m.mean
            se = math.sqrt(base.var / base.n + m.var / m.n) if base.n and m.n else 0.0
            z = drop / se if se > 0 else (math.inf if drop > 0 else 0.0)
            flagged = m.n >= o.min_n and drop >= o.min_drop and z >= o.min_z
            rows.append((device, label, w, m.n, round(m.mean, 4), round(math.sqrt(m.var), 4),
                         round(base.mean, 4), round(math.sqrt(base.var), 4), round(drop, 4),
                         round(z, 2) if math.isfinite(z) else None, flagged))
    note = (f"window {o.drift_s:g} s; baseline: first {o.baseline_windows} windows; flag: drop "
            f">= {o.min_drop:g} and z >= {o.min_z:g} with n >= {o.min_n}")
    return Section("Confidence drift", DRIFT_COLUMNS, rows, note)


def impact(raw: Section, window_s: float) -> Section:
    """Per model change and label: share of labels and mean score before and after."""
    by_change: dict[tuple[str, float], dict[str, dict[str, tuple[int, float]]]] = \
        defaultdict(lambda: {"before": {}, "after": {}})
    for r in raw.records():
        by_change[(r["device"], r["change_ts"])][r["side"]][r["label"]] = (
            int(r["n"]), float(r["mean_score"]))
    rows = []
    for (device, change_ts), sides in sorted(by_change.items()):
        totals = {side: sum(n for n, _ in v.values()) or 1 for side, v in sides.items()}
        for label in sorted(set(sides["before"]) | set(sides["after"])):
            nb, mb = sides["before"].get(label, (0, math.nan))
            na, ma = sides["after"].get(label, (0, math.nan))
            rows.append((device, change_ts, label, nb, round(nb / totals["before"], 4),
                         _round(mb), na, round(na / totals["after"], 4), _round(ma)))
    return Section("Model impact: before and after each change",
                   ["device", "change_ts", "label", "n_before", "share_before", "mean_before",
                    "n_after", "share_after", "mean_after"], rows,
                   f"{window_s:g} s on each side of the change")


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)
