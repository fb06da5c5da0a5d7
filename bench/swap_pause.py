"""Swap pause: how long labels stop while a pushed model is verified, loaded, warmed and
swapped in, measured on a real agent process fed at 30 fps, against the normal label gap
measured in the same run.

    .venv/bin/python -m bench.swap_pause [--pushes 5]

Pushes the reference CNN under new versions with the real ``edge-deploy push``; prints, per
push, the largest gap between consecutive labels within +-1 s of the switch, the median gap
elsewhere, and whether any frame index was skipped across the swap.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from agent.demo import write_digits_video
from agent.models.signing import generate_keypair
from bench.support.agent_proc import DATA, REPO, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector

LOOP = 200


def variant(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True)
    shutil.copyfile(DATA / "digits_cnn.tflite", folder / "digits_cnn.tflite")
    raw = json.loads((DATA / "digits_cnn.json").read_text())
    raw["version"] = version
    (folder / "digits_cnn.json").write_text(json.dumps(raw))
    return folder


def measure(pushes: int) -> list[dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="swap-"))
    broker = Mosquitto(tmp / "broker").start()
    keys = generate_keypair(tmp / "keys")
    video = tmp / "d.avi"
    write_digits_video(video, fps=30)
    cfg = agent_config(tmp, broker.port, [{"name": "cam", "type": "camera", "uri": str(video),
                                           "loop": True, "realtime": True}])
    raw = yaml.safe_load(cfg.read_text())
    raw["delivery"] = {"trusted_keys": [str(keys.public)]}
    cfg.write_text(yaml.safe_dump(raw))
    sub = Collector(broker.port, ["edge/dev1/labels"])
    agent = AgentProcess(cfg)
    rows = []
    try:
        sub.wait_topic("edge/dev1/labels", count=60, timeout=30)
        for i in range(pushes):
            version = f"9.{i}.0"
            subprocess.run([sys.executable, "-m", "deploy.cli", "push",
                            str(variant(tmp / version, version)), "--device", "dev1",
                            "--broker", broker.url, "--key", str(keys.private), "--quiet"],
                           check=True, capture_output=True, cwd=REPO, timeout=60)
            sub.wait_for(lambda ms, v=version: sum(
                json.loads(m.payload)["model"]["version"] == v for m in ms) >= 30, timeout=30)
            rows.append(swap_figures([m for m in sub.messages], version))
    finally:
        agent.terminate_timed()
        sub.close()
        broker.stop()
    return rows


def swap_figures(messages: list, version: str) -> dict[str, float]:
    """Inference side: gaps between the moments results were made (capture time + latency);
    delivery side: gaps between arrivals at the subscriber; frames skipped within +-15."""
    labels = [(m.ts, json.loads(m.payload)) for m in messages]
    switch = next(i for i, (_, b) in enumerate(labels) if b["model"]["version"] == version)
    made = [b["frame_ts"] + b["capture_to_publish_ms"] / 1000 for _, b in labels]
    arrived = [ts for ts, _ in labels]
    window = range(max(1, switch - 15), min(len(labels), switch + 15))
    elsewhere = range(1, max(2, switch - 30))
    frames = [labels[i][1]["frame_index"] for i in window]
    return {
        "inference_gap_ms": max((made[i] - made[i - 1]) * 1000 for i in window),
        "delivery_gap_ms": max((arrived[i] - arrived[i - 1]) * 1000 for i in window),
        "median_gap_ms": statistics.median((made[i] - made[i - 1]) * 1000 for i in elsewhere),
        "frames_skipped": sum((b - a) % LOOP - 1 for a, b in itertools.pairwise(frames)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pushes", type=int, default=5)
    args = ap.parse_args()
    rows = measure(args.pushes)
    print("| push | largest gap in inference near the swap (ms) | largest gap in delivery "
          "(ms) | median gap elsewhere (ms) | frames skipped |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['inference_gap_ms']:.1f} | {r['delivery_gap_ms']:.1f} "
              f"| {r['median_gap_ms']:.1f} | {r['frames_skipped']:.0f} |")


if __name__ == "__main__":
    main()
