"""Against the limit: the agent end to end at full speed vs the lower of two bounds.

One round = each stage alone in a tight loop (``bench.stages``: decode as the agent decodes
for this model, preprocess, invoke at the agent's thread count, postprocess + payload,
publish through the port to the real broker), then ``edge-agent run`` on the same 640x480
MJPG file (realtime false, loop, outbox on, QoS 1 to a real Mosquitto). fps_out is
inferences/s from the agent's own counters (its ``stats`` messages), over a window after
warm-up.

The two bounds, both from the same round:

* the slowest stage alone (decode, preprocess, invoke: calls/s in a tight loop);
* the CPU bound, cores / (sum of the CPU time per frame of every stage, publishing
  included): on 2 cores the stages compete for the same CPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.agentrun import AgentProcess, AgentSetup, Subscriber, fps_window
from bench.common import LoadMeter, median
from bench.stages import publish_cost, stage_costs

ALONE = ("decode", "preprocess", "invoke")
CPU_STAGES = ("decode", "preprocess", "invoke", "post", "publish")


def agent_fps(port: int, setup: AgentSetup, workdir: Path, windows: int,
              prelude: str | None = None, broker_pid: int | None = None) -> dict[str, float]:
    """fps_out over ``windows`` stats intervals after warm-up, and the load meanwhile."""
    sub = Subscriber(port)
    agent = AgentProcess(setup.config(workdir, port), prelude=prelude)
    try:
        if not sub.wait_stats(3, 60):
            raise RuntimeError(f"agent stats missing:\n{agent.log_tail()}")
        meter = LoadMeter([agent.pid] + ([broker_pid] if broker_pid else [])).start()
        if not sub.wait_stats(windows + 3, 30 + 2 * windows * setup.stats_interval_s):
            raise RuntimeError(f"agent stats missing:\n{agent.log_tail()}")
        load = meter.stop()
    finally:
        agent.stop()
        sub.close()
    return {**fps_window(sub.stats, skip=2), **{f"agent_{k}": v for k, v in load.items()}}


def bounds(costs: dict[str, tuple[float, float]], cores: int) -> dict[str, Any]:
    """The slowest stage alone, the CPU bound, and the lower of the two."""
    slowest = min(ALONE, key=lambda k: costs[k][0])
    cpu_ms = sum(costs[k][1] for k in CPU_STAGES)
    cpu_bound = cores * 1000.0 / cpu_ms
    alone = costs[slowest][0]
    return {"slowest_stage": slowest, "slowest_per_s": alone, "cpu_ms_per_frame": cpu_ms,
            "cpu_bound_per_s": cpu_bound, "limit_per_s": min(alone, cpu_bound),
            "limit_kind": "cpu" if cpu_bound < alone else slowest}


def one_round(mq: Any, manifest: Path, video: Path, threads: int, workdir: Path,
              seconds: float, prelude: str | None = None) -> dict[str, Any]:
    meter = LoadMeter([mq.proc.pid]).start()
    costs = stage_costs(manifest, video, threads, seconds / 6)
    costs["publish"] = publish_cost(mq, count=1000 if seconds < 6 else 3000)
    load = meter.stop()
    setup = AgentSetup(manifest, video, num_threads=threads)
    run = agent_fps(mq.port, setup, workdir, max(3, int(seconds)), prelude, mq.proc.pid)
    b = bounds(costs, os.cpu_count() or 1)
    row: dict[str, Any] = {f"{k}_per_s": v[0] for k, v in costs.items()}
    row.update({f"{k}_cpu_ms": v[1] for k, v in costs.items()})
    row.update(run)
    row.update(b)
    row["stages_foreign_cores"] = load["foreign_cores"]
    row["ratio"] = run["fps_out"] / b["limit_per_s"]
    return row


def against_limit(mq: Any, manifest: Path, video: Path, threads: int, workdir: Path,
                  rounds: int, seconds: float, prelude: str | None = None) -> dict[str, Any]:
    runs = [one_round(mq, manifest, video, threads, workdir / f"r{i}", seconds, prelude)
            for i in range(rounds)]
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    med: dict[str, Any] = {k: median([r[k] for r in runs]) for k in keys}
    med["limit_kind"] = runs[0]["limit_kind"]
    med["slowest_stage"] = runs[0]["slowest_stage"]
    return {"median": med, "runs": runs}
