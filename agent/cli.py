"""edge-agent run | check-config | demo"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from agent import __version__
from agent.errors import ConfigError, EdgeError


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def check_config(path: Path) -> int:
    from agent.config import load_config, semantic_problems

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line)
        return 2
    problems = semantic_problems(cfg)
    for line in problems:
        print(line)
    if problems:
        return 2
    print(f"{path}: OK ({len(cfg.sources)} source(s), model {cfg.model.manifest})")
    return 0


def run(path: Path, log_level: str | None) -> int:
    from agent.app import AgentApp
    from agent.config import load_config, semantic_problems

    try:
        cfg = load_config(path)
        problems = semantic_problems(cfg)
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(log_level or cfg.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    app = AgentApp(cfg)
    try:
        app.start()
    except EdgeError as exc:
        logging.getLogger("agent").error("cannot start: %s", exc)
        return 1
    stop.wait()
    app.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the agent as a service")
    p_run.add_argument("--config", type=Path, required=True)
    p_run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p_check = sub.add_parser("check-config", help="validate a config file")
    p_check.add_argument("config", type=Path)
    p_demo = sub.add_parser("demo", help="run the agent on bundled digits and print labels")
    p_demo.add_argument("--broker", help="mqtt://host:port (default: an embedded broker)")
    p_demo.add_argument("--seconds", type=float, default=20.0)
    p_demo.add_argument("--config", type=Path, help="demo config (default: config/demo.yaml)")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "run":
        return run(args.config, args.log_level)
    from agent.demo import run_demo

    _setup_logging("WARNING")
    return run_demo(broker=args.broker, seconds=args.seconds, config_path=args.config)


if __name__ == "__main__":
    sys.exit(main())
