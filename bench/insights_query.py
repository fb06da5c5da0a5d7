"""Query: the full report over a generated lake (default 10 million labels from 100 devices),
DuckDB over the lake as a collector leaves it (many small files) and after compaction.

    .venv/bin/python -m bench.insights_query [--labels 10000000] [--devices 100]
        [--file-rows 5000] [--lake DIR]

The lake is written the way the collector writes it (one file per batch of ``--file-rows``
rows and day), then the report runs once cold over it; ``edge-insights compact`` merges it
and the report runs again. Every section's row count must match between the two.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import LoadMeter, machine
from insights.engines import DuckDBEngine
from insights.lake import Lake
from insights.queries import Scope
from insights.report import ReportOptions, build_report
from insights.schema import LABELS
from insights.synthetic import Drift, FleetPlan, generate

T0 = 1_780_000_000.0
RATE_HZ = 0.5


def write_lake(root: Path, labels: int, devices: int, file_rows: int) -> float:
    lake = Lake(root, "bench")
    per_device = labels // devices
    t0 = time.perf_counter()
    for d in range(devices):
        plan = FleetPlan(devices=1, first_device=d, seconds=per_device / RATE_HZ,
                         rate_hz=RATE_HZ, start_ts=T0, seed=d,
                         drift=Drift(f"cam-{d:03d}", T0 + per_device / RATE_HZ / 2, 0.1)
                         if d % 10 == 3 else None)
        table = generate(plan).table
        for start in range(0, table.num_rows, file_rows):
            lake.write(LABELS, table.slice(start, file_rows))
    return time.perf_counter() - t0


def timed_report(root: Path) -> tuple[float, dict[str, int]]:
    t0 = time.perf_counter()
    engine = DuckDBEngine(Lake(root))
    report = build_report(engine, Scope(), ReportOptions(bucket_s=3600, drift_window_s=3600))
    engine.close()
    return time.perf_counter() - t0, {k: len(s.rows) for k, s in report.sections.items()}


def run(labels: int, devices: int, file_rows: int, root: Path) -> dict:
    out: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine(), "labels": labels, "devices": devices,
                 "file_rows": file_rows}
    load = LoadMeter().start()
    out["write_s"] = round(write_lake(root, labels, devices, file_rows), 1)
    lake = Lake(root, "bench")
    out["files_before"] = len(lake.files(LABELS))
    out["report_uncompacted_s"], before = timed_report(root)
    t0 = time.perf_counter()
    lake.compact_all()
    out["compact_s"] = round(time.perf_counter() - t0, 1)
    out["files_after"] = len(lake.files(LABELS))
    out["report_compacted_s"], after = timed_report(root)
    out["sections_match"] = before == after
    out["section_rows"] = after
    out["speedup"] = round(out["report_uncompacted_s"] / out["report_compacted_s"], 2)
    out["report_uncompacted_s"] = round(out["report_uncompacted_s"], 1)
    out["report_compacted_s"] = round(out["report_compacted_s"], 1)
    out["load"] = load.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=int, default=10_000_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--file-rows", type=int, default=5000)
    ap.add_argument("--lake", default=None, help="where to write it (default: a temp folder)")
    args = ap.parse_args()
    root = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="bench-lake-"))
    try:
        print(json.dumps(run(args.labels, args.devices, args.file_rows, root), indent=2))
    finally:
        if not args.lake:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
