"""The collector against a real Mosquitto: nothing lost, nothing twice, bad input set aside."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from bench.support.broker import Mosquitto
from deploy.connection import BrokerOptions
from insights.collector import Collector, CollectorOptions
from insights.lake import Lake
from insights.schema import route, to_row
from insights.synthetic import FleetPlan, generate, payloads
from tests.support.insights_fleet import (
    AckedPublisher,
    CollectorProcess,
    lake_rows,
    lake_value,
    wait_until,
)

DISTINCT_LABELS = "SELECT count(*), count(DISTINCT device || '/' || run_id || '/' || seq) " \
                  "FROM labels"


def _labels(devices: int, seconds: float, rate: float = 10.0, seed: int = 1) -> list:
    return list(payloads(generate(FleetPlan(devices=devices, seconds=seconds, rate_hz=rate,
                                            seed=seed)).table))


def _subscribed(collector: CollectorProcess) -> None:
    wait_until(lambda: "subscribed to" in collector.log(), 20, "the collector to subscribe")


def _feed(pub: AckedPublisher, items: list) -> None:
    for item in items:  # a steady stream, not one burst
        pub.publish([item])
        time.sleep(0.0005)


def _in_process(mosquitto: Mosquitto, lake: Path, **kw) -> Collector:
    collector = Collector(BrokerOptions.from_url(mosquitto.url), Lake(lake, "t1"),
                          CollectorOptions(client_id=kw.pop("client_id", "t1"),
                                           flush_rows=200, flush_seconds=0.2, **kw))
    collector.start()
    assert collector.subscribed.wait(10)
    return collector


def test_sigkill_mid_stream_then_restart_gives_every_label_exactly_once(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    items = _labels(devices=3, seconds=100)          # 3,000 labels
    first = CollectorProcess(lake, mosquitto.port, "kill-test")
    _subscribed(first)
    pub = AckedPublisher(mosquitto.port)
    feeder = threading.Thread(target=_feed, args=(pub, items))
    feeder.start()
    wait_until(lambda: lake_value(lake, "SELECT count(*) FROM labels") >= 500, 30,
               "the first labels in the lake")
    first.kill()                                     # in the middle of the stream
    feeder.join(60)
    pub.wait_acked()
    stored_before = lake_value(lake, "SELECT count(*) FROM labels")
    assert stored_before < len(items), "the kill came too late to test anything"
    second = CollectorProcess(lake, mosquitto.port, "kill-test")
    try:
        wait_until(lambda: lake_value(lake, "SELECT count(*) FROM labels") >= len(items), 60,
                   "every label after the restart")
        time.sleep(0.5)  # a redelivered copy would land within a flush
        assert lake_rows(lake, DISTINCT_LABELS) == [(len(items), len(items))]
    finally:
        assert second.stop() == 0, second.log()
    pub.close()
    Lake(lake).compact_all()                         # compaction keeps one row per key too
    assert lake_value(lake, "SELECT count(*) FROM labels_files") == len(items)


def test_two_collectors_on_a_shared_subscription_hold_every_label_once(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    items = _labels(devices=2, seconds=100)          # 2,000 labels
    a = CollectorProcess(lake, mosquitto.port, "share-a", "--share", "lake")
    b = CollectorProcess(lake, mosquitto.port, "share-b", "--share", "lake")
    try:
        _subscribed(a)
        _subscribed(b)
        pub = AckedPublisher(mosquitto.port)
        pub.publish(items)
        pub.wait_acked()
        wait_until(lambda: lake_value(lake, "SELECT count(*) FROM labels") >= len(items), 60,
                   "every label in the lake")
        time.sleep(0.5)
        assert lake_rows(lake, DISTINCT_LABELS) == [(len(items), len(items))]
        assert lake_value(lake, "SELECT count(*) FROM labels_files") == len(items)
        writers = {p.name.split("-")[2] for p in Lake(lake).files("labels")}
        assert writers == {"a", "b"}, writers        # the stream was really split
        pub.close()
    finally:
        assert a.stop() == 0, a.log()
        assert b.stop() == 0, b.log()


BAD = {
    "not_json": ("edge/cam-x/labels", b"\xff\xfe not json"),
    "not_object": ("edge/cam-x/labels", b"[1, 2, 3]"),
    "missing_field": ("edge/cam-x/labels", json.dumps(
        {"run_id": "r", "ts": 1.8e9, "model": {"name": "m", "version": "1"}}).encode()),
    "wrong_type": ("edge/cam-x/labels", json.dumps(
        {"seq": "seven", "run_id": "r", "ts": 1.8e9, "frame_ts": 1.8e9, "source": "s",
         "model": {"name": "m", "version": "1"},
         "labels": [{"label": "a", "index": 0, "score": 0.5}]}).encode()),
    "bad_time": ("edge/cam-x/stats", json.dumps({"ts": -5}).encode()),
    "too_large": ("edge/cam-x/labels", b"{" + b" " * 400_000 + b"}"),
    "topic": ("edge/group/status", json.dumps({"state": "online"}).encode()),
}


def test_every_bad_input_is_quarantined_with_its_reason_while_good_labels_flow(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    collector = _in_process(mosquitto, lake)
    good = _labels(devices=1, seconds=30)            # 300 labels
    deep = ("edge/cam-x/labels", b"[" * 100_000 + b"]" * 100_000)
    mixed = []
    for i, item in enumerate(good):
        mixed.append(item)
        if i % 40 == 0:
            mixed += [*BAD.values(), deep]
    pub = AckedPublisher(mosquitto.port)
    pub.publish(mixed)
    pub.wait_acked()
    n_bad = len(mixed) - len(good)
    wait_until(lambda: collector.counters.received >= len(mixed)
               and collector.buffer.pending() == 0, 30, "every message handled")
    collector.stop()
    pub.close()
    assert lake_rows(lake, DISTINCT_LABELS) == [(len(good), len(good))]
    kinds = dict(lake_rows(lake, "SELECT kind, count(*) FROM quarantine GROUP BY kind"))
    assert set(kinds) == set(BAD), kinds             # the deep one counts as not_json
    assert sum(kinds.values()) == n_bad
    reasons = dict(lake_rows(lake, "SELECT kind, min(reason) FROM quarantine GROUP BY kind"))
    assert "'seq'" in reasons["missing_field"] and "'seq'" in reasons["wrong_type"]
    assert "400" in reasons["too_large"] and "group" in reasons["topic"]
    assert lake_value(lake, "SELECT max(octet_length(payload)) FROM quarantine") <= 4096


def test_a_failing_disk_acknowledges_nothing_and_loses_nothing(mosquitto: Mosquitto,
                                                               tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "labels").write_text("a file where the table's folder belongs")
    collector = _in_process(mosquitto, lake, retry_s=0.05, client_id="disk")
    items = _labels(devices=1, seconds=20)
    pub = AckedPublisher(mosquitto.port)
    pub.publish(items)
    pub.wait_acked()
    wait_until(lambda: collector.counters.write_errors >= 2, 20, "failed writes")
    collector.stop()                                 # gives up: nothing was acknowledged
    assert collector.counters.stored["labels"] == 0
    (lake / "labels").unlink()                       # the disk comes back
    again = _in_process(mosquitto, lake, client_id="disk")
    wait_until(lambda: again.counters.stored["labels"] >= len(items), 20, "the redelivery")
    again.stop()
    pub.close()
    assert lake_rows(lake, DISTINCT_LABELS) == [(len(items), len(items))]


def test_identity_comes_from_the_topic_not_the_payload(mosquitto: Mosquitto,
                                                       tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    collector = _in_process(mosquitto, lake)
    pub = AckedPublisher(mosquitto.port)
    pub.publish([("edge/cam-a/status", json.dumps(
        {"state": "offline", "device": "cam-b", "ts": time.time()}).encode())])
    pub.wait_acked()
    wait_until(lambda: collector.counters.stored["status"], 10, "the status row")
    collector.stop()
    pub.close()
    assert lake_rows(lake, "SELECT device, state FROM status") == [("cam-a", "offline")]


def test_a_status_sent_again_is_stored_once_so_one_file_never_repeats_a_key(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    collector = _in_process(mosquitto, lake)
    body = json.dumps({"state": "online", "ts": time.time()}).encode()
    pub = AckedPublisher(mosquitto.port)
    pub.publish([("edge/cam-a/status", body)] * 3)   # as a resubscribe resends a retained one
    pub.wait_acked()
    wait_until(lambda: collector.counters.duplicates == 2, 10, "the copies")
    collector.stop()
    pub.close()
    assert lake_value(lake, "SELECT count(*) FROM status_files") == 1


def test_a_row_arrow_refuses_is_quarantined_not_retried_forever(tmp_path: Path) -> None:
    from insights.buffer import Batch

    collector = Collector(BrokerOptions.from_url("mqtt://127.0.0.1:1"), Lake(tmp_path, "u"),
                          CollectorOptions(client_id="u"))
    good = _labels(devices=1, seconds=1)
    rows = [to_row(route(t, "edge"), p, time.time(), False) for t, p in good]
    bad = {**rows[0], "seq": 2 ** 70}                # past int64: only Arrow notices
    batch = Batch(rows={"labels": [*rows, bad]}, count=len(rows) + 1)
    assert collector._store(batch)
    assert lake_value(tmp_path, "SELECT count(*) FROM labels") == len(rows)
    assert lake_rows(tmp_path, "SELECT kind FROM quarantine") == [("unstorable",)]
