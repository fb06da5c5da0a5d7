"""Run a rollout wave by wave: push, collect, judge, soak; the record on disk after each step.

Resuming a rollout never pushes again to a device whose answer is recorded. A device that was
sent a push but whose answer was not recorded (the process died in between) is taken as done
when its retained status already names the rollout's model (sha256); otherwise it is pushed
again (an agent that has the model answers ``noop``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.contract import FleetTopics
from agent.models.wire import RESULT_NOOP, RESULT_OK, RESULT_ROLLED_BACK
from deploy.broker import MqttSession
from deploy.fleet import FleetWatch
from deploy.push import (
    RESULT_SKIPPED,
    RESULT_TIMEOUT,
    Bundle,
    ResultCollector,
    new_push_id,
    outcome_of,
    send_push,
)
from deploy.rollout import RolloutPolicy, judge
from deploy.rollout_state import (
    ABORTED,
    DONE,
    PENDING,
    RUNNING,
    SENT,
    STOPPED,
    RolloutRecord,
    RolloutStore,
)

SAVE_EVERY_S = 0.5


class RolloutDisplay(Protocol):
    def wave_started(self, index: int, total: int, devices: list[str]) -> None: ...
    def answered(self, device: str, result: str) -> None: ...
    def soaking(self, seconds: float) -> None: ...
    def finished(self) -> None: ...


@dataclass
class RolloutContext:
    """What a run needs besides the record: the broker, the key, the model and a display."""

    session: MqttSession
    collector: ResultCollector
    watch: FleetWatch
    store: RolloutStore
    bundle: Bundle
    key: Ed25519PrivateKey
    display: RolloutDisplay
    clock: Callable[[], float] = time.monotonic
    started: float = field(default_factory=time.time)


class RolloutRun:
    def __init__(self, record: RolloutRecord, ctx: RolloutContext) -> None:
        self.rec = record
        self.ctx = ctx
        self.policy = RolloutPolicy.from_dict(record.policy)
        self.fleet = FleetTopics(record.prefix)
        self.canaries = [w[0] for w in record.waves[:self.policy.canaries] if w]
        self._saved = 0.0

    # -- state -----------------------------------------------------------------

    def _save(self, force: bool = True) -> None:
        now = self.ctx.clock()
        if force or now - self._saved >= SAVE_EVERY_S:
            self.ctx.store.save(self.rec)
            self._saved = now

    def _set(self, device: str, result: str, reason: str | None = None,
             version: str | None = None) -> None:
        rec = self.rec.devices[device]
        rec.result, rec.reason, rec.version, rec.ts = result, reason, version, time.time()
        self.ctx.display.answered(device, result)

    def _finish(self, state: str, reason: str | None) -> str:
        for rec in self.rec.devices.values():
            if rec.result in (PENDING, SENT):
                rec.result, rec.reason = RESULT_SKIPPED, reason or "rollout ended"
        self.rec.state, self.rec.reason = state, reason
        self._save()
        self.ctx.display.finished()
        return state

    def _should_stop(self) -> tuple[str, str] | None:
        requested = self.ctx.store.abort_requested(self.rec.id)
        if requested is not None:
            return ABORTED, requested
        verdict = judge(self.rec.answered(), self.policy, self.canaries)
        return (STOPPED, verdict.reason or "") if verdict.stop else None

    # -- the run ---------------------------------------------------------------

    def run(self) -> str:
        self.rec.state = RUNNING
        self._save()
        total = len(self.rec.waves)
        while self.rec.wave_index < total:
            index = self.rec.wave_index
            if (stop := self._should_stop()) is not None:
                return self._finish(*stop)
            wave = self.rec.waves[index]
            self.ctx.display.wave_started(index, total, wave)
            self._push_wave(index, wave)
            last = index == total - 1
            if not last and (stop := self._should_stop()) is not None:
                return self._finish(*stop)
            soak = not last and self.policy.soak_s > 0
            if soak and (stop := self._soak()) is not None:
                return self._finish(*stop)
            self.rec.wave_index = index + 1
            self._save()
        self._note_rollbacks()
        return self._finish(DONE, None)

    def _todo(self, wave: list[str]) -> list[str]:
        """Devices of ``wave`` still to push; a sent one already running the model is done."""
        todo = []
        for device in wave:
            rec = self.rec.devices[device]
            if rec.result == SENT:
                view = self.ctx.watch.view(device)
                if view is not None and view.model.get("sha256") == self.rec.model["sha256"]:
                    self._set(device, RESULT_OK, "already runs this model (retained status)",
                              self.rec.model.get("version"))
                    continue
            if rec.result in (PENDING, SENT):
                todo.append(device)
        return todo

    def _push_wave(self, index: int, wave: list[str]) -> None:
        todo = self._todo(wave)
        if not todo:
            return
        whole_group = (self.policy.waves == "all" and index == len(self.rec.waves) - 1
                       and index == self.policy.canaries
                       and all(self.rec.devices[d].result == PENDING for d in todo))
        group_push_id = new_push_id() if whole_group else None
        for device in todo:
            self.rec.devices[device].result = SENT
            self.rec.devices[device].push_id = group_push_id or new_push_id()
        self._save()
        sent: dict[str, str] = {}
        if group_push_id:
            self._send(self.fleet.group_model_base(self.rec.group), group_push_id)
            sent = {d: group_push_id for d in todo}
        else:
            for device in todo:
                push_id = self.rec.devices[device].push_id or new_push_id()
                self._send(self.fleet.device(device).model_base, push_id)
                sent[device] = push_id
                self._collect(sent)
                if self._should_stop() is not None:
                    break
        for device in todo:
            if device not in sent:
                self.rec.devices[device].result = PENDING  # never sent: skipped at the end
        self._wait(sent)

    def _send(self, model_base: str, push_id: str) -> None:
        send_push(self.ctx.session, model_base, push_id, self.ctx.bundle, self.ctx.key,
                  self.rec.chunk_size)

    def _collect(self, sent: dict[str, str]) -> int:
        """Record results that arrived; return how many of ``sent`` are still open."""
        results = self.ctx.collector.answered(sent)
        for device, result in results.items():
            if self.rec.devices[device].result == SENT:
                o = outcome_of(device, result)
                self._set(device, o.result, o.reason, o.version)
        self._save(force=False)
        return sum(1 for d in sent if self.rec.devices[d].result == SENT)

    def _wait(self, sent: dict[str, str]) -> None:
        """Wait for the answers to pushes already sent (even once the rule says stop, so the
        record says what each device did); an operator's abort ends the wait at once."""
        deadline = self.ctx.clock() + self.policy.timeout_s
        while self._collect(sent) and self.ctx.clock() < deadline:
            if self.ctx.store.abort_requested(self.rec.id) is not None:
                return
            self.ctx.collector.wait_change(min(0.2, max(0.0, deadline - self.ctx.clock())))
        for device in sent:
            if self.rec.devices[device].result == SENT:
                self._set(device, RESULT_TIMEOUT,
                          f"no result within {self.policy.timeout_s:g} s")
        self._save()

    def _note_rollbacks(self) -> bool:
        """Mark devices that reported rolling this model back; True when any was new."""
        changed = False
        version = self.rec.model.get("version")
        for rb in self.ctx.collector.rollbacks(since=self.ctx.started):
            rec = self.rec.devices.get(rb.device)
            if rec is None or rec.result not in (RESULT_OK, RESULT_NOOP):
                continue
            if rb.name == self.rec.model.get("name") and rb.version == version:
                self._set(rb.device, RESULT_ROLLED_BACK, rb.reason, version)
                changed = True
        return changed

    def _soak(self) -> tuple[str, str] | None:
        self.ctx.display.soaking(self.policy.soak_s)
        deadline = self.ctx.clock() + self.policy.soak_s
        while self.ctx.clock() < deadline:
            if self._note_rollbacks():
                self._save()
            if (stop := self._should_stop()) is not None:
                return stop
            self.ctx.collector.wait_change(min(0.2, max(0.0, deadline - self.ctx.clock())))
        self._note_rollbacks()
        return self._should_stop()
