"""Latency under load: capture-to-publish at a paced 30 fps file source vs invoke alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.agentrun import AgentProcess, AgentSetup, Subscriber
from bench.common import pct
from bench.stages import invoke_latencies


def paced_run(port: int, manifest: Path, video: Path, workdir: Path, threads: int,
              seconds: float, skip_s: float = 2.0) -> dict[str, Any]:
    """Labels of one paced run: payload capture-to-publish and capture-to-arrival (ms)."""
    cfg = AgentSetup(manifest, video, realtime=True, num_threads=threads).config(workdir, port)
    sub = Subscriber(port, keep_labels=True)
    agent = AgentProcess(cfg)
    try:
        if not sub.wait_labels(1, 60):
            raise RuntimeError(f"no label from the agent:\n{agent.log_tail()}")
        assert sub.first_label_at is not None
        time.sleep(seconds + skip_s)
    finally:
        agent.stop()
        sub.close()
    start = sub.first_label_at + skip_s
    kept = [(t, b) for t, b in sub.label_bodies if t >= start]
    publish = [b["capture_to_publish_ms"] for _, b in kept]
    arrival = [(t - b["frame_ts"]) * 1000.0 for t, b in kept]
    inference = [b["inference_ms"] for _, b in kept]
    span = (kept[-1][0] - kept[0][0]) if len(kept) > 1 else float("nan")
    return {"labels": len(kept), "rate": (len(kept) - 1) / span if span else float("nan"),
            "publish_p50": pct(publish, 50), "publish_p99": pct(publish, 99),
            "arrival_p50": pct(arrival, 50), "arrival_p99": pct(arrival, 99),
            "agent_inference_p99": pct(inference, 99)}


def under_load(port: int, manifest: Path, video: Path, workdir: Path, threads: int,
               seconds: float) -> dict[str, Any]:
    invoke = invoke_latencies(manifest, threads, runs=300)
    run = paced_run(port, manifest, video, workdir, threads, seconds)
    run["invoke_p50"] = pct(invoke, 50)
    run["invoke_p99"] = pct(invoke, 99)
    run["publish_p99_minus_invoke_p99"] = run["publish_p99"] - run["invoke_p99"]
    run["arrival_p99_minus_invoke_p99"] = run["arrival_p99"] - run["invoke_p99"]
    return run
