"""edge-deploy: keygen | push | status | rollout.

Exit codes: 0 success, 1 a device refused, failed, timed out or was skipped (or a rollout
stopped), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent.contract import FleetTopics
from agent.errors import DeployError, EdgeError
from agent.models.signing import generate_keypair, load_private_key
from deploy.broker import MqttSession
from deploy.cli_rollout import add_rollout_parsers, cmd_rollout, push_group_rollout
from deploy.connection import BrokerOptions, add_broker_args
from deploy.fleet import DeviceRoster, FleetWatch
from deploy.progress import ProgressLine, outcome_table
from deploy.push import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EXPIRES_IN_S,
    RESULT_OFFLINE,
    Outcome,
    ResultCollector,
    load_bundle,
    push_and_wait,
)
from deploy.rollout_state import state_dir
from deploy.status_view import FORMATS, SORT_KEYS, StatusQuery, parse_duration, status_report


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; shows each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or action.required
                or "%(default)" in text or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _push_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("push", help="push a signed model to a device or a group",
                       formatter_class=HelpFormatter,
                       description="Push to one device, or roll out to a group: canaries "
                       "first, then waves with a soak time between them, stopped by the "
                       "abort rule. A group push is a rollout kept on disk (see `rollout`).")
    s.add_argument("source", help="model folder (holding one manifest) or manifest JSON")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="push to this device id")
    target.add_argument("--group", help="roll out to the live members of this group")
    add_broker_args(s)
    s.add_argument("--key", required=True, help="private key (PEM) from `edge-deploy keygen`")
    s.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for a device's (or a wave's) results")
    s.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                   help="bytes per chunk message")
    s.add_argument("--expires-in", type=float, default=DEFAULT_EXPIRES_IN_S,
                   help="seconds the signed push stays valid on the devices")
    s.add_argument("--rollback", action="store_true",
                   help="sign as a deliberate downgrade (a device refuses a lower version "
                   "otherwise; with --device)")
    s.add_argument("--status-wait", type=float, default=5.0,
                   help="at most this many seconds to gather the retained status first")
    s.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    s.add_argument("--format", choices=("table", "json"), default="table",
                   help="result on stdout: a table/summary, or JSON for scripts")
    add_policy_args(s)


def add_policy_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("rollout policy (with --group)")
    g.add_argument("--canary", type=int, default=0,
                   help="push to N members first, one at a time; any failure stops")
    g.add_argument("--waves", default="all",
                   help="after the canaries: all (one group message), N per wave, P%% per "
                   "wave, a list such as 5%%,15%%,80%% (last repeats), or exp:START[:FACTOR]")
    g.add_argument("--soak", default="0s",
                   help="time between waves (e.g. 90s, 5m); a rollback in it is a failure")
    g.add_argument("--abort-after", type=int, default=1,
                   help="judge the abort rule once at least N devices have answered")
    g.add_argument("--max-failures", default="0%",
                   help="stop when the share of refused/error/rolled_back/timeout answers "
                   "is above this")
    g.add_argument("--state-dir", default=None,
                   help="where rollouts are kept (default $EDGE_DEPLOY_STATE_DIR, else "
                   "$XDG_STATE_HOME/edge-deploy)")
    g.add_argument("--list", action="store_true",
                   help="print one line per device even for large rollouts")


def _status_parser(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="show devices from their retained status and stats",
                        formatter_class=HelpFormatter,
                        description="Rows from the retained status and stats, then a summary "
                        "line (states, and devices per model version).")
    add_broker_args(st)
    st.add_argument("--wait", type=float, default=5.0,
                    help="at most this many seconds to gather the retained messages")
    st.add_argument("--group", default=None, help="only members of this group")
    st.add_argument("--state", action="append", default=None,
                    help="only this state (online, degraded, stale, offline, stopped); "
                    "repeatable")
    st.add_argument("--model", default=None, help="only devices running this model name")
    st.add_argument("--version", default=None, help="only devices running this version")
    st.add_argument("--stale", default=None,
                    help="only devices not heard from for this long (e.g. 60s); also when a "
                    "live device counts as stale (120s when not given)")
    st.add_argument("--sort", choices=SORT_KEYS, default="device", help="row order")
    st.add_argument("--format", choices=FORMATS, default="table", help="output format")
    st.add_argument("--summary", action="store_true", help="only the summary")
    st.add_argument("--state-dir", default=None,
                    help="where the ids of devices seen before are kept (default "
                    "$EDGE_DEPLOY_STATE_DIR, else $XDG_STATE_HOME/edge-deploy)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-deploy", description=__doc__,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    k = sub.add_parser("keygen", help="create an Ed25519 signing key pair",
                       formatter_class=HelpFormatter)
    k.add_argument("--out", required=True, help="folder for <name>.key and <name>.pub")
    k.add_argument("--name", default="deploy", help="file name of the key pair")
    _push_parser(sub)
    _status_parser(sub)
    add_rollout_parsers(sub, add_broker_args, HelpFormatter)
    return p


def cmd_keygen(args: argparse.Namespace) -> int:
    files = generate_keypair(args.out, args.name)
    print(f"private key: {files.private} (keep it secret; mode 0600)")
    print(f"public key:  {files.public} (copy to each device's trusted keys)")
    print(f"key id:      {files.key_id}")
    return 0


def _push_device(session: MqttSession, args: argparse.Namespace) -> list[Outcome]:
    bundle, key = load_bundle(args.source), load_private_key(args.key)
    fleet = FleetTopics(args.prefix)
    collector = ResultCollector(session, fleet)
    watch = FleetWatch(session, fleet)
    watch.settle(args.status_wait, known=[args.device])
    view = watch.view(args.device)
    if view is None or not view.status:
        raise DeployError(f"no device {args.device!r} has a retained status under "
                          f"{fleet.device(args.device).status}; check the id "
                          f"(`edge-deploy status` lists the devices)")
    if not view.live:
        return [Outcome(args.device, RESULT_OFFLINE, view.model.get("version"),
                        f"state {view.state}: not pushed")]
    m = bundle.manifest
    progress = ProgressLine(f"{m.name} {m.version}", enabled=not args.quiet)
    return push_and_wait(session, collector, fleet.device(args.device).model_base, {args.device},
                         bundle, key, timeout=args.timeout, chunk_size=args.chunk_size,
                         progress=progress, rollback=args.rollback,
                         expires_in_s=args.expires_in)


def cmd_push(args: argparse.Namespace) -> int:
    if args.chunk_size <= 0:
        raise DeployError("--chunk-size must be positive")
    if args.group:
        return push_group_rollout(args)
    session = MqttSession(BrokerOptions.from_args(args))
    try:
        rows = _push_device(session, args)
    finally:
        session.close()
    if args.format == "json":
        import json

        print(json.dumps([o.__dict__ for o in rows], indent=2))
    else:
        print(outcome_table(rows))
    return 0 if rows and all(o.ok and o.result != RESULT_OFFLINE for o in rows) else 1


def cmd_status(args: argparse.Namespace) -> int:
    query = StatusQuery(group=args.group, states=tuple(args.state or ()), model=args.model,
                        version=args.version,
                        stale_s=parse_duration(args.stale) if args.stale else None,
                        sort=args.sort)
    roster = DeviceRoster(state_dir(args.state_dir))
    session = MqttSession(BrokerOptions.from_args(args))
    try:
        watch = FleetWatch(session, FleetTopics(args.prefix))
        watch.settle(args.wait, known=roster.load())
        views = watch.views()
    finally:
        session.close()
    roster.remember(v.device for v in views if v.status)
    print(status_report(views, query, args.format, args.summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"keygen": cmd_keygen, "push": cmd_push, "status": cmd_status,
               "rollout": cmd_rollout}[args.command]
    try:
        return handler(args)
    except EdgeError as exc:
        print(f"edge-deploy {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
