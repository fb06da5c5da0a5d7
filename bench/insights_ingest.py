"""Ingest: labels/s one collector drains from Mosquitto at QoS 1 with nothing lost, against a
bare paho subscriber and against one INSERT per message (SQLite, DuckDB), side by side.

    .venv/bin/python -m bench.insights_ingest [--count 50000] [--naive-count 5000]

Method: each consumer first creates its persistent session (QoS 1 subscription) and goes
away; the backlog is then published (Mosquitto queues it for the session); the consumer
reconnects and is timed from its connect to the moment the last message is stored (the
collector: durably in Parquet and acknowledged; the bare subscriber: received; the naive
ones: inserted and committed). The same backlog and broker serve every consumer, so the
ratios are taken in one run, under the same load. Memory: the collector's peak RSS growth
draining a small and a 4x larger backlog (bounded: about the same).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import resource
import signal
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import LoadMeter, broker, machine, proc_rss_mb
from deploy.connection import BrokerOptions
from insights.collector import Collector, CollectorOptions
from insights.lake import Lake
from insights.schema import LABELS, arrow_table, route, to_row
from insights.synthetic import FleetPlan, generate, payloads

FILTER = "edge/+/labels"
PUBLISH_WINDOW = 10_000


def backlog(count: int) -> list[tuple[str, bytes]]:
    devices = 10
    plan = FleetPlan(devices=devices, seconds=count / devices / 10.0, rate_hz=10.0)
    return list(payloads(generate(plan).table))[:count]


def publish(port: int, items: list[tuple[str, bytes]]) -> None:
    done = threading.Semaphore(0)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.on_publish = lambda *a, **k: done.release()
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    # In windows: paho numbers QoS 1 messages with 16-bit ids, and more than 65,535 queued
    # at once collide (seen here: 68,444 of 80,000 acknowledged, then nothing).
    for start in range(0, len(items), PUBLISH_WINDOW):
        window = items[start:start + PUBLISH_WINDOW]
        for topic, payload in window:
            pub.publish(topic, payload, qos=1)
        for i in range(len(window)):
            if not done.acquire(timeout=120):
                raise RuntimeError(f"publisher: {start + i} of {len(items)} acknowledged")
    pub.disconnect()
    pub.loop_stop()


def _session_client(client_id: str, on_message: Callable | None = None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    if on_message:
        client.on_message = on_message
    return client


def _connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    return props


def make_session(port: int, client_id: str) -> None:
    """Connect, subscribe at QoS 1 with a persistent session, leave."""
    ready = threading.Event()
    c = _session_client(client_id)
    c.on_subscribe = lambda *a, **k: ready.set()
    c.on_connect = lambda cl, *a, **k: cl.subscribe(FILTER, qos=1)
    c.connect("127.0.0.1", port, clean_start=False, properties=_connect_props())
    c.loop_start()
    ready.wait(10)
    c.disconnect()
    c.loop_stop()


def drain_subscriber(port: int, client_id: str, n: int,
                     handle: Callable[[str, bytes], None]) -> float:
    """A plain paho subscriber (acknowledges on receipt): seconds to take ``n`` messages."""
    got = [0]
    done = threading.Event()

    def on_message(client, userdata, msg) -> None:
        handle(msg.topic, msg.payload)
        got[0] += 1
        if got[0] >= n:
            done.set()
    c = _session_client(client_id, on_message)
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port, clean_start=False, properties=_connect_props())
    c.loop_start()
    if not done.wait(600):
        raise RuntimeError(f"{client_id}: only {got[0]} of {n} messages")
    took = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return took


def drain_collector(port: int, lake: Path, n: int) -> tuple[float, float]:
    """Seconds until the collector has ``n`` labels durable and acknowledged; peak RSS MB."""
    opts = CollectorOptions(client_id="bench-collector")
    c = Collector(BrokerOptions.from_url(f"mqtt://127.0.0.1:{port}"), Lake(lake, "bench"), opts)
    rss0 = proc_rss_mb(_pid())
    peak = [rss0]
    t0 = time.perf_counter()
    c.start()
    while c.counters.received < n or c.buffer.pending():
        time.sleep(0.01)
        peak[0] = max(peak[0], proc_rss_mb(_pid()))
        if time.perf_counter() - t0 > 600:
            raise RuntimeError(f"collector: {c.summary()}")
    took = time.perf_counter() - t0
    c.stop()
    return took, peak[0] - rss0


def _pid() -> int:
    import os

    return os.getpid()


class SQLiteInserts:
    """What most users write first: parse, one INSERT and one commit per message."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("CREATE TABLE labels (device TEXT, run_id TEXT, seq INTEGER, ts REAL, "
                        "top_label TEXT, top_score REAL, body TEXT)")

    def __call__(self, topic: str, payload: bytes) -> None:
        b = json.loads(payload)
        self.db.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)", (
            topic.split("/")[1], b["run_id"], b["seq"], b["ts"], b["labels"][0]["label"],
            b["labels"][0]["score"], payload.decode()))
        self.db.commit()


