"""`edge-deploy push --group` as a rollout, and `edge-deploy rollout list|show|resume|abort`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from agent.contract import FleetTopics
from agent.errors import DeployError
from agent.models.signing import load_private_key
from deploy.broker import MqttSession
from deploy.connection import BrokerOptions
from deploy.fleet import DeviceRoster, FleetWatch, group_members
from deploy.progress import rollout_json, rollout_summary, rollouts_table, wave_display
from deploy.push import FAILED_RESULTS, RESULT_SKIPPED, Bundle, ResultCollector, load_bundle
from deploy.rollout import RolloutPolicy, parse_share, plan_waves
from deploy.rollout_run import RolloutContext, RolloutRun
from deploy.rollout_state import (
    ABORTED,
    DONE,
    PENDING,
    SENT,
    DeviceRecord,
    RolloutRecord,
    RolloutStore,
    new_rollout_id,
    state_dir,
)
from deploy.status_view import parse_duration


def add_rollout_parsers(sub: argparse._SubParsersAction,
                        broker_args: Callable[[argparse.ArgumentParser], None],
                        formatter: type[argparse.HelpFormatter]) -> None:
    r = sub.add_parser("rollout", help="list, show, resume or abort group rollouts",
                       formatter_class=formatter,
                       description="Group pushes are rollouts kept on disk; a killed "
                       "edge-deploy resumes without pushing again to a device that answered.")
    rsub = r.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    def state_dir(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--state-dir", default=None,
                        help="where rollouts are kept (default $EDGE_DEPLOY_STATE_DIR, else "
                        "$XDG_STATE_HOME/edge-deploy)")

    state_dir(rsub.add_parser("list", help="every rollout with its state",
                              formatter_class=formatter))
    show = rsub.add_parser("show", help="one rollout, every device", formatter_class=formatter)
    show.add_argument("id", help="rollout id (from `rollout list`)")
    show.add_argument("--format", choices=("table", "json"), default="table",
                      help="output format")
    state_dir(show)
    resume = rsub.add_parser("resume", help="continue an interrupted or stopped rollout",
                             formatter_class=formatter)
    resume.add_argument("id", help="rollout id (from `rollout list`)")
    broker_args(resume)
    resume.add_argument("--key", default=None,
                        help="private key (default: the one the rollout started with)")
    resume.add_argument("--status-wait", type=float, default=5.0,
                        help="at most this many seconds to gather the retained status first")
    resume.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    resume.add_argument("--format", choices=("table", "json"), default="table",
                        help="result on stdout")
    resume.add_argument("--list", action="store_true", help="one line per device")
    for flag, what in (("--soak", "time between waves"), ("--timeout", "seconds to wait for "
                       "a wave's results"), ("--max-failures", "failure share that stops it"),
                       ("--abort-after", "answers before the rule is judged")):
        resume.add_argument(flag, default=None, help=f"change the {what} (default: as the "
                            f"rollout started)")
    state_dir(resume)
    abort = rsub.add_parser("abort", help="stop a rollout: nothing more is pushed",
                            formatter_class=formatter)
    abort.add_argument("id", help="rollout id (from `rollout list`)")
    state_dir(abort)


def _store(args: argparse.Namespace) -> RolloutStore:
    return RolloutStore(state_dir(args.state_dir))


def policy_of(args: argparse.Namespace) -> RolloutPolicy:
    return RolloutPolicy(canaries=args.canary, waves=args.waves,
                         soak_s=parse_duration(args.soak), min_answered=args.abort_after,
                         max_failure_share=parse_share(args.max_failures),
                         timeout_s=args.timeout)


def new_record(watch: FleetWatch, args: argparse.Namespace, bundle: Bundle,
               policy: RolloutPolicy) -> RolloutRecord:
    members = group_members(watch.views(), args.group)
    live = [v.device for v in members if v.live]
    if not live:
        raise DeployError(f"no live device of group {args.group!r} found in the retained "
                          f"status under {FleetTopics(args.prefix).status_filter}")
    waves = plan_waves(live, policy)
    m = bundle.manifest
    return RolloutRecord(
        id=new_rollout_id(), group=args.group, prefix=args.prefix,
        source=str(bundle.manifest_path.resolve()), key=str(Path(args.key).resolve()),
        model={"name": m.name, "version": m.version, "sha256": m.sha256},
        policy=policy.as_dict(), chunk_size=args.chunk_size, waves=waves,
        devices={d: DeviceRecord(wave=i) for i, wave in enumerate(waves) for d in wave},
        offline={v.device: f"state {v.state}: not waited for" for v in members if not v.live})


def _run(record: RolloutRecord, store: RolloutStore, args: argparse.Namespace,
         bundle: Bundle, key_path: str, session: MqttSession, collector: ResultCollector,
         watch: FleetWatch) -> int:
    key = load_private_key(key_path)
    m = record.model
    display = wave_display(f"{m['name']} {m['version']}", enabled=not args.quiet)
    ctx = RolloutContext(session, collector, watch, store, bundle, key, display)
    with store.running(record.id):
        try:
            RolloutRun(record, ctx).run()
        finally:
            display.finished()
    print(rollout_json(record) if args.format == "json" else
          rollout_summary(record, list_all=args.list))
    return exit_code(record)


def exit_code(record: RolloutRecord) -> int:
    bad = {*FAILED_RESULTS, RESULT_SKIPPED, PENDING, SENT}
    return 0 if record.state == DONE and not any(
        r.result in bad for r in record.devices.values()) else 1


def push_group_rollout(args: argparse.Namespace) -> int:
    policy = policy_of(args)
    bundle = load_bundle(args.source)
    load_private_key(args.key)  # a bad key fails before anything is sent
    store = _store(args)
    session = MqttSession(BrokerOptions.from_args(args))
    try:
        fleet = FleetTopics(args.prefix)
        collector = ResultCollector(session, fleet)
        watch = FleetWatch(session, fleet)
        roster = DeviceRoster(state_dir(args.state_dir))
        watch.settle(args.status_wait, known=roster.load())
        roster.remember(v.device for v in watch.views() if v.status)
        record = new_record(watch, args, bundle, policy)
        store.save(record)
        return _run(record, store, args, bundle, args.key, session, collector, watch)
    finally:
        session.close()


def _changed_policy(record: RolloutRecord, args: argparse.Namespace) -> RolloutPolicy:
    policy = dict(record.policy)
    if args.soak is not None:
        policy["soak_s"] = parse_duration(args.soak)
    if args.timeout is not None:
        policy["timeout_s"] = parse_duration(args.timeout)
    if args.max_failures is not None:
        policy["max_failure_share"] = parse_share(args.max_failures)
    if args.abort_after is not None:
        try:
            policy["min_answered"] = int(args.abort_after)
        except ValueError as exc:
            raise DeployError(f"--abort-after {args.abort_after!r}: expected a count") from exc
    return RolloutPolicy.from_dict(policy)


def _resume(args: argparse.Namespace) -> int:
    store = _store(args)
    record = store.load(args.id)
    if record.state in (DONE, ABORTED):
        raise DeployError(f"rollout {record.id} is {record.state}; start a new push instead")
    record.policy = _changed_policy(record, args).as_dict()
    bundle = load_bundle(record.source)
    if bundle.manifest.sha256 != record.model.get("sha256"):
        raise DeployError(f"{record.source}: the model changed since rollout {record.id} "
                          f"started (sha256 differs); start a new push instead")
    session = MqttSession(BrokerOptions.from_args(args))
    try:
        fleet = FleetTopics(record.prefix)
        collector = ResultCollector(session, fleet)
        watch = FleetWatch(session, fleet)
        watch.settle(args.status_wait, known=list(record.devices))
        return _run(record, store, args, bundle, args.key or record.key, session, collector,
                    watch)
    finally:
        session.close()


def _abort(args: argparse.Namespace) -> int:
    store = _store(args)
    record = store.load(args.id)
    if record.state in (DONE, ABORTED):
        print(f"rollout {record.id} is already {record.state}")
        return 0
    if store.is_running(record.id):
        store.request_abort(record.id, "aborted by the operator")
        print(f"rollout {record.id}: asked the running edge-deploy to stop; nothing more "
              f"will be pushed")
        return 0
    with store.running(record.id):
        record = store.load(args.id)
        for rec in record.devices.values():
            if rec.result in (PENDING, SENT):
                rec.result, rec.reason = RESULT_SKIPPED, "aborted by the operator"
        record.state, record.reason = ABORTED, "aborted by the operator"
        store.save(record)
    print(f"rollout {record.id} aborted")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    if args.rollout_command == "list":
        store = _store(args)
        records = store.list()
        print(rollouts_table(records, {r.id for r in records if store.is_running(r.id)}))
        return 0
    if args.rollout_command == "show":
        record = _store(args).load(args.id)
        print(rollout_json(record) if args.format == "json" else
              rollout_summary(record, list_all=True))
        return 0
    return {"resume": _resume, "abort": _abort}[args.rollout_command](args)
