"""The fleet simulator (bench/fleet_sim.py) speaks the device side of the contract: a real
edge-deploy rollout reaches simulated devices, whose receive path checks the signature with the
agent's own functions (real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.models.signing import generate_keypair, load_public_key
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import tiny_tflite, write_bundle

aiomqtt = pytest.importorskip("aiomqtt")
from bench.fleet_sim import SimFleet, SimOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_simulated_devices_answer_a_rollout_and_refuse_an_untrusted_key(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    keys = generate_keypair(tmp_path / "keys")
    other = generate_keypair(tmp_path / "other")
    bundle = write_bundle(tmp_path / "model", tiny_tflite(), version="9")
    fleets = [SimFleet(3, SimOptions("127.0.0.1", mosquitto.port, labels_per_s=5,
                                     trusted=[load_public_key(keys.public)])),
              SimFleet(1, SimOptions("127.0.0.1", mosquitto.port, labels_per_s=0,
                                     trusted=[load_public_key(other.public)]),
                       name=lambda i: "sim-zz")]
    ready = [threading.Event() for _ in fleets]
    threads = [threading.Thread(target=lambda f=f, r=r: asyncio.run(f.run(r.set)), daemon=True)
               for f, r in zip(fleets, ready, strict=True)]
    for t in threads:
        t.start()
    try:
        assert all(r.wait(30) for r in ready)
        out = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "push", str(bundle), "--group", "sim",
             "--waves", "2", "--max-failures", "50%", "--abort-after", "4", "--broker",
             mosquitto.url, "--key", str(keys.private), "--quiet", "--format", "json",
             "--timeout", "20", "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=120, cwd=REPO)
        report = json.loads(out.stdout)
        results = {d["device"]: d["result"] for d in report["devices"]}
        assert results == {"sim-0000": "ok", "sim-0001": "ok", "sim-0002": "ok",
                           "sim-zz": "refused"}, out.stderr
        reason = next(d["reason"] for d in report["devices"] if d["device"] == "sim-zz")
        assert "trusted key" in reason
        assert fleets[0].stats.labels_sent > 0
    finally:
        for f in fleets:
            f.stop()
        for t in threads:
            t.join(10)
