"""edge-agent run | check-config | demo"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from agent import __version__
from agent.config import AgentConfig, CameraSourceConfig
from agent.errors import ConfigError, EdgeError
from agent.files import sha256_file
from agent.manifest import load_manifest


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
    except OSError as exc:  # the disk refused what start needs (edge-agent check-config tells)
        logging.getLogger("agent").error("cannot start: %s (run edge-agent check-config %s)",
                                         exc, path)
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


# --------------------------------------------------------------------------- check-config
# What check-config verifies on the disk after the config itself: the things `run` would
# otherwise fail on at start-up or later, in the config's own key names.

def run_time_problems(cfg: AgentConfig) -> list[str]:
    problems = _writable_folder("state_dir", cfg.state_dir)
    if cfg.outbox.enabled and cfg.outbox.path is not None:
        problems += _writable_folder("outbox.path", cfg.outbox.path.parent)
    problems += _model_file(cfg)
    problems += _video_files(cfg)
    problems += _trusted_keys(cfg)
    if cfg.mqtt.password_file is not None and cfg.mqtt.password_file.is_file() \
            and not os.access(cfg.mqtt.password_file, os.R_OK):
        problems.append(f"mqtt.password_file: {str(cfg.mqtt.password_file)!r}: not readable")
    return problems


def _writable_folder(key: str, folder: Path) -> list[str]:
    """The folder, or the nearest folder above it that exists (the agent creates the rest),
    must take a real file: ``os.access`` says yes to root on a read-only mount."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [f"{key}: {str(folder)!r}: cannot be created: {str(probe)!r} is not a folder"]
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".edge-agent-check-"):
            pass
    except OSError as exc:
        verb = "cannot be written" if probe == folder else \
            f"cannot be created in {str(probe)!r}"
        return [f"{key}: {str(folder)!r}: {verb}: {exc.strerror}"]
    return []


def _model_file(cfg: AgentConfig) -> list[str]:
    key, where = "model.manifest", repr(str(cfg.model.manifest))
    try:
        manifest = load_manifest(cfg.model.manifest)
    except EdgeError:
        return []  # reported by semantic_problems
    path = manifest.model_path(cfg.model.manifest.parent)
    if not path.is_file():
        return []  # reported by semantic_problems
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return [f"{key}: {where}: model file {manifest.file!r} cannot be read: {exc.strerror}"]
    if digest != manifest.sha256:
        return [f"{key}: {where}: model file {manifest.file!r} has sha256 {digest[:16]}..., "
                f"the manifest says {manifest.sha256[:16]}...: the file was changed or "
                "belongs to another manifest"]
    return []


def _video_files(cfg: AgentConfig) -> list[str]:
    problems = []
    for i, src in enumerate(cfg.sources):
        if not isinstance(src, CameraSourceConfig) or not isinstance(src.uri, str):
            continue
        uri = src.uri
        if "://" in uri or uri.isdigit() or uri.startswith("/dev/"):
            continue  # devices and streams come and go; the agent waits for them
        path = Path(uri)
        if not path.is_file():
            problems.append(f"sources.{i}.uri: {uri!r}: video file not found")
        elif not os.access(path, os.R_OK):
            problems.append(f"sources.{i}.uri: {uri!r}: video file not readable")
    return problems


def _trusted_keys(cfg: AgentConfig) -> list[str]:
    from agent.models.signing import load_public_key

    problems = []
    for i, spec in enumerate(cfg.delivery.trusted_keys):
        try:
            load_public_key(spec)
        except EdgeError as exc:
            problems.append(f"delivery.trusted_keys.{i}: {spec[:80]!r}: {exc}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
