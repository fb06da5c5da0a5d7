"""Strict agent configuration: one pydantic model per section, defaults here and nowhere else.

``load_config`` reads YAML and raises ``ConfigError`` with one ``key: value: what is wrong``
line per problem; ``edge-agent check-config`` prints those lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.contract import DEFAULT_PREFIX
from agent.errors import ConfigError
from agent.payloads import check_expanded_size, shown_text, shown_value

TOPIC_SEGMENT = r"^[A-Za-z0-9_.-]{1,64}$"
TOPIC_PATH = r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64})*$"
STREAM_NAME = r"^(\+|[A-Za-z0-9_.-]{1,64})$"  # a stream name, or + for every stream
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # values in the document once every alias is expanded


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(Section):
    id: str | None = Field(default=None, pattern=TOPIC_SEGMENT)
    prefix: str = Field(default=DEFAULT_PREFIX, pattern=TOPIC_PATH)
    groups: list[Annotated[str, Field(pattern=TOPIC_SEGMENT)]] = Field(default_factory=list)


class TlsConfig(Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=2, le=3600)
    qos: Literal[0, 1, 2] = 1
    username: str | None = None
    password_env: str | None = Field(
        default=None, description="name of the environment variable holding the password")
    password_file: Path | None = None
    tls: TlsConfig = Field(default_factory=TlsConfig)
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 30.0
    connect_timeout_s: PositiveFloat = Field(
        default=5.0, description="no CONNACK within this long: drop the attempt and retry")
    max_inflight: int = Field(default=100, ge=1, le=65535,
                              description="outbox messages sent and not yet acknowledged")

    @model_validator(mode="after")
    def _checks(self) -> MqttConfig:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    def password(self) -> str | None:
        """Read the secret at start-up; it never lives in the YAML."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError([f"mqtt.password_env: {self.password_env}: "
                                   "environment variable is not set"])
            return value
        if self.password_file:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError([f"mqtt.password_file: {self.password_file}: "
                                   f"cannot read: {exc.strerror}"]) from exc
        return None


class OutboxConfig(Section):
    enabled: bool = True
    path: Path | None = Field(default=None, description="default: <state_dir>/outbox.sqlite")
    max_messages: int = Field(default=100_000, ge=1)
    max_age_s: PositiveFloat = 7 * 86400
    drain_rate_per_s: float = Field(
        default=1000.0, ge=0, allow_inf_nan=False,
        description="messages/s for the backlog queued during an outage (0: unpaced)")
    memory_max_messages: int = Field(
        default=10_000, ge=1, description="bound of the memory queue used while the disk "
        "refuses writes (full, read-only, corrupt)")
    memory_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    retry_disk_s: PositiveFloat = Field(
        default=5.0, description="how often to try the disk again while it refuses")


class DelegateConfig(Section):
    kind: Literal["xnnpack", "none", "external", "gpu"] = "xnnpack"
    library: str | None = None
    options: dict[str, str] = Field(default_factory=dict)
    fallback: Literal["cpu", "fail"] = "cpu"

    @model_validator(mode="after")
    def _library(self) -> DelegateConfig:
        if self.kind == "external" and not self.library:
            raise ValueError("kind external needs library (e.g. libedgetpu.so.1)")
        return self


class ModelConfig(Section):
    manifest: Path = Field(description="model manifest JSON written by edge-convert")
    num_threads: int = Field(default=2, ge=1, le=64)
    runtime: Literal["auto", "ai_edge_litert", "tflite_runtime", "tensorflow"] = "auto"
    delegate: DelegateConfig = Field(default_factory=DelegateConfig)


class CameraSourceConfig(Section):
    type: Literal["camera"]
    name: str = Field(pattern=TOPIC_SEGMENT)
    uri: str | int = Field(description="V4L2 index or /dev/videoN, a video file, rtsp:// or "
                                        "http:// MJPEG URL")
    loop: bool = False
    realtime: bool = False
    target_fps: PositiveFloat | None = None
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)
    fourcc: str | None = Field(default=None, min_length=4, max_length=4)
    ffmpeg_options: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_]+;[^|;]*(\|[A-Za-z0-9_]+;[^|;]*)*$",
        description="FFmpeg options for URLs and files, e.g. rtsp_transport;tcp")
    open_timeout_ms: int = Field(default=5000, ge=100, le=600_000)
    read_timeout_ms: int = Field(default=5000, ge=100, le=600_000)
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 30.0

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 0:
            raise ValueError("a device index must be >= 0")
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty")
        return v


class MqttSourceConfig(Section):
    type: Literal["mqtt"]
    name: str = Field(pattern=TOPIC_SEGMENT)
    streams: list[Annotated[str, Field(pattern=STREAM_NAME)]] = Field(
        default_factory=lambda: ["+"], min_length=1,
        description="stream names under <base>/in/; '+' takes every stream")
    max_payload_bytes: int = Field(default=65536, ge=16)
    max_streams: int = Field(default=64, ge=1)


SourceConfig = Annotated[CameraSourceConfig | MqttSourceConfig, Field(discriminator="type")]


class PipelineConfig(Section):
    max_frame_age_ms: int = Field(default=1000, ge=1)
    queue_depth: int = Field(default=32, ge=1, le=10_000,
                             description="windows queued per sequence stream")
    rollback_after_failures: int = Field(default=3, ge=1)
    probation_frames: int = Field(default=20, ge=1)
    opencv_threads: int | None = Field(
        default=1, ge=1, le=64, description="OpenCV's worker threads (null: its default); "
        "the agent runs a thread per stage, so one is fastest on small devices")


