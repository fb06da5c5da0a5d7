"""Slow: Spark gives the DuckDB answers on the same lake; Chromium renders every section of
the HTML page; the demo runs end to end."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from bench.support.agent_proc import REPO
from insights.engines import DuckDBEngine
from insights.html import write_html
from insights.lake import Lake
from insights.queries import Scope
from insights.report import ReportOptions, build_report
from insights.schema import LABELS
from insights.synthetic import Drift, FleetPlan, ModelChange, generate

T0 = 1_780_000_000.0
PLAN = FleetPlan(devices=3, seconds=3600, rate_hz=1.0, start_ts=T0, seed=5,
                 drift=Drift("cam-001", T0 + 1800, 0.15),
                 changes=(ModelChange("cam-002", T0 + 2400, "2", 0.05),))
OPTIONS = ReportOptions(bucket_s=300, gap_s=5.0)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("lake"), "gen")
    table = generate(PLAN).table
    lake.write(LABELS, table.slice(0, 6000))
    lake.write(LABELS, table.slice(5000))        # 1,000 rows twice: the views must hide them
    return lake


def _comparable(value):
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def _sorted_rows(section) -> list:
    return sorted((_comparable(r) for r in section.rows), key=repr)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_spark_gives_the_same_report_as_duckdb(lake: Lake) -> None:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("no Java (openjdk-17-jre-headless) for Spark")
    from insights.engines import SparkEngine

    duck = build_report(DuckDBEngine(lake), Scope(), OPTIONS)
    spark = SparkEngine(lake, master="local[2]")
    try:
        other = build_report(spark, Scope(), OPTIONS)
        sql = "SELECT device, count(*) AS n, min(topk) AS k FROM labels GROUP BY device"
        assert sorted(spark.rows(sql)[1])[0][1] == 3600
    finally:
        spark.close()
    assert duck.sections["drift_flags"].rows and duck.sections["model_changes"].rows
    for name, section in duck.sections.items():
        assert other.sections[name].columns == section.columns, name
        assert _sorted_rows(other.sections[name]) == _sorted_rows(section), name


CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--virtual-time-budget=5000"]


@pytest.mark.slow
def test_chromium_renders_every_section_of_the_html_report(lake: Lake, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium (Debian package chromium)")
    page = write_html(build_report(DuckDBEngine(lake), Scope(), OPTIONS), tmp_path / "r.html")
    dom = subprocess.run([browser, *CHROMIUM, f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for section in ("seen", "presence", "drift", "impact", "health", "quarantine"):
        assert f'<section id="{section}" data-rendered="yes"' in dom, section
    assert 'data-rendered="no"' not in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *CHROMIUM, f"--user-data-dir={tmp_path / 'profile2'}",
                    "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 50_000           # charts, not a blank page


@pytest.mark.slow
def test_the_demo_runs_three_agents_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"  # given as a relative path, as `make insights-demo` does
    done = subprocess.run([sys.executable, "-m", "insights.cli", "demo", "--seconds", "12",
                           "--out", "demo"], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "What was seen" in done.stdout and "Presence" in done.stdout
    assert (out / "report.html").stat().st_size > 20_000
    devices = DuckDBEngine(Lake(out / "lake")).rows(
        "SELECT DISTINCT device FROM labels ORDER BY device")[1]
    assert devices == [("cam-dock",), ("cam-gate",), ("cam-lobby",)]
