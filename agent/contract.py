"""The product's MQTT contract in one place: topics, states and payload fields (the model
manifest, the contract with the converter, is ``agent/manifest.py``).

Every other module takes topic names, states and payload shapes from here.
See ``shared/PRODUCT.md`` for the prose version.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

DEFAULT_PREFIX = "edge"

STATE_ONLINE = "online"
STATE_OFFLINE = "offline"
STATE_STOPPED = "stopped"
STATE_DEGRADED = "degraded"
STATE_PAUSED = "paused"
LIVE_STATES = (STATE_ONLINE, STATE_DEGRADED, STATE_PAUSED)

# The state of each source in ``status.sources``.
SOURCE_STARTING, SOURCE_OK, SOURCE_LOST, SOURCE_ENDED = "starting", "ok", "lost", "ended"

# The ``result`` of a ``<base>/model/result`` message (built by payloads.model_result_body).
RESULT_OK, RESULT_NOOP, RESULT_REFUSED, RESULT_ERROR = "ok", "noop", "refused", "error"
RESULT_ROLLED_BACK = "rolled_back"  # sent by the agent after a rollback, without a push id
RESULT_SUCCESS = (RESULT_OK, RESULT_NOOP)


def default_device_id() -> str:
    return socket.gethostname().split(".")[0] or "device"


class Topics:
    """Topic names for one device. The prefix is applied here and nowhere else."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, device_id: str | None = None,
                 groups: tuple[str, ...] = ()) -> None:
        self.prefix = prefix.strip("/")
        self.device_id = device_id or default_device_id()
        self.groups = tuple(groups)
        self.base = f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def labels(self) -> str:
        return f"{self.base}/labels"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def cmd(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def cmd_result(self, name: str) -> str:
        return f"{self.base}/cmd/{name}/result"

    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    def summary(self, camera: str | None = None) -> str:
        """Low-rate, retained top label for dashboards (Home Assistant), per camera."""
        return f"{self.base}/summary/{camera}" if camera else f"{self.base}/summary"

    def inputs(self, stream: str) -> str:
        return f"{self.base}/in/{stream}"

    def model(self, part: str) -> str:
        """``part`` is ``manifest``, ``chunk``, ``commit`` or ``result``."""
        return model_part(self.model_base, part)

    @property
    def model_base(self) -> str:
        """Where a push to this device goes (``<base>/model/<part>``)."""
        return f"{self.base}/model"

    @property
    def liveness_probe(self) -> str:
        """Never subscribed: the port unsubscribes from it to make a quiet broker answer."""
        return f"{self.base}/probe"

    def group_base(self, group: str) -> str:
        return f"{self.prefix}/group/{group}"

    def command_filters(self) -> list[str]:
        """Subscriptions that deliver commands addressed to this device or its groups."""
        filters = [f"{self.base}/cmd/+"]
        filters += [f"{self.group_base(g)}/cmd/+" for g in self.groups]
        return filters

    def model_filters(self) -> list[str]:
        filters = [f"{self.base}/model/+"]
        filters += [f"{self.group_base(g)}/model/+" for g in self.groups]
        return filters

    def input_filter(self) -> str:
        return f"{self.base}/in/+"

    @staticmethod
    def last_segment(topic: str) -> str:
        return topic.rsplit("/", 1)[-1]


def discovery_topic(discovery_prefix: str, node: str, object_id: str) -> str:
    """Home Assistant's MQTT discovery topic of one sensor."""
    return f"{discovery_prefix}/sensor/{node}/{object_id}/config"


def model_part(model_base: str, part: str) -> str:
    """``<model base>/<part>``: the topic of one part of a push."""
    return f"{model_base}/{part}"


class FleetTopics:
    """Topics the fleet side (``edge-deploy``, collectors) uses for every device under a prefix.

    Identity comes from the topic: ``device_of`` reads the device id from ``<prefix>/<id>/...``
    and never from a payload field.
    """

    STATUS = "status"
    STATS = "stats"
    MODEL_RESULT = "model/result"
    LABELS = "labels"

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix.strip("/")

    def device(self, device_id: str) -> Topics:
        return Topics(self.prefix, device_id)

    def group_model_base(self, group: str) -> str:
        """Where a push to every member of ``group`` goes."""
        return f"{self.prefix}/group/{group}/model"

    @property
    def status_filter(self) -> str:
        return f"{self.prefix}/+/{self.STATUS}"

    @property
    def stats_filter(self) -> str:
        return f"{self.prefix}/+/{self.STATS}"

    @property
    def model_result_filter(self) -> str:
        return f"{self.prefix}/+/{self.MODEL_RESULT}"

    @property
    def labels_filter(self) -> str:
        return f"{self.prefix}/+/{self.LABELS}"

    def probe(self, client_id: str) -> str:
        """A topic only this client uses: its own message there marks the end of the
        retained messages the broker sent for its earlier subscriptions."""
        return f"{self.prefix}/_fleet/probe/{client_id}"

    def device_of(self, topic: str, suffix: str) -> str | None:
        """The device id in ``<prefix>/<id>/<suffix>`` (``suffix`` one of ``STATUS``,
        ``STATS``, ``MODEL_RESULT``); None for any other topic."""
        head = f"{self.prefix}/"
        tail = f"/{suffix}"
        if not (topic.startswith(head) and topic.endswith(tail)):
            return None
        device = topic[len(head):len(topic) - len(tail)]
        if not device or "/" in device or device == "group":
            return None
        return device


# --------------------------------------------------------------------------- stats


@dataclasses.dataclass(frozen=True)
class SourceStatsRecord:
    """One camera source in ``StatsRecord.sources``: its rate of published labels over the
    interval, counts since start (frames put, labels published, frames overwritten or
    evicted before inference) and the p99 of capture to publish over its last 512 labels."""

    fps: float
    frames: int
    inferences: int
    dropped: int
    capture_to_publish_ms_p99: float | None


@dataclasses.dataclass(frozen=True)
class StatsRecord:
    """The retained ``<base>/stats`` message. Rates (``fps_*``) are over the interval since the
    previous record; counts are since the agent started; ``None`` where nothing was measured.

    ``frames_read`` counts camera reads; each is put in the inbox, skipped to keep
    ``target_fps`` (``dropped_target_fps``) or unusable (``corrupt_frames``, which also counts
    failed reads). ``frames_in`` counts camera frames and sample windows put in the inbox; each
    is inferred, overwritten by a newer one, too old, skipped while paused, or an error.
    """

    fps_in: float
    fps_out: float
    frames_read: int
    frames_in: int
    inferences: int
    dropped_target_fps: int
    dropped_overwritten: int
    dropped_stale: int
    dropped_paused: int
    corrupt_frames: int
    frame_errors: int
    inference_errors: int
    rollbacks: int
    source_reconnects: int
    file_loops: int
    samples_in: int
    sample_errors: int
    streams_evicted: int
    suppressed: int
    published: int | None
    dropped_inbound: int | None
    commands_handled: int
    commands_rejected: int
    commands_ignored: int
    watchdog_withheld: int
    inference_ms_p50: float | None
    inference_ms_p95: float | None
    frame_age_ms_p50: float | None
    outbox_depth: int | None
    outbox_dropped: int | None
    outbox_set_aside: int | None
    outbox_expired: int
    mqtt_reconnects: int | None
    link_probes: int | None
    outbox_durable: bool  # false while results wait in memory because the disk refuses
    outbox_memory_dropped: int | None  # lost to the memory queue's bound meanwhile
    inbound_dropped_commands: int | None  # inbound messages a full queue dropped, per kind
    inbound_dropped_model: int | None
    inbound_dropped_samples: int | None
    rss_mb: float
    open_fds: int
    uptime_s: float
    mean_top1: float | None
    paused: bool
    ts: float
    sources: dict[str, SourceStatsRecord] = dataclasses.field(default_factory=dict)
    """Per camera source, so one starved source shows."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- payload fields
# Names of the fields in the published payloads, for the readers on the fleet side
# (insights/). The builders (agent/payloads.py, agent/app.py) write the same names; the
# stats fields are those of ``StatsRecord``.


class LabelsField:
    SEQ = "seq"
    RUN_ID = "run_id"
    TS = "ts"
    FRAME_TS = "frame_ts"
    SOURCE = "source"
    FRAME_INDEX = "frame_index"
    MODEL = "model"
    MODEL_NAME = "name"
    MODEL_VERSION = "version"
    LABELS = "labels"
    LABEL = "label"
    INDEX = "index"
    SCORE = "score"
    INFERENCE_MS = "inference_ms"
    PREPROCESS_MS = "preprocess_ms"
    CAPTURE_TO_PUBLISH_MS = "capture_to_publish_ms"


class StatusField:
    STATE = "state"
    DEVICE = "device"
    GROUPS = "groups"
    MODEL = "model"
    MODEL_NAME = "name"
    MODEL_VERSION = "version"
    MODEL_SHA256 = "sha256"
    MODEL_TASK = "task"
    AGENT_VERSION = "agent_version"
    SINCE = "since"
    RUNTIME = "runtime"
    DELEGATE = "delegate"
    SOURCES = "sources"
    DELIVERY = "delivery"
    REASON = "reason"
    TS = "ts"


class ModelResultField:
    PUSH_ID = "push_id"
    NAME = "name"
    VERSION = "version"
    RESULT = "result"
    ACTIVE_VERSION = "active_version"
    REASON = "reason"
    VIA = "via"
    TS = "ts"
