"""Several cameras into one model: every source served, and how many one agent sustains.

N sources read the same 640x480 MJPG file paced at its 30 fps (``realtime``), one
MobileNetV2 model, outbox on, QoS 1. From the agent's own ``stats`` (``sources``: per
source labels/s, frames, drops, capture-to-publish p99) over a window after warm-up:

* fairness at N = 4: each source's share of its 30 fps (target >= 0.95 when the total fits);
* the sweep: N = 4, 8, 12, ... until a source falls below 0.95 of 30 fps or drops frames
  (more than 2% overwritten): the last N that held is what one agent sustains per model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.agentrun import AgentProcess, AgentSetup, Subscriber
from bench.common import LoadMeter

SOURCE_FPS = 30.0


def run_cameras(port: int, manifest: Path, video: Path, cameras: int, workdir: Path,
                windows: int, threads: int = 2) -> dict[str, Any]:
    setup = AgentSetup(manifest, video, realtime=True, num_threads=threads, cameras=cameras)
    sub = Subscriber(port)
    agent = AgentProcess(setup.config(workdir, port))
    try:
        if not sub.wait_stats(3, 60):
            raise RuntimeError(f"agent stats missing:\n{agent.log_tail()}")
        meter = LoadMeter([agent.pid]).start()
        if not sub.wait_stats(windows + 3, 30 + 3 * windows):
            raise RuntimeError(f"agent stats missing:\n{agent.log_tail()}")
        load = meter.stop()
    finally:
        agent.stop()
        sub.close()
    a, b = sub.stats[2], sub.stats[-1]
    dt = b["ts"] - a["ts"]
    per: dict[str, dict[str, float]] = {}
    for name in setup.source_names():
        sa, sb = a["sources"].get(name, {}), b["sources"].get(name, {})
        frames = sb.get("frames", 0) - sa.get("frames", 0)
        dropped = sb.get("dropped", 0) - sa.get("dropped", 0)
        per[name] = {"fps": (sb.get("inferences", 0) - sa.get("inferences", 0)) / dt,
                     "dropped_share": dropped / frames if frames else float("nan"),
                     "p99_ms": sb.get("capture_to_publish_ms_p99") or float("nan")}
    fps = [v["fps"] for v in per.values()]
    return {"cameras": cameras, "sources": per, "total_fps": sum(fps),
            "min_share": min(fps) / SOURCE_FPS, "max_share": max(fps) / SOURCE_FPS,
            "max_dropped_share": max(v["dropped_share"] for v in per.values()),
            "worst_p99_ms": max(v["p99_ms"] for v in per.values()),
            "our_cores": load["our_cores"], "foreign_cores": load["foreign_cores"]}


def held(run: dict[str, Any]) -> bool:
    return run["min_share"] >= 0.95 and run["max_dropped_share"] <= 0.02


def sweep(port: int, manifest: Path, video: Path, workdir: Path, windows: int,
          steps: tuple[int, ...] = (4, 8, 12, 16, 20, 24, 32)) -> dict[str, Any]:
    runs = []
    sustained = 0
    for n in steps:
        started = time.monotonic()
        run = run_cameras(port, manifest, video, n, workdir / f"n{n}", windows)
        run["seconds"] = time.monotonic() - started
        runs.append(run)
        if not held(run):
            break
        sustained = n
    return {"runs": runs, "sustained": sustained, "fairness": runs[0]}
