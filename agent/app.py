"""Composition root: the one module that imports every stage. Starts them in order, stops
them in reverse."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2

from agent import __version__
from agent.capture.camera import CameraOptions, CameraSource
from agent.capture.inbox import FrameInbox
from agent.capture.samples import SampleSource
from agent.commands.control import RunningAgentControl
from agent.commands.handlers import build_command_handlers
from agent.commands.router import CommandRouter
from agent.config import AgentConfig, CameraSourceConfig, MqttSourceConfig
from agent.contract import (
    SOURCE_LOST,
    STATE_DEGRADED,
    STATE_ONLINE,
    STATE_PAUSED,
    STATE_STOPPED,
    StatusField,
    Topics,
)
from agent.health import HealthMonitor, ProgressPolicy, StatsRecorder, SystemdNotifier
from agent.inference.engine import DelegateSpec
from agent.inference.pipeline import (
    LoadedModel,
    Pipeline,
)
from agent.inference.postprocess import ChangeFilter
from agent.manifest import WindowSpec
from agent.metrics import AgentMetrics, MetricSources
from agent.models.loader import EngineFactory, EngineSettings, ModelLoader
from agent.models.receiver import ModelReceiver
from agent.models.store import ModelStore
from agent.models.switch import ModelSwitch
from agent.mqtt.homeassistant import SummaryPublisher, discovery_messages
from agent.mqtt.outbox import Outbox
from agent.mqtt.port import MqttPort
from agent.payloads import encode, labels_payload, status_body
from agent.records import Result

log = logging.getLogger(__name__)

SWAP_HOLD_FRAMES = 16


class AgentApp:
    """One agent: one model, its sources, the MQTT port, health and control."""

    def __init__(self, cfg: AgentConfig, *, engine_factory: EngineFactory | None = None,
                 notifier: SystemdNotifier | None = None,
                 watchdog_s: float | None = None, ready_timeout_s: float = 30.0) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.device.prefix, cfg.device.id, tuple(cfg.device.groups))
        self._engine_factory = engine_factory
        self.notifier = notifier or SystemdNotifier()
        self._watchdog_s = watchdog_s
        self._ready_timeout_s = ready_timeout_s
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self._ready = threading.Event()
        self._ready_timer: threading.Timer | None = None
        self._stopped = threading.Event()
        self._source_states: dict[str, str] = {}
        self._state = STATE_ONLINE
        self._reason: str | None = None
        self.cameras: list[CameraSource] = []
        self.sample_sources: list[SampleSource] = []
        self._result_taps: list[Callable[[Result, bool], None]] = []
        self.metrics: AgentMetrics | None = None
        p = cfg.publish
        self._change_filter = ChangeFilter(
            p.hysteresis, p.min_interval_ms / 1000.0, on_change=p.on_change) \
            if p.on_change or p.min_interval_ms else None

    # -- models ----------------------------------------------------------------

    def _model_switch(self, store: ModelStore) -> ModelSwitch:
        m, d = self.cfg.model, self.cfg.model.delegate
        settings = EngineSettings(m.runtime, DelegateSpec(d.kind, d.library, dict(d.options),
                                                          d.fallback), m.num_threads)
        return ModelSwitch(ModelLoader(settings, self._engine_factory), store,
                           device_id=self.topics.device_id, top_k=self.cfg.publish.top_k,
                           min_score=self.cfg.publish.min_score,
                           publish_result=self._publish_model_result,
                           on_changed=self._on_model_changed)

    @property
    def active_model(self) -> LoadedModel:
        """The model inferring now (the first one loaded, until the pipeline exists)."""
        return self.switch.active

    # -- start -----------------------------------------------------------------

    def start(self) -> None:
        """Build every stage, then start them in order: metrics, port, model receiver,
        inference, sources, health. ``stop`` ends them in reverse."""
        self._build()
        self._subscribe()
        self.outbox.on_health(lambda _problem: self.refresh_status())
        self.refresh_status()  # degraded from the start when the disk refuses the outbox
        if self.metrics is not None:
            self.metrics.start()
        self.port.start()
        self.receiver.start()
        self.pipeline.start()
        for cam in self.cameras:
            cam.start()
        self.health.start()
        self._arm_ready()
        log.info("agent %s started: device %s, model %s %s, runtime %s", __version__,
                 self.topics.device_id, self.model.manifest.name, self.model.manifest.version,
                 self.runtime_info())

    def _build(self) -> None:
        cfg = self.cfg
        if cfg.pipeline.opencv_threads is not None:
            cv2.setNumThreads(cfg.pipeline.opencv_threads)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(cfg.state_dir / "models", keep=cfg.delivery.keep_versions)
        self.switch = self._model_switch(self.store)
        self.model = self.switch.start(self.store.choose_at_start(cfg.model.manifest),
                                       cfg.model.manifest)
        self.outbox = Outbox(cfg.outbox_path(), cfg.outbox) if cfg.outbox.enabled \
            else Outbox.disabled(cfg.outbox)
        self.port = MqttPort(cfg.mqtt, self.topics, outbox=self.outbox, outbox_cfg=cfg.outbox,
                             status_payload=self._status_payload,
                             on_connection=self._on_connection)
        self.inbox = FrameInbox(default_depth=cfg.pipeline.queue_depth, max_streams=max(
            1, sum(s.max_streams for s in cfg.sources if isinstance(s, MqttSourceConfig))))
        self.pipeline = Pipeline(
            self.model, self.inbox, self._publish_result,
            max_frame_age_ms=cfg.pipeline.max_frame_age_ms,
            rollback_after_failures=cfg.pipeline.rollback_after_failures,
            probation_frames=cfg.pipeline.probation_frames,
            on_rollback=self.switch.on_automatic_rollback,
            on_first_inference=self._on_first_inference)
        self.switch.attach(self.pipeline)
        self.health = HealthMonitor(
            self.notifier, ProgressPolicy(self.pipeline, self.cameras, cfg.health.stall_s),
            self._status_line, self._publish_stats,
            stats_interval_s=cfg.publish.stats_interval_s, watchdog_s=self._watchdog_s)
        self.router = self._build_router()
        self.receiver = self._build_receiver()
        self._build_sources()
        self._build_result_taps()
        self.stats = StatsRecorder(
            self.pipeline, self.port, self.outbox, cameras=self.cameras,
            sample_sources=self.sample_sources, change_filter=self._change_filter,
            commands=self.router, watchdog=self.health, started_mono=self.started_mono)

    def _arm_ready(self) -> None:
        """READY=1 after the first inference; a sequence model waits for samples that may
        never come, so it is ready at once; a frame model after ``ready_timeout_s`` anyway."""
        if self.model.manifest.task == "sequence":
            self._on_first_inference()
        else:
            self._ready_timer = threading.Timer(self._ready_timeout_s, self._ready_anyway)
            self._ready_timer.daemon = True
            self._ready_timer.start()

    def _build_router(self) -> CommandRouter:
        control = RunningAgentControl(
            self.pipeline, self.port, self.topics, self.store, self.health, self.started_mono,
            rollback=self.switch.rollback, runtime_info=self.runtime_info,
            refresh_status=self.refresh_status)
        return CommandRouter(
            self.topics, build_command_handlers(control), self._reply,
            response_topic_filters=self.cfg.commands.response_topic_filters)

    def _build_receiver(self) -> ModelReceiver:
        return ModelReceiver(
            self.store, self.topics, trusted_keys=self.cfg.delivery.trusted_keys,
            max_model_bytes=self.cfg.delivery.max_model_bytes,
            staging_timeout_s=self.cfg.delivery.staging_timeout_s, loader=self.switch.loader,
            target=self.switch, publish_result=self._publish_model_result,
            hold_frames=lambda: self.inbox.hold(SWAP_HOLD_FRAMES),
            release_frames=self.inbox.release, on_restart=self.refresh_status)

    def _build_sources(self) -> None:
        """Cameras for a frame model; MQTT sample sources for a sequence model."""
        sequence = self.model.manifest.task == "sequence"
        for src in self.cfg.sources:
            if isinstance(src, MqttSourceConfig) and sequence:
                self.sample_sources.append(
                    SampleSource(src, self.topics, self.inbox, self._serving_window))
            elif isinstance(src, CameraSourceConfig):
                self.inbox.register(src.name, depth=1)
                self.cameras.append(CameraSource(
                    camera_options(src), self.inbox, on_state=self._on_source_state))

    def _subscribe(self) -> None:
        for f in self.topics.command_filters():
            self.port.subscribe(f, self.router.handle, kind="command")
        for f in self.receiver.filters():
            self.port.subscribe(f, lambda msg: self.receiver.handle(msg.topic, msg.payload),
                                kind="model")
        for samples in self.sample_sources:
            for f in samples.filters():
                self.port.subscribe(f, samples.handle, kind="sample")

    def _serving_window(self) -> WindowSpec | None:
        return self.pipeline.model.manifest.window

    # -- results ---------------------------------------------------------------

    def _publish_result(self, result: Result) -> None:
        published = self._change_filter is None or self._change_filter.passes(
            result.source, result.labels)
        if published:
            payload = labels_payload(result, self.pipeline.run_id)
            self.port.publish_durable(self.topics.labels, payload, qos=self.cfg.mqtt.qos)
        for tap in self._result_taps:
            tap(result, published)

    def _build_result_taps(self) -> None:
        """Optional listeners of every result (metrics, Home Assistant's summary), chosen once
        at start so the frame loop checks no flags."""
        cfg = self.cfg
        if cfg.homeassistant.enabled:
            self._result_taps.append(SummaryPublisher(
                self.topics, self.port.publish, cfg.homeassistant.state_interval_s,
                cameras=self._camera_names()))
        if cfg.metrics.enabled:
            self.metrics = AgentMetrics(cfg.metrics, MetricSources(
                self.pipeline, self.port.stats, lambda: self.active_model.manifest,
                lambda: (self.runtime_info() or {}).get("delegate"),
                lambda: self._change_filter.suppressed if self._change_filter else 0,
                lambda: sum(s.rejected for s in self.sample_sources), self.started_mono))
            self._result_taps.append(self.metrics.observe)

    def _reply(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        self.port.publish(topic, payload, qos=1, correlation_data=correlation)

    def _publish_model_result(self, body: dict) -> None:
        self.port.publish(self.topics.model("result"), encode(body), qos=1)
        self.refresh_status()

    def _on_model_changed(self, before: LoadedModel, after: LoadedModel) -> None:
        """Called by the model switch once ``after`` serves (a push or a rollback)."""
        self.refresh_status()

    # -- status and health -----------------------------------------------------

    def runtime_info(self) -> dict | None:
        info = getattr(self.active_model.engine, "info", None)
        return info.as_dict() if info is not None else None

    def _status_payload(self, state: str, reason: str | None) -> dict:
        m = self.active_model.manifest
        return status_body(state, device=self.topics.device_id, groups=list(self.topics.groups),
                           model={StatusField.MODEL_NAME: m.name,
                                  StatusField.MODEL_VERSION: m.version,
                                  StatusField.MODEL_SHA256: m.sha256,
                                  StatusField.MODEL_TASK: m.task},
                           since=self.started_at, runtime=self.runtime_info(), reason=reason,
                           sources=dict(self._source_states),
                           delivery=self.receiver.health() if hasattr(self, "receiver") else None)

    def _on_connection(self, connected: bool, reason: str | None) -> None:
        log.info("MQTT %s%s", "connected" if connected else "disconnected",
                 f": {reason}" if reason else "")
        ha = self.cfg.homeassistant
        if connected and ha.enabled:
            for topic, payload in discovery_messages(self.topics, ha.discovery_prefix,
                                                     self._camera_names()):
                self.port.publish(topic, payload, qos=1, retain=True)

    def _camera_names(self) -> list[str]:
        return [s.name for s in self.cfg.sources if isinstance(s, CameraSourceConfig)]

    def _on_source_state(self, name: str, state: str, reason: str | None) -> None:
        self._source_states[name] = state
        self.refresh_status()

    def refresh_status(self) -> None:
        lost = [n for n, s in self._source_states.items() if s == SOURCE_LOST]
        problems = [f"source lost: {', '.join(lost)}"] if lost else []
        if self.outbox.health is not None:
            problems.append(self.outbox.health)
        state = STATE_DEGRADED if problems else STATE_PAUSED if self.pipeline.paused \
            else STATE_ONLINE
        reason = "; ".join(problems) or ("paused by command" if state == STATE_PAUSED
                                         else None)
        if self._stopped.is_set():
            return
        self._state, self._reason = state, reason
        self.port.set_state(state, reason)

    def _on_first_inference(self) -> None:
        if not self._ready.is_set():
            self._ready.set()
            self.notifier.notify("READY=1", f"STATUS={self._status_line()}")

    def _ready_anyway(self) -> None:
        if not self._ready.is_set() and not self._stopped.is_set():
            log.warning("no frame inferred within %.0fs of start; telling systemd we are ready "
                        "(degraded) so the unit does not restart in a loop",
                        self._ready_timeout_s)
            self._on_first_inference()

    def _status_line(self) -> str:
        fps = self.stats.last_fps
        return (f"{self._state}; model {self.pipeline.model.manifest.name} "
                f"{self.pipeline.model.manifest.version}; {fps:.1f} fps")

    def _publish_stats(self) -> None:
        self.port.publish(self.topics.stats, encode(self.stats.record().as_dict()), qos=0,
                          retain=True)

    # -- stop ------------------------------------------------------------------

    def stop(self) -> None:
        """Stop in reverse order within about two seconds, leaving ``stopped`` retained."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.notifier.notify("STOPPING=1")
        if self._ready_timer is not None:
            self._ready_timer.cancel()
        self.health.stop(timeout=0.5)
        for cam in self.cameras:
            cam.stop(timeout=0.5)
        self.pipeline.stop(timeout=0.5)
        self.receiver.stop(timeout=0.5)
        self.port.stop(final_state=STATE_STOPPED, flush_timeout=1.0)
        self.outbox.close()
        if self.metrics is not None:
            self.metrics.stop()
        log.info("agent stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)


def camera_options(src: CameraSourceConfig) -> CameraOptions:
    return CameraOptions(
        name=src.name, uri=src.uri, loop=src.loop, realtime=src.realtime,
        target_fps=src.target_fps, width=src.width, height=src.height, fourcc=src.fourcc,
        ffmpeg_options=src.ffmpeg_options, open_timeout_ms=src.open_timeout_ms,
        read_timeout_ms=src.read_timeout_ms, reconnect_min_s=src.reconnect_min_s,
        reconnect_max_s=src.reconnect_max_s)
