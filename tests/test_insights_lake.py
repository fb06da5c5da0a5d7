"""The lake: rows from payloads, atomic day files, compaction that survives being killed,
retention, and views that never count a redelivered message twice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from insights.lake import JOURNAL, Lake
from insights.schema import (
    LABELS,
    STATUS,
    BadInput,
    Route,
    arrow_table,
    route,
    to_row,
)
from insights.synthetic import FleetPlan, generate, payloads
from tests.support.insights_fleet import lake_value

DAY = 86400.0


def _rows(n_devices: int = 2, seconds: float = 50, start: float = 1_780_000_000.0) -> list:
    table = generate(FleetPlan(devices=n_devices, seconds=seconds, rate_hz=2,
                               start_ts=start)).table
    return [to_row(route(t, "edge"), p, 1_780_000_000.0, False)
            for t, p in payloads(table)]


def test_a_labels_payload_from_the_agent_becomes_a_full_row() -> None:
    row = _rows(1, 1)[0]
    assert row["device"] == "cam-000" and row["run_id"] == "run-cam-000" and row["seq"] == 0
    assert row["model_name"] == "digits_cnn" and row["model_version"] == "1"
    assert row["top_label"] == row["topk"][0]["label"] and 0 <= row["top_score"] <= 1
    assert row["inference_ms"] > 0 and row["frame_ts"] <= row["ts"]


@pytest.mark.parametrize("topic", ["other/cam/labels", "edge/cam/cmd/ping", "edge/cam",
                                   "edge//labels", "edge/group/labels", "edge/a/b/labels"])
def test_topics_outside_the_contract_are_refused(topic: str) -> None:
    with pytest.raises(BadInput) as err:
        route(topic, "edge")
    assert err.value.kind == "topic"


@pytest.mark.parametrize(("payload", "kind"), [
    (b"\x00\x01", "not_json"), (b'"text"', "not_object"), (b"{}", "missing_field"),
    (b'{"state": 5}', "wrong_type"), (b'{"state": "online", "ts": "now"}', "wrong_type"),
    (b'{"state": "online", "ts": 1e300}', "bad_time"), (b'{"state": "online", "ts": NaN}',
                                                        "wrong_type"),
    (b'{"state": "online", "model": [1]}', "wrong_type"),
    (b'{"state": "' + b"x" * 300 + b'"}', "wrong_type"),
])
def test_bad_status_payloads_name_what_is_wrong(payload: bytes, kind: str) -> None:
    with pytest.raises(BadInput) as err:
        to_row(Route(STATUS, "cam"), payload, 1.8e9, False)
    assert err.value.kind == kind and err.value.reason


def test_labels_with_broken_top_k_are_refused() -> None:
    body = json.loads(next(payloads(generate(FleetPlan(devices=1, seconds=1)).table))[1])
    for labels in ([], [{"label": "a"}], [{"label": "a", "index": -1, "score": 0.1}],
                   [{"label": 3, "index": 0, "score": 0.1}], "a", [1] * 100):
        with pytest.raises(BadInput):
            to_row(Route(LABELS, "cam"), json.dumps({**body, "labels": labels}).encode(),
                   1.8e9, False)


def test_a_batch_over_midnight_lands_in_two_day_partitions(tmp_path: Path) -> None:
    lake = Lake(tmp_path, "w")
    rows = _rows(1, 100, start=1_780_012_800.0 - 25)  # 2026-05-29 00:00 UTC minus 25 s
    written = lake.write(LABELS, arrow_table(LABELS, rows))
    assert len(written) == 2 and lake.days(LABELS) == ["2026-05-28", "2026-05-29"]
    assert not list(tmp_path.rglob(".*.tmp"))
    assert lake_value(tmp_path, "SELECT count(*) FROM labels") == len(rows)


def test_views_keep_one_row_per_label_key_when_a_batch_is_written_twice(tmp_path: Path) -> None:
    lake = Lake(tmp_path, "w")
    rows = _rows()
    lake.write(LABELS, arrow_table(LABELS, rows))
    lake.write(LABELS, arrow_table(LABELS, rows[:30]))  # a redelivery after a crash
    assert lake_value(tmp_path, "SELECT count(*) FROM labels_files") == len(rows) + 30
    assert lake_value(tmp_path, "SELECT count(*) FROM labels") == len(rows)


def _two_files(tmp_path: Path) -> tuple[Lake, int, Path]:
    lake = Lake(tmp_path / "lake", "w")
    rows = _rows()
    lake.write(LABELS, arrow_table(LABELS, rows[:120]))
    lake.write(LABELS, arrow_table(LABELS, rows[100:]))  # 20 rows in both
    return lake, len(rows), lake.day_dir(LABELS, lake.days(LABELS)[0])


def test_compaction_merges_a_day_into_one_file_with_one_row_per_key(tmp_path: Path) -> None:
    lake, n, folder = _two_files(tmp_path)
    [result] = lake.compact_all()
    assert (result.files_in, result.rows_in, result.rows_out) == (2, n + 20, n)
    [only] = lake.files(LABELS)
    assert only.name.startswith("compacted-") and sorted(folder.iterdir()) == [only]
    assert lake_value(lake.root, "SELECT count(*) FROM labels_files") == n
    assert lake.compact_all() == []                     # one file: nothing to do


def test_compaction_killed_after_the_swap_is_finished_by_the_next_run(tmp_path: Path) -> None:
    lake, n, folder = _two_files(tmp_path)
    saved = tmp_path / "inputs"
    shutil.copytree(folder, saved)
    lake.compact(LABELS, lake.days(LABELS)[0])
    output = lake.files(LABELS)[0].name
    for p in saved.iterdir():                           # the state a kill here leaves
        shutil.copy(p, folder / p.name)
    (folder / JOURNAL).write_text(json.dumps({"output": output, "inputs": [
        p.name for p in saved.iterdir()]}))
    assert lake_value(lake.root, "SELECT count(*) FROM labels") == n  # no double rows
    assert lake.recover() == 1
    assert [p.name for p in lake.files(LABELS)] == [output]
    assert lake_value(lake.root, "SELECT count(*) FROM labels_files") == n


def test_compaction_killed_before_the_swap_is_undone(tmp_path: Path) -> None:
    lake, n, folder = _two_files(tmp_path)
    inputs = [p.name for p in lake.files(LABELS)]
    (folder / ".compacted-w-dead.parquet.tmp").write_bytes(b"half a file")
    (folder / JOURNAL).write_text(json.dumps({"output": "compacted-w-dead.parquet",
                                              "inputs": inputs}))
    assert lake.recover() == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(inputs)
    assert lake_value(lake.root, "SELECT count(*) FROM labels") == n


def test_retention_drops_whole_days_older_than_kept(tmp_path: Path) -> None:
    lake = Lake(tmp_path, "w")
    now = 1_780_000_000.0
    for age_days in (0, 1, 5, 9):
        lake.write(LABELS, arrow_table(LABELS, _rows(1, 4, start=now - age_days * DAY)))
    removed = lake.retain(keep_days=3, now=now)
    assert len(removed) == 2 and len(lake.days(LABELS)) == 2
    with pytest.raises(ValueError):
        lake.retain(keep_days=0)


def test_a_writer_removes_only_its_own_unfinished_files(tmp_path: Path) -> None:
    lake = Lake(tmp_path, "me")
    lake.write(LABELS, arrow_table(LABELS, _rows(1, 2)))
    folder = lake.day_dir(LABELS, lake.days(LABELS)[0])
    (folder / ".part-me-1-1.parquet.tmp").write_bytes(b"x")
    (folder / ".part-other-1-1.parquet.tmp").write_bytes(b"x")
    assert lake.remove_own_temporaries() == 1
    assert (folder / ".part-other-1-1.parquet.tmp").exists()


def test_files_from_an_older_agent_without_new_stats_fields_still_read_and_compact(
        tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from insights.schema import SCHEMAS, STATS

    lake = Lake(tmp_path, "w")
    old_cols = [n for n in SCHEMAS[STATS].names if n != "mean_top1"]
    row = {n: None for n in SCHEMAS[STATS].names} | {
        "device": "cam", "ts": 1_780_000_000.0, "fps_out": 9.5, "key": "k1",
        "received_ts": 1_780_000_000.5}
    folder = lake.day_dir(STATS, "2026-05-28")
    folder.mkdir(parents=True)
    for n, key in enumerate(("k1", "k2")):             # every file written before the column
        pq.write_table(arrow_table(STATS, [row | {"key": key}]).select(old_cols),
                       folder / f"part-old-1-{n}.parquet")
    assert lake_value(tmp_path, "SELECT count(*) FROM stats WHERE mean_top1 IS NULL") == 2
    [result] = lake.compact_all()
    assert result.rows_out == 2
    assert lake_value(tmp_path, "SELECT sum(fps_out) FROM stats") == 19.0
