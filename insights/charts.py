"""The report's charts as PNG bytes (matplotlib, Agg backend: no display, no network)."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from insights.report import Report

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2",
           "#FF9DA6", "#9D755D", "#BAB0AC", "#1F77B4", "#2CA02C"]
MAX_SERIES = 8


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dates(values: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(v, timezone.utc) for v in values]


def _png(draw: Callable[[Any, Any], None], size: tuple[float, float] = (10, 3.2)) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=size, dpi=96)
    try:
        draw(fig, ax)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.25)
        fig.autofmt_xdate()
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(fig)


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def counts_chart(report: Report) -> bytes:
    """The fleet's labels per bucket, stacked by label."""
    rows = report.sections["fleet_counts"].records()
    buckets = sorted({r["bucket"] for r in rows})
    labels = sorted({r["label"] for r in rows})
    n = {(r["bucket"], r["label"]): r["n"] for r in rows}
    width = (buckets[1] - buckets[0]) / 86400 * 0.9 if len(buckets) > 1 else 0.02

    def draw(fig: Any, ax: Any) -> None:
        bottom = [0] * len(buckets)
        x = _dates(buckets)
        for i, label in enumerate(labels):
            heights = [n.get((b, label), 0) for b in buckets]
            ax.bar(x, heights, width=width, bottom=bottom, color=_color(i), label=label,
                   align="edge")
            bottom = [a + b for a, b in zip(bottom, heights, strict=True)]
        ax.set_ylabel("labels")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                  title="label")
    return _png(draw)


def presence_chart(report: Report) -> bytes:
    """One lane per device and source; each episode a bar coloured by its label."""
    rows = report.sections["episodes"].records()
    lanes = sorted({(r["device"], r["source"]) for r in rows})
    labels = sorted({r["label"] for r in rows})
    color = {lab: _color(i) for i, lab in enumerate(labels)}

    def draw(fig: Any, ax: Any) -> None:
        import matplotlib.dates as mdates

        spans: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
        lane_of = {lane: y for y, lane in enumerate(lanes)}
        for r in rows:  # one collection per lane and label: thousands of episodes stay fast
            start = mdates.date2num(_dates([r["start_ts"]])[0])
            spans[(lane_of[(r["device"], r["source"])], r["label"])].append(
                (start, max(r["duration_s"], 0.5) / 86400))
        for (y, label), bars in spans.items():
            ax.broken_barh(bars, (y - 0.4, 0.8), color=color[label])
        ax.set_yticks(range(len(lanes)), [f"{d} / {s}" for d, s in lanes], fontsize=8)
        ax.xaxis_date()
        handles = [_plt().Rectangle((0, 0), 1, 1, color=color[lab]) for lab in labels]
        ax.legend(handles, labels, fontsize=8, frameon=False, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0), title="label")
    return _png(draw, (10, max(2.0, 0.45 * len(lanes) + 1.2)))


def drift_chart(report: Report) -> bytes:
    """Mean top score per window for the most drifted device-label series, with baselines."""
    rows = [r for r in report.sections["drift"].records() if r["device"] != "*"]
    series: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        series[(r["device"], r["label"])].append(r)
    worst = sorted(series, key=lambda k: -max((x["drop"] or 0) for x in series[k]))[:MAX_SERIES]

    def draw(fig: Any, ax: Any) -> None:
        for i, key in enumerate(worst):
            pts = series[key]
            flagged = [p for p in pts if p["flagged"]]
            ax.plot(_dates([p["window_start"] for p in pts]), [p["mean"] for p in pts],
                    marker=".", color=_color(i), label=f"{key[0]} '{key[1]}'")
            ax.axhline(pts[0]["baseline_mean"], color=_color(i), ls=":", lw=1)
            if flagged:
                ax.scatter(_dates([p["window_start"] for p in flagged]),
                           [p["mean"] for p in flagged], s=60, facecolors="none",
                           edgecolors="#D62728", linewidths=1.5, zorder=3)
        ax.set_ylabel("mean top score")
        ax.legend(fontsize=8, frameon=False, ncol=2)
    return _png(draw)


def impact_chart(report: Report) -> bytes:
    """Share of each label before and after each model change."""
    rows = report.sections["impact"].records()
    changes = sorted({(r["device"], r["change_ts"]) for r in rows})[:6]
    labels = sorted({r["label"] for r in rows})

    def draw(fig: Any, ax: Any) -> None:
        width = 0.8 / max(1, 2 * len(changes))
        for i, change in enumerate(changes):
            share = {r["label"]: r for r in rows if (r["device"], r["change_ts"]) == change}
            for j, side in enumerate(("before", "after")):
                xs = [k + (2 * i + j) * width for k in range(len(labels))]
                ax.bar(xs, [share.get(lab, {}).get(f"share_{side}", 0) for lab in labels],
                       width=width, color=_color(i), alpha=0.45 if side == "before" else 1.0,
                       label=f"{change[0]} {side}")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(labels))], labels)
        ax.set_ylabel("share of labels")
        ax.legend(fontsize=8, frameon=False, ncol=2)
    return _png(draw)


def health_chart(report: Report, column: str, ylabel: str) -> bytes:
    """One line per device over the buckets, offline periods shaded."""
    rows = report.sections["health"].records()
    devices = sorted({r["device"] for r in rows})
    offline = report.sections["offline"].records()
    index = {d: i for i, d in enumerate(devices)}

    def draw(fig: Any, ax: Any) -> None:
        for d in devices:
            pts = [r for r in rows if r["device"] == d and r[column] is not None]
            ax.plot(_dates([p["bucket"] for p in pts]), [p[column] for p in pts], marker=".",
                    color=_color(index[d]), label=d)
        for p in offline:
            if p["device"] in index:
                end = p["end_ts"] if p["end_ts"] is not None else report.generated
                ax.axvspan(*_dates([p["start_ts"], end]), color=_color(index[p["device"]]),
                           alpha=0.15)
        ax.set_ylabel(ylabel)
        if devices:
            ax.legend(fontsize=8, frameon=False, ncol=4)
    return _png(draw)
