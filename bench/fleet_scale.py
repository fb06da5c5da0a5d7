"""Fleet at scale on one Mosquitto: simulated devices (bench/fleet_sim.py) plus real
``edge-agent`` processes at a low frame rate, measured side by side in one run.

    python -m bench.fleet_scale --devices 100,300,500 --agents 20

For each fleet size: time until every device is online, labels per second offered and received
by a fleet-side subscriber, ``edge-deploy status`` wall time, a 600 KB model pushed to the whole
group on the group topic and in waves (``--waves 10%``), broker CPU and memory per phase, and a
broker restart with the whole fleet connected (peak connections per second, time until every
device is online again, the real agents' outbox backlogs delivered with nothing lost).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent.models.signing import load_public_key
from bench.common import LoadMeter, machine, make_video, proc_fds, proc_rss_mb
from bench.fleet_env import AgentFleet, FleetBroker, Subscriber, cpu_seconds, deploy, wide_model
from bench.fleet_sim import SimFleet, SimOptions


def _loop_thread(fleet: SimFleet) -> threading.Thread:
    import asyncio

    ready = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(fleet.run(ready.set)), daemon=True)
    thread.start()
    return thread


def wait(pred: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} after {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def phase(broker: FleetBroker, fn: Any) -> tuple[Any, dict[str, float]]:
    """Run ``fn``; the broker's cores (its own CPU time only), memory and descriptors, and the
    machine's load from everything else (the simulator, the agents, other sessions)."""
    machine_load = LoadMeter([broker.pid]).start()
    cpu0, t0 = cpu_seconds(broker.pid), time.monotonic()
    out = fn()
    cores = (cpu_seconds(broker.pid) - cpu0) / max(time.monotonic() - t0, 1e-6)
    load = machine_load.stop()
    return out, {"broker_cores": round(cores, 3), "broker_rss_mb": proc_rss_mb(broker.pid),
                 "broker_fds": proc_fds(broker.pid),
                 "other_cores": round(load["foreign_cores"] + load["our_cores"] - cores, 3)}


def run_all(sizes: list[int], agents: int, tmp: Path, model_dir: Path, keys: Any,
            rate: float, agent_fps: float) -> list[dict[str, Any]]:
    """One broker and one set of real agents; simulated devices are added size by size."""
    broker = FleetBroker(tmp / "broker").start()
    sub = Subscriber(broker.port, "bench-sub")
    video = tmp / "scene.avi"
    make_video(video, frames=60)
    real = AgentFleet(tmp / "agents", broker.port, agents, keys.public, video, agent_fps)
    sub.mark_agents(real.ids)
    opts = SimOptions("127.0.0.1", broker.port, labels_per_s=rate,
                      trusted=[load_public_key(keys.public)])
    sims = SimFleet(max(1, sizes[0] - agents), opts)
    t0 = time.monotonic()
    _loop_thread(sims)
    rows = []
    try:
        for i, n in enumerate(sizes):
            if i:
                sims.grow(n - agents - len(sims.devices))
            wait(lambda n=n: sims.online() == n - agents
                 and sub.online_count(real.ids) == agents, 900, "fleet online")
            row: dict[str, Any] = {"devices": n, "simulated": n - agents, "real_agents": agents,
                                   "online_s": round(time.monotonic() - t0, 2)}
            row |= measure_labels(sub, broker, n, agents, rate, agent_fps)
            row |= measure_status(broker, n)
            row |= measure_pushes(broker, model_dir, keys, (f"{2 * i + 2}.0.0",
                                                            f"{2 * i + 3}.0.0"))
            row |= measure_restart(broker, sub, sims, real)
            print(json.dumps(row, default=str), flush=True)
            rows.append(row)
            t0 = time.monotonic()
    finally:
        sims.stop()
        real.stop()
        sub.close()
        broker.stop()
    return rows


def measure_labels(sub: Subscriber, broker: FleetBroker, n: int, agents: int,
                   rate: float, agent_fps: float) -> dict[str, Any]:
    def window() -> float:
        c0, t0 = sub.labels_received, time.monotonic()
        time.sleep(10)
        return (sub.labels_received - c0) / (time.monotonic() - t0)

    received, load = phase(broker, window)
    return {"labels_offered_per_s": (n - agents) * rate + agents * agent_fps,
            "labels_received_per_s": received, **{f"idle_{k}": v for k, v in load.items()}}


