"""``edge-insights demo``: a small fleet for real, then its report.

A broker (Mosquitto when installed, else the embedded amqtt the agent's demo uses), three
real ``edge-agent`` processes on three different digit videos (the third camera's lens
gets dirty halfway through), the collector writing the lake, and after the run the report
printed and written as HTML.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

import agent
from deploy.connection import BrokerOptions
from insights.collector import Collector, CollectorOptions
from insights.engines import DuckDBEngine
from insights.html import write_html
from insights.lake import Lake
from insights.output import format_report
from insights.queries import Scope
from insights.report import ReportOptions, build_report
from insights.videos import VideoPlan, write_digits_video

CAMERAS = (("cam-lobby", VideoPlan(seed=0, hold=4)), ("cam-dock", VideoPlan(seed=1, hold=6)),
           ("cam-gate", VideoPlan(seed=2, hold=5, dirty_from=0.5)))
MANIFEST = Path(agent.__file__).parent / "data" / "digits_cnn.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoBroker:
    """Mosquitto in the foreground when it is installed (MQTT 5), else amqtt (3.1.1)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.proc, self.embedded = folder, None, None
        self.port = _free_port()
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        self.protocol = "5" if binary else "3.1.1"
        if binary:
            folder.mkdir(parents=True, exist_ok=True)
            conf = folder / "mosquitto.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                            f"max_queued_messages 0\nmax_inflight_messages 0\n"
                            f"persistence false\nuser root\n")
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            self.name = "Mosquitto"
        else:
            from agent.demo import EmbeddedBroker

            self.embedded = EmbeddedBroker()
            self.port = self.embedded.port
            self.embedded.start()
            self.name = "amqtt (embedded)"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"the demo broker did not listen on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
        if self.embedded is not None:
            self.embedded.stop()


def _agent_config(folder: Path, device: str, video: Path, port: int, protocol: str) -> Path:
    raw: dict[str, Any] = {
        "device": {"id": device, "prefix": "edge"},
        "mqtt": {"host": "127.0.0.1", "port": port, "protocol": protocol, "keepalive_s": 10},
        "model": {"manifest": str(MANIFEST), "num_threads": 1},
        "sources": [{"name": "door", "type": "camera", "uri": str(video), "loop": True,
                     "realtime": True}],
        "publish": {"top_k": 3, "stats_interval_s": 2},
        "state_dir": str(folder / f"state-{device}"), "log_level": "WARNING"}
    path = folder / f"{device}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start_agents(folder: Path, broker: DemoBroker, seconds: float) -> list[subprocess.Popen]:
    procs = []
    for device, plan in CAMERAS:
        video = folder / f"{device}.avi"
        frames = write_digits_video(video, VideoPlan(**{**vars(plan),
                                                        "frames": int(seconds * plan.fps)}))
        config = _agent_config(folder, device, video, broker.port, broker.protocol)
        log = open(folder / f"{device}.log", "wb")  # noqa: SIM115 - the child holds it
        procs.append(subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                       str(config)], stdout=log, stderr=subprocess.STDOUT))
        print(f"  agent {device}: {len(frames)} frames of digits at {plan.fps:g} fps"
              + (", lens dirty from halfway" if plan.dirty_from else ""))
    return procs


def _wait_for_agents(collector: Collector, procs: list[subprocess.Popen],
                     timeout: float = 90.0) -> None:
    """The clock starts when every camera is heard from (start-up is slow on a busy host)."""
    deadline = time.monotonic() + timeout
    while len(collector.counters.devices) < len(CAMERAS):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"only {len(collector.counters.devices)} of {len(CAMERAS)} "
                               f"agents started; see their logs in the demo folder")
        time.sleep(0.1)


def run_demo(seconds: float, out: str | Path) -> int:
    out = Path(out).resolve()  # the agents run in their own folder: no relative paths
    if (out / "lake").exists():
        shutil.rmtree(out / "lake")
    out.mkdir(parents=True, exist_ok=True)
    broker = DemoBroker(out / "broker")
    print(f"broker: {broker.name} on 127.0.0.1:{broker.port} (MQTT {broker.protocol})")
    lake = Lake(out / "lake", "demo-collector")
    collector = Collector(BrokerOptions.from_url(f"mqtt://127.0.0.1:{broker.port}"), lake,
                          CollectorOptions(client_id="edge-insights-demo",
                                           protocol=broker.protocol, flush_seconds=0.5))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    procs: list[subprocess.Popen] = []
    try:
        collector.start()
        if not collector.subscribed.wait(10):
            raise RuntimeError("the collector did not subscribe")
        procs = _start_agents(out, broker, seconds)
        _wait_for_agents(collector, procs)
        print(f"collecting into {lake.root} for {seconds:g} s ...")
        stop.wait(seconds)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(15)
        time.sleep(1.0)  # the agents' last messages and 'stopped' status reach the collector
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        collector.stop()
        broker.stop()
    print(f"collector: {collector.summary()}")
    report = build_report(DuckDBEngine(lake), Scope(),
                          ReportOptions(bucket_s=5, gap_s=1.0, min_score=0.6, min_frames=2,
                                        drift_window_s=3, baseline_windows=2, min_n=10,
                                        impact_window_s=10))
    print(format_report(report, "table", limit=15))
    page = write_html(report, out / "report.html")
    print(f"\nHTML report: {page.resolve()}")
    print(f"explore: edge-insights query --lake {lake.root} \"SELECT device, top_label, "
          f"count(*) FROM labels GROUP BY ALL ORDER BY ALL\"")
    return 0 if collector.counters.stored.get("labels") else 1
