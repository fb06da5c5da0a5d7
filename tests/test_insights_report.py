"""The report against generated data with a known truth, and the query/report commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from insights.cli import main
from insights.engines import DuckDBEngine
from insights.lake import Lake
from insights.queries import Scope
from insights.report import ReportOptions, build_report
from insights.schema import LABELS, STATS, STATUS, Route, arrow_table, to_row
from insights.synthetic import Drift, FleetPlan, ModelChange, generate

T0 = 1_780_000_000.0
PLAN = FleetPlan(devices=4, seconds=4 * 3600, rate_hz=1.0, start_ts=T0, seed=11,
                 drift=Drift("cam-002", T0 + 2 * 3600, 0.15),
                 changes=(ModelChange("cam-001", T0 + 3 * 3600, "2", 0.06),))
OPTIONS = ReportOptions(bucket_s=900, gap_s=5.0, min_score=0.5, baseline_windows=4)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("lake")
    generated = generate(PLAN)
    lake = Lake(root, "gen")
    for start in range(0, generated.table.num_rows, 10_000):  # many files, as a collector writes
        lake.write(LABELS, generated.table.slice(start, 10_000))
    _write_health(lake)
    return root, generated


def _write_health(lake: Lake) -> None:
    def rows(table: str, device: str, bodies: list[dict]) -> None:
        lake.write(table, arrow_table(table, [
            to_row(Route(table, device), json.dumps(b).encode(), b["ts"] + 0.2, False)
            for b in bodies]))
    rows(STATS, "cam-000", [{"ts": T0 + i * 60, "fps_out": 10.0 if i < 100 else 2.0,
                             "outbox_depth": 0 if i < 100 else 50, "dropped_stale": i}
                            for i in range(200)])
    rows(STATUS, "cam-003", [{"state": "online", "ts": T0}, {"state": "offline", "ts": T0 + 600},
                             {"state": "online", "ts": T0 + 900}])


@pytest.fixture(scope="module")
def report(fleet):
    engine = DuckDBEngine(Lake(fleet[0]))
    try:
        return build_report(engine, Scope(), OPTIONS)
    finally:
        engine.close()


def test_drift_is_found_on_the_planted_device_from_the_planted_time_only(report) -> None:
    flags = [r for r in report.sections["drift_flags"].records() if r["device"] != "*"]
    assert flags and {r["device"] for r in flags} == {"cam-002"}
    assert min(r["window_start"] for r in flags) >= PLAN.drift.from_ts - OPTIONS.drift_s
    merged = {r["window_start"] for r in flags if r["label"] == "*"}
    after = {w for w in {r["window_start"] for r in report.sections["drift"].records()
                         if r["device"] == "cam-002" and r["label"] == "*"}
             if w >= PLAN.drift.from_ts}
    assert merged == after                       # every window after the drop, none before
    drops = [r["drop"] for r in report.sections["drift"].records()
             if r["device"] == "cam-002" and r["label"] == "*" and r["window_start"] in after]
    assert all(0.08 < d < 0.2 for d in drops), drops  # the background frames dilute 0.15


def test_presence_episodes_match_the_generated_truth(report, fleet) -> None:
    got = sorted((r["device"], r["label"], round(r["start_ts"], 3), round(r["end_ts"], 3),
                  r["frames"]) for r in report.sections["episodes"].records())
    truth = sorted((e.device, e.label, round(e.start_ts, 3), round(e.end_ts, 3), e.frames)
                   for e in fleet[1].episodes)
    assert len(truth) > 100 and got == truth
    summary = {(r["device"], r["label"]): r for r in report.sections["presence"].records()}
    first = fleet[1].episodes[0]
    assert summary[(first.device, first.label)]["episodes"] == sum(
        1 for e in fleet[1].episodes if (e.device, e.label) == (first.device, first.label))


def test_model_impact_shows_the_change_and_its_effect(report) -> None:
    [change] = report.sections["model_changes"].records()
    assert change["device"] == "cam-001" and change["model_version"] == "2"
    assert abs(change["change_ts"] - (T0 + 3 * 3600)) < 1.5
    rows = [r for r in report.sections["impact"].records() if r["label"] != "background"]
    gains = [r["mean_after"] - r["mean_before"] for r in rows
             if r["mean_after"] is not None and r["mean_before"] is not None]
    assert gains and sum(gains) / len(gains) == pytest.approx(0.06, abs=0.02)
    assert sum(r["share_before"] for r in report.sections["impact"].records()) == \
        pytest.approx(1.0, abs=1e-3)


def test_device_health_shows_the_slowdown_and_the_offline_period(report) -> None:
    health = [r for r in report.sections["health"].records() if r["device"] == "cam-000"]
    assert max(r["fps_out"] for r in health) == 10.0 and min(r["fps_out"] for r in health) == 2.0
    assert max(r["outbox_depth"] for r in health) == 50
    [period] = report.sections["offline"].records()
    assert period["device"] == "cam-003" and period["duration_s"] == pytest.approx(300)


def test_a_scope_narrows_every_section(fleet) -> None:
    engine = DuckDBEngine(Lake(fleet[0]))
    scoped = build_report(engine, Scope(since=T0, until=T0 + 3600, device="cam-002"), OPTIONS)
    engine.close()
    assert {r["device"] for r in scoped.sections["counts"].records()} == {"cam-002"}
    assert max(r["bucket"] for r in scoped.sections["counts"].records()) < T0 + 3600
    assert scoped.sections["drift_flags"].rows == []


def test_query_prints_json_csv_and_table(fleet, capsys) -> None:
    sql = "SELECT device, count(*) AS n FROM labels GROUP BY device ORDER BY device"
    assert main(["query", "--lake", str(fleet[0]), "--format", "json", sql]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"device": f"cam-00{i}", "n": 14400} for i in range(4)]
    assert main(["query", "--lake", str(fleet[0]), "--format", "csv", sql]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["device,n", "cam-000,14400"]
    assert main(["query", "--lake", str(fleet[0]), sql]) == 0
    assert capsys.readouterr().out.split()[:4] == ["device", "n", "cam-000", "14400"]


def test_bad_sql_is_an_error_that_says_why(fleet, capsys) -> None:
    assert main(["query", "--lake", str(fleet[0]), "SELECT nope FROM labels"]) == 1
    assert "nope" in capsys.readouterr().err


def test_report_json_and_html(tmp_path: Path, capsys) -> None:
    small = FleetPlan(devices=2, seconds=1800, rate_hz=1.0, start_ts=T0, seed=3,
                      drift=Drift("cam-001", T0 + 900, 0.2),
                      changes=(ModelChange("cam-000", T0 + 1200, "2", 0.05),))
    lake = Lake(tmp_path / "lake", "gen")
    lake.write(LABELS, generate(small).table)
    _write_health(lake)
    page = tmp_path / "report.html"
    assert main(["report", "--lake", str(lake.root), "--bucket", "5m", "--format", "json",
                 "--html", str(page), "--until", str(T0 + 4 * 3600)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert set(body["sections"]) >= {"counts", "episodes", "drift", "impact", "health",
                                     "offline", "quarantine"}
    assert body["sections"]["drift_flags"] and body["sections"]["impact"]
    html = page.read_text()
    for section in ("seen", "presence", "drift", "impact", "health", "quarantine"):
        assert f'<section id="{section}"' in html
    assert html.count("data:image/png;base64,") == 6 and "http://" not in html
    assert main(["report", "--lake", str(lake.root), "--bucket", "soon"]) == 2
    assert "duration" in capsys.readouterr().err