def measure_status(broker: FleetBroker, n: int) -> dict[str, Any]:
    t0 = time.monotonic()
    out = deploy("status", "--broker", broker.url, "--summary", "--format", "json",
                 "--wait", "30")
    took = time.monotonic() - t0
    seen = json.loads(out.stdout)["summary"]["devices"] if out.returncode == 0 else -1
    return {"status_s": took, "status_devices": seen}


def measure_pushes(broker: FleetBroker, model_dir: Path, keys: Any,
                   versions: tuple[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for label, version, policy in (("group_topic", versions[0], []),
                                   ("waves_10pct", versions[1], ["--waves", "10%"])):
        source = model_dir / version / "manifest.json"

        def push(source: Path = source, policy: list[str] = policy) -> Any:
            return deploy("push", str(source), "--group", "sim", "--broker", broker.url,
                          "--key", str(keys.private), "--timeout", "300", "--quiet",
                          "--format", "json", "--status-wait", "30", *policy)

        t0 = time.monotonic()
        out, load = phase(broker, push)
        row[f"push_{label}_s"] = time.monotonic() - t0
        try:
            report = json.loads(out.stdout)
            row[f"push_{label}_results"] = report["counts"]
        except (ValueError, KeyError):
            row[f"push_{label}_results"] = {"error": (out.stderr or out.stdout)[-300:]}
        row[f"push_{label}_broker_cores"] = load["broker_cores"]
        row[f"push_{label}_broker_rss_mb"] = load["broker_rss_mb"]
    return row


def measure_restart(broker: FleetBroker, sub: Subscriber, sims: SimFleet,
                    real: AgentFleet) -> dict[str, Any]:
    before = len(sims.stats.connects)
    broker.stop()
    t_stop = time.time()
    time.sleep(5)  # the outage: real agents keep labels in their outboxes
    t_restart = time.time()
    broker.start()
    online = wait(lambda: sims.online() == len(sims.devices) and
                  sub.online_count(real.ids, since=t_restart) == len(real.ids), 600,
                  "fleet back online")
    drained = wait(lambda: sub.caught_up(real.ids, t_restart), 600, "outboxes drained")
    connects = [t for t in sims.stats.connects[before:]] + sub.online_times(real.ids,
                                                                            t_restart)
    per_s = Counter(int(t - t_restart) for t in connects)
    lost = sub.missing_seqs(real.ids)
    backlog = sub.produced_between(real.ids, t_stop, t_restart)
    return {"restart_all_online_s": online, "restart_peak_connects_per_s": max(per_s.values()),
            "restart_connects": len(connects), "restart_outbox_backlog": backlog,
            "restart_drained_s": drained + online, "restart_labels_lost": lost,
            "restart_broker_fds": proc_fds(broker.pid)}


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    m = machine()
    lines = [f"# Fleet at scale ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"`python -m bench.fleet_scale --devices {args.devices} --agents {args.agents} "
             f"--labels-per-s {args.labels_per_s} --agent-fps {args.agent_fps}` on "
             f"{m['cpu']}, {m['cores']} cores, "
             f"{m['mosquitto']}; other sessions shared the machine (foreign cores below).", ""]
    for r in rows:
        lines.append("```")
        lines.append(json.dumps(r, indent=1, default=str))
        lines.append("```")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="100,300,500", help="fleet sizes, comma-separated")
    p.add_argument("--agents", type=int, default=20, help="real edge-agent processes in each")
    p.add_argument("--labels-per-s", type=float, default=1.0, help="per simulated device")
    p.add_argument("--agent-fps", type=float, default=1.0, help="frame rate of each real agent")
    p.add_argument("--out", default="bench/results/fleet_scale.md", help="report file")
    p.add_argument("--workdir", default=None, help="scratch folder (a temp dir by default)")
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fleet-scale-", dir=args.workdir) as name:
        tmp = Path(name)
        sizes = sorted(int(x) for x in args.devices.split(","))
        keys, model_dir = wide_model(tmp / "models", versions=tuple(
            f"{v}.0.0" for v in range(2, 2 * len(sizes) + 2)))
        rows = run_all(sizes, args.agents, tmp, model_dir, keys, args.labels_per_s,
                       args.agent_fps)
    text = report(rows, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
