"""edge-deploy keygen | push | status against a real Mosquitto and real receivers."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.models.signing import generate_keypair
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import AgentHarness, tiny_tflite, write_bundle
from deploy.broker import MqttSession
from deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def keys(tmp_path: Path):
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "model", tiny_tflite(), version="7")


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGE_DEPLOY_STATE_DIR", str(tmp_path / "deploy-state"))
    return tmp_path / "deploy-state"


@pytest.fixture
def fleet(mosquitto: Mosquitto, tmp_path: Path, keys) -> Iterator[list[AgentHarness]]:
    agents = [AgentHarness(mosquitto.port, tmp_path / d, d, trusted_keys=[keys.public],
                           groups=("lobby",)) for d in ("cam1", "cam2")]
    for d in ("cam1", "cam2"):
        retain_status(mosquitto.port, d)
    yield agents
    for a in agents:
        a.close()


def retain_status(port: int, device: str, state: str = "online", groups=("lobby",),
                  stats: dict | None = None) -> None:
    status = {"device": device, "state": state, "groups": list(groups), "ts": time.time(),
              "model": {"name": "tiny", "version": "1", "sha256": "0" * 64}}
    messages = [(f"edge/{device}/status", status)]
    if stats is not None:
        messages.append((f"edge/{device}/stats", stats))
    pub = MqttSession(f"mqtt://127.0.0.1:{port}")
    infos = [pub.client.publish(t, json.dumps(p), qos=1, retain=True) for t, p in messages]
    pub.wait_acked({i.mid for i in infos}, 5)
    pub.close()


def result_rows(out: str) -> dict[str, str]:
    """``{device: result}`` from the table printed before the summary lines."""
    table = out.split("\n\n")[0].splitlines()
    assert table[0].split() == ["DEVICE", "RESULT", "VERSION", "REASON"], out
    return {line.split()[0]: line.split()[1] for line in table[1:]}


def push_args(mosquitto: Mosquitto, bundle: Path, keys, *extra: str) -> list[str]:
    return ["push", str(bundle), "--broker", mosquitto.url, "--key", str(keys.private),
            "--status-wait", "0.3", *extra]


def test_keygen_writes_a_private_key_only_the_owner_can_read(tmp_path: Path, capsys) -> None:
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    key = tmp_path / "k" / "deploy.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert "key id:" in capsys.readouterr().out
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 2  # never overwrites


def test_push_to_a_device_prints_ok(mosquitto, fleet, bundle, keys, capsys) -> None:
    code = main(push_args(mosquitto, bundle.parent, keys, "--device", "cam1", "--chunk-size",
                          "2000"))
    captured = capsys.readouterr()
    assert code == 0, captured
    lines = captured.out.splitlines()
    assert lines[0].split() == ["DEVICE", "RESULT", "VERSION", "REASON"]
    assert lines[1].split()[:3] == ["cam1", "ok", "7"]
    assert "100%" in captured.err
    assert fleet[0].store.active().manifest.version == "7"
    assert fleet[1].store.active().manifest.version == "0"  # still the seed model


def test_refusal_exits_non_zero_with_the_reason(mosquitto, fleet, bundle, tmp_path,
                                                capsys) -> None:
    other = generate_keypair(tmp_path / "other")
    code = main(push_args(mosquitto, bundle, other, "--device", "cam1", "--quiet"))
    out = capsys.readouterr().out
    assert code == 1
    assert "cam1" in out and "refused" in out and "trusted key" in out


def test_no_answer_is_a_timeout(mosquitto, bundle, keys, capsys) -> None:
    retain_status(mosquitto.port, "mute")  # says it is online, but nothing receives pushes
    code = main(push_args(mosquitto, bundle, keys, "--device", "mute", "--timeout", "0.5",
                          "--quiet"))
    out = capsys.readouterr().out
    assert code == 1 and "mute" in out and "timeout" in out


def test_push_to_a_device_with_no_status_fails_early(mosquitto, bundle, keys, capsys) -> None:
    code = main(push_args(mosquitto, bundle, keys, "--device", "ghost", "--timeout", "5",
                          "--quiet"))
    captured = capsys.readouterr()
    assert code == 2, captured  # a usage error before anything is sent, not a timeout
    assert "no device 'ghost' has a retained status under edge/ghost/status" in captured.err
    assert "timeout" not in captured.out


def test_push_to_an_offline_device_is_not_sent(mosquitto, bundle, keys, capsys) -> None:
    retain_status(mosquitto.port, "cam9", state="offline")
    code = main(push_args(mosquitto, bundle, keys, "--device", "cam9", "--quiet"))
    out = capsys.readouterr().out
    assert code == 1 and "offline" in out and "not pushed" in out


def test_group_push_learns_members_from_retained_status(mosquitto, fleet, bundle, keys,
                                                        capsys) -> None:
    for device in ("cam1", "cam2"):
        retain_status(mosquitto.port, device)
    retain_status(mosquitto.port, "cam3", state="offline")
    retain_status(mosquitto.port, "hall1", groups=("hall",))
    code = main(push_args(mosquitto, bundle, keys, "--group", "lobby", "--quiet"))
    out = capsys.readouterr().out
    assert code == 0, out
    rows = result_rows(out)
    assert rows == {"cam1": "ok", "cam2": "ok", "cam3": "offline"}


def test_canary_goes_first_and_a_failed_canary_stops_the_rollout(mosquitto, bundle, keys,
                                                                 tmp_path, capsys) -> None:
    other = generate_keypair(tmp_path / "other")
    agents = [AgentHarness(mosquitto.port, tmp_path / "a", "a", trusted_keys=[other.public],
                           groups=("lobby",)),
              AgentHarness(mosquitto.port, tmp_path / "b", "b", trusted_keys=[keys.public],
                           groups=("lobby",))]
    try:
        for a in agents:
            retain_status(mosquitto.port, a.topics.device_id)
        code = main(push_args(mosquitto, bundle, keys, "--group", "lobby", "--canary", "1",
                              "--quiet"))
    finally:
        for a in agents:
            a.close()
    out = capsys.readouterr().out
    assert code == 1
    rows = result_rows(out)
    assert rows == {"a": "refused", "b": "skipped"}
    assert agents[1].results == []


def test_canary_success_continues_to_the_rest(mosquitto, fleet, bundle, keys, capsys) -> None:
    for a in fleet:
        retain_status(mosquitto.port, a.topics.device_id)
    code = main(push_args(mosquitto, bundle, keys, "--group", "lobby", "--canary", "1",
                          "--quiet"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert [r["via"] for r in fleet[0].results] == ["device", "group:lobby"]
    assert [r["result"] for r in fleet[0].results] == ["ok", "noop"]
    assert [(r["via"], r["result"]) for r in fleet[1].results] == [("group:lobby", "ok")]


def test_status_prints_state_model_fps_and_p95(mosquitto, capsys) -> None:
    retain_status(mosquitto.port, "cam1", stats={"fps_out": 14.5, "inference_ms_p95": 3.25,
                                                 "ts": time.time()})
    retain_status(mosquitto.port, "hall1", groups=("hall",))
    assert main(["status", "--broker", mosquitto.url, "--wait", "0.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DEVICE", "STATE", "MODEL", "VERSION", "FPS", "INFER_P95_MS",
                                "LAST_SEEN"]
    assert lines[1].split()[:6] == ["cam1", "online", "tiny", "1", "14.5", "3.25"]
    assert lines[-1] == ("2 devices: 2 online, 0 degraded, 0 stale, 0 offline, 0 stopped; "
                         "models: tiny 1: 2")
    assert main(["status", "--group", "hall", "--broker", mosquitto.url, "--wait", "0.3"]) == 0
    rows = capsys.readouterr().out.split("\n\n")[0].splitlines()[1:]
    assert [line.split()[0] for line in rows] == ["hall1"]


def test_unreachable_broker_is_a_clear_error_exit_2(bundle, keys) -> None:
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "push", str(bundle), "--device",
                           "x", "--broker", "mqtt://127.0.0.1:1", "--key", str(keys.private)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert "cannot connect to 127.0.0.1:1" in proc.stderr
