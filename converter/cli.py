"""edge-convert: Keras model to TFLite, quantized, measured, with a manifest and a report.

TensorFlow's and LiteRT's native log lines go to a log file (--log) named at the end;
the terminal gets the report and real warnings only. Exit 0 on success, 2 with
"edge-convert: error: ..." naming what was wrong (nothing is left in --out then).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.errors import ConversionError, EdgeError
from converter.native_log import native_log, new_log_file
from converter.options import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_INT8_BUDGET,
    DEFAULT_MAX_DROP,
    LSTM_PATH_CHOICES,
    MODE_CHOICES,
    ConvertOptions,
)
from converter.pipeline import Outcome, run
from converter.report import ops_summary
from converter.worker import require_tensorflow

DEFAULT_THREADS = 2
DEFAULT_LATENCY_RUNS = 200


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-convert", description=__doc__.split("\n\n")[0],
                                epilog="See docs/CONVERTER.md for each mode and the report.")
    p.add_argument("model", type=Path, help="a .keras or .h5 file, or a SavedModel folder")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for NAME.tflite, NAME.json and NAME.report.json (required)")
    p.add_argument("--quantize", choices=MODE_CHOICES, default="auto",
                   help="mode to convert to; auto measures each and keeps the fastest "
                        "within --max-drop (default: auto)")
    p.add_argument("--calibration", type=Path,
                   help=".npz with x, or an image folder; needed by int8, int16x8, mixed "
                        "(default: none, float modes only)")
    p.add_argument("--calibration-samples", type=int, default=DEFAULT_CALIBRATION_SAMPLES,
                   help=f"calibration samples used, the classes in turn when labelled "
                        f"(default: {DEFAULT_CALIBRATION_SAMPLES})")
    p.add_argument("--eval", type=Path,
                   help=".npz with x and y, or a folder per label (default: agreement with "
                        "Keras on calibration samples)")
    p.add_argument("--labels", type=Path,
                   help="text file, one label a line (default: 0, 1, ... per output)")
    p.add_argument("--name", help="model name (default: the model file's stem)")
    p.add_argument("--version", default="1.0.0", help="manifest version (default: 1.0.0)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"latency is also measured at N threads (default: {DEFAULT_THREADS})")
    p.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                   help=f"accuracy points auto may lose against Keras "
                        f"(default: {DEFAULT_MAX_DROP})")
    p.add_argument("--int8-budget", type=float, default=DEFAULT_INT8_BUDGET,
                   help=f"accuracy points int8 may lose before the per-layer float fallback "
                        f"is tried (default: {DEFAULT_INT8_BUDGET})")
    p.add_argument("--allow-flex", action="store_true",
                   help="keep Flex, custom or WHILE ops instead of failing (default: off)")
    p.add_argument("--lstm-path", choices=LSTM_PATH_CHOICES, default="auto",
                   help="recurrent layers unrolled or as the fused LSTM op; auto tries both "
                        "when tf-keras is installed (default: auto)")
    p.add_argument("--stride", type=int,
                   help="sequence models: window stride (default: the window length)")
    p.add_argument("--color", choices=("gray", "rgb", "bgr"),
                   help="frame models: colour order (default: gray for 1 channel, else rgb)")
    p.add_argument("--resize", choices=("stretch", "letterbox", "center_crop"),
                   help="frame models: how frames meet the input size (default: stretch)")
    p.add_argument("--mean", type=float, nargs="+", default=[0.0],
                   help="subtracted from raw input, one or one per channel (default: 0)")
    p.add_argument("--std", type=float, nargs="+", default=[1.0],
                   help="raw input is divided by it after --mean (default: 1)")
    p.add_argument("--latency-runs", type=int, default=DEFAULT_LATENCY_RUNS,
                   help=f"timed invokes per mode and thread count "
                        f"(default: {DEFAULT_LATENCY_RUNS})")
    p.add_argument("--log", type=Path,
                   help="file for TensorFlow's and LiteRT's native log lines (default: a new "
                        "edge-convert-*.log in the temp folder)")
    return p


def options(args: argparse.Namespace) -> ConvertOptions:
    for name in ("threads", "latency_runs", "calibration_samples"):
        if getattr(args, name) < 1:
            raise ConversionError(f"--{name.replace('_', '-')} must be at least 1, got "
                                  f"{getattr(args, name)}")
    if args.stride is not None and args.stride < 1:
        raise ConversionError(f"--stride must be at least 1, got {args.stride}")
    for name in ("max_drop", "int8_budget"):
        if getattr(args, name) < 0:
            raise ConversionError(f"--{name.replace('_', '-')} must not be negative, got "
                                  f"{getattr(args, name)}")
    return ConvertOptions(
        model=args.model, out=args.out, quantize=args.quantize, calibration=args.calibration,
        eval=args.eval, labels=args.labels, name=args.name, version=args.version,
        threads=args.threads, max_drop=args.max_drop, int8_budget=args.int8_budget,
        calibration_samples=args.calibration_samples,
        allow_flex=args.allow_flex, lstm_path=args.lstm_path, stride=args.stride,
        color=args.color, resize=args.resize, mean=tuple(args.mean), std=tuple(args.std),
        latency_runs=args.latency_runs)


def print_outcome(outcome: Outcome) -> None:
    print(outcome.table)
    print()
    for result in outcome.results:
        if not result.error:
            print(ops_summary(result))
        for row in result.layer_errors:
            print(f"  {result.key} loses most at layer {row['layer']} ({row['op']}): "
                  f"RMSE/scale {row['rmse_over_scale']}, max abs error {row['max_abs_error']}")
    print()
    print(f"chosen: {outcome.chosen.key}: {outcome.reason}")
    for path in outcome.files:
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_file = args.log or new_log_file("edge-convert")
    try:
        with native_log(log_file):
            logging.basicConfig(level=logging.WARNING,
                                format="%(levelname)s %(name)s: %(message)s")
            require_tensorflow("edge-convert")
            outcome = run(options(args))
    except EdgeError as exc:
        print(f"edge-convert: error: {exc}", file=sys.stderr)
        print(f"edge-convert: TensorFlow's log: {log_file}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-convert: interrupted; nothing written", file=sys.stderr)
        return 130
    print_outcome(outcome)
    print(f"TensorFlow's log: {log_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
