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

from agent.contract import ModelManifest, parse_manifest
from agent.errors import DeployError, ManifestError
from agent.files import sha256_file
from agent.models.signing import sign_manifest
from agent.models.wire import commit_message, encode_chunk, manifest_message
from deploy.broker import MqttSession
from deploy.fleet import DeviceView

DEFAULT_CHUNK_SIZE = 256 * 1024
ACK_WINDOW = 16
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
        return self.result in ("ok", "noop", "offline")


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
              progress: Progress | None = None, ack_timeout: float = 60.0) -> None:
    """Publish manifest, chunks and commit on ``<model_base>/<part>`` at QoS 1.

    The manifest is acknowledged before the first chunk, and at most ``ACK_WINDOW`` chunks are
    unacknowledged at a time, so memory stays flat and the broker sees them in order.
    """
    signature = sign_manifest(bundle.raw, key)
    mid = session.publish(f"{model_base}/manifest",
                          manifest_message(push_id, bundle.raw, signature, chunk_size))
    session.wait_acked({mid}, ack_timeout)
    total = len(bundle.model)
    mids: set[int] = set()
    for index, offset in enumerate(range(0, total, chunk_size)):
        data = bundle.model[offset:offset + chunk_size]
        mids.add(session.publish(f"{model_base}/chunk", encode_chunk(push_id, index, data)))
        session.wait_acked(mids, ack_timeout, max_unacked=ACK_WINDOW)
        if progress:
            progress(min(offset + len(data), total), total)
    session.wait_acked(mids, ack_timeout)
    session.wait_acked({session.publish(f"{model_base}/commit", commit_message(push_id))},
                       ack_timeout)


class ResultCollector:
    """Collects ``<prefix>/+/model/result`` messages, keyed by push id and device."""

    def __init__(self, session: MqttSession, prefix: str) -> None:
        self._cond = threading.Condition()
        self._results: dict[tuple[str, str], dict[str, Any]] = {}
        session.add_handler(self._on_message)
        session.subscribe(f"{prefix}/+/model/result")

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        if not topic.endswith("/model/result"):
            return
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if isinstance(data, dict) and data.get("push_id") and data.get("device"):
            with self._cond:
                self._results[(str(data["push_id"]), str(data["device"]))] = data
                self._cond.notify_all()

    def devices(self, push_id: str) -> set[str]:
        with self._cond:  # re-entrant: also called inside wait()
            return {d for (p, d) in self._results if p == push_id}

    def wait(self, push_id: str, devices: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Results of ``devices`` that arrive within ``timeout`` (fewer on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: devices <= self.devices(push_id), timeout)
            return {d: r for (p, d), r in self._results.items() if p == push_id}


def outcomes(results: dict[str, dict[str, Any]], expected: set[str],
             timeout: float) -> list[Outcome]:
    rows = [Outcome(d, str(r.get("result")), r.get("version"), r.get("reason"))
            for d, r in results.items()]
    rows += [Outcome(d, "timeout", None, f"no result within {timeout:g} s")
             for d in expected - set(results)]
    return sorted(rows, key=lambda o: o.device)


def push_and_wait(session: MqttSession, collector: ResultCollector, model_base: str,
                  expected: set[str], bundle: Bundle, key: Ed25519PrivateKey, *,
                  timeout: float, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  progress: Progress | None = None) -> list[Outcome]:
    push_id = new_push_id()
    send_push(session, model_base, push_id, bundle, key, chunk_size, progress)
    results = collector.wait(push_id, expected, timeout)
    return outcomes(results, expected, timeout)


def push_group(session: MqttSession, collector: ResultCollector, prefix: str, group: str,
               members: list[DeviceView], bundle: Bundle, key: Ed25519PrivateKey, *,
               timeout: float, canary: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE,
               progress: Progress | None = None) -> list[Outcome]:
    """Push to ``canary`` live members one by one, then to the rest on the group topic.

    The rest is pushed only when every canary reports ok (or noop). Members whose retained
    status is not live are listed as ``offline`` and not waited for.
    """
    live = sorted(v.device for v in members if v.live)
    offline = [Outcome(v.device, "offline", v.model.get("version"),
                       f"state {v.state}: not waited for") for v in members if not v.live]
    if not live:
        raise DeployError(f"no live device of group {group!r} found in the retained status "
                          f"under {prefix}/+/status")
    canaries, rest = live[:max(0, canary)], set(live[max(0, canary):])
    rows: list[Outcome] = []
    for device in canaries:
        rows += push_and_wait(session, collector, f"{prefix}/{device}/model", {device}, bundle,
                              key, timeout=timeout, chunk_size=chunk_size, progress=progress)
    if not all(r.ok for r in rows):
        rows += [Outcome(d, "skipped", None, "a canary failed") for d in sorted(rest)]
    elif rest:
        out = push_and_wait(session, collector, f"{prefix}/group/{group}/model", rest, bundle,
                            key, timeout=timeout, chunk_size=chunk_size, progress=progress)
        rows += [o for o in out if o.device not in canaries]
    return sorted(rows + offline, key=lambda o: o.device)
