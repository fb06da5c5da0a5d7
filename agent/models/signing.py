"""Ed25519 signatures over model manifests, and the key file formats.

Canonical bytes of a manifest: ``json.dumps(manifest, sort_keys=True, separators=(",", ":"))``
encoded as UTF-8. The private key is a PKCS#8 PEM file (mode 0600); the public key is one line
of base64 holding the 32 raw key bytes (a PEM ``PUBLIC KEY`` file is accepted too).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import DeployError

PRIVATE_KEY_NAME = "deploy.key"
PUBLIC_KEY_NAME = "deploy.pub"

KeySpec = str | Path | Ed25519PublicKey


class SignatureError(DeployError):
    """A signature is missing, malformed, or made by no trusted key."""


class KeyFileError(DeployError):
    """A key file is missing or not in a format this module reads."""


@dataclass(frozen=True)
class KeyPairFiles:
    private: Path
    public: Path
    key_id: str


def canonical_manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(manifest), sort_keys=True, separators=(",", ":")).encode()


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key: the first 16 hex digits of sha256(raw key)."""
    return hashlib.sha256(public_key_raw(key)).hexdigest()[:16]


# --------------------------------------------------------------------------- key files


def generate_keypair(out_dir: str | Path, name: str = "deploy") -> KeyPairFiles:
    """Write ``<name>.key`` (PEM, 0600) and ``<name>.pub`` (raw base64); refuse to overwrite."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p}: already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(priv_path, 0o600)
    pub = key.public_key()
    pub_path.write_text(base64.b64encode(public_key_raw(pub)).decode() + "\n")
    return KeyPairFiles(priv_path, pub_path, key_id(pub))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read private key: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{p}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: is a {type(key).__name__}, expected an Ed25519 key")
    return key


def parse_public_key(text: str, origin: str = "public key") -> Ed25519PublicKey:
    """Read a public key from PEM text or base64 of the 32 raw bytes."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise KeyFileError(f"{origin}: not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{origin}: is a {type(key).__name__}, expected Ed25519")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{origin}: not base64 or PEM: {exc}") from exc
    if len(raw) != 32:
        raise KeyFileError(f"{origin}: an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key(spec: KeySpec) -> Ed25519PublicKey:
    """``spec`` is a key object, a path to a key file, or the key itself as base64/PEM text."""
    if isinstance(spec, Ed25519PublicKey):
        return spec
    if isinstance(spec, Path) or _is_existing_file(spec):
        p = Path(spec)
        try:
            return parse_public_key(p.read_text(), origin=str(p))
        except OSError as exc:
            raise KeyFileError(f"{p}: cannot read public key: {exc}") from exc
    try:
        return parse_public_key(str(spec), origin="inline public key")
    except KeyFileError as exc:
        raise KeyFileError(f"{spec!r} is neither an existing key file nor a key: {exc}") from exc


def _is_existing_file(text: str) -> bool:
    """Base64 may contain "/", so a string is a path only when such a file exists."""
    try:
        return len(text) < 4096 and Path(text).is_file()
    except (OSError, ValueError):
        return False


def load_trusted_keys(specs: Iterable[KeySpec]) -> list[Ed25519PublicKey]:
    return [load_public_key(s) for s in specs]


# --------------------------------------------------------------------------- sign / verify


def sign_manifest(manifest: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    """Base64 signature of the canonical manifest bytes."""
    return base64.b64encode(key.sign(canonical_manifest_bytes(manifest))).decode()


def verify_manifest(manifest: Mapping[str, Any], signature_b64: str,
                    trusted: Iterable[Ed25519PublicKey]) -> str:
    """Return the id of the trusted key that signed ``manifest``; raise SignatureError if none."""
    keys = list(trusted)
    if not keys:
        raise SignatureError("no trusted public keys are configured; every push is refused")
    if not isinstance(signature_b64, str) or not signature_b64:
        raise SignatureError("the push carries no signature")
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"signature is not base64: {exc}") from exc
    if len(sig) != 64:
        raise SignatureError(f"an Ed25519 signature is 64 bytes, got {len(sig)}")
    data = canonical_manifest_bytes(manifest)
    for key in keys:
        try:
            key.verify(sig, data)
            return key_id(key)
        except InvalidSignature:
            continue
    raise SignatureError(f"signature matches none of the {len(keys)} trusted key(s) "
                         f"({', '.join(key_id(k) for k in keys)})")
