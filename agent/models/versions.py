"""Version order of pushed models: versions only go up unless a signed push says ``rollback``.

Order is natural: a version is split into runs of digits and runs of letters; digits compare
as numbers, letters as text, digits above letters at the same place, and a version that
extends another is higher (``1.9 < 1.10 < 2``, ``2 < 2.0.1``). The highest version a device
has ever activated is kept in ``<store>/highest_version.json``, so a replayed old push stays
refused after a restart or after the old folders are pruned.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from agent.files import atomic_write_bytes

log = logging.getLogger(__name__)

HIGHEST_NAME = "highest_version.json"
_TOKEN = re.compile(r"\d+|[A-Za-z]+")


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((1, int(t), "") if t.isdigit() else (0, 0, t.lower())
                 for t in _TOKEN.findall(version))


def highest(versions: Iterable[str | None]) -> str | None:
    present = [v for v in versions if v]
    return max(present, key=version_key) if present else None


class VersionFloor:
    """The highest version seen, persisted next to the model store."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / HIGHEST_NAME

    def get(self) -> str | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); the installed versions still set the floor",
                        self.path, exc)
            return None
        version = data.get("version") if isinstance(data, dict) else None
        return version if isinstance(version, str) else None

    def note(self, version: str) -> None:
        """Raise the floor to ``version`` if it is higher."""
        current = self.get()
        if current is not None and version_key(version) <= version_key(current):
            return
        atomic_write_bytes(self.path, (json.dumps({"version": version}) + "\n").encode())

    def check(self, version: str, rollback: bool, others: Iterable[str | None]) -> None:
        """Raise ValueError naming the floor when ``version`` is below it and not a rollback."""
        floor = highest([self.get(), *others])
        if rollback or floor is None or version_key(version) >= version_key(floor):
            return
        raise ValueError(f"version {version} is lower than {floor}, the highest this device "
                         f"has seen; a downgrade must be signed as a rollback "
                         f"(edge-deploy push --rollback)")
