"""Opt-in Prometheus metrics on ``http://<host>:<port>/metrics`` (config section ``metrics``).

Counts the stages already keep (frames, drops, outbox) are read at scrape time, so nothing
is counted twice and the frame loop pays nothing for them; only the two latency histograms
and the per-label counter are observed per result. No device id on any series: the scrape
target names the device. Names follow Prometheus conventions (``_total``, ``_seconds``,
``_bytes``) and Frigate's words where it has them (``skipped`` frames, ``inference``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from agent.config import MetricsConfig
from agent.errors import EdgeError
from agent.inference.pipeline import Pipeline
from agent.manifest import ModelManifest
from agent.records import Result

log = logging.getLogger(__name__)

PREFIX = "edge_agent"
OTHER_LABEL = "other"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class MetricSources:
    """Where the scrape reads the counts the stages keep."""

    pipeline: Pipeline
    port_stats: Callable[[], dict[str, Any]]
    model: Callable[[], ModelManifest]
    delegate: Callable[[], str | None]
    suppressed: Callable[[], int]
    samples_rejected: Callable[[], int]
    started_mono: float


class _StageCollector(Collector):
    def __init__(self, src: MetricSources) -> None:
        self._src = src

    def collect(self) -> Iterator[Any]:
        src, pl = self._src, self._src.pipeline
        c, inbox, port = pl.counters, pl.inbox, src.port_stats()
        yield _counter("frames_captured", "frames and sample windows taken in by the sources",
                       inbox.put_count)
        yield _counter("frames_inferred", "frames and windows run through the model",
                       c.inferences)
        dropped = CounterMetricFamily(f"{PREFIX}_frames_dropped", "frames not inferred, by "
                                      "reason (skipped: overwritten by a newer frame)",
                                      labels=["reason"])
        for reason, value in (("stale", c.dropped_stale), ("skipped", inbox.overwritten),
                              ("frame_error", c.frame_errors), ("paused", c.paused_skipped),
                              ("inference_error", c.inference_errors),
                              ("sample_rejected", src.samples_rejected())):
            dropped.add_metric([reason], value)
        yield dropped
        outbox_dropped = int(port.get("outbox_dropped") or 0)
        set_aside = int(port.get("set_aside") or 0)
        yield _counter("labels_published", "labels acknowledged by the broker",
                       port.get("published") or 0)
        yield _counter("labels_lost", "labels that will never be delivered (outbox dropped or "
                       "set aside)", outbox_dropped + set_aside)
        yield _counter("labels_suppressed", "labels held back by publish.on_change / "
                       "min_interval_ms (by design, not lost)", src.suppressed())
        yield _counter("outbox_dropped", "messages the outbox dropped (full or too old)",
                       outbox_dropped)
        yield _counter("outbox_memory_dropped", "the part of outbox_dropped lost to the memory "
                       "queue's bound while the disk refused", port.get("outbox_memory_dropped")
                       or 0)
        yield _counter("outbox_set_aside", "messages moved to the outbox's dead letters",
                       set_aside)
        yield _counter("mqtt_reconnects", "MQTT reconnections since start",
                       port.get("reconnects") or 0)
        yield _gauge("outbox_depth", "messages waiting in the outbox", port.get("outbox_depth"))
        durable = port.get("outbox_durable")
        yield _gauge("outbox_durable", "1 while the outbox writes to disk, 0 while it holds "
                     "results in memory (the disk refused)", None if durable is None
                     else int(bool(durable)))
        yield _gauge("mqtt_connected", "1 while connected to the broker",
                     1 if port.get("connected") else 0)
        yield _gauge("paused", "1 while paused by command", 1 if pl.paused else 0)
        ages = pl.frame_age_ms
        yield _gauge("frame_age_seconds", "age of the last inferred frame at inference",
                     ages[-1] / 1000.0 if ages else None)
        yield _gauge("uptime_seconds", "seconds since the agent started",
                     time.monotonic() - src.started_mono)
        m = src.model()
        info = InfoMetricFamily(f"{PREFIX}_model", "the model inferring now")
        info.add_metric([], {"name": m.name, "version": m.version, "sha256": m.sha256,
                             "quantize": str(m.quantize), "task": m.task,
                             "delegate": src.delegate() or "unknown"})
        yield info


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
    if value is not None:
        family.add_metric([], float(value))
    return family


class AgentMetrics:
    """The registry, the per-result observations and the HTTP server."""

    def __init__(self, cfg: MetricsConfig, sources: MetricSources) -> None:
        self.cfg = cfg
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StageCollector(sources))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._inference = Histogram(f"{PREFIX}_inference_seconds", "model invoke time per "
                                    "frame", buckets=LATENCY_BUCKETS, registry=self.registry)
        self._latency = Histogram(f"{PREFIX}_capture_to_publish_seconds", "capture to "
                                  "hand-over to MQTT, per published label", buckets=LATENCY_BUCKETS,
                                  registry=self.registry)
        self._labels = Counter(f"{PREFIX}_label_detections", "top-1 label of each published "
                               f"result (at most {cfg.max_label_series} labels, then "
                               f"'{OTHER_LABEL}')", ["label"], registry=self.registry)
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._server: Any = None
        self.port: int | None = None

    def observe(self, result: Result, published: bool, mono_now: float | None = None) -> None:
        self._inference.observe(result.inference_ms / 1000.0)
        if not published:
            return
        now = time.monotonic() if mono_now is None else mono_now
        self._latency.observe(max(0.0, now - result.frame_mono))
        if result.labels:
            self._labels.labels(self._bounded(result.labels[0].label)).inc()

    def _bounded(self, label: str) -> str:
        if label in self._known:
            return label
        with self._lock:
            if len(self._known) < self.cfg.max_label_series:
                self._known.add(label)
                return label
        return OTHER_LABEL

    def start(self) -> None:
        try:
            self._server, _thread = start_http_server(self.cfg.port, addr=self.cfg.host,
                                                      registry=self.registry)
        except OSError as exc:
            raise EdgeError(f"metrics: cannot listen on {self.cfg.host}:{self.cfg.port}: "
                            f"{exc.strerror or exc}") from exc
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", self.cfg.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

