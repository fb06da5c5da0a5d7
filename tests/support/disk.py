"""Disk faults for tests, for real: a small tmpfs that can be filled, and files made
immutable (``chattr +i``), so writes through open descriptors fail like a disk gone
read-only. Both need root; ``disk_faults_available`` says whether they work here."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path


def disk_faults_available() -> bool:
    return os.geteuid() == 0 and all(
        subprocess.run(["which", tool], capture_output=True).returncode == 0
        for tool in ("mount", "umount", "chattr"))


class SmallFilesystem:
    """A tmpfs of ``size_kb`` KiB mounted at ``path`` until ``close``."""

    def __init__(self, path: Path, size_kb: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                       check=True, capture_output=True)
        self._filler = path / ".filler"

    def fill(self) -> None:
        """Take every free byte (a file written until ENOSPC)."""
        with open(self._filler, "ab", buffering=0) as f:
            for size in (1 << 16, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while f.write(b"\0" * size):
                        pass

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def set_immutable(paths: list[Path], on: bool) -> None:
    """``chattr +i`` / ``-i`` (ext4 and the like): writes fail, even through open files.
    Leave SQLite's ``-shm`` file alone: it is memory-mapped, and an immutable mapping
    kills the process with SIGBUS."""
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        subprocess.run(["chattr", "+i" if on else "-i", *existing], check=True,
                       capture_output=True)
