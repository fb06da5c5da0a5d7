"""Wire format of a model push (MQTT 3.1.1 compatible; see docs/DEPLOY.md), shared by the
agent's receiver, ``edge-deploy`` and the fleet simulator. On ``<base>/model/<part>`` and
``<prefix>/group/<g>/model/<part>``:

* ``manifest``: JSON ``{"push_id", "manifest", "target", "expires", "chunk_size", "rollback",
  "signature"}``; the signature covers every other field (``signed_body``), so a device acts
  on nothing unsigned. ``chunks`` is derived from ``size_bytes`` and ``chunk_size``.
* ``chunk``: binary ``b"EMC1" | u8 len(push_id) | push_id (ASCII) | u32 BE index | bytes``
* ``commit``: JSON ``{"push_id"}``

``parse_offer`` and ``verify_offer`` are the checks a device makes; they are public so that
other receivers (the fleet simulator) apply the same rules.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.contract import (  # noqa: F401 - the result values, re-exported for edge-deploy
    RESULT_ERROR,
    RESULT_NOOP,
    RESULT_OK,
    RESULT_REFUSED,
    RESULT_ROLLED_BACK,
)
from agent.errors import DeployError, PayloadError
from agent.models.signing import SignatureError, sign_manifest, verify_manifest
from agent.payloads import decode_json

CHUNK_MAGIC = b"EMC1"
PUSH_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PARTS = ("manifest", "chunk", "commit")
PART_FILE = ".model.part"
MAX_CONTROL_BYTES = 1 << 20  # a manifest or commit message; labels make manifests large
MAX_CHUNKS = 1 << 16  # bookkeeping is one byte per chunk; this bounds it at 64 KiB
TARGET_GROUP, TARGET_DEVICES = "group", "devices"
SIGNED_FIELDS = ("push_id", "manifest", "target", "expires", "chunk_size", "rollback")


class Refused(DeployError):
    """A push is refused; the message is the reason sent back to the pusher."""


@dataclass(frozen=True)
class Target:
    """Who a push is for: a list of device ids, or every member of one group."""

    devices: tuple[str, ...] = ()
    group: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.group is not None:
            return {TARGET_GROUP: self.group}
        return {TARGET_DEVICES: list(self.devices)}

    def includes(self, device_id: str, groups: Iterable[str]) -> bool:
        return device_id in self.devices or (self.group is not None and self.group in groups)

    def describe(self) -> str:
        return f"group {self.group}" if self.group is not None else \
            f"devices {', '.join(self.devices) or '(none)'}"


@dataclass(frozen=True)
class PushOffer:
    """A parsed manifest message: what the signature covers, plus the signature."""

    push_id: str
    manifest: dict[str, Any]
    target: Target
    expires: float
    chunk_size: int
    rollback: bool
    signature: str

    def signed_body(self) -> dict[str, Any]:
        return signed_body(self.push_id, self.manifest, self.target, self.expires,
                           self.chunk_size, self.rollback)

    @property
    def size_bytes(self) -> int:
        size = self.manifest.get("size_bytes")
        return size if isinstance(size, int) and not isinstance(size, bool) else 0

    @property
    def chunks(self) -> int:
        return math.ceil(self.size_bytes / self.chunk_size)


# --------------------------------------------------------------------------- building


def signed_body(push_id: str, manifest: Mapping[str, Any], target: Target, expires: float,
                chunk_size: int, rollback: bool = False) -> dict[str, Any]:
    return {"push_id": push_id, "manifest": dict(manifest), "target": target.as_dict(),
            "expires": expires, "chunk_size": chunk_size, "rollback": rollback}


def manifest_message(body: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The signed manifest message for ``body`` (from ``signed_body``)."""
    return json.dumps({**body, "signature": sign_manifest(body, key)}).encode()


def encode_chunk(push_id: str, index: int, data: bytes) -> bytes:
    pid = push_id.encode("ascii")
    return CHUNK_MAGIC + struct.pack(">B", len(pid)) + pid + struct.pack(">I", index) + data


def commit_message(push_id: str) -> bytes:
    return json.dumps({"push_id": push_id}).encode()


def target_of(model_base: str) -> Target:
    """The target a push on ``model_base`` is for: ``<prefix>/group/<g>/model`` is group g,
    ``<prefix>/<device>/model`` that one device."""
    parts = model_base.split("/")
    if len(parts) >= 4 and parts[-3] == "group":
        return Target(group=parts[-2])
    return Target(devices=(parts[-2],))


