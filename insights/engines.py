"""SQL engines over the lake: DuckDB (embedded, the default) and Apache Spark.

Both expose the same named views (``labels``, ``stats``, ``status``, ``model_events``,
``quarantine``), defined by the same SQL text (``view_sql``): the view keeps one row per
natural key (the first received), so a message redelivered after a crash, or a compaction
caught halfway, is never counted twice. ``<table>_files`` is every file as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from insights.lake import Lake
from insights.schema import KEYS, LABELS, SCHEMAS, TABLES, columns_sql, first_copies_sql

ENGINES = ("duckdb", "spark")


class QueryError(Exception):
    """The engine refused or failed a query; the message is the engine's own."""


def view_sql(table: str) -> str:
    """The view over a table's files: one row per key, the columns of the schema.

    ``<table>_single`` holds the files of days that have just one file (a compacted day, or
    one batch): a single file never repeats a key, so those rows need no de-duplication.
    ``<table>_multi`` holds the days with several files, where a redelivered message may
    sit in two of them: there the first-received copy of each key is kept. After
    compaction almost every row is in the cheap half.
    """
    head = f"CREATE OR REPLACE TEMPORARY VIEW {table} AS "
    if not KEYS[table]:
        return head + first_copies_sql(table, f"{table}_files")
    columns = ", ".join(SCHEMAS[table].names)
    return (f"{head}SELECT {columns} FROM {table}_single UNION ALL "
            f"{first_copies_sql(table, f'{table}_multi')}")


def file_sets(lake: Lake, table: str) -> dict[str, list[Path]]:
    """The files behind ``<table>_files``, ``<table>_single`` and ``<table>_multi``."""
    single: list[Path] = []
    multi: list[Path] = []
    for day in lake.days(table):
        files = lake.files(table, day)
        (single if len(files) == 1 else multi).extend(files)
    return {"files": sorted(single + multi), "single": single, "multi": multi}


class Engine(Protocol):
    name: str

    def rows(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]: ...

    def close(self) -> None: ...


class DuckDBEngine:
    """Reads the Parquet files in place; nothing is loaded or copied."""

    name = "duckdb"

    def __init__(self, lake: Lake, threads: int | None = None) -> None:
        import duckdb

        self.con = duckdb.connect(":memory:")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        for table in TABLES:
            for part, files in file_sets(lake, table).items():
                name = f"{table}_{part}"
                if files:
                    self._register_files(table, name, files)
                else:
                    self.con.register(name, SCHEMAS[table].empty_table())
            self.con.execute(view_sql(table))

    def _register_files(self, table: str, name: str, files: list[Path]) -> None:
        """The files as ``name``, with every column of today's schema: a column older files
        lack (the agent's stats grow) reads as NULL."""
        listing = ", ".join(_quote(str(p)) for p in files)
        self.con.execute(f"CREATE OR REPLACE TEMPORARY VIEW {name}_raw AS SELECT * FROM "
                         f"read_parquet([{listing}], union_by_name = true)")
        present = {row[0] for row in self.con.execute(f"DESCRIBE {name}_raw").fetchall()}
        self.con.execute(f"CREATE OR REPLACE TEMPORARY VIEW {name} AS SELECT "
                         f"{columns_sql(table, present)} FROM {name}_raw")

    def rows(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        import duckdb

        try:
            cur = self.con.execute(sql)
            return [d[0] for d in cur.description or []], cur.fetchall()
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from exc

    def close(self) -> None:
        self.con.close()


class SparkEngine:
    """The same views in a Spark session (``local[*]`` or a cluster's master URL)."""

    name = "spark"

    def __init__(self, lake: Lake, master: str = "local[2]", app: str = "edge-insights") -> None:
        from pyspark.sql import SparkSession

        self.spark = (SparkSession.builder.master(master).appName(app)
                      .config("spark.ui.enabled", "false")
                      .config("spark.ui.showConsoleProgress", "false")
                      .config("spark.sql.session.timeZone", "UTC")
                      .config("spark.sql.shuffle.partitions", "4")
                      .getOrCreate())
        self.spark.sparkContext.setLogLevel("ERROR")
        for table in TABLES:
            for part, files in file_sets(lake, table).items():
                schema = _spark_schema(self.spark, SCHEMAS[table])
                if files:
                    frame = _with_all_columns(self.spark.read.option(
                        "mergeSchema", "true").parquet(*[str(p) for p in files]), schema)
                else:
                    frame = self.spark.createDataFrame([], schema=schema)
                frame.createOrReplaceTempView(f"{table}_{part}")
            self.spark.sql(view_sql(table))
        self.spark.catalog.cacheTable(LABELS)  # the report reads it a dozen times

    def rows(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        from pyspark.errors import PySparkException

        try:
            frame = self.spark.sql(sql)
            return list(frame.columns), [_plain(tuple(r)) for r in frame.collect()]
        except PySparkException as exc:
            raise QueryError(str(exc)) from exc

    def close(self) -> None:
        self.spark.stop()


def _with_all_columns(frame: Any, schema: Any) -> Any:
    """Add the schema's columns older files lack, as NULLs of their type."""
    from pyspark.sql.functions import lit

    for f in schema.fields:
        if f.name not in frame.columns:
            frame = frame.withColumn(f.name, lit(None).cast(f.dataType))
    return frame


def _plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Spark's Row values as the plain dicts and lists DuckDB returns."""
    return tuple(_plain_value(v) for v in row)


def _plain_value(value: Any) -> Any:
    if hasattr(value, "asDict"):
        return value.asDict(recursive=True)
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    return value


def _spark_schema(spark: Any, schema: pa.Schema) -> Any:
    """A Spark schema for an empty table, read back from an empty Parquet file."""
    import tempfile

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "empty.parquet"
        pq.write_table(schema.empty_table(), path)
        return spark.read.parquet(str(path)).schema


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def open_engine(lake: Lake, engine: str = "duckdb", spark_master: str = "local[2]") -> Engine:
    if engine == "duckdb":
        return DuckDBEngine(lake)
    if engine == "spark":
        return SparkEngine(lake, master=spark_master)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
