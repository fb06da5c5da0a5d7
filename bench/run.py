"""The agent's benchmark: ``python -m bench.run [--quick] [--out bench/results]``.

Writes ``benchmark.md``, ``benchmark.json`` and ``benchmark.png`` into ``--out`` and prints the
Markdown. Models are converted once with the converter and cached in ``--cache``
(default ``bench/results/cache``).
Figures (each measured in the same run as what it is compared with, medians of rounds):

a. agent end to end at full speed vs the lower of (slowest stage alone, CPU bound);
b. per frame vs the Keras model in TensorFlow (``predict`` and ``model(x)``);
c. resident memory and start-up vs a TensorFlow process running the same model;
d. capture-to-publish latency at a paced 30 fps vs invoke alone;
e. QoS 1 labels/s, outbox on and off;
f. quantization: latency at 1 and 2 threads, size, accuracy per mode;
g. before / after of the hot-path changes;
h. several 30 fps cameras into one MobileNetV2 0.35 model: fairness, and how many it sustains;
i. against the TF Lite Raspberry Pi example loop: throughput and p99 side by side;
j. capture to arrival at a subscriber: the agent now vs before (sender thread only), traced.

``--sections`` runs only some of them (letters, e.g. ``a,h,i,j``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import (
    arrival,
    e2e,
    footprint,
    hotpath,
    latency,
    multicam,
    naive_loop,
    publish,
    quant,
    report,
    tfcompare,
)
from bench.common import DATA, REPO, broker, machine, make_video
from bench.models import Variant, all_variants, shipped_and_mobilenet


@dataclass(frozen=True)
class Plan:
    quick: bool
    e2e_rounds: int
    e2e_seconds: float
    tf_rounds: int
    tf_budget_s: float
    footprint_rounds: int
    latency_seconds: float
    publish_count: int
    publish_rounds: int
    quant_rounds: int
    quant_budget_s: float
    sections: str = "abcdefghij"

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 1, 4.0, 2, 0.6, 1, 6.0, 2000, 1, 1, 0.15)
        return cls(False, 2, 8.0, 3, 2.0, 3, 15.0, 10_000, 3, 3, 0.4)

    def e2e_targets(self) -> list[tuple[str, int]]:
        if self.quick:
            return [("digits_cnn", 2), ("mobilenet_v2_0.35", 1), ("mobilenet_v2_0.35", 2)]
        return [(f, t) for f in ("digits_cnn", "mobilenet_v2_0.35", "mobilenet_v2_1")
                for t in (1, 2)]

    def frame_families(self) -> list[str]:
        return ["digits_cnn", "mobilenet_v2_0.35"] + ([] if self.quick else ["mobilenet_v2_1"])


NOTES = [
    "The limit in (a) is the lower of two bounds measured just before the agent in the same "
    "round: the slowest stage alone (decode as the agent decodes for this model, preprocess, "
    "invoke, each in a tight loop) and the CPU bound, cores / (CPU time per frame of decode + "
    "preprocess + invoke + postprocess and payload + publishing through the port with the "
    "broker's share). The last column is the CPU that other sessions used meanwhile.",
    "MobileNetV2 has random weights (weights=None, 10 classes): its 'accuracy' is top-1 "
    "agreement with the Keras model on synthetic camera frames, not a task accuracy.",
    "Capture-to-publish is the agent's own figure in each label (frame captured to payload "
    "built, before the outbox); capture-to-arrival is measured at a subscriber on the same "
    "host (wall clocks), so it includes the outbox, the MQTT send and the broker.",
]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pick(rows: list[dict[str, Any]], families: dict[str, list[Variant]],
         family: str) -> Variant:
    """The family's fastest mode at 2 threads, as measured in (f) in this run."""
    best = quant.fastest(rows, family)
    return next(v for v in families[family] if v.mode == best["mode"])


def run_e2e(plan: Plan, mq: Any, chosen: dict[str, Variant], video: Path,
            work: Path) -> list[dict[str, Any]]:
    rows = []
    for family, threads in plan.e2e_targets():
        v = chosen[family]
        log(f"a. {v.key} at {threads} thread(s)")
        res = e2e.against_limit(mq, v.manifest, video, threads,
                                work / f"e2e-{family}-{threads}", plan.e2e_rounds,
                                plan.e2e_seconds)
        rows.append({"model": v.key, "threads": threads, **res})
    return rows


