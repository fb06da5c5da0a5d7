"""The Parquet lake on disk: ``<lake>/<table>/day=YYYY-MM-DD/<file>.parquet``.

Every file appears whole or not at all (temporary name, fsync, rename, fsync the folder):
a reader never sees half a file, and a writer killed at any moment leaves only a hidden
temporary that the next run removes. Several writers share one lake; each names its files
after itself, so nothing is ever written twice under one name.

Compaction merges a day's files into one with large row groups, keeping one row per
natural key (``schema.KEYS``). A journal written before the swap makes it safe to kill at
any moment: a later run either finishes deleting the inputs (the output is in place) or
drops the unfinished output. While both are visible the views' de-duplication hides the
overlap, so no query ever sees a row twice or misses one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent.files import fsync_dir
from insights.schema import QUARANTINE, TABLES, columns_sql, first_copies_sql

DAY_PREFIX = "day="
JOURNAL = "_compaction.json"
COMPACT_ROW_GROUP = 500_000
MERGE_MEMORY = "1GB"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def _days(table: pa.Table, column: str) -> pa.Array:
    micros = pc.cast(pc.floor(pc.multiply(table[column], 1_000_000)), pa.int64())
    return pc.strftime(pc.cast(micros, pa.timestamp("us", tz="UTC")), format="%Y-%m-%d")


def _write_atomic(path: Path, table: pa.Table, row_group_size: int | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # hidden, and not *.parquet: readers skip it
    with open(tmp, "wb") as f:
        pq.write_table(table, f, row_group_size=row_group_size, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class CompactionResult:
    table: str
    day: str
    files_in: int
    rows_in: int
    rows_out: int


class Lake:
    def __init__(self, root: str | Path, writer: str = "local") -> None:
        self.root = Path(root)
        self.writer = _SAFE.sub("_", writer)[:64] or "writer"
        self._count = 0

    # -- layout ------------------------------------------------------------------

    def table_dir(self, table: str) -> Path:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; the lake has {', '.join(TABLES)}")
        return self.root / table

    def days(self, table: str) -> list[str]:
        d = self.table_dir(table)
        if not d.is_dir():
            return []
        return sorted(p.name[len(DAY_PREFIX):] for p in d.iterdir()
                      if p.is_dir() and p.name.startswith(DAY_PREFIX))

    def day_dir(self, table: str, day: str) -> Path:
        return self.table_dir(table) / f"{DAY_PREFIX}{day}"

    def files(self, table: str, day: str | None = None) -> list[Path]:
        days = [day] if day else self.days(table)
        return sorted(p for d in days for p in self.day_dir(table, d).glob("*.parquet"))

    # -- writing -----------------------------------------------------------------

    def write(self, table: str, rows: pa.Table) -> list[Path]:
        """Write one batch, split by day, one durable file per day touched."""
        if rows.num_rows == 0:
            return []
        column = "received_ts" if table == QUARANTINE else "ts"
        ts = pc.fill_null(rows[column], rows["received_ts"]) if column == "ts" else rows[column]
        days = _days(pa.table({"t": ts}), "t")
        written = []
        for day in pc.unique(days).to_pylist():
            part = rows.filter(pc.equal(days, day))
            folder = self.day_dir(table, day)
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                fsync_dir(folder.parent)
            self._count += 1
            path = folder / f"part-{self.writer}-{time.time_ns()}-{self._count}.parquet"
            _write_atomic(path, part)
            written.append(path)
        return written

    def remove_own_temporaries(self) -> int:
        """Temporaries this writer left when it was killed (other writers' are theirs)."""
        stale = list(self.root.glob(f"*/{DAY_PREFIX}*/.part-{self.writer}-*.tmp"))
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        return len(stale)

    # -- compaction and retention -------------------------------------------------

    def recover(self) -> int:
        """Finish or undo compactions a killed run left behind; remove stale temporaries."""
        done = 0
        for table in TABLES:
            for day in self.days(table):
                folder = self.day_dir(table, day)
                journal = folder / JOURNAL
                if journal.exists():
                    self._finish(folder, json.loads(journal.read_text()))
                    done += 1
                for pattern in (".compacted-*.tmp", f".{JOURNAL}.tmp"):
                    for tmp in folder.glob(pattern):
                        tmp.unlink(missing_ok=True)
        return done

    def _finish(self, folder: Path, plan: dict) -> None:
        if (folder / plan["output"]).exists():
            for name in plan["inputs"]:
                (folder / name).unlink(missing_ok=True)
        else:
            (folder / f".{plan['output']}.tmp").unlink(missing_ok=True)
        fsync_dir(folder)
        (folder / JOURNAL).unlink(missing_ok=True)
        fsync_dir(folder)

    def compact(self, table: str, day: str, *, row_group_size: int = COMPACT_ROW_GROUP,
                min_files: int = 2) -> CompactionResult | None:
        """Merge one day's files into one, one row per natural key, sorted by device and time."""
        folder = self.day_dir(table, day)
        if (folder / JOURNAL).exists():
            self._finish(folder, json.loads((folder / JOURNAL).read_text()))
        inputs = self.files(table, day)
        if len(inputs) < min_files:
            return None
        output = f"compacted-{self.writer}-{uuid.uuid4().hex[:12]}.parquet"
        plan = {"output": output, "inputs": [p.name for p in inputs]}
        tmp_journal = folder / f".{JOURNAL}.tmp"
        tmp_journal.write_text(json.dumps(plan))
        with open(tmp_journal, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_journal, folder / JOURNAL)
        fsync_dir(folder)
        rows_in, rows_out = self._merge(table, inputs, folder / f".{output}.tmp",
                                        row_group_size)
        os.replace(folder / f".{output}.tmp", folder / output)
        fsync_dir(folder)
        self._finish(folder, plan)
        return CompactionResult(table, day, len(inputs), rows_in, rows_out)

    def _merge(self, table: str, inputs: list[Path], tmp: Path,
               row_group_size: int) -> tuple[int, int]:
        """One sorted file of the inputs' first copies, streamed by DuckDB (it spills to
        disk past its memory limit, so a day of any size fits), then fsynced."""
        import duckdb

        listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in inputs)
        source = f"read_parquet([{listing}], union_by_name = true)"
        order = "received_ts" if table == QUARANTINE else "device, ts"
        con = duckdb.connect(":memory:")
        try:
            con.execute(f"SET memory_limit = '{MERGE_MEMORY}'")
            con.execute(f"SET temp_directory = '{self.root / '.merge-spill'}'")
            con.execute(f"CREATE TEMPORARY VIEW raw AS SELECT * FROM {source}")
            present = {row[0] for row in con.execute("DESCRIBE raw").fetchall()}
            con.execute(f"CREATE TEMPORARY VIEW inputs AS SELECT "
                        f"{columns_sql(table, present)} FROM raw")
            rows_in = con.execute("SELECT count(*) FROM inputs").fetchone()[0]
            target = str(tmp).replace("'", "''")
            con.execute(f"COPY ({first_copies_sql(table, 'inputs')} ORDER BY {order}) TO "
                        f"'{target}' (FORMAT parquet, COMPRESSION zstd, "
                        f"ROW_GROUP_SIZE {int(row_group_size)})")
        finally:
            con.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        return rows_in, pq.ParquetFile(tmp).metadata.num_rows

    def compact_all(self, **kw: int) -> list[CompactionResult]:
        self.recover()
        results = []
        for table in TABLES:
            for day in self.days(table):
                result = self.compact(table, day, **kw)
                if result is not None:
                    results.append(result)
        return results

    def retain(self, keep_days: int, now: float | None = None) -> list[Path]:
        """Delete whole day partitions older than ``keep_days`` (by the day's name)."""
        if keep_days < 1:
            raise ValueError("keep_days must be at least 1")
        cutoff = day_of((time.time() if now is None else now) - keep_days * 86400)
        removed = []
        for table in TABLES:
            for day in self.days(table):
                if day < cutoff:
                    folder = self.day_dir(table, day)
                    shutil.rmtree(folder)
                    removed.append(folder)
            if self.table_dir(table).is_dir():
                fsync_dir(self.table_dir(table))
        return removed
