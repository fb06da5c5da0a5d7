"""systemd notification (READY, WATCHDOG, STATUS, STOPPING) and the periodic stats record."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)


class SystemdNotifier:
    """sd_notify(3) over the datagram socket named by ``NOTIFY_SOCKET``; a no-op without it."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._addr: str | bytes | None = None
        if address:
            self._addr = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(default: float | None = None) -> float | None:
    """Half of systemd's ``WATCHDOG_USEC``, when the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if usec and (not pid or pid == str(os.getpid())):
        try:
            return int(usec) / 2e6
        except ValueError:
            return default
    return default


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return 0.0


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def percentile(values: Iterable[float], q: float) -> float | None:
    arr = np.fromiter(values, dtype=np.float64)
    return round(float(np.percentile(arr, q)), 3) if arr.size else None


class HealthMonitor:
    """One thread: pets the watchdog while ``progress_ok()`` holds, sends STATUS lines, and
    calls ``publish_stats`` every ``stats_interval_s``."""

    def __init__(self, notifier: SystemdNotifier, progress_ok: Callable[[], bool],
                 status_line: Callable[[], str], publish_stats: Callable[[], None], *,
                 stats_interval_s: float = 10.0, watchdog_s: float | None = None,
                 tick_s: float = 0.5) -> None:
        self._notifier = notifier
        self._progress_ok = progress_ok
        self._status_line = status_line
        self._publish_stats = publish_stats
        self.stats_interval_s = stats_interval_s
        self.watchdog_s = watchdog_s if watchdog_s is not None else watchdog_interval_s()
        self._tick_s = min(tick_s, self.watchdog_s) if self.watchdog_s else tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.withheld = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_stats = time.monotonic() + self.stats_interval_s
        next_pet = time.monotonic()
        while not self._stop.wait(self._tick_s):
            now = time.monotonic()
            if self.watchdog_s and now >= next_pet:
                next_pet = now + self.watchdog_s
                self._pet()
            if now >= next_stats:
                next_stats = now + self.stats_interval_s
                try:
                    self._publish_stats()
                except Exception:
                    log.exception("publishing stats failed")

    def _pet(self) -> None:
        try:
            ok = self._progress_ok()
            status = self._status_line()
        except Exception:
            log.exception("health check failed")
            ok, status = False, "health check failed"
        if ok:
            self._notifier.notify("WATCHDOG=1", f"STATUS={status}")
        else:
            self.withheld += 1
            self._notifier.notify(f"STATUS=stalled: {status}")
            log.warning("pipeline made no progress: withholding the watchdog ping")
