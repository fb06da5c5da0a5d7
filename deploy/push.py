"""Send a signed model to devices and collect their results."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.contract import STATE_OFFLINE, FleetTopics, model_part
from agent.errors import DeployError, ManifestError
from agent.files import sha256_file
from agent.manifest import ModelManifest, parse_manifest
from agent.models.wire import (
    RESULT_ERROR,
    RESULT_NOOP,
    RESULT_OK,
    RESULT_REFUSED,
    RESULT_ROLLED_BACK,
    commit_message,
    encode_chunk,
    manifest_message,
    signed_body,
    target_of,
)
from deploy.broker import MqttSession

DEFAULT_CHUNK_SIZE = 256 * 1024
DEFAULT_EXPIRES_IN_S = 3600.0
ACK_WINDOW = 16
# Outcomes edge-deploy adds to the devices' own results (ok, noop, refused, error, rolled_back)
RESULT_TIMEOUT, RESULT_SKIPPED, RESULT_OFFLINE = "timeout", "skipped", STATE_OFFLINE
FAILED_RESULTS = frozenset({RESULT_REFUSED, RESULT_ERROR, RESULT_ROLLED_BACK, RESULT_TIMEOUT})
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Bundle:
    """A manifest (as the raw dict that gets signed) and its model bytes."""

    manifest_path: Path
    raw: dict[str, Any]
    manifest: ModelManifest
    model: bytes


@dataclass(frozen=True)
class Outcome:
    device: str
    result: str
    version: str | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.result in (RESULT_OK, RESULT_NOOP, RESULT_OFFLINE)


def load_bundle(path: str | Path) -> Bundle:
    """``path`` is a manifest JSON or a folder holding exactly one manifest."""
    p = Path(path)
    manifest_path = _find_manifest(p) if p.is_dir() else p
    try:
        raw = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DeployError(f"{manifest_path}: cannot read manifest: {exc}") from exc
    manifest = parse_manifest(raw, origin=str(manifest_path))
    model_path = manifest.model_path(manifest_path.parent)
    if not model_path.is_file():
        raise DeployError(f"{model_path}: model file named by the manifest is missing")
    digest = sha256_file(model_path)
    if digest != manifest.sha256:
        raise DeployError(f"{model_path}: sha256 {digest[:16]}... does not match the manifest "
                          f"({manifest.sha256[:16]}...); rebuild the manifest")
    return Bundle(manifest_path, raw, manifest, model_path.read_bytes())


def _find_manifest(folder: Path) -> Path:
    if (folder / "manifest.json").is_file():
        return folder / "manifest.json"
    found = []
    for candidate in sorted(folder.glob("*.json")):
        try:
            parse_manifest(json.loads(candidate.read_text()), origin=str(candidate))
            found.append(candidate)
        except (ManifestError, OSError, ValueError):
            continue
    if len(found) != 1:
        raise DeployError(f"{folder}: expected exactly one model manifest, found "
                          f"{len(found)} ({', '.join(f.name for f in found) or 'none'})")
    return found[0]


def new_push_id() -> str:
    return time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]


def send_push(session: MqttSession, model_base: str, push_id: str, bundle: Bundle,
              key: Ed25519PrivateKey, chunk_size: int = DEFAULT_CHUNK_SIZE,
              progress: Progress | None = None, ack_timeout: float = 60.0, *,
              rollback: bool = False, expires_in_s: float = DEFAULT_EXPIRES_IN_S) -> None:
    """Publish manifest, chunks and commit on ``<model_base>/<part>`` at QoS 1 (``model_base``
    from ``Topics.model_base`` or ``FleetTopics.group_model_base``).

    The signature covers the push id, the manifest, the target (the device or group of
    ``model_base``), the expiry, the chunk size and the rollback flag. The manifest is
    acknowledged before the first chunk, and at most ``ACK_WINDOW`` chunks are unacknowledged
    at a time, so memory stays flat and the broker sees them in order.
    """
    body = signed_body(push_id, bundle.raw, target_of(model_base), time.time() + expires_in_s,
                       chunk_size, rollback)
    mid = session.publish(model_part(model_base, "manifest"), manifest_message(body, key))
    session.wait_acked({mid}, ack_timeout)
    total = len(bundle.model)
    chunk_topic = model_part(model_base, "chunk")
    mids: set[int] = set()
    for index, offset in enumerate(range(0, total, chunk_size)):
        data = bundle.model[offset:offset + chunk_size]
        mids.add(session.publish(chunk_topic, encode_chunk(push_id, index, data)))
        session.wait_acked(mids, ack_timeout, max_unacked=ACK_WINDOW)
        if progress:
            progress(min(offset + len(data), total), total)
    session.wait_acked(mids, ack_timeout)
    session.wait_acked({session.publish(model_part(model_base, "commit"), commit_message(push_id))},
                       ack_timeout)


@dataclass(frozen=True)
class Rollback:
    """A device's report that it rolled a model back after the swap."""

    device: str
    name: str | None
    version: str | None
    reason: str | None
    received: float


