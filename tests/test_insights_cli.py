"""edge-insights collect as a service: credentials from a file, sd_notify, its systemd unit;
the shared broker options; compact from the command line."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from agent.errors import DeployError
from bench.support.broker import Mosquitto
from deploy.connection import BrokerOptions
from insights.cli import main
from insights.lake import Lake
from insights.schema import LABELS, arrow_table, route, to_row
from insights.synthetic import FleetPlan, generate, payloads
from tests.support.insights_fleet import CollectorProcess, lake_value, wait_until

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "edge-insights.service"
EXEC = "/opt/edge-agent/venv/bin/edge-insights"


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="no mosquitto_passwd")
def test_collect_logs_in_with_a_password_file_and_tells_systemd_it_is_ready(
        tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "lake", "s3cret"], check=True)
    broker = Mosquitto(tmp_path / "broker", extra_conf=[
        "allow_anonymous false", f"password_file {passwd}"]).start()
    secret = tmp_path / "collector.pw"
    secret.write_text("s3cret\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    lake = tmp_path / "lake"
    collector = CollectorProcess(lake, broker.port, "pw", "--username", "lake",
                                 "--password-file", str(secret),
                                 env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        assert notify.recv(4096) == b"READY=1"
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.username_pw_set("lake", "s3cret")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        items = list(payloads(generate(FleetPlan(devices=1, seconds=10)).table))
        for topic, payload in items:
            pub.publish(topic, payload, qos=1)
        wait_until(lambda: lake_value(lake, "SELECT count(*) FROM labels") == len(items), 20,
                   "the labels")
        pub.disconnect()
        pub.loop_stop()
        assert b"WATCHDOG=1" in notify.recv(4096)
    finally:
        assert collector.stop() == 0, collector.log()
        notify.close()
        broker.stop()
    assert "s3cret" not in collector.log()


def test_broker_options_check_what_goes_together(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("first line\nsecond\n")
    opts = BrokerOptions.from_url("mqtt://url-user:url-pw@host", username="cli-user",
                                  password_file=str(pw))
    assert opts.credentials() == ("cli-user", "first line")
    assert BrokerOptions.from_url("mqtt://u:p@h").credentials() == ("u", "p")
    with pytest.raises(DeployError, match="needs a user name"):
        BrokerOptions.from_url("mqtt://h", password_file=str(pw)).credentials()
    with pytest.raises(DeployError, match="password-file"):
        BrokerOptions.from_url("mqtt://u@h", password_file=str(tmp_path / "nope")).credentials()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    with pytest.raises(DeployError, match="go together"):
        BrokerOptions.from_url("mqtts://h", certfile="c.pem").configure(client)
    with pytest.raises(DeployError, match="mqtts"):
        BrokerOptions.from_url("mqtt://h", cafile="ca.pem").configure(client)
    with pytest.raises(DeployError, match="scheme"):
        BrokerOptions.from_url("http://h")


def test_compact_command_merges_and_keeps_days(tmp_path: Path, capsys) -> None:
    lake = Lake(tmp_path, "w")
    table = generate(FleetPlan(devices=2, seconds=100, rate_hz=1, start_ts=time.time())).table
    rows = [to_row(route(t, "edge"), p, time.time(), False) for t, p in payloads(table)]
    for start in range(0, len(rows), 50):
        lake.write(LABELS, arrow_table(LABELS, rows[start:start + 50]))
    assert main(["compact", "--lake", str(tmp_path), "--keep-days", "30"]) == 0
    out = capsys.readouterr().out
    assert "labels" in out and f"{len(rows)} rows" in out
    assert len(lake.files(LABELS)) == len(lake.days(LABELS))
    assert lake_value(tmp_path, "SELECT count(*) FROM labels") == len(rows)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_the_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    copy = tmp_path / "edge-insights.service"
    copy.write_text(UNIT.read_text().replace(EXEC, "/bin/true"))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "--client-id" in text


def test_report_on_an_empty_lake_says_so(tmp_path: Path, capsys) -> None:
    assert main(["report", "--lake", str(tmp_path), "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert all(rows == [] for rows in body["sections"].values())
