"""Rollouts against real agent processes and a real Mosquitto: waves stop where the abort rule
says (one agent refuses every push: it trusts no key), and a killed edge-deploy resumes without
pushing twice to a device that answered."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from agent.demo import write_digits_video
from agent.models.signing import generate_keypair
from bench.support.agent_proc import DATA, REPO, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector
from tests.test_fleet_e2e import model_variant, nan_model

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")
# device -> groups; r2 trusts no key, so it refuses every push
GROUPS = {"r1": ["g1", "g2"], "r2": ["g1"], "r3": ["g1", "g2"], "r4": ["g1", "g2"]}


class RolloutFleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "deploy-state"
        self.broker = Mosquitto(tmp / "broker").start()
        self.keys = generate_keypair(tmp / "keys")
        video = tmp / "digits.avi"
        write_digits_video(video, fps=30)
        self.sub = Collector(self.broker.port, ["edge/+/status", "edge/+/model/+",
                                                "edge/group/+/model/manifest"])
        self.agents = [AgentProcess(self._config(d, video)) for d in GROUPS]
        for d in GROUPS:
            self.sub.wait_for(lambda ms, d=d: any(
                m.topic == f"edge/{d}/status" and m.json()["state"] == "online" for m in ms),
                timeout=60, what=f"{d} online")

    def _config(self, device: str, video: Path) -> Path:
        path = agent_config(self.tmp, self.broker.port, [
            {"name": "cam", "type": "camera", "uri": str(video), "loop": True,
             "realtime": True, "target_fps": 2}], device=device)
        raw = yaml.safe_load(path.read_text())
        raw["device"]["groups"] = GROUPS[device]
        keys = [] if device == "r2" else [str(self.keys.public)]
        raw["delivery"] = {"trusted_keys": keys}
        path.write_text(yaml.safe_dump(raw))
        return path

    def deploy_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "deploy.cli", *args, "--state-dir", str(self.state_dir)]

    def push(self, source: Path, group: str, *policy: str) -> list[str]:
        return self.deploy_cmd("push", str(source), "--group", group, "--broker",
                               self.broker.url, "--key", str(self.keys.private), "--timeout",
                               "30", "--quiet", "--format", "json", *policy)

    def manifests(self, version: str) -> Counter[str]:
        """How many manifests of ``version`` each device topic (and group topic) carried."""
        return Counter(m.topic.split("/model/")[0] for m in self.sub.wait_for(lambda ms: True)
                       if m.topic.endswith("/model/manifest")
                       and m.json()["manifest"]["version"] == version)

    def close(self) -> None:
        for a in self.agents:
            a.terminate_timed()
        self.sub.close()
        self.broker.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    f = RolloutFleet(tmp_path_factory.mktemp("rollout"))
    yield f
    f.close()


def run_json(cmd: list[str]) -> tuple[int, dict]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_waves_stop_where_the_abort_rule_says(fleet: RolloutFleet) -> None:
    v2 = model_variant(fleet.tmp / "v2", "2.0.0")
    code, report = run_json(fleet.push(v2, "g1", "--waves", "1", "--abort-after", "2",
                                       "--max-failures", "40%"))
    results = {d["device"]: d["result"] for d in report["devices"]}
    # r1 ok (1 answered, 0 failed); r2 refused (2 answered, 50% > 40%): stop before r3
    assert results == {"r1": "ok", "r2": "refused", "r3": "skipped", "r4": "skipped"}, report
    assert code == 1 and report["state"] == "stopped"
    assert "1 of 2 answered devices failed" in report["reason"]
    reason = next(d["reason"] for d in report["devices"] if d["device"] == "r2")
    assert "trusted" in reason
    assert fleet.manifests("2.0.0") == {"edge/r1": 1, "edge/r2": 1}  # none to r3, r4
    shown = subprocess.run(fleet.deploy_cmd("rollout", "show", report["rollout"], "--format",
                                            "json"), capture_output=True, text=True, cwd=REPO)
    assert json.loads(shown.stdout)["state"] == "stopped"


def wait_for_file(path: Path, predicate, timeout: float) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(path.read_text())
            if predicate(data):
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{path} never reached the state the test waits for")


def test_a_killed_rollout_resumes_without_pushing_twice(fleet: RolloutFleet) -> None:
    v3 = model_variant(fleet.tmp / "v3", "3.0.0")
    proc = subprocess.Popen(fleet.push(v3, "g2", "--waves", "2", "--soak", "10m"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    rollouts = fleet.state_dir / "rollouts"
    try:
        path = None
        deadline = time.monotonic() + 60
        while path is None and time.monotonic() < deadline:
            files = [p for p in rollouts.glob("*.json")
                     if json.loads(p.read_text())["model"]["version"] == "3.0.0"] \
                if rollouts.is_dir() else []
            path = files[0] if files else None
            time.sleep(0.05)
        assert path is not None, "the rollout wrote no state file"
        first = wait_for_file(path, lambda r: all(
            r["devices"][d]["result"] == "ok" for d in ("r1", "r3")), timeout=60)
        assert first["waves"] == [["r1", "r3"], ["r4"]]
    finally:
        proc.send_signal(signal.SIGKILL)  # in the ten-minute soak after wave 1
        proc.communicate(timeout=10)
    assert fleet.manifests("3.0.0") == {"edge/r1": 1, "edge/r3": 1}
    code, report = run_json(fleet.deploy_cmd(
        "rollout", "resume", path.stem, "--broker", fleet.broker.url, "--soak", "0s",
        "--quiet", "--format", "json"))
    assert code == 0, report
    assert report["state"] == "done"
    assert {d["device"]: d["result"] for d in report["devices"]} == {
        "r1": "ok", "r3": "ok", "r4": "ok"}
    assert fleet.manifests("3.0.0") == {"edge/r1": 1, "edge/r3": 1, "edge/r4": 1}
    listed = subprocess.run(fleet.deploy_cmd("rollout", "list"), capture_output=True,
                            text=True, cwd=REPO).stdout
    assert path.stem in listed and "done" in listed


@pytest.mark.slow  # builds the NaN model with TensorFlow
def test_a_rollback_during_the_soak_stops_the_rollout(fleet: RolloutFleet) -> None:
    broken = nan_model(fleet.tmp / "nan")  # loads and warms up, then NaN on real frames
    manifest = broken / "nan_cnn.json"
    raw = json.loads(manifest.read_text())
    raw["version"] = "9.0.0"  # above every version the fleet has run
    manifest.write_text(json.dumps(raw))
    code, report = run_json(fleet.push(broken, "g2", "--waves", "1", "--soak", "10m"))
    results = {d["device"]: d["result"] for d in report["devices"]}
    assert results == {"r1": "rolled_back", "r3": "skipped", "r4": "skipped"}, report
    assert code == 1 and report["state"] == "stopped"
    assert "NaN" in next(d["reason"] for d in report["devices"] if d["device"] == "r1")
    assert fleet.manifests("9.0.0") == {"edge/r1": 1}
