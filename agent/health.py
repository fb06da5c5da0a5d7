"""systemd notification (READY, WATCHDOG, STATUS, STOPPING), the progress policy the watchdog
follows, and the periodic stats record."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from agent.capture.camera import CameraSource
from agent.capture.samples import SampleSource
from agent.commands.router import CommandRouter
from agent.contract import StatsRecord
from agent.inference.pipeline import Pipeline
from agent.inference.postprocess import ChangeFilter
from agent.mqtt.outbox import Outbox
from agent.mqtt.port import MqttPort

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


class ProgressPolicy:
    """The watchdog's test, true while the agent does its work: it inferred within ``stall_s``,
    or it has nothing to do (paused, or every camera waits for a reason or delivered lately).
    False when an invoke hangs longer than ``stall_s`` or frames wait and none is inferred."""

    def __init__(self, pipeline: Pipeline, cameras: Sequence[CameraSource],
                 stall_s: float) -> None:
        self._pipeline = pipeline
        self._cameras = cameras
        self.stall_s = stall_s

    def __call__(self) -> bool:
        now = time.monotonic()
        stall, pipeline = self.stall_s, self._pipeline
        if now - pipeline.last_progress < stall:
            return True
        busy = pipeline.busy_since
        if busy is not None and now - busy > stall:
            return False  # stuck inside the interpreter
        if pipeline.inbox.pending() > 0:
            return False  # frames waiting but nothing is inferred
        if pipeline.paused:
            return True
        return all(cam.waiting_legitimately or now - cam.last_progress_mono < stall
                   for cam in self._cameras)


class StatsRecorder:
    """Builds each ``StatsRecord`` from the stages' own counters (every counter a stage keeps is
    reported here); remembers the last one's output rate (``last_fps``) for the status line."""

    def __init__(self, pipeline: Pipeline, port: MqttPort, outbox: Outbox, *,
                 cameras: Sequence[CameraSource], sample_sources: Sequence[SampleSource],
                 change_filter: ChangeFilter | None, commands: CommandRouter,
                 watchdog: HealthMonitor, started_mono: float) -> None:
        self._pipeline = pipeline
        self._port = port
        self._outbox = outbox
        self._cameras = cameras
        self._sample_sources = sample_sources
        self._change_filter = change_filter
        self._commands = commands
        self._watchdog = watchdog
        self._started_mono = started_mono
        self._prev = (time.monotonic(), 0, 0)
        self.last_fps = 0.0

    def record(self) -> StatsRecord:
        now = time.monotonic()
        pl, inbox, n = self._pipeline, self._pipeline.inbox, self._pipeline.counters
        t0, put0, inf0 = self._prev
        put, inf = inbox.put_count, n.inferences
        dt = max(now - t0, 1e-6)
        self._prev = (now, put, inf)
        self.last_fps = (inf - inf0) / dt
        port, cams, samples = self._port.stats(), self._cameras, self._sample_sources
        inbound = port.get("inbound_dropped") or {}
        top1 = list(pl.top1)
        return StatsRecord(
            fps_in=round((put - put0) / dt, 2), fps_out=round(self.last_fps, 2),
            frames_read=sum(c.frames_read for c in cams), frames_in=put, inferences=inf,
            dropped_target_fps=sum(c.frames_skipped for c in cams),
            dropped_overwritten=inbox.overwritten, dropped_stale=n.dropped_stale,
            dropped_paused=n.paused_skipped, corrupt_frames=sum(c.corrupt_frames for c in cams),
            frame_errors=n.frame_errors, inference_errors=n.inference_errors,
            rollbacks=n.rollbacks, source_reconnects=sum(c.reconnects for c in cams),
            file_loops=sum(c.loops for c in cams), samples_in=sum(s.accepted for s in samples),
            sample_errors=sum(s.rejected for s in samples),
            streams_evicted=inbox.evictions.total + sum(s.evicted for s in samples),
            suppressed=self._change_filter.suppressed if self._change_filter else 0,
            published=port.get("published"), dropped_inbound=sum(inbound.values()),
            commands_handled=self._commands.handled, commands_rejected=self._commands.rejected,
            commands_ignored=self._commands.ignored,
            watchdog_withheld=self._watchdog.withheld,
            inference_ms_p50=percentile(pl.inference_ms, 50),
            inference_ms_p95=percentile(pl.inference_ms, 95),
            frame_age_ms_p50=percentile(pl.frame_age_ms, 50),
            outbox_depth=port.get("outbox_depth"), outbox_dropped=port.get("outbox_dropped"),
            outbox_set_aside=port.get("set_aside"), outbox_expired=self._outbox.expired,
            mqtt_reconnects=port.get("reconnects"), link_probes=port.get("link_probes"),
            outbox_durable=bool(port.get("outbox_durable", True)),
            outbox_memory_dropped=port.get("outbox_memory_dropped"),
            inbound_dropped_commands=inbound.get("command"),
            inbound_dropped_model=inbound.get("model"),
            inbound_dropped_samples=inbound.get("sample"),
            rss_mb=rss_mb(), open_fds=open_fds(), uptime_s=round(now - self._started_mono, 1),
            mean_top1=round(sum(top1) / len(top1), 4) if top1 else None,
            paused=pl.paused, ts=round(time.time(), 3), sources=pl.source_records())
