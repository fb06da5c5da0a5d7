"""``edge-insights collect``: the fleet's labels, stats, status and model results into the lake.

* QoS 1 with a persistent session (MQTT 5: clean start off and a session expiry; 3.1.1:
  clean session off), so the broker keeps what arrives while the collector is down.
* paho's manual acknowledgement: a message is acknowledged only after the batch holding it
  is durably on disk. A SIGKILL at any moment loses nothing: what was not acknowledged is
  redelivered to the same client id.
* Acknowledgements owed on a connection that has since dropped are never sent on the next
  one (the broker redelivers those messages; their keys make the copies harmless).
* MQTT 5 ``Receive Maximum`` is the buffer's capacity, so the broker never sends more than
  the collector holds: memory stays bounded under any load.
* Bad input goes to the quarantine table with its reason, in the same batch as the good
  messages around it, and is logged once per kind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pyarrow as pa
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.contract import DEFAULT_PREFIX, FleetTopics
from deploy.connection import BrokerOptions
from insights.buffer import Batch, BatchBuffer, RecentKeys
from insights.lake import Lake
from insights.schema import (
    QUARANTINE,
    BadInput,
    arrow_table,
    natural_key,
    quarantine_row,
    route,
    to_row,
)

log = logging.getLogger("edge_insights.collector")
MAX_RECEIVE = 65535


@dataclass(frozen=True)
class CollectorOptions:
    prefix: str = DEFAULT_PREFIX
    client_id: str = "edge-insights"
    share: str | None = None
    protocol: str = "5"
    session_expiry_s: int = 7 * 86400
    flush_rows: int = 5000
    flush_seconds: float = 1.0
    buffer_capacity: int = 20000
    recent_keys: int = 500_000
    keepalive_s: int = 30
    retry_s: float = 1.0

    def filters(self) -> list[str]:
        fleet = FleetTopics(self.prefix)
        topics = [fleet.labels_filter, fleet.stats_filter, fleet.status_filter,
                  fleet.model_result_filter]
        return [f"$share/{self.share}/{t}" for t in topics] if self.share else topics


@dataclass
class CollectorCounters:
    received: int = 0
    stored: Counter = field(default_factory=Counter)
    duplicates: int = 0
    quarantined: Counter = field(default_factory=Counter)
    flushes: int = 0
    write_errors: int = 0
    acks_dropped: int = 0
    connects: int = 0
    devices: set = field(default_factory=set)


class Collector:
    def __init__(self, broker: BrokerOptions, lake: Lake, options: CollectorOptions) -> None:
        self.broker, self.lake, self.options = broker, lake, options
        o = options
        self.buffer = BatchBuffer(o.flush_rows, o.flush_seconds, o.buffer_capacity)
        self.recent = RecentKeys(o.recent_keys)
        self.counters = CollectorCounters()
        self._logged_kinds: set[str] = set()
        self._generation = 0  # bumped on every connect and disconnect, under _link_lock
        self._link_lock = threading.Lock()
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self._flusher = threading.Thread(target=self._run_flusher, name="insights-flush",
                                         daemon=True)
        self.client = self._new_client()

    # -- MQTT ---------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        o = self.options
        if o.protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=o.client_id,
                                 protocol=mqtt.MQTTv5, manual_ack=True)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=o.client_id,
                                 protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        self.broker.configure(client)
        client.reconnect_delay_set(0.2, 10)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        return client

    def start(self) -> None:
        removed = self.lake.remove_own_temporaries()
        if removed:
            log.info("removed %d unfinished file(s) of an earlier run", removed)
        self._flusher.start()
        url = self.broker.url
        kw: dict[str, Any] = {"keepalive": self.options.keepalive_s}
        if self.options.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.options.session_expiry_s
            props.ReceiveMaximum = min(self.options.buffer_capacity, MAX_RECEIVE)
            kw.update(clean_start=False, properties=props)
        self.client.connect_async(url.host, url.port, **kw)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        with self._link_lock:
            self._generation += 1
        self.counters.connects += 1
        log.info("connected to %s:%d (session present: %s)", self.broker.url.host,
                 self.broker.url.port, getattr(flags, "session_present", None))
        client.subscribe([(f, 1) for f in self.options.filters()])

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._link_lock:
            self._generation += 1
        if not self._stop.is_set():
            log.warning("lost the broker (%s); reconnecting", reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes=None, properties=None) -> None:
        failed = [str(rc) for rc in reason_codes or [] if getattr(rc, "is_failure", False)]
        if failed:
            log.error("subscription refused: %s", ", ".join(failed))
            return
        log.info("subscribed to %s", ", ".join(self.options.filters()))
        self.subscribed.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            self.ingest(msg.topic, bytes(msg.payload), bool(msg.retain),
                        (self._generation, msg.mid, msg.qos))
        except Exception:  # a handler error must never stop the network thread
            log.exception("could not take a message on %r", msg.topic)

    # -- one message ----------------------------------------------------------------

    def ingest(self, topic: str, payload: bytes, retained: bool,
               ack: tuple[int, int, int]) -> None:
        """Route, parse and buffer one message (or its quarantine row)."""
        self.counters.received += 1
        now = time.time()
        device = None
        try:
            where = route(topic, self.options.prefix)
            device = where.device
            row = to_row(where, payload, now, retained)
        except BadInput as bad:
            self._quarantine(topic, device, bad, payload, now, ack)
            return
        self.counters.devices.add(where.device)
        if self.recent.seen(natural_key(where.table, row)):
            self.counters.duplicates += 1
            self.buffer.add(None, None, ack)
            return
        self.buffer.add(where.table, row, ack)

    def _quarantine(self, topic: str, device: str | None, bad: BadInput, payload: bytes,
                    now: float, ack: tuple[int, int, int]) -> None:
        self.counters.quarantined[bad.kind] += 1
        if bad.kind not in self._logged_kinds:
            self._logged_kinds.add(bad.kind)
            log.warning("quarantined a message on %r: %s (further %r messages are counted, "
                        "not logged)", topic[:200], bad, bad.kind)
        self.buffer.add(QUARANTINE, quarantine_row(topic, device, bad, payload, now), ack)

    # -- flushing ---------------------------------------------------------------------

    def _run_flusher(self) -> None:
        while True:
            batch = self.buffer.take(self._stop)
            if batch is None:
                return
            if self._store(batch):
                self._acknowledge(batch)
            self.buffer.done()

    def _store(self, batch: Batch) -> bool:
        """Write until it succeeds: a full or read-only disk holds the batch and its acks
        (the buffer fills, the broker keeps the rest). False when stopped before that."""
        failures = 0
        self._tabulate(batch)
        while True:
            try:
                for table in list(batch.rows):
                    rows = batch.rows[table]
                    self.lake.write(table, rows)
                    self.counters.stored[table] += rows.num_rows
                    del batch.rows[table]  # written: a retry must not write it again
                self.counters.flushes += 1
                return True
            except Exception as exc:
                failures += 1
                self.counters.write_errors += 1
                log.error("writing %d message(s) to the lake failed (kept, not acknowledged, "
                          "retrying): %s", batch.count, exc)
                if self._stop.wait(self.options.retry_s) and failures > 3:
                    log.error("stopping with %d message(s) unwritten and unacknowledged; the "
                              "broker keeps them", batch.count)
                    return False

    def _tabulate(self, batch: Batch) -> None:
        """Rows -> Arrow tables. A row Arrow refuses (the parsers should have caught it) goes
        to quarantine instead of holding its whole batch back forever."""
        refused = []
        for table, rows in list(batch.rows.items()):
            try:
                batch.rows[table] = arrow_table(table, rows)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                good = []
                for row in rows:
                    try:
                        arrow_table(table, [row])
                        good.append(row)
                    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                        refused.append(quarantine_row(
                            table, row.get("device"), BadInput("unstorable", str(exc)),
                            repr(row).encode(), time.time()))
                batch.rows[table] = arrow_table(table, good)
        if refused:
            self.counters.quarantined["unstorable"] += len(refused)
            log.error("%d row(s) the lake cannot store were quarantined", len(refused))
            quarantined = batch.rows.get(QUARANTINE)
            extra = arrow_table(QUARANTINE, refused)
            batch.rows[QUARANTINE] = extra if quarantined is None else pa.concat_tables(
                [quarantined, extra])

    def _acknowledge(self, batch: Batch) -> None:
        with self._link_lock:
            for generation, mid, qos in batch.acks:
                if qos == 0:
                    continue
                if generation != self._generation:
                    self.counters.acks_dropped += 1  # that connection is gone; redelivered
                    continue
                self.client.ack(mid, qos)

    # -- stop ---------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Flush and acknowledge what is held, then disconnect."""
        self._stop.set()
        self.buffer.wake()
        self._flusher.join(timeout)
        self.buffer.close()
        self.client.disconnect()
        self.client.loop_stop()

    def flusher_alive(self) -> bool:
        return self._flusher.is_alive()

    def summary(self) -> dict[str, Any]:
        c = self.counters
        return {"received": c.received, "stored": dict(c.stored), "duplicates": c.duplicates,
                "quarantined": dict(c.quarantined), "flushes": c.flushes,
                "write_errors": c.write_errors, "pending": self.buffer.pending(),
                "devices": len(c.devices),
                "connects": c.connects}