def run_new(plan: Plan, mq: Any, chosen: dict[str, Variant], video: Path, work: Path,
            results: dict[str, Any]) -> None:
    """Sections h, i, j (several cameras, the example loop, arrival at a subscriber)."""
    v = chosen["mobilenet_v2_0.35"]
    if "h" in plan.sections:
        log(f"h. several cameras into {v.key}")
        results["multicam"] = {"model": v.key, **multicam.sweep(
            mq.port, v.manifest, video, work / "multicam", windows=3 if plan.quick else 5,
            steps=(4, 8) if plan.quick else (4, 8, 12, 16, 20, 24, 32))}
    if "i" in plan.sections:
        log(f"i. {v.key}: the TF Lite example loop vs the agent")
        results["naive"] = {"model": v.key, **naive_loop.compare(
            mq.port, v.manifest, video, 2, work / "naive", plan.e2e_rounds,
            plan.e2e_seconds)}
    if "j" in plan.sections:
        log("j. capture to arrival, now vs before")
        names = ["now: send from the caller when idle", "before: sender thread only"]
        res = arrival.compare(DATA / "digits_cnn.json", video, work / "arrival",
                              plan.latency_seconds, plan.e2e_rounds, names)
        with arrival.broker_with([]) as traced:
            res["trace"] = arrival.trace(traced.port, e2e.AgentSetup(
                DATA / "digits_cnn.json", video, realtime=True), work / "trace",
                plan.latency_seconds)
        results["arrival"] = res


def run_latency(plan: Plan, port: int, chosen: dict[str, Variant], video: Path,
                work: Path) -> list[dict[str, Any]]:
    rows = []
    for family in plan.frame_families():
        v = chosen[family]
        log(f"d. {v.key} paced at 30 fps")
        res = latency.under_load(port, v.manifest, video, work / f"lat-{family}", 2,
                                 plan.latency_seconds)
        rows.append({"model": v.key, "threads": 2, **res})
    return rows


def run_footprint(plan: Plan, port: int, chosen: dict[str, Variant], video: Path,
                  work: Path) -> list[dict[str, Any]]:
    rows = []
    families = ["digits_cnn", "mobilenet_v2_0.35" if plan.quick else "mobilenet_v2_1"]
    for family in families:
        v = chosen[family]
        log(f"c. {v.key}: agent vs TensorFlow process")
        res = footprint.compare(port, v.keras, v.manifest, video, work / f"fp-{family}",
                                plan.footprint_rounds, warmup_s=3.0)
        rows.append({"model": v.key, "target": family == "digits_cnn", **res})
    return rows


def run_tf(plan: Plan, chosen: dict[str, Variant], video: Path) -> list[dict[str, Any]]:
    rows = []
    for family in plan.frame_families():
        v = chosen[family]
        log(f"b. {v.key}: Keras per frame vs agent")
        res = tfcompare.compare(v.keras, v.manifest, video, 2, plan.tf_rounds, plan.tf_budget_s)
        rows.append({"model": v.key, "target": family == "digits_cnn", **res})
    return rows


def run_all(plan: Plan, out: Path, cache: Path) -> dict[str, Any]:
    work = out / "work"
    on = plan.sections
    results: dict[str, Any] = {"quick": plan.quick, "machine": machine(), "notes": NOTES}
    if set("bcf") & set(on):
        families = all_variants(cache, plan.quick, log=log)
    else:  # no Keras model needed: the shipped reference CNN and MobileNetV2 int8
        families = shipped_and_mobilenet(cache, plan.quick, log=log)
    video = make_video(cache / "scene_640x480.avi")
    if "f" in on:
        log("f. quantization table")
        results["quant"] = quant.table(families, plan.quant_rounds, plan.quant_budget_s)
        chosen = {f: pick(results["quant"], families, f) for f in families}
    else:  # the fastest modes of the last full runs
        chosen = {f: next(v for v in vs if v.mode == "int8") for f, vs in families.items()}
    if "g" in on:
        log("g. hot-path before/after")
        results["hotpath"] = hotpath.compare(video, [chosen[f].manifest for f in
                                                     plan.frame_families()[:2]],
                                             rounds=2 if plan.quick else 5,
                                             budget_s=0.2 if plan.quick else 0.4)
    with broker() as mq:
        if "a" in on:
            results["e2e"] = run_e2e(plan, mq, chosen, video, work)
        if "d" in on:
            results["latency"] = run_latency(plan, mq.port, chosen, video, work)
        if "c" in on:
            results["footprint"] = run_footprint(plan, mq.port, chosen, video, work)
        if "e" in on:
            log("e. publishing")
            results["publish"] = publish.rates(mq, plan.publish_count, plan.publish_rounds)
        run_new(plan, mq, chosen, video, work, results)
    if "b" in on:
        results["tf"] = run_tf(plan, chosen, video)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and models (~3 min)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "results" / "cache",
                        help="converted models and the test video, kept between runs")
    parser.add_argument("--sections", default="abcdefghij",
                        help="which tables to run (letters a-j, default all)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    plan = dataclasses.replace(Plan.make(args.quick), sections=args.sections)
    results = run_all(plan, args.out, args.cache)
    results["elapsed_s"] = time.monotonic() - started
    results["command"] = "python -m bench.run" + (" --quick" if args.quick else "") + \
        (f" --out {args.out}" if args.out != Path("bench/results") else "") + \
        (f" --sections {args.sections}" if args.sections != "abcdefghij" else "")
    md, js, png = report.write(results, args.out)
    print(md.read_text())
    log(f"wrote {md}, {js}" + (f", {png}" if png else " (no matplotlib: no chart)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
