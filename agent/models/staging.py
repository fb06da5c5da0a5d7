"""One push being received: its staging folder, the pre-sized part file, and which chunks
arrived (one byte per chunk, never per byte of model). Owned by the receiver's worker."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from agent.files import atomic_write_bytes, sha256_file
from agent.manifest import ModelManifest
from agent.models.store import MANIFEST_NAME, SIGNATURE_NAME
from agent.models.wire import PART_FILE, PushOffer, Refused


class StagedPush:
    def __init__(self, offer: PushOffer, manifest: ModelManifest, via: str,
                 now: float) -> None:
        self.offer = offer
        self.manifest = manifest
        self.via = via
        self.last_activity = now
        self.folder: Path | None = None
        self._fd: int | None = None
        self._have = bytearray(offer.chunks)
        self.received = 0
        self.raw_message: dict[str, Any] = {}  # as decoded: a QoS 1 duplicate equals it

    @property
    def push_id(self) -> str:
        return self.offer.push_id

    def open(self, folder: Path) -> None:
        self.folder = folder
        self._fd = os.open(folder / PART_FILE, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, self.manifest.size_bytes)

    def write_chunk(self, index: int, data: bytes) -> None:
        offer = self.offer
        if index >= offer.chunks:
            raise Refused(f"chunk index {index} is beyond the {offer.chunks} announced")
        offset = index * offer.chunk_size
        expected = min(offer.chunk_size, self.manifest.size_bytes - offset)
        if len(data) != expected:
            raise Refused(f"chunk {index} has {len(data)} bytes, expected {expected}")
        if self._fd is None:
            raise Refused("push has no staging file")
        os.pwrite(self._fd, data, offset)
        if not self._have[index]:
            self._have[index] = 1
            self.received += 1

    def check_complete(self) -> None:
        missing = self.offer.chunks - self.received
        if missing:
            first = self._have.index(0)
            raise Refused(f"{missing} of {self.offer.chunks} chunks missing (first: {first})")

    def seal(self) -> Path:
        """fsync the received bytes, check them, and give them their final names."""
        if self._fd is None or self.folder is None:
            raise Refused("push has no staging file")
        os.fsync(self._fd)
        self.close()
        folder = self.folder
        part = folder / PART_FILE
        digest = sha256_file(part)
        if digest != self.manifest.sha256:
            raise Refused(f"sha256 of the received bytes is {digest[:16]}..., the manifest "
                          f"says {self.manifest.sha256[:16]}...")
        target = self.manifest.model_path(folder)
        if target.resolve().parent != folder.resolve() or target.name in (MANIFEST_NAME,
                                                                          SIGNATURE_NAME):
            raise Refused(f"model file name {self.manifest.file!r} is not allowed")
        os.replace(part, target)
        atomic_write_bytes(folder / MANIFEST_NAME,
                           (json.dumps(self.offer.manifest, indent=2) + "\n").encode())
        signed = {**self.offer.signed_body(), "signature": self.offer.signature}
        atomic_write_bytes(folder / SIGNATURE_NAME, (json.dumps(signed) + "\n").encode())
        return folder

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def drop(self) -> None:
        self.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
