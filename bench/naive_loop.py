"""What a user would write instead: the loop of the TensorFlow Lite Raspberry Pi example.

One thread reads a frame, converts and resizes it (``cvtColor`` + ``resize``), invokes the
interpreter, takes the top 3 and publishes a JSON label with paho at QoS 1 (paho's own
network thread, ``loop_start``, as the example's users do). Run as a child process on the
same file, model and broker as the agent, side by side in the same round:

* full speed: frames/s over a window;
* 30 fps (paced by the file's clock): capture-to-arrival p99 at a subscriber.

``python -m bench.naive_loop`` runs this file's child; ``compare`` is what ``bench.run``
calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.agentrun import BASE, AgentProcess, AgentSetup, Subscriber, fps_window
from bench.common import LoadMeter, median, pct

CHILD = r'''
import json, sys, time
import cv2, numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from ai_edge_litert.interpreter import Interpreter
model, video, port, threads, realtime, seconds = sys.argv[1:7]
meta = json.load(open(model))
interp = Interpreter(model_path=str(__import__("pathlib").Path(model).parent / meta["file"]),
                     num_threads=int(threads))
interp.allocate_tensors()
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
_, h, w, _ = inp["shape"]
scale, zero = inp["quantization"]
client = mqtt.Client(CallbackAPIVersion.VERSION2)
client.connect("127.0.0.1", int(port))
client.loop_start()
cap = cv2.VideoCapture(video)
fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
n, t0 = 0, time.time()
while time.time() - t0 < float(seconds):
    ok, frame = cap.read()
    if not ok:
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        continue
    ts = time.time()
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    x = cv2.resize(rgb, (w, h))
    x = ((x.astype(np.float32) - 127.5) / 127.5 / scale + zero).round().clip(-128, 127)
    interp.set_tensor(inp["index"], x.astype(np.int8)[None])
    interp.invoke()
    scores = interp.get_tensor(out["index"])[0]
    top = np.argsort(-scores)[:3]
    body = {"frame_ts": ts, "labels": [{"index": int(i), "score": float(scores[i])}
                                       for i in top]}
    client.publish("edge/bench/labels", json.dumps(body), qos=1)
    n += 1
    if realtime == "1":
        time.sleep(max(0.0, t0 + n / fps - time.time()))
client.loop_stop()
print(json.dumps({"frames": n, "seconds": time.time() - t0}))
'''


def run_loop(port: int, manifest: Path, video: Path, threads: int, realtime: bool,
             seconds: float) -> dict[str, Any]:
    sub = Subscriber(port, keep_labels=realtime)
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(manifest), str(video),
                               str(port), str(threads), "1" if realtime else "0",
                               str(seconds)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"naive loop failed: {proc.stderr[-2000:]}")
        done = json.loads(proc.stdout.strip().splitlines()[-1])
        time.sleep(0.5)
    finally:
        sub.close()
    res: dict[str, Any] = {"fps": done["frames"] / done["seconds"]}
    if realtime:
        arrival = [(t - b["frame_ts"]) * 1000.0 for t, b in sub.label_bodies[30:]]
        res["arrival_p50"], res["arrival_p99"] = pct(arrival, 50), pct(arrival, 99)
    return res


def agent_run(port: int, manifest: Path, video: Path, threads: int, realtime: bool,
              seconds: float, workdir: Path) -> dict[str, Any]:
    setup = AgentSetup(manifest, video, realtime=realtime, num_threads=threads)
    sub = Subscriber(port, keep_labels=realtime)
    agent = AgentProcess(setup.config(workdir, port))
    try:
        if not sub.wait_stats(3, 60):
            raise RuntimeError(f"agent stats missing:\n{agent.log_tail()}")
        sub.wait_stats(3 + int(seconds), 30 + 2 * seconds)
    finally:
        agent.stop()
        sub.close()
    res: dict[str, Any] = {"fps": fps_window(sub.stats, skip=2)["fps_out"]}
    if realtime:
        start = sub.label_bodies[0][0] + 2.0 if sub.label_bodies else 0.0
        kept = [(t, b) for t, b in sub.label_bodies if t >= start]
        arrival = [(t - b["frame_ts"]) * 1000.0 for t, b in kept]
        publish = [b["capture_to_publish_ms"] for _, b in kept]
        res.update(arrival_p50=pct(arrival, 50), arrival_p99=pct(arrival, 99),
                   publish_p99=pct(publish, 99))
    return res


def compare(port: int, manifest: Path, video: Path, threads: int, workdir: Path,
            rounds: int, seconds: float) -> dict[str, Any]:
    """Interleaved rounds: naive loop and agent at full speed, then both at 30 fps."""
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        meter = LoadMeter().start()
        row = {"naive_full": run_loop(port, manifest, video, threads, False, seconds),
               "agent_full": agent_run(port, manifest, video, threads, False, seconds,
                                       workdir / f"full{r}"),
               "naive_paced": run_loop(port, manifest, video, threads, True, seconds),
               "agent_paced": agent_run(port, manifest, video, threads, True, seconds,
                                        workdir / f"paced{r}")}
        row["foreign_cores"] = meter.stop()["foreign_cores"]
        row["speedup"] = row["agent_full"]["fps"] / row["naive_full"]["fps"]
        runs.append(row)
    med = {"speedup": median([r["speedup"] for r in runs]),
           "naive_fps": median([r["naive_full"]["fps"] for r in runs]),
           "agent_fps": median([r["agent_full"]["fps"] for r in runs]),
           "naive_arrival_p99": median([r["naive_paced"]["arrival_p99"] for r in runs]),
           "agent_arrival_p99": median([r["agent_paced"]["arrival_p99"] for r in runs]),
           "naive_arrival_p50": median([r["naive_paced"]["arrival_p50"] for r in runs]),
           "agent_arrival_p50": median([r["agent_paced"]["arrival_p50"] for r in runs]),
           "agent_publish_p99": median([r["agent_paced"]["publish_p99"] for r in runs]),
           "foreign_cores": median([r["foreign_cores"] for r in runs])}
    return {"median": med, "runs": runs, "threads": threads, "topic": f"{BASE}/labels"}


if __name__ == "__main__":
    import argparse

    from bench.common import REPO, broker, make_video

    parser = argparse.ArgumentParser(prog="python -m bench.naive_loop", description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    video = make_video(REPO / "bench" / "results" / "cache" / "scene_640x480.avi")
    import tempfile

    with broker() as mq, tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(compare(mq.port, args.model, video, 2, Path(tmp), args.rounds,
                                 args.seconds)["median"], indent=1))
