"""The on-device model store: installed versions, the active pointer, rollback, power-cut safety.

Layout under ``root`` (the agent's StateDirectory)::

    versions/<name>-<version>-<sha8>/   manifest.json, the .tflite, manifest.sig (if signed)
    active.json                         {"active": folder, "history": [...], "events": [...]}
    staging/<push_id>/                  pushes being received

Every step that changes what is on disk is either a rename or an atomic write, so a power cut
at any moment leaves the old or the new model. ``recover()`` runs at start-up and removes what
a crash can leave behind (temp files, staging, half-deleted folders) and falls back to the
previous whole version when the active one is damaged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import DeployError, ManifestError
from agent.files import atomic_write_bytes, fsync_dir, sha256_file
from agent.manifest import ModelManifest, load_manifest

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
POINTER_NAME = "active.json"
HISTORY_LIMIT = 20
EVENTS_LIMIT = 20
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class InstalledModel:
    folder: Path
    manifest: ModelManifest
    model_path: Path

    @property
    def key(self) -> str:
        """The version folder's name, as recorded in ``active.json``."""
        return self.folder.name

    def describe(self) -> dict[str, str]:
        m = self.manifest
        return {"name": m.name, "version": m.version, "sha256": m.sha256, "folder": self.key}


def folder_name(manifest: ModelManifest) -> str:
    return f"{manifest.name}-{manifest.version}-{manifest.sha256[:8]}"


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def read_model_folder(folder: Path, verify: bool = True) -> InstalledModel:
    """Read a folder holding ``manifest.json`` and its model; raise DeployError if not whole."""
    manifest = load_manifest(folder / MANIFEST_NAME)
    model_path = manifest.model_path(folder)
    if model_path.resolve().parent != folder.resolve():
        raise DeployError(f"{folder.name}: model file {manifest.file!r} leaves the model folder")
    if not model_path.is_file():
        raise DeployError(f"{folder.name}: model file {manifest.file} is missing")
    size = model_path.stat().st_size
    if size != manifest.size_bytes:
        raise DeployError(f"{folder.name}: {manifest.file} is {size} bytes, manifest says "
                          f"{manifest.size_bytes}")
    if verify:
        digest = sha256_file(model_path)
        if digest != manifest.sha256:
            raise DeployError(f"{folder.name}: sha256 of {manifest.file} is {digest[:16]}..., "
                              f"manifest says {manifest.sha256[:16]}...")
    return InstalledModel(folder, manifest, model_path)


