"""A rollout's state on the workstation: one JSON file per rollout, written atomically.

``<state dir>/rollouts/<id>.json`` holds the plan (waves of device ids), each device's result
and the rollout's state; ``<id>.lock`` is held (``flock``) by the ``edge-deploy`` that runs
it, and ``<id>.abort`` asks that process to stop. The state dir is ``--state-dir``, else
``$EDGE_DEPLOY_STATE_DIR``, else ``$XDG_STATE_HOME/edge-deploy`` (``~/.local/state/...``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import DeployError
from agent.files import atomic_write_bytes
from deploy.push import RESULT_SKIPPED

# Rollout states
RUNNING, DONE, STOPPED, ABORTED = "running", "done", "stopped", "aborted"
# Device states before a device's own result
PENDING, SENT = "pending", "sent"
ROLLOUT_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


def state_dir(given: str | None) -> Path:
    return Path(given) if given else default_state_dir()


def default_state_dir() -> Path:
    if os.environ.get("EDGE_DEPLOY_STATE_DIR"):
        return Path(os.environ["EDGE_DEPLOY_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-deploy"


@dataclass
class DeviceRecord:
    wave: int
    result: str = PENDING
    push_id: str | None = None
    reason: str | None = None
    version: str | None = None
    ts: float | None = None


@dataclass
class RolloutRecord:
    id: str
    group: str
    prefix: str
    source: str
    key: str
    model: dict[str, Any]
    policy: dict[str, Any]
    chunk_size: int
    waves: list[list[str]]
    devices: dict[str, DeviceRecord]
    offline: dict[str, str] = field(default_factory=dict)
    state: str = RUNNING
    reason: str | None = None
    wave_index: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, origin: str) -> RolloutRecord:
        try:
            raw = json.loads(data)
            raw["devices"] = {d: DeviceRecord(**r) for d, r in raw["devices"].items()}
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise DeployError(f"{origin}: not a rollout state file: {exc}") from exc

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.devices.values():
            out[rec.result] = out.get(rec.result, 0) + 1
        if self.offline:
            out["offline"] = len(self.offline)
        return dict(sorted(out.items()))

    def answered(self) -> dict[str, str]:
        """``{device: result}`` of devices with a final result (not pending, sent, skipped)."""
        return {d: r.result for d, r in self.devices.items()
                if r.result not in (PENDING, SENT, RESULT_SKIPPED)}


def new_rollout_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class RolloutStore:
    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir) / "rollouts"

    def _path(self, rollout_id: str, suffix: str = ".json") -> Path:
        if not ROLLOUT_ID_RE.match(rollout_id):
            raise DeployError(f"rollout id {rollout_id!r} is not of the form "
                              f"YYYYMMDD-HHMMSS-xxxxxx (see `edge-deploy rollout list`)")
        return self.folder / f"{rollout_id}{suffix}"

    def save(self, record: RolloutRecord) -> None:
        record.updated = time.time()
        try:
            atomic_write_bytes(self._path(record.id), record.to_json())
        except OSError as exc:
            raise DeployError(f"cannot write rollout state {self._path(record.id)}: {exc}") \
                from exc

    def load(self, rollout_id: str) -> RolloutRecord:
        path = self._path(rollout_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise DeployError(f"no rollout {rollout_id} in {self.folder}") from exc
        except OSError as exc:
            raise DeployError(f"{path}: cannot read: {exc}") from exc
        return RolloutRecord.from_json(data, str(path))

    def list(self) -> list[RolloutRecord]:
        if not self.folder.is_dir():
            return []
        records = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                records.append(RolloutRecord.from_json(path.read_bytes(), str(path)))
            except (DeployError, OSError):
                continue
        return records

    @contextmanager
    def running(self, rollout_id: str) -> Iterator[None]:
        """Hold the rollout's lock while running it; refuse if another process holds it."""
        path = self._path(rollout_id, ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise DeployError(f"rollout {rollout_id} is being run by another "
                                  f"edge-deploy (lock {path})") from exc
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def is_running(self, rollout_id: str) -> bool:
        try:
            with self.running(rollout_id):
                return False
        except DeployError:
            return True

    def request_abort(self, rollout_id: str, reason: str) -> None:
        atomic_write_bytes(self._path(rollout_id, ".abort"), reason.encode())

    def abort_requested(self, rollout_id: str) -> str | None:
        try:
            return self._path(rollout_id, ".abort").read_text() or "aborted by the operator"
        except FileNotFoundError:
            return None
