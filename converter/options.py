"""What a user asks of edge-convert, and the vocabulary it is asked in (a leaf module).

The quantization modes are the manifest's (``agent.manifest.QuantizeMode``); the ops the
on-device runtime must not get, the modes ``auto`` tries and the LSTM paths live here
only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from agent.manifest import QuantizeMode

QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)
MODE_CHOICES: tuple[str, ...] = ("auto", *QUANTIZE_MODES)
CALIBRATED_MODES = ("int8", "int16x8", "mixed")
# mixed is built from the int8 layer analysis, never converted blind
AUTO_MODES = tuple(m for m in QUANTIZE_MODES if m != "mixed")
LSTM_PATHS = ("unrolled", "fused")
LSTM_PATH_CHOICES = ("auto", *LSTM_PATHS)
FORBIDDEN_OPS = ("WHILE", "CUSTOM")  # and every Flex* op
DEFAULT_MAX_DROP = 0.5
DEFAULT_INT8_BUDGET = 0.5
DEFAULT_CALIBRATION_SAMPLES = 500


def forbidden_ops(ops: Mapping[str, int] | list[str]) -> list[str]:
    """The ops among ``ops`` the on-device runtime must not get: WHILE, CUSTOM, Flex*."""
    return sorted(op for op in ops if op in FORBIDDEN_OPS or op.startswith("Flex"))


def refusal(ops: Mapping[str, int], sites: Mapping[str, list[str]], what: str) -> str | None:
    """Why a graph with forbidden ops is refused (naming each op and its layers), else None."""
    bad = forbidden_ops(ops)
    if not bad:
        return None
    named = "; ".join(f"{op} from {', '.join(sites.get(op) or ['an unnamed scope'])}"
                      for op in bad)
    return (f"{what}: the TFLite graph contains {named}; the on-device runtime needs builtin, "
            f"loop-free ops (use --allow-flex to keep them anyway)")


@dataclass(frozen=True)
class ConvertOptions:
    model: Path
    out: Path
    quantize: str = "auto"
    calibration: Path | None = None
    eval: Path | None = None
    labels: Path | None = None
    name: str | None = None
    version: str = "1.0.0"
    threads: int = 2
    max_drop: float = DEFAULT_MAX_DROP
    int8_budget: float = DEFAULT_INT8_BUDGET
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    allow_flex: bool = False
    lstm_path: str = "auto"
    stride: int | None = None
    color: str | None = None
    resize: str | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    latency_runs: int = 200