class ModelStore:
    """Installed model versions under ``root``.

    Changes of the pointer (activate, rollback, seed, prune, recover) hold one lock, so the
    receiver's worker, the pipeline's rollback and commands can share a store.
    """

    def __init__(self, root: str | Path, keep: int = 3) -> None:
        self.root = Path(root)
        self.keep = max(1, keep)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / "staging"
        self.pointer_path = self.root / POINTER_NAME
        self._lock = threading.RLock()

    # -- pointer ----------------------------------------------------------------

    def _read_pointer(self) -> dict[str, Any]:
        try:
            data = json.loads(self.pointer_path.read_text())
        except FileNotFoundError:
            return {"active": None, "history": [], "events": []}
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); treating as empty", self.pointer_path, exc)
            return {"active": None, "history": [], "events": [], "damaged": True}
        if not isinstance(data, dict):
            return {"active": None, "history": [], "events": [], "damaged": True}
        data.setdefault("history", [])
        data.setdefault("events", [])
        return data

    def _write_pointer(self, active: str | None, history: list[str],
                       event: dict[str, Any] | None = None) -> None:
        pointer = self._read_pointer()
        events = list(pointer.get("events", []))
        if event is not None:
            events.append({**event, "ts": time.time()})
        data = {"active": active, "history": history[-HISTORY_LIMIT:],
                "events": events[-EVENTS_LIMIT:], "changed": time.time()}
        atomic_write_bytes(self.pointer_path, (json.dumps(data, indent=2) + "\n").encode())

    def events(self) -> list[dict[str, Any]]:
        """Recent activations and rollbacks with their reasons, oldest first."""
        return list(self._read_pointer().get("events", []))

    # -- queries ----------------------------------------------------------------

    def _load(self, key: str | None, verify: bool = False) -> InstalledModel | None:
        if not key or "/" in key or key.startswith("."):
            return None
        try:
            return read_model_folder(self.versions_dir / key, verify=verify)
        except (DeployError, ManifestError, OSError):
            return None

    def active(self) -> InstalledModel | None:
        return self._load(self._read_pointer().get("active"))

    def find(self, manifest: ModelManifest) -> InstalledModel | None:
        """The installed folder for exactly this manifest's name, version and sha256."""
        found = self._load(folder_name(manifest))
        return found if found and found.manifest.sha256 == manifest.sha256 else None

    def previous(self) -> InstalledModel | None:
        """The newest whole version in the history before the active one."""
        pointer = self._read_pointer()
        for key in reversed(pointer["history"]):
            if key == pointer.get("active"):
                continue
            found = self._load(key, verify=True)
            if found is not None:
                return found
        return None

    def list(self) -> list[InstalledModel]:
        """Installed versions, oldest first (by install time)."""
        if not self.versions_dir.is_dir():
            return []
        found = [self._load(p.name) for p in self.versions_dir.iterdir() if p.is_dir()]
        return sorted((m for m in found if m), key=lambda m: m.folder.stat().st_mtime_ns)

    # -- changes ----------------------------------------------------------------

    def new_staging(self, push_id: str) -> Path:
        folder = self.staging_dir / push_id
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def install(self, staged_folder: str | Path) -> InstalledModel:
        """Verify a staged folder and rename it into ``versions/`` (using the folder up)."""
        with self._lock:
            return self._install(Path(staged_folder))

    def _install(self, staged: Path) -> InstalledModel:
        model = read_model_folder(staged, verify=True)
        target = self.versions_dir / folder_name(model.manifest)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        if target.exists():
            existing = self._load(target.name, verify=True)
            if existing is not None:
                shutil.rmtree(staged, ignore_errors=True)
                return existing
            self._discard(target)
        for p in staged.iterdir():
            fsync_file(p)
        fsync_dir(staged)
        os.replace(staged, target)
        fsync_dir(self.versions_dir)
        fsync_dir(staged.parent)
        return InstalledModel(target, model.manifest, model.manifest.model_path(target))

    def activate(self, installed: InstalledModel, reason: str = "activated") -> None:
        """Make ``installed`` the active version (a no-op if it already is)."""
        with self._lock:
            self._activate(installed, reason)

    def _activate(self, installed: InstalledModel, reason: str) -> None:
        pointer = self._read_pointer()
        if pointer.get("active") == installed.key:
            return
        history = [k for k in pointer["history"] if k != installed.key] + [installed.key]
        self._write_pointer(installed.key, history,
                            {"event": "activate", "to": installed.key, "reason": reason})

    def rollback(self, reason: str = "rollback requested") -> InstalledModel:
        """Activate the previous whole version and record why; DeployError if there is none."""
        with self._lock:
            return self._rollback(reason)

    def _rollback(self, reason: str) -> InstalledModel:
        pointer = self._read_pointer()
        current = pointer.get("active")
        target = self.previous()
        if target is None:
            raise DeployError("no previous model version to roll back to")
        history = [k for k in pointer["history"] if k not in (current, target.key)]
        history.append(target.key)
        self._write_pointer(target.key, history, {"event": "rollback", "from": current,
                                                  "to": target.key, "reason": reason})
        log.warning("model rolled back from %s to %s: %s", current, target.key, reason)
        return target

    def seed(self, manifest_path: str | Path) -> InstalledModel:
        """Install the model next to ``manifest_path`` unless present; activate it if none is.

        A signature file ``<manifest>.sig`` next to the manifest is copied too.
        """
        with self._lock:
            return self._seed(Path(manifest_path))

    def _seed(self, src: Path) -> InstalledModel:
        manifest = load_manifest(src)
        installed = self.find(manifest)
        if installed is None:
            staged = self.new_staging(f"seed-{uuid.uuid4().hex[:12]}")
            shutil.copyfile(manifest.model_path(src.parent), staged / manifest.file)
            atomic_write_bytes(staged / MANIFEST_NAME, src.read_bytes())
            sig = src.with_name(src.name + ".sig")
            if sig.is_file():
                shutil.copyfile(sig, staged / SIGNATURE_NAME)
            try:
                installed = self.install(staged)
            finally:
                shutil.rmtree(staged, ignore_errors=True)
        if self.active() is None:
            self.activate(installed, reason=f"seeded from {src}")
        return installed

    def prune(self) -> list[str]:
        """Remove all but the ``keep`` newest versions in the history, plus the active one."""
        with self._lock:
            return self._prune()

    def _prune(self) -> list[str]:
        pointer = self._read_pointer()
        keep = set(pointer["history"][-self.keep:])
        if pointer.get("active"):
            keep.add(pointer["active"])
        removed = []
        for model in self.list():
            if model.key not in keep:
                self._discard(model.folder)
                removed.append(model.key)
        return removed

    def remove(self, installed: InstalledModel) -> None:
        """Delete an installed version that is not active (a push refused after install)."""
        with self._lock:
            if self._read_pointer().get("active") == installed.key:
                raise DeployError(f"{installed.key} is the active version; not removed")
            if installed.folder.is_dir():
                self._discard(installed.folder)

    def clean_staging(self, max_age_s: float) -> list[str]:
        """Remove staging folders untouched for ``max_age_s`` seconds (0: all of them)."""
        if not self.staging_dir.is_dir():
            return []
        removed = []
        now = time.time()
        for p in self.staging_dir.iterdir():
            if max_age_s <= 0 or now - _newest_mtime(p) >= max_age_s:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p.name)
        return removed

    def _discard(self, folder: Path) -> None:
        """Rename first, then delete: a crash mid-delete leaves a ``.trash-`` folder, not half a
        version."""
        trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}")
        os.replace(folder, trash)
        fsync_dir(folder.parent)
        shutil.rmtree(trash, ignore_errors=True)

    # -- start-up ---------------------------------------------------------------

    def choose_at_start(self, configured: str | Path) -> InstalledModel:
        """The model to start with, after ``recover``: the active one (a pushed model survives
        restarts), unless the manifest at ``configured`` names a model this store has not
        seen: then the operator changed the config, and it is activated and wins."""
        with self._lock:
            self._recover()
            known = self.find(load_manifest(configured)) is not None
            installed = self._seed(Path(configured))
            active = self.active()
            if not known and (active is None or active.key != installed.key):
                self._activate(installed, reason=f"config names {configured}")
                return installed
            return active or installed

    def recover(self) -> InstalledModel | None:
        """Clean what a crash can leave and return a whole active model (or None)."""
        with self._lock:
            return self._recover()

    def _recover(self) -> InstalledModel | None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        pointer = self._read_pointer()
        active = self._load(pointer.get("active"), verify=True)
        if active is not None:
            return active
        if pointer.get("active") is None and not pointer.get("damaged"):
            return None
        return self._fall_back(pointer)

    def _remove_leftovers(self) -> None:
        self.clean_staging(0)
        for p in self.root.glob(f".{POINTER_NAME}.tmp-*"):
            p.unlink(missing_ok=True)
        if self.versions_dir.is_dir():
            for p in self.versions_dir.iterdir():
                if p.name.startswith("."):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                elif p.is_dir():
                    _remove_temp_files(p)

    def _fall_back(self, pointer: dict[str, Any]) -> InstalledModel | None:
        bad = pointer.get("active")
        candidates = [k for k in reversed(pointer["history"]) if k != bad]
        candidates += [m.key for m in reversed(self.list()) if m.key not in candidates]
        for key in candidates:
            found = self._load(key, verify=True)
            if found is not None:
                history = [k for k in pointer["history"] if k not in (bad, key)] + [key]
                reason = (f"active version {bad} is damaged or missing" if bad
                          else f"{POINTER_NAME} was unreadable")
                self._write_pointer(key, history, {"event": "rollback", "from": bad,
                                                   "to": key, "reason": reason})
                log.error("model store: %s; fell back to %s", reason, key)
                return found
        log.error("model store: active version %s is damaged and no whole version remains", bad)
        return None


def _newest_mtime(path: Path) -> float:
    try:
        times = [path.stat().st_mtime]
        if path.is_dir():
            times += [p.stat().st_mtime for p in path.iterdir()]
        return max(times)
    except OSError:
        return 0.0


def _remove_temp_files(folder: Path) -> None:
    for p in folder.iterdir():
        if p.name.startswith(".") and ".tmp-" in p.name:
            p.unlink(missing_ok=True)
