"""agent/models/signing.py: key files, canonical bytes, verification against trusted keys."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.models.signing import (
    KeyFileError,
    SignatureError,
    canonical_manifest_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    sign_manifest,
    verify_manifest,
)
from agent.models.wire import (
    PushOffer,
    Refused,
    Target,
    check_layout,
    manifest_message,
    parse_offer,
    signed_body,
    target_of,
    verify_offer,
)

MANIFEST = {"name": "m", "version": "1", "sha256": "ab" * 32, "input": {"shape": [1, 2]}}


def test_canonical_bytes_ignore_key_order_and_whitespace() -> None:
    shuffled = {"input": {"shape": [1, 2]}, "sha256": "ab" * 32, "version": "1", "name": "m"}
    assert canonical_manifest_bytes(shuffled) == canonical_manifest_bytes(MANIFEST)
    assert b" " not in canonical_manifest_bytes(MANIFEST)


def test_sign_and_verify_with_files_inline_base64_and_pem(tmp_path: Path) -> None:
    files = generate_keypair(tmp_path)
    key = load_private_key(files.private)
    sig = sign_manifest(MANIFEST, key)
    inline = files.public.read_text().strip()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    for spec in (files.public, str(files.public), inline, pem):
        assert verify_manifest(MANIFEST, sig, [load_public_key(spec)]) == files.key_id
    assert key_id(key.public_key()) == files.key_id


def test_any_trusted_key_may_sign(tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = [old.public_key(), new.public_key()]
    assert verify_manifest(MANIFEST, sign_manifest(MANIFEST, new), trusted) == key_id(
        new.public_key())


@pytest.mark.parametrize("case, message", [
    ("tampered", "matches none of the 1 trusted key"),
    ("other_key", "matches none of the 1 trusted key"),
    ("not_base64", "not base64"),
    ("short", "64 bytes"),
    ("missing", "no signature"),
    ("no_keys", "no trusted public keys"),
])
def test_bad_signatures_are_refused_with_a_reason(case: str, message: str) -> None:
    key = Ed25519PrivateKey.generate()
    sig = sign_manifest(MANIFEST, key)
    trusted = [key.public_key()]
    manifest = MANIFEST
    if case == "tampered":
        manifest = {**MANIFEST, "version": "2"}
    elif case == "other_key":
        sig = sign_manifest(MANIFEST, Ed25519PrivateKey.generate())
    elif case == "not_base64":
        sig = "***"
    elif case == "short":
        sig = base64.b64encode(b"x" * 10).decode()
    elif case == "missing":
        sig = ""
    elif case == "no_keys":
        trusted = []
    with pytest.raises(SignatureError, match=message):
        verify_manifest(manifest, sig, trusted)


def test_key_file_errors_name_the_problem(tmp_path: Path) -> None:
    generate_keypair(tmp_path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_keypair(tmp_path)
    with pytest.raises(KeyFileError, match="cannot read private key"):
        load_private_key(tmp_path / "absent.key")
    (tmp_path / "junk.key").write_text("junk")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        load_private_key(tmp_path / "junk.key")
    with pytest.raises(KeyFileError, match="32 bytes"):
        load_trusted_keys([base64.b64encode(b"short").decode()])
    with pytest.raises(KeyFileError, match="neither an existing key file nor a key"):
        load_public_key("/etc/edge-agent/missing.pub")


# --------------------------------------------------------------------------- signed offers

OFFER_MANIFEST = {"name": "m", "version": "2", "sha256": "ab" * 32, "size_bytes": 5000}


def offer(key: Ed25519PrivateKey, **fields) -> PushOffer:
    body = signed_body("p1", OFFER_MANIFEST, Target(devices=("cam1",)), 2e9, 1000)
    data = json.loads(manifest_message(body, key))
    data.update(fields)
    return parse_offer(data)


def test_an_offer_verifies_for_its_target_until_it_expires() -> None:
    key = Ed25519PrivateKey.generate()
    o = offer(key)
    assert o.chunks == 5 and o.target == Target(devices=("cam1",))
    assert verify_offer(o, [key.public_key()], device_id="cam1", groups=(), now=1e9)
    with pytest.raises(Refused, match="not for this device"):
        verify_offer(o, [key.public_key()], device_id="cam2", groups=("cam1",), now=1e9)
    with pytest.raises(Refused, match="expired"):
        verify_offer(o, [key.public_key()], device_id="cam1", groups=(), now=3e9)


@pytest.mark.parametrize("field, value, message", [
    ("chunk_size", True, "chunk_size must be a positive integer"),
    ("chunk_size", 0, "chunk_size must be a positive integer"),
    ("expires", 10 ** 400, "expires must be a Unix time"),
    ("expires", "soon", "expires must be a Unix time"),
    ("target", {"devices": "cam1"}, "target must be"),
    ("target", {"group": "g", "devices": []}, "target must be"),
    ("rollback", "yes", "rollback must be true or false"),
    ("signature", None, "no signature"),
    ("manifest", [1], "no 'manifest' object"),
    ("push_id", "p1\n", "must match"),
])
def test_malformed_offers_are_refused_by_field(field, value, message) -> None:
    with pytest.raises(Refused, match=message):
        offer(Ed25519PrivateKey.generate(), **{field: value})


def test_chunk_count_is_bounded_by_the_layout_check() -> None:
    o = offer(Ed25519PrivateKey.generate(), chunk_size=1,
              manifest={**OFFER_MANIFEST, "size_bytes": 8_000_000})
    with pytest.raises(Refused, match="over the limit of 65536"):
        check_layout(o, max_model_bytes=10_000_000)
    check_layout(offer(Ed25519PrivateKey.generate()), max_model_bytes=10_000_000)


def test_target_of_a_model_base() -> None:
    assert target_of("edge/cam1/model") == Target(devices=("cam1",))
    assert target_of("a/b/group/lobby/model") == Target(group="lobby")
    assert target_of("edge/group/model") == Target(devices=("group",))