# --------------------------------------------------------------------------- parsing


def decode_chunk(payload: bytes) -> tuple[str, int, bytes]:
    if len(payload) < 10 or payload[:4] != CHUNK_MAGIC:
        raise Refused("chunk does not start with the EMC1 header")
    n = payload[4]
    end = 5 + n
    if len(payload) < end + 4:
        raise Refused("chunk header is truncated")
    push_id = payload[5:end].decode("ascii", errors="replace")
    (index,) = struct.unpack(">I", payload[end:end + 4])
    return push_id, index, payload[end + 4:]


def json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        data = decode_json(payload, f"{what} message", max_bytes=MAX_CONTROL_BYTES)
    except PayloadError as exc:
        raise Refused(str(exc)) from exc
    if not isinstance(data, dict):
        raise Refused(f"{what} message must be a JSON object")
    return data


def push_id_of(data: Mapping[str, Any]) -> str:
    pid = data.get("push_id")
    if not isinstance(pid, str) or not PUSH_ID_RE.fullmatch(pid):
        raise Refused(f"push_id {_short(pid)} must match {PUSH_ID_RE.pattern}")
    return pid


def parse_offer(data: Mapping[str, Any]) -> PushOffer:
    """Check the types of a decoded manifest message; Refused names the first bad field."""
    push_id = push_id_of(data)
    manifest = data.get("manifest")
    if not isinstance(manifest, dict):
        raise Refused("manifest message has no 'manifest' object")
    expires, chunk_size = data.get("expires"), data.get("chunk_size")
    if not _is_number(expires):
        raise Refused(f"expires must be a Unix time in seconds, got {_short(expires)}")
    if not _is_int(chunk_size) or chunk_size <= 0:
        raise Refused(f"chunk_size must be a positive integer, got {_short(chunk_size)}")
    rollback, signature = data.get("rollback", False), data.get("signature")
    if not isinstance(rollback, bool):
        raise Refused(f"rollback must be true or false, got {_short(rollback)}")
    if not isinstance(signature, str):
        raise Refused("the push carries no signature")
    return PushOffer(push_id, manifest, parse_target(data.get("target")), float(expires),
                     chunk_size, rollback, signature)


def parse_target(raw: Any) -> Target:
    if isinstance(raw, dict) and set(raw) == {TARGET_GROUP} and isinstance(raw[TARGET_GROUP],
                                                                           str):
        return Target(group=raw[TARGET_GROUP])
    if isinstance(raw, dict) and set(raw) == {TARGET_DEVICES} and isinstance(
            raw[TARGET_DEVICES], list) and all(isinstance(d, str) for d in raw[TARGET_DEVICES]):
        return Target(devices=tuple(raw[TARGET_DEVICES]))
    raise Refused(f"target must be {{\"group\": name}} or {{\"devices\": [ids]}}, "
                  f"got {_short(raw)}")


def verify_offer(offer: PushOffer, trusted: Iterable[Ed25519PublicKey], *, device_id: str,
                 groups: Iterable[str], now: float) -> str:
    """Signature, target and expiry, in that order; return the signing key's id."""
    try:
        key = verify_manifest(offer.signed_body(), offer.signature, trusted)
    except SignatureError as exc:
        raise Refused(str(exc)) from exc
    if not offer.target.includes(device_id, groups):
        raise Refused(f"signed for {offer.target.describe()}, not for this device "
                      f"({device_id})")
    if now > offer.expires:
        raise Refused(f"the signed push expired {now - offer.expires:.0f} s ago "
                      f"(expires {offer.expires:.0f}, device clock {now:.0f})")
    return key


def check_layout(offer: PushOffer, max_model_bytes: int) -> None:
    """Size limits: bookkeeping stays proportional to the number of chunks, which is bounded."""
    size = offer.size_bytes
    if size > max_model_bytes:
        raise Refused(f"model is {size} bytes, over this device's limit of "
                      f"{max_model_bytes} bytes")
    if size <= 0:
        raise Refused("model file is empty (size_bytes 0)")
    if offer.chunks > MAX_CHUNKS:
        raise Refused(f"{size} bytes in chunks of {offer.chunk_size} make {offer.chunks} "
                      f"chunks, over the limit of {MAX_CHUNKS}; use a larger chunk size")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if not (_is_int(v) or isinstance(v, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."
