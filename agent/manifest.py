"""The model manifest: the contract between the converter, the deploy tool and the agent (the
file name, its sha256 and size, the task, how to prepare the input and read the output, the
labels, the window of a sequence model, the converter's validation figures).

Every module takes manifest fields from here; the agent never guesses them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ManifestError
from agent.files import atomic_write_bytes

MANIFEST_SCHEMA = 1
MAX_FILE_NAME = 200  # bytes; the store adds nothing to it, file systems allow 255

Task = Literal["frame", "sequence"]
TensorDType = Literal["float32", "float16", "int8", "uint8", "int16", "int32"]
ColorOrder = Literal["gray", "rgb", "bgr"]
ResizeMode = Literal["stretch", "letterbox", "center_crop"]
OutputKind = Literal["probabilities", "logits"]
QuantizeMode = Literal["float32", "float16", "dynamic", "int8", "int16x8", "mixed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantization(_Strict):
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: float = Field(gt=0)
    zero_point: int


class Normalization(_Strict):
    """Applied to float input before quantization: x = (value - mean) / std, per channel."""

    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("std")
    @classmethod
    def _no_zero_std(cls, v: list[float]) -> list[float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v


class InputSpec(_Strict):
    shape: list[int]
    dtype: TensorDType
    layout: Literal["NHWC", "NTF"] = "NHWC"
    color: ColorOrder | None = None
    resize: ResizeMode | None = None
    normalization: Normalization = Field(default_factory=Normalization)
    quantization: Quantization | None = None

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    @property
    def channels(self) -> int:
        return self.shape[3] if len(self.shape) == 4 else 1


class OutputSpec(_Strict):
    shape: list[int]
    dtype: TensorDType
    kind: OutputKind = "probabilities"
    quantization: Quantization | None = None


class WindowSpec(_Strict):
    """Sliding window for sequence models: ``length`` timesteps of ``features`` values."""

    length: int = Field(gt=0)
    stride: int = Field(gt=0)
    features: int = Field(gt=0)


class RuntimeHints(_Strict):
    """How the converter built the graph, where the agent must act on it."""

    lstm_path: Literal["unrolled", "fused"] | None = None
    reset_state_per_window: bool = False


class ModelManifest(_Strict):
    schema_version: int = MANIFEST_SCHEMA
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    task: Task
    quantize: QuantizeMode
    input: InputSpec
    output: OutputSpec
    labels: list[str]
    window: WindowSpec | None = None
    runtime: RuntimeHints = Field(default_factory=RuntimeHints)
    validation: dict[str, Any] = Field(default_factory=dict)
    created: str | None = None

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        if (not v or "/" in v or "\\" in v or "\x00" in v or v in (".", "..")
                or v.startswith(".") or len(v.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME):
            raise ValueError(f"must be a plain file name inside the model folder (no NUL, at "
                             f"most {MAX_FILE_NAME} bytes), got {v[:80]!r}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelManifest:
        n_out = self.output.shape[-1] if self.output.shape else 0
        if self.labels and len(self.labels) != n_out:
            raise ValueError(
                f"labels has {len(self.labels)} entries but the output has {n_out} classes")
        if self.task == "sequence":
            if self.window is None:
                raise ValueError("a sequence model needs a window (length, stride, features)")
            if len(self.input.shape) != 3:
                raise ValueError(f"a sequence model's input must be [batch, steps, features], "
                                 f"got {self.input.shape}")
            if self.input.shape[1:] != [self.window.length, self.window.features]:
                raise ValueError(f"window {self.window.length}x{self.window.features} does not "
                                 f"match input shape {self.input.shape}")
        else:
            if len(self.input.shape) != 4:
                raise ValueError(f"a frame model's input must be NHWC, got {self.input.shape}")
            if self.input.color is None or self.input.resize is None:
                raise ValueError("a frame model needs input.color and input.resize")
        return self

    # -- files ---------------------------------------------------------------

    def model_path(self, folder: str | Path) -> Path:
        return Path(folder) / self.file

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(Path(path), self.to_json().encode())


def load_manifest(path: str | Path) -> ModelManifest:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: manifest not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable JSON manifest: {exc}") from exc
    return parse_manifest(raw, origin=str(path))


def parse_manifest(raw: Any, origin: str = "manifest") -> ModelManifest:
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise ManifestError(f"{origin}: invalid manifest: {problems}") from exc