class DuckDBInserts:
    def __init__(self, path: Path) -> None:
        import duckdb

        self.db = duckdb.connect(str(path))
        self.db.execute("CREATE TABLE labels (device VARCHAR, run_id VARCHAR, seq BIGINT, "
                        "ts DOUBLE, top_label VARCHAR, top_score DOUBLE, body VARCHAR)")

    def __call__(self, topic: str, payload: bytes) -> None:
        b = json.loads(payload)
        self.db.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)", [
            topic.split("/")[1], b["run_id"], b["seq"], b["ts"], b["labels"][0]["label"],
            b["labels"][0]["score"], payload.decode()])


def parse_only_rate(items: list[tuple[str, bytes]]) -> float:
    """The collector's own per-message cost without MQTT: route, validate, one Arrow batch."""
    t0 = time.perf_counter()
    rows = [to_row(route(t, "edge"), p, 0.0, False) for t, p in items]
    arrow_table(LABELS, rows)
    return len(items) / (time.perf_counter() - t0)


def run(count: int, naive_count: int) -> dict:
    big = backlog(4 * count)
    items = big[:count]
    out: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine(), "count": count, "naive_count": naive_count}
    with broker() as mq, tempfile.TemporaryDirectory(prefix="bench-ins-") as tmp:
        load = LoadMeter([mq.proc.pid]).start()
        rates: dict[str, float] = {}
        make_session(mq.port, "bench-bare")
        publish(mq.port, items)
        rates["bare_paho"] = count / drain_subscriber(mq.port, "bench-bare", count,
                                                      lambda t, p: None)
        make_session(mq.port, "bench-collector")
        publish(mq.port, items)
        took, rss = drain_collector(mq.port, Path(tmp) / "lake", count)
        rates["collector"] = count / took
        out["collector_rss_growth_mb"] = {count: round(rss, 1)}
        for name, sink in (("sqlite_insert_per_message", SQLiteInserts(Path(tmp) / "l.db")),
                           ("duckdb_insert_per_message", DuckDBInserts(Path(tmp) / "l.duckdb"))):
            make_session(mq.port, f"bench-{name}")
            publish(mq.port, items[:naive_count])
            rates[name] = naive_count / drain_subscriber(mq.port, f"bench-{name}",
                                                         naive_count, sink)
        make_session(mq.port, "bench-collector")
        publish(mq.port, big)
        _, rss_big = drain_collector(mq.port, Path(tmp) / "lake-big", len(big))
        out["collector_rss_growth_mb"][len(big)] = round(rss_big, 1)
        out["load"] = load.stop()
    out["labels_per_s"] = {k: round(v) for k, v in rates.items()}
    out["collector_vs_bare"] = round(rates["collector"] / rates["bare_paho"], 2)
    out["collector_vs_sqlite"] = round(rates["collector"] / rates["sqlite_insert_per_message"], 1)
    out["collector_vs_duckdb"] = round(rates["collector"] / rates["duckdb_insert_per_message"], 1)
    out["parse_only_per_s"] = round(parse_only_rate(items[:20000]))
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main() -> None:
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID prints where it waits
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=50_000)
    ap.add_argument("--naive-count", type=int, default=5_000)
    args = ap.parse_args()
    print(json.dumps(run(args.count, args.naive_count), indent=2))


if __name__ == "__main__":
    main()
