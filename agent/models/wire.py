"""Wire format of a model push (MQTT 3.1.1 compatible; see docs/DEPLOY.md), shared by the
agent's receiver and ``edge-deploy``. On ``<base>/model/<part>`` and
``<prefix>/group/<g>/model/<part>``:

* ``manifest``: JSON ``{"push_id", "manifest", "signature", "chunk_size", "chunks"}``
* ``chunk``: binary ``b"EMC1" | u8 len(push_id) | push_id (ASCII) | u32 BE index | bytes``
* ``commit``: JSON ``{"push_id"}``
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

from agent.errors import DeployError

CHUNK_MAGIC = b"EMC1"
PUSH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
PARTS = ("manifest", "chunk", "commit")
PART_FILE = ".model.part"

RESULT_OK, RESULT_REFUSED, RESULT_NOOP, RESULT_ERROR = "ok", "refused", "noop", "error"
RESULT_ROLLED_BACK = "rolled_back"  # sent by the agent after the swap, without a push id


class Refused(DeployError):
    """A push is refused; the message is the reason sent back to the pusher."""


# --------------------------------------------------------------------------- wire format


def encode_chunk(push_id: str, index: int, data: bytes) -> bytes:
    pid = push_id.encode("ascii")
    return CHUNK_MAGIC + struct.pack(">B", len(pid)) + pid + struct.pack(">I", index) + data


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


def manifest_message(push_id: str, manifest: dict[str, Any], signature: str,
                     chunk_size: int) -> bytes:
    chunks = math.ceil(int(manifest["size_bytes"]) / chunk_size)
    return json.dumps({"push_id": push_id, "manifest": manifest, "signature": signature,
                       "chunk_size": chunk_size, "chunks": chunks}).encode()


def commit_message(push_id: str) -> bytes:
    return json.dumps({"push_id": push_id}).encode()


def json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(f"{what} message is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Refused(f"{what} message must be a JSON object")
    return data


def push_id_of(data: dict[str, Any]) -> str:
    pid = data.get("push_id")
    if not isinstance(pid, str) or not PUSH_ID_RE.match(pid):
        raise Refused(f"push_id {pid!r} must match {PUSH_ID_RE.pattern}")
    return pid