class ResultCollector:
    """Collects ``<prefix>/+/model/result`` messages, keyed by push id and device.

    The device is the one named by the topic; a ``device`` field in the payload is ignored,
    so a device can only ever report for itself (the broker ACL confines it to its topics).
    """

    def __init__(self, session: MqttSession, fleet: FleetTopics) -> None:
        self._fleet = fleet
        self._cond = threading.Condition()
        self._results: dict[tuple[str, str], dict[str, Any]] = {}
        self._rollbacks: list[Rollback] = []
        session.add_handler(self._on_message)
        session.subscribe(fleet.model_result_filter)

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        device = self._fleet.device_of(topic, FleetTopics.MODEL_RESULT)
        if device is None:
            return
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return
        if not isinstance(data, dict):
            return
        with self._cond:
            if data.get("result") == RESULT_ROLLED_BACK:
                self._rollbacks.append(Rollback(device, _text(data.get("name")),
                                                _text(data.get("version")),
                                                _text(data.get("reason")), time.time()))
            elif isinstance(data.get("push_id"), str):
                self._results[(data["push_id"], device)] = data
            self._cond.notify_all()

    def devices(self, push_id: str) -> set[str]:
        with self._cond:  # re-entrant: also called inside wait()
            return {d for (p, d) in self._results if p == push_id}

    def answered(self, push_ids: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Results so far for ``{device: push_id}``."""
        with self._cond:
            return {d: self._results[(p, d)] for d, p in push_ids.items()
                    if (p, d) in self._results}

    def rollbacks(self, since: float = 0.0) -> list[Rollback]:
        with self._cond:
            return [r for r in self._rollbacks if r.received >= since]

    def wait_change(self, timeout: float) -> None:
        """Return when any result arrives, or after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait(timeout)

    def wait(self, push_id: str, devices: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Results of ``devices`` that arrive within ``timeout`` (fewer on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: devices <= self.devices(push_id), timeout)
            return {d: r for (p, d), r in self._results.items() if p == push_id}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def outcome_of(device: str, result: dict[str, Any]) -> Outcome:
    return Outcome(device, str(result.get("result")), _text(result.get("version")),
                   _text(result.get("reason")))


def outcomes(results: dict[str, dict[str, Any]], expected: set[str],
             timeout: float) -> list[Outcome]:
    rows = [outcome_of(d, r) for d, r in results.items() if d in expected]
    rows += [Outcome(d, RESULT_TIMEOUT, None, f"no result within {timeout:g} s")
             for d in expected - set(results)]
    return sorted(rows, key=lambda o: o.device)


def push_and_wait(session: MqttSession, collector: ResultCollector, model_base: str,
                  expected: set[str], bundle: Bundle, key: Ed25519PrivateKey, *,
                  timeout: float, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  progress: Progress | None = None, rollback: bool = False,
                  expires_in_s: float = DEFAULT_EXPIRES_IN_S) -> list[Outcome]:
    push_id = new_push_id()
    send_push(session, model_base, push_id, bundle, key, chunk_size, progress,
              rollback=rollback, expires_in_s=expires_in_s)
    results = collector.wait(push_id, expected, timeout)
    return outcomes(results, expected, timeout)
