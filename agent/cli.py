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
    from agent.preflight import run_time_problems

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line)
        return 2
    problems = semantic_problems(cfg) + run_time_problems(cfg)
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


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where there is a default, ``(required)`` where there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        if action.default is None or action.default is argparse.SUPPRESS \
                or "default" in text or not action.option_strings:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpWithDefaults
    parser = argparse.ArgumentParser(
        prog="edge-agent", formatter_class=fmt,
        description="The on-device inference agent: camera or MQTT samples in, labels out "
                    "over MQTT.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}",
                        help="print the agent version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_run = sub.add_parser("run", formatter_class=fmt, help="run the agent as a service",
                           description="Run the agent until SIGTERM or SIGINT (systemd).")
    p_run.add_argument("--config", type=Path, required=True,
                       help="agent YAML config (see config/agent.example.yaml)")
    p_run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log level; default: log_level from the config")
    p_check = sub.add_parser(
        "check-config", formatter_class=fmt, help="validate a config file and what it names",
        description="Check the YAML, then what `run` needs from the disk: the state folder "
                    "is writable, the model file matches its manifest, video files and keys "
                    "are readable. Prints one `key: value: what is wrong` line per problem "
                    "(secrets hidden) and exits 2, or OK and 0.")
    p_check.add_argument("config", type=Path, help="agent YAML config to check")
    p_demo = sub.add_parser(
        "demo", formatter_class=fmt, help="run the agent on bundled digits and print labels",
        description="Run the agent on a video of held-out digits with the bundled CNN, "
                    "printing each label with running accuracy.")
    p_demo.add_argument("--broker", help="mqtt://host:port of a broker to use; default: an "
                                         "embedded broker on a free loopback port")
    p_demo.add_argument("--seconds", type=float, default=20.0, help="how long to run")
    p_demo.add_argument("--config", type=Path, help="demo config; default: the bundled "
                                                    "agent/data/demo.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "run":
        return run(args.config, args.log_level)
    from agent.demo import run_demo

    _setup_logging("WARNING")
    return run_demo(broker=args.broker, seconds=args.seconds, config_path=args.config)


if __name__ == "__main__":
    sys.exit(main())
