"""edge-insights: collect | query | report | compact | demo.

collect  the fleet's labels, stats, status and model results into a Parquet lake
query    SQL over the views labels, stats, status, model_events, quarantine
report   counts, presence, drift, model impact and device health (table, JSON, HTML)
compact  merge each day's small files into large row groups; --keep-days drops old days
demo     three real agents, a broker and the collector for a while, then the report

Exit codes: 0 success, 1 the command failed, 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence

from agent.errors import EdgeError
from agent.health import SystemdNotifier
from deploy.connection import BrokerOptions, add_broker_args
from insights.collector import Collector
from insights.engines import ENGINES, Engine, QueryError

log = logging.getLogger("edge_insights")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-insights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="subscribe and write the lake (a long-running service)")
    add_broker_args(c)
    c.add_argument("--lake", required=True, help="lake folder")
    c.add_argument("--client-id", default=None,
                   help="keep it the same across restarts (default edge-insights-<host>)")
    c.add_argument("--share", default=None, help="MQTT 5 shared subscription group")
    c.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    c.add_argument("--session-expiry", default="7d", help="how long the broker keeps the "
                   "session while the collector is away (MQTT 5)")
    c.add_argument("--flush-rows", type=int, default=5000)
    c.add_argument("--flush-seconds", type=float, default=1.0)
    c.add_argument("--buffer", type=int, default=20000, help="messages held before waiting")

    q = sub.add_parser("query", help="run SQL over the lake's views")
    _lake_args(q)
    q.add_argument("--format", choices=("table", "json", "csv"), default="table")
    q.add_argument("sql")

    r = sub.add_parser("report", help="what was seen, presence, drift, model impact, health")
    _lake_args(r)
    r.add_argument("--since", default=None, help="Unix seconds, ISO 8601 or --since=-2h")
    r.add_argument("--until", default=None)
    r.add_argument("--device", default=None)
    r.add_argument("--bucket", default="1h", help="time bucket (30s, 15m, 1h, 1d)")
    r.add_argument("--min-score", type=float, default=0.5, help="presence: minimum top score")
    r.add_argument("--gap", default="5s", help="presence: longest gap inside an episode")
    r.add_argument("--min-frames", type=int, default=1, help="presence: shortest episode")
    r.add_argument("--drift-window", default=None, help="drift window (default: the bucket)")
    r.add_argument("--baseline-windows", type=int, default=3)
    r.add_argument("--min-drop", type=float, default=0.05)
    r.add_argument("--impact-window", default=None, help="before/after span of a model change")
    r.add_argument("--format", choices=("table", "json"), default="table")
    r.add_argument("--html", default=None, help="also write a self-contained HTML page")

    k = sub.add_parser("compact", help="merge small files; drop days past retention")
    k.add_argument("--lake", required=True)
    k.add_argument("--keep-days", type=int, default=None, help="delete days older than this")
    k.add_argument("--row-group", type=int, default=500_000)

    d = sub.add_parser("demo", help="three agents, a broker, the collector, then the report")
    d.add_argument("--seconds", type=float, default=20.0)
    d.add_argument("--out", default="insights-demo", help="folder for the lake and the page")
    return p


def _lake_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--lake", required=True)
    sp.add_argument("--engine", choices=ENGINES, default="duckdb")
    sp.add_argument("--spark-master", default="local[2]", help="Spark master URL")


def cmd_collect(args: argparse.Namespace) -> int:
    from insights.collector import CollectorOptions
    from insights.lake import Lake
    from insights.output import parse_duration

    client_id = args.client_id or f"edge-insights-{socket.gethostname().split('.')[0]}"
    options = CollectorOptions(prefix=args.prefix, client_id=client_id, share=args.share,
                               protocol=args.protocol,
                               session_expiry_s=int(parse_duration(args.session_expiry)),
                               flush_rows=args.flush_rows, flush_seconds=args.flush_seconds,
                               buffer_capacity=args.buffer)
    collector = Collector(BrokerOptions.from_args(args), Lake(args.lake, client_id), options)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    collector.start()
    log.info("collecting %s into %s as %s", ", ".join(options.filters()), args.lake, client_id)
    _serve(collector, stop)
    collector.stop()
    log.info("stopped: %s", collector.summary())
    return 0


def _serve(collector: Collector, stop: threading.Event, tick_s: float = 1.0,
           log_every_s: float = 60.0) -> None:
    """Until stopped: READY=1 to systemd once subscribed, WATCHDOG=1 while the flusher
    lives, a summary in the log every minute."""
    notifier = SystemdNotifier()
    ready, last_log = False, time.monotonic()
    while not stop.wait(tick_s):
        if not ready and collector.subscribed.is_set():
            notifier.notify("READY=1")
            ready = True
        if collector.flusher_alive():
            summary = collector.summary()
            notifier.notify("WATCHDOG=1", f"STATUS=received {summary['received']}, "
                                          f"pending {summary['pending']}")
        if time.monotonic() - last_log >= log_every_s:
            last_log = time.monotonic()
            log.info("collector: %s", collector.summary())
    notifier.notify("STOPPING=1")
    notifier.close()


def _engine(args: argparse.Namespace) -> Engine:
    from insights.engines import open_engine
    from insights.lake import Lake

    return open_engine(Lake(args.lake), args.engine, args.spark_master)


def cmd_query(args: argparse.Namespace) -> int:
    from insights.output import format_rows

    engine = _engine(args)
    try:
        columns, rows = engine.rows(args.sql)
    finally:
        engine.close()
    print(format_rows(columns, rows, args.format))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from insights.output import format_report, parse_duration, parse_time
    from insights.queries import Scope
    from insights.report import ReportOptions, build_report

    scope = Scope(since=parse_time(args.since) if args.since else None,
                  until=parse_time(args.until) if args.until else None, device=args.device)
    options = ReportOptions(
        bucket_s=parse_duration(args.bucket), min_score=args.min_score,
        gap_s=parse_duration(args.gap), min_frames=args.min_frames,
        drift_window_s=parse_duration(args.drift_window) if args.drift_window else None,
        baseline_windows=args.baseline_windows, min_drop=args.min_drop,
        impact_window_s=parse_duration(args.impact_window) if args.impact_window else None)
    engine = _engine(args)
    try:
        report = build_report(engine, scope, options)
    finally:
        engine.close()
    print(format_report(report, args.format))
    if args.html:
        from insights.html import write_html

        print(f"HTML report: {write_html(report, args.html)}", file=sys.stderr)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from insights.lake import Lake

    lake = Lake(args.lake, f"compact-{socket.gethostname().split('.')[0]}")
    for r in lake.compact_all(row_group_size=args.row_group):
        print(f"{r.table} {r.day}: {r.files_in} files, {r.rows_in} rows -> 1 file, "
              f"{r.rows_out} rows")
    if args.keep_days is not None:
        for folder in lake.retain(args.keep_days):
            print(f"removed {folder}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from insights.demo import run_demo

    return run_demo(args.seconds, args.out)


COMMANDS = {"collect": cmd_collect, "query": cmd_query, "report": cmd_report,
            "compact": cmd_compact, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except QueryError as exc:
        print(f"edge-insights {args.command}: {exc}", file=sys.stderr)
        return 1
    except (EdgeError, ValueError, OSError) as exc:
        print(f"edge-insights {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
