"""deploy/mosquitto.acl confines each device to its own and its groups' topics (real Mosquitto)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.support.broker import Mosquitto
from deploy.broker import MqttSession

ACL = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto.acl"
USERS = ("cam-lobby-1", "cam-lobby-2", "deployer")
MARKER = "edge/group/lobby/model/commit"  # both cameras may read it; not in sent

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                                reason="mosquitto_passwd is not installed")


class Client:
    """A logged-in client that records what it receives."""

    def __init__(self, broker: Mosquitto, user: str, topics: list[str]) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.session = MqttSession(f"mqtt://{user}:pw-{user}@127.0.0.1:{broker.port}")
        self.session.add_handler(self._on_message)
        for t in topics:
            self.session.subscribe(t)

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._cond:
            self.got.append((topic, payload))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        self.session.wait_acked({self.session.publish(topic, payload)}, 5)

    def wait_count(self, n: int, timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.got) >= n, timeout), self.got

    def wait_for(self, topic: str, timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: any(t == topic for t, _ in self.got),
                                       timeout), (topic, self.got)

    def topics(self) -> set[str]:
        with self._cond:
            return {t for t, _ in self.got}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user in USERS:
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, f"pw-{user}"], check=True)
    b = Mosquitto(tmp_path / "broker", extra_conf=[
        "allow_anonymous false", f"password_file {passwd}", f"acl_file {ACL}"]).start()
    yield b
    b.stop()


def test_devices_see_only_their_own_and_their_groups_pushes(broker: Mosquitto) -> None:
    model_topics = ["edge/+/model/+", "edge/group/+/model/+"]
    cam1 = Client(broker, "cam-lobby-1", model_topics)
    cam2 = Client(broker, "cam-lobby-2", model_topics)
    deployer = Client(broker, "deployer", ["edge/+/status"])
    try:
        sent = ["edge/cam-lobby-1/model/chunk", "edge/cam-lobby-2/model/chunk",
                "edge/group/lobby/model/manifest", "edge/group/floor-2/model/commit"]
        for topic in sent:
            deployer.publish(topic, b"x")
        # From a connection of its own: Mosquitto 2.0.11 may close the connection of an
        # MQTT 3.1.1 client whose publish it denies (seen here for QoS 0 and QoS 1).
        spoofer = MqttSession(f"mqtt://cam-lobby-1:pw-cam-lobby-1@127.0.0.1:{broker.port}")
        spoofer.client.publish("edge/cam-lobby-2/status", b"spoofed", qos=0).wait_for_publish(2)
        spoofer.close()
        cam1.publish("edge/cam-lobby-1/status", b"mine")
        # a barrier: the broker keeps one connection's messages in order, so once this last
        # one (which both cameras may read) arrives, any denied one would have arrived too
        deployer.publish(MARKER, b"end")
        cam1.wait_for(MARKER)
        cam2.wait_for(MARKER)
        deployer.wait_count(1)
        assert cam1.topics() - {MARKER} == {sent[0], sent[2]}
        assert cam2.topics() - {MARKER} == {sent[1], sent[2], sent[3]}
        assert deployer.got == [("edge/cam-lobby-1/status", b"mine")]
    finally:
        for c in (cam1, cam2, deployer):
            c.session.close()
