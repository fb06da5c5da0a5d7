"""`edge-deploy status` for many devices: summary line, filters, sorting, JSON and CSV, against
retained messages on a real Mosquitto."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from bench.support.broker import Mosquitto
from deploy.broker import MqttSession
from deploy.cli import main
from deploy.status_view import parse_duration

# device: (state, model version, seconds since last heard, fps)
DEVICES = {
    "cam01": ("online", "2", 1, 15.0),
    "cam02": ("online", "2", 2, 9.5),
    "cam03": ("online", "1", 300, 14.0),  # live by its status, silent for 5 minutes: stale
    "cam04": ("degraded", "1", 3, 3.0),
    "cam05": ("offline", "1", 900, None),
    "cam06": ("stopped", "2", 20, None),
}


@pytest.fixture
def fleet(mosquitto: Mosquitto) -> Mosquitto:
    now = time.time()
    pub = MqttSession(mosquitto.url)
    mids = set()
    for device, (state, version, age, fps) in DEVICES.items():
        status = {"state": state, "groups": ["hall"] if device < "cam03" else ["lobby"],
                  "model": {"name": "digits", "version": version, "sha256": "0" * 64},
                  "ts": now - age, "since": now - 3600}
        mids.add(pub.client.publish(f"edge/{device}/status", json.dumps(status), qos=1,
                                    retain=True).mid)
        if fps is not None:
            stats = {"fps_out": fps, "inference_ms_p95": 1.5, "ts": now - age}
            mids.add(pub.client.publish(f"edge/{device}/stats", json.dumps(stats), qos=1,
                                        retain=True).mid)
    pub.client.publish("edge/cam07/status", b"\xff not json", qos=1, retain=True)
    pub.wait_acked(mids, 5)
    pub.close()
    return mosquitto


def status(broker: Mosquitto, capsys, *args: str) -> str:
    assert main(["status", "--broker", broker.url, "--wait", "5", *args]) == 0
    return capsys.readouterr().out


def test_summary_counts_states_and_versions(fleet, capsys) -> None:
    out = status(fleet, capsys, "--summary")
    assert out.strip() == ("6 devices: 2 online, 1 degraded, 1 stale, 1 offline, 1 stopped; "
                           "models: digits 2: 3, digits 1: 3")


def test_filters_by_state_model_version_group_and_staleness(fleet, capsys) -> None:
    def devices(*args: str) -> list[str]:
        body = json.loads(status(fleet, capsys, "--format", "json", *args))
        return [d["device"] for d in body["devices"]]

    assert devices("--state", "online") == ["cam01", "cam02"]
    assert devices("--state", "stale", "--state", "offline") == ["cam03", "cam05"]
    assert devices("--version", "1") == ["cam03", "cam04", "cam05"]
    assert devices("--model", "other") == []
    assert devices("--group", "hall") == ["cam01", "cam02"]
    assert devices("--stale", "60s") == ["cam03", "cam05"]
    assert devices("--stale", "10m") == ["cam05"]
    assert devices("--sort", "fps") == ["cam01", "cam03", "cam02", "cam04", "cam05", "cam06"]


def test_csv_has_one_row_per_device(fleet, capsys) -> None:
    rows = list(csv.DictReader(io.StringIO(status(fleet, capsys, "--format", "csv"))))
    assert [r["device"] for r in rows] == list(DEVICES)
    assert rows[0]["state"] == "online" and rows[0]["fps"] == "15.0"
    assert rows[2]["state"] == "stale"


def test_a_bad_duration_is_refused_with_the_value(fleet, capsys) -> None:
    assert main(["status", "--broker", fleet.url, "--stale", "soon"]) == 2
    assert "'soon'" in capsys.readouterr().err
    assert parse_duration("1.5m") == 90 and parse_duration("500ms") == 0.5
