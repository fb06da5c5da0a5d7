"""Identity comes from the topic on the fleet side: a device that publishes only on its own
topics cannot make edge-deploy believe another device's result or status (real Mosquitto,
real receivers, a forging publisher)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.models.signing import generate_keypair
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import AgentHarness, tiny_tflite, write_bundle
from deploy.broker import MqttSession
from deploy.cli import main
from tests.test_deploy_cli import retain_status


def table_rows(out: str) -> dict[str, list[str]]:
    table = out.split("\n\n")[0].splitlines()
    return {line.split()[0]: line.split()[1:] for line in table[1:]}


class Forger:
    """Device ``evil``: answers every push on its own result topic, but first, once the real
    device has answered, publishes a result there that names ``victim`` as ``ok``."""

    def __init__(self, port: int, victim: str) -> None:
        self.victim = victim
        self.session = MqttSession(f"mqtt://127.0.0.1:{port}", client_prefix="evil")
        self._pushes: list[str] = []
        self._victim_answered: set[str] = set()
        self._cond = threading.Condition()
        self.session.add_handler(self._on_message)
        self.session.subscribe("edge/group/lobby/model/manifest")
        self.session.subscribe(f"edge/{victim}/model/result")
        self._thread = threading.Thread(target=self._forge, daemon=True)
        self._stop = False
        self._thread.start()

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        data = json.loads(payload)
        with self._cond:
            if topic.endswith("/manifest"):
                self._pushes.append(data["push_id"])
            else:
                self._victim_answered.add(data["push_id"])
            self._cond.notify_all()

    def _forge(self) -> None:
        done: set[str] = set()
        while not self._stop:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or any(
                    p in self._victim_answered and p not in done for p in self._pushes), 1.0)
                ready = [p for p in self._pushes if p in self._victim_answered and p not in done]
            for push_id in ready:
                done.add(push_id)
                forged = {"push_id": push_id, "device": self.victim, "result": "ok",
                          "version": "7", "reason": None}
                own = {"push_id": push_id, "device": "evil", "result": "ok", "version": "7"}
                for body in (forged, own):
                    mid = self.session.publish("edge/evil/model/result", json.dumps(body).encode())
                    self.session.wait_acked({mid}, 5)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(5)
        self.session.close()


@pytest.fixture
def victim(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[AgentHarness]:
    stranger = generate_keypair(tmp_path / "stranger")  # cam1 trusts no key we sign with
    agent = AgentHarness(mosquitto.port, tmp_path / "cam1", "cam1",
                         trusted_keys=[stranger.public], groups=("lobby",))
    yield agent
    agent.close()


def test_a_forged_result_naming_another_device_is_not_believed(mosquitto, victim, tmp_path,
                                                               capsys) -> None:
    keys = generate_keypair(tmp_path / "keys")
    bundle = write_bundle(tmp_path / "model", tiny_tflite(), version="7")
    capsys.readouterr()  # TensorFlow's conversion output
    retain_status(mosquitto.port, "cam1")
    retain_status(mosquitto.port, "evil")
    forger = Forger(mosquitto.port, "cam1")
    try:
        code = main(["push", str(bundle), "--group", "lobby", "--broker", mosquitto.url,
                     "--key", str(keys.private), "--status-wait", "2", "--timeout", "20",
                     "--quiet", "--state-dir", str(tmp_path / "state")])
    finally:
        forger.close()
    captured = capsys.readouterr()
    out = captured.out
    rows = table_rows(out)
    assert rows.get("cam1", [""])[0] == "refused", captured
    assert "trusted key" in " ".join(rows["cam1"])
    assert rows["evil"][0] == "ok"
    assert code == 1
    assert victim.results[0]["result"] == "refused"


def test_a_retained_status_naming_another_device_is_not_believed(mosquitto, capsys) -> None:
    forged = {"device": "cam1", "state": "offline", "groups": ["lobby"], "ts": time.time(),
              "model": {"name": "tiny", "version": "0", "sha256": "0" * 64}}
    pub = MqttSession(mosquitto.url)
    info = pub.client.publish("edge/evil/status", json.dumps(forged), qos=1, retain=True)
    pub.wait_acked({info.mid}, 5)
    pub.close()
    assert main(["status", "--broker", mosquitto.url, "--wait", "2"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert set(rows) == {"evil"}, rows
    assert rows["evil"][0] == "offline"
