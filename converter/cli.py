"""edge-convert: Keras model to TFLite, quantized, measured, with a manifest and a report.

    edge-convert MODEL --out DIR [--quantize auto|float32|float16|dynamic|int8|int16x8|mixed]
                 [--calibration DATA] [--eval DATA] [--labels FILE] [--name NAME]
                 [--version VERSION] [--threads N] [--max-drop P] [--allow-flex]
                 [--lstm-path auto|unrolled|fused] [--stride N] [--color gray|rgb|bgr]
                 [--resize stretch|letterbox|center_crop] [--mean M ...] [--std S ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.errors import ConversionError, EdgeError
from converter.options import LSTM_PATH_CHOICES, MODE_CHOICES, ConvertOptions
from converter.pipeline import run
from converter.report import ops_summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-convert", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help=".keras, .h5 or a SavedModel folder")
    p.add_argument("--out", type=Path, required=True, help="folder for NAME.tflite/.json")
    p.add_argument("--quantize", choices=MODE_CHOICES, default="auto")
    p.add_argument("--calibration", type=Path, help=".npz with x, or an image folder")
    p.add_argument("--eval", type=Path, help=".npz with x and y, or a folder per label")
    p.add_argument("--labels", type=Path, help="text file, one label a line")
    p.add_argument("--name", help="model name (default: the model file's stem)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--threads", type=int, default=2, help="N for the latency at N threads")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="accuracy points auto may lose against Keras (default 1.0)")
    p.add_argument("--allow-flex", action="store_true",
                   help="keep Flex, custom or WHILE ops instead of failing")
    p.add_argument("--lstm-path", choices=LSTM_PATH_CHOICES, default="auto")
    p.add_argument("--stride", type=int, help="sequence models: window stride (default: length)")
    p.add_argument("--color", choices=("gray", "rgb", "bgr"))
    p.add_argument("--resize", choices=("stretch", "letterbox", "center_crop"))
    p.add_argument("--mean", type=float, nargs="+", default=[0.0])
    p.add_argument("--std", type=float, nargs="+", default=[1.0])
    p.add_argument("--latency-runs", type=int, default=200, help=argparse.SUPPRESS)
    return p


def options(args: argparse.Namespace) -> ConvertOptions:
    if args.threads < 1:
        raise ConversionError(f"--threads must be at least 1, got {args.threads}")
    if args.stride is not None and args.stride < 1:
        raise ConversionError(f"--stride must be at least 1, got {args.stride}")
    if args.max_drop < 0:
        raise ConversionError(f"--max-drop must not be negative, got {args.max_drop}")
    return ConvertOptions(
        model=args.model, out=args.out, quantize=args.quantize, calibration=args.calibration,
        eval=args.eval, labels=args.labels, name=args.name, version=args.version,
        threads=args.threads, max_drop=args.max_drop, allow_flex=args.allow_flex,
        lstm_path=args.lstm_path, stride=args.stride, color=args.color, resize=args.resize,
        mean=tuple(args.mean), std=tuple(args.std), latency_runs=args.latency_runs)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        outcome = run(options(args))
    except EdgeError as exc:
        print(f"edge-convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-convert: interrupted; nothing written", file=sys.stderr)
        return 130
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