class PublishConfig(Section):
    top_k: int = Field(default=3, ge=1, le=100)
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    on_change: bool = False
    hysteresis: float = Field(default=0.05, ge=0.0, le=1.0)
    min_interval_ms: int = Field(default=0, ge=0)
    stats_interval_s: PositiveFloat = 10.0


class HealthConfig(Section):
    stall_s: PositiveFloat = Field(default=10.0, description="no progress for this long: "
                                   "stop petting the systemd watchdog")


class DeliveryConfig(Section):
    trusted_keys: list[str] = Field(default_factory=list,
                                    description="Ed25519 public keys: files or base64")
    max_model_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    keep_versions: int = Field(default=3, ge=1, le=20)
    staging_timeout_s: PositiveFloat = 600.0


class HomeAssistantConfig(Section):
    enabled: bool = False
    discovery_prefix: str = Field(default="homeassistant", pattern=TOPIC_PATH)
    state_interval_s: PositiveFloat = Field(
        default=5.0, le=86_400, description="the summary topic the sensors read is published "
        "when the top label changes, at most once per this many seconds")


class CommandsConfig(Section):
    response_topic_filters: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list, description="MQTT 5 response topics honoured besides the "
        "device's own <base>/cmd/+/result tree (topic filters)")


class MetricsConfig(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535, description="0: any free port (logged)")
    max_label_series: int = Field(default=100, ge=1, le=10_000,
                                  description="distinct labels counted; the rest as 'other'")


class AgentConfig(Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    model: ModelConfig
    sources: list[SourceConfig] = Field(min_length=1)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    state_dir: Path = Field(default_factory=lambda: Path(
        os.environ.get("STATE_DIRECTORY", "/var/lib/edge-agent").split(":")[0]))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[Any]) -> list[Any]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return sources

    def outbox_path(self) -> Path:
        return self.outbox.path or self.state_dir / "outbox.sqlite"


def _strip_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the discriminator tag pydantic puts after a list index (``sources.0.camera``)."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in ("camera", "mqtt"):
            continue
        out.append(part)
    return tuple(out)


def _format_errors(exc: ValidationError, raw: Any) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = _strip_union_tags(err["loc"])
        key = ".".join(str(p) for p in loc) or "(root)"
        value = _lookup(raw, loc)
        shown = "(missing)" if err["type"] == "missing" else \
            "(hidden)" if _secret_key(loc) else shown_value(value)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error" and isinstance(value, int | float) \
                and f"'{value}'" in msg:
            msg = f"a number here; write it as a string: {loc[-1]}: \"{value}\""
        lines.append(f"{key}: {shown}: {msg}")
    return lines


def _secret_key(loc: tuple[Any, ...]) -> bool:
    """A key whose value must never be printed (a password typed into the YAML)."""
    last = str(loc[-1]).lower() if loc else ""
    return any(w in last for w in ("password", "secret", "token")) and \
        not last.endswith(("_env", "_file"))


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    node = raw
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            return None
    return node


def parse_config(raw: Any, base_dir: Path | None = None) -> AgentConfig:
    """Validate a parsed YAML document. Relative paths resolve against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError([f"(root): {type(raw).__name__}: the config must be a mapping"])
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, raw)) from exc
    return _resolve_paths(cfg, base_dir) if base_dir else cfg


def _resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    model = cfg.model.model_copy(update={"manifest": fix(cfg.model.manifest)})
    sources = []
    for s in cfg.sources:
        if isinstance(s, CameraSourceConfig) and isinstance(s.uri, str) \
                and "://" not in s.uri and not s.uri.isdigit() and not s.uri.startswith("/"):
            s = s.model_copy(update={"uri": str((base / s.uri).resolve())})
        sources.append(s)
    return cfg.model_copy(update={"model": model, "sources": sources})


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    where = f"(file): {str(path)!r}"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror}"]) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{where}: larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{where}: not valid YAML: {shown_text(str(exc), 300)}"]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{where}: not valid YAML: nested too deeply"]) from exc
    check_expanded_size(raw, where, MAX_CONFIG_NODES)
    return parse_config(raw, base_dir=path.parent.resolve())


def semantic_problems(cfg: AgentConfig) -> list[str]:
    """Checks that need the file system or the model manifest (run by check-config and run)."""
    from agent.errors import ManifestError
    from agent.manifest import load_manifest

    problems: list[str] = []
    try:
        manifest = load_manifest(cfg.model.manifest)
    except ManifestError as exc:
        return [f"model.manifest: {str(cfg.model.manifest)!r}: {exc}"]
    if not manifest.model_path(cfg.model.manifest.parent).exists():
        problems.append(f"model.manifest: {str(cfg.model.manifest)!r}: model file "
                        f"{manifest.file!r} is missing next to the manifest")
    wanted = "camera" if manifest.task == "frame" else "mqtt"
    for i, src in enumerate(cfg.sources):
        if src.type != wanted:
            problems.append(f"sources.{i}.type: {src.type!r}: the model is a {manifest.task} "
                            f"model and needs {wanted} sources")
    tls = cfg.mqtt.tls
    for key, p in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file),
                   ("key_file", tls.key_file)):
        if tls.enabled and p is not None and not p.exists():
            problems.append(f"mqtt.tls.{key}: {str(p)!r}: file not found")
    if cfg.mqtt.password_env and cfg.mqtt.password_env not in os.environ:
        problems.append(f"mqtt.password_env: {cfg.mqtt.password_env!r}: environment variable "
                        "is not set")
    if cfg.mqtt.password_file and not cfg.mqtt.password_file.exists():
        problems.append(f"mqtt.password_file: {str(cfg.mqtt.password_file)!r}: file not found")
    return problems
