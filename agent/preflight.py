"""What ``edge-agent check-config`` verifies on the disk after the config itself: the things
``run`` would otherwise fail on at start-up or later. One ``key: value: what is wrong`` line
per problem, in the config's own key names."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from agent.config import AgentConfig, CameraSourceConfig
from agent.contract import load_manifest, sha256_file
from agent.errors import EdgeError


def run_time_problems(cfg: AgentConfig) -> list[str]:
    problems = _writable_folder("state_dir", cfg.state_dir)
    if cfg.outbox.enabled and cfg.outbox.path is not None:
        problems += _writable_folder("outbox.path", cfg.outbox.path.parent)
    problems += _model_file(cfg)
    problems += _video_files(cfg)
    problems += _trusted_keys(cfg)
    if cfg.mqtt.password_file is not None and cfg.mqtt.password_file.is_file() \
            and not os.access(cfg.mqtt.password_file, os.R_OK):
        problems.append(f"mqtt.password_file: {str(cfg.mqtt.password_file)!r}: not readable")
    return problems


def _writable_folder(key: str, folder: Path) -> list[str]:
    """The folder, or the nearest folder above it that exists (the agent creates the rest),
    must take a real file: ``os.access`` says yes to root on a read-only mount."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [f"{key}: {str(folder)!r}: cannot be created: {str(probe)!r} is not a folder"]
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".edge-agent-check-"):
            pass
    except OSError as exc:
        verb = "cannot be written" if probe == folder else \
            f"cannot be created in {str(probe)!r}"
        return [f"{key}: {str(folder)!r}: {verb}: {exc.strerror}"]
    return []


def _model_file(cfg: AgentConfig) -> list[str]:
    key, where = "model.manifest", repr(str(cfg.model.manifest))
    try:
        manifest = load_manifest(cfg.model.manifest)
    except EdgeError:
        return []  # reported by semantic_problems
    path = manifest.model_path(cfg.model.manifest.parent)
    if not path.is_file():
        return []  # reported by semantic_problems
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return [f"{key}: {where}: model file {manifest.file!r} cannot be read: {exc.strerror}"]
    if digest != manifest.sha256:
        return [f"{key}: {where}: model file {manifest.file!r} has sha256 {digest[:16]}..., "
                f"the manifest says {manifest.sha256[:16]}...: the file was changed or "
                "belongs to another manifest"]
    return []


def _video_files(cfg: AgentConfig) -> list[str]:
    problems = []
    for i, src in enumerate(cfg.sources):
        if not isinstance(src, CameraSourceConfig) or not isinstance(src.uri, str):
            continue
        uri = src.uri
        if "://" in uri or uri.isdigit() or uri.startswith("/dev/"):
            continue  # devices and streams come and go; the agent waits for them
        path = Path(uri)
        if not path.is_file():
            problems.append(f"sources.{i}.uri: {uri!r}: video file not found")
        elif not os.access(path, os.R_OK):
            problems.append(f"sources.{i}.uri: {uri!r}: video file not readable")
    return problems


def _trusted_keys(cfg: AgentConfig) -> list[str]:
    from agent.models.signing import load_public_key

    problems = []
    for i, spec in enumerate(cfg.delivery.trusted_keys):
        try:
            load_public_key(spec)
        except EdgeError as exc:
            problems.append(f"delivery.trusted_keys.{i}: {spec[:80]!r}: {exc}")
    return problems
