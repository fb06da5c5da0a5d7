from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.models.signing import generate_keypair, load_private_key
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import tiny_tflite
from deploy.broker import MqttSession
from tests.support.certs import Certs, add_password, make_certs
from tests.support.reference_models import ReferenceModel, reference_model


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_broker(tmp_path: Path, certs: Certs) -> Iterator[Mosquitto]:
    """Mosquitto with TLS (client certificates required), a password file and an ACL:
    user ``agent`` may use ``edge/dev1/#``, user ``reader`` may read ``edge/#``."""
    passwords = tmp_path / "passwd"
    add_password(passwords, "agent", "s3cret")
    add_password(passwords, "reader", "r3ader")
    acl = tmp_path / "acl"
    acl.write_text("user agent\ntopic readwrite edge/dev1/#\n\nuser reader\ntopic read edge/#\n")
    broker = Mosquitto(tmp_path / "broker", extra_conf=[
        f"cafile {certs.ca_cert}", f"certfile {certs.server_cert}",
        f"keyfile {certs.server_key}", "require_certificate true",
        f"password_file {passwords}", f"acl_file {acl}"]).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> ReferenceModel:
    """The reference CNN, trained once per session in a child process (Keras files, data)."""
    return reference_model("cnn", tmp_path_factory)


@pytest.fixture(scope="session")
def lstm(tmp_path_factory: pytest.TempPathFactory) -> ReferenceModel:
    """The reference LSTM, trained once per session in a child process."""
    return reference_model("lstm", tmp_path_factory)


@pytest.fixture(scope="module")
def model() -> bytes:
    """The tiny valid model the delivery tests push."""
    return tiny_tflite()


@pytest.fixture
def key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    """A fresh deploy key pair: the private key and the public key's file."""
    files = generate_keypair(tmp_path / "keys")
    return load_private_key(files.private), files.public


@pytest.fixture
def session(mosquitto: Mosquitto) -> Iterator[MqttSession]:
    """edge-deploy's MQTT session on the test broker."""
    s = MqttSession(mosquitto.url)
    yield s
    s.close()
