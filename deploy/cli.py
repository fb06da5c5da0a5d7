"""edge-deploy: keygen | push | status.

Exit codes: 0 success, 1 a device refused, failed or timed out, 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from agent.contract import DEFAULT_PREFIX
from agent.errors import DeployError, EdgeError
from agent.models.signing import generate_keypair, load_private_key
from deploy.broker import MqttSession
from deploy.fleet import collect_fleet, format_table, group_members, status_table
from deploy.push import (
    DEFAULT_CHUNK_SIZE,
    Outcome,
    ResultCollector,
    load_bundle,
    push_and_wait,
    push_group,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("keygen", help="create an Ed25519 signing key pair")
    k.add_argument("--out", required=True, help="folder for <name>.key and <name>.pub")
    k.add_argument("--name", default="deploy")

    def broker_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--broker", required=True, help="mqtt://[user:pass@]host:port or mqtts://")
        sp.add_argument("--prefix", default=DEFAULT_PREFIX)
        sp.add_argument("--cafile", default=None, help="CA certificate for mqtts://")

    s = sub.add_parser("push", help="push a signed model to a device or a group")
    s.add_argument("source", help="model folder or manifest JSON")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("--device")
    target.add_argument("--group")
    broker_args(s)
    s.add_argument("--key", required=True, help="private key (PEM) from `edge-deploy keygen`")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for results")
    s.add_argument("--canary", type=int, default=0, help="push to N group members first")
    s.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    s.add_argument("--status-wait", type=float, default=1.0,
                   help="seconds to gather retained status when learning a group")
    s.add_argument("--quiet", action="store_true", help="no progress line")

    st = sub.add_parser("status", help="show devices from their retained status and stats")
    st.add_argument("--group")
    broker_args(st)
    st.add_argument("--wait", type=float, default=1.0, help="seconds to gather messages")
    return p


class ProgressLine:
    """A one-line progress display on stderr, updated at most 10 times a second."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled, self._last = label, enabled, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (done < total and now - self._last < 0.1):
            return
        self._last = now
        pct = 100 * done / total if total else 100
        sys.stderr.write(f"\r{self.label}: {done / 1e6:.2f}/{total / 1e6:.2f} MB ({pct:3.0f}%)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _outcome_table(rows: Sequence[Outcome]) -> str:
    return format_table(["DEVICE", "RESULT", "VERSION", "REASON"],
                        [[o.device, o.result, o.version or "-", o.reason or ""] for o in rows])


def cmd_keygen(args: argparse.Namespace) -> int:
    files = generate_keypair(args.out, args.name)
    print(f"private key: {files.private} (keep it secret; mode 0600)")
    print(f"public key:  {files.public} (copy to each device's trusted keys)")
    print(f"key id:      {files.key_id}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.source)
    key = load_private_key(args.key)
    if args.chunk_size <= 0:
        raise DeployError("--chunk-size must be positive")
    m = bundle.manifest
    session = MqttSession(args.broker, cafile=args.cafile)
    try:
        collector = ResultCollector(session, args.prefix)
        progress = ProgressLine(f"{m.name} {m.version}", enabled=not args.quiet)
        if args.device:
            rows = push_and_wait(session, collector, f"{args.prefix}/{args.device}/model",
                                 {args.device}, bundle, key, timeout=args.timeout,
                                 chunk_size=args.chunk_size, progress=progress)
        else:
            members = group_members(collect_fleet(session, args.prefix, args.status_wait),
                                    args.group)
            rows = push_group(session, collector, args.prefix, args.group, members, bundle, key,
                              timeout=args.timeout, canary=args.canary,
                              chunk_size=args.chunk_size, progress=progress)
    finally:
        session.close()
    print(_outcome_table(rows))
    return 0 if rows and all(o.ok for o in rows) else 1


def cmd_status(args: argparse.Namespace) -> int:
    session = MqttSession(args.broker, cafile=args.cafile)
    try:
        views = collect_fleet(session, args.prefix, args.wait)
    finally:
        session.close()
    if args.group:
        views = group_members(views, args.group)
    print(status_table(views))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"keygen": cmd_keygen, "push": cmd_push, "status": cmd_status}[args.command]
    try:
        return handler(args)
    except EdgeError as exc:
        print(f"edge-deploy {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
