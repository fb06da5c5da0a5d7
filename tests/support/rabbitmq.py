"""A real RabbitMQ with its MQTT plugin (Debian's rabbitmq-server), owned by the test.

Started as root in a temp folder through RABBITMQ_* variables, every port free and its own
(MQTT, AMQP, Erlang distribution, epmd), so it touches nothing outside the folder and several
can run at once. Start-up takes 10-60 s on a loaded 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.support.broker import free_port, wait_for_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
START_TIMEOUT_S = 180.0


def available() -> bool:
    return SERVER.exists()


@dataclass
class RabbitMQ:
    workdir: Path
    port: int = field(default_factory=free_port)
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        w = self.workdir
        return {**os.environ, "HOME": str(w), "RABBITMQ_NODENAME": f"rabbit-{self.port}@localhost",
                "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(w / "mnesia"), "RABBITMQ_LOG_BASE": str(w / "log"),
                "RABBITMQ_PID_FILE": str(w / "rabbit.pid"),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port)}

    def _write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rabbitmq.conf").write_text("\n".join([
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}",
            "mqtt.allow_anonymous = true",
            "loopback_users = none",
            "log.console = false",
            "log.file.level = warning",
        ]) + "\n")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def start(self) -> RabbitMQ:
        self._write_conf()
        self.proc = subprocess.Popen([str(SERVER)], env=self._env(), cwd=self.workdir,
                                     stdout=open(self.workdir / "server.out", "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(self.port, timeout=START_TIMEOUT_S)
        except TimeoutError:
            self.stop(kill=True)
            raise RuntimeError(f"rabbitmq did not start: {self.log()[-2000:]}") from None
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        epmd = shutil.which("epmd")
        if epmd:  # epmd is a daemon of its own; it listens on our private port
            subprocess.run([epmd, "-kill"], env=self._env(), capture_output=True, timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        parts = [self.workdir / "server.out", *sorted((self.workdir / "log").glob("*.log"))]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())
