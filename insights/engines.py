"""SQL engines over the lake: DuckDB (embedded, the default) and Apache Spark.

Both expose the same named views (``labels``, ``stats``, ``status``, ``model_events``,
``quarantine``), defined by the same SQL text: the raw files of a table are registered as
``<table>_files`` and the view keeps one row per natural key (the first received), so a
message redelivered after a crash, or a compaction caught halfway, is never counted twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from insights.lake import Lake
from insights.schema import KEYS, SCHEMAS, TABLES

ENGINES = ("duckdb", "spark")


class QueryError(Exception):
    """The engine refused or failed a query; the message is the engine's own."""


def view_sql(table: str) -> str:
    """The view over ``<table>_files``: one row per key, the columns of the schema."""
    columns = ", ".join(SCHEMAS[table].names)
    keys = KEYS[table]
    if not keys:
        return f"CREATE OR REPLACE TEMPORARY VIEW {table} AS SELECT {columns} FROM {table}_files"
    return (f"CREATE OR REPLACE TEMPORARY VIEW {table} AS SELECT {columns} FROM ("
            f"SELECT {columns}, row_number() OVER (PARTITION BY {', '.join(keys)} "
            f"ORDER BY received_ts) AS first_copy FROM {table}_files) copies "
            f"WHERE first_copy = 1")


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
            files = lake.files(table)
            if files:
                listing = ", ".join(_quote(str(p)) for p in files)
                self.con.execute(
                    f"CREATE OR REPLACE TEMPORARY VIEW {table}_files AS SELECT * FROM "
                    f"read_parquet([{listing}], hive_partitioning = true, union_by_name = true)")
            else:
                self.con.register(f"{table}_files", SCHEMAS[table].empty_table())
            self.con.execute(view_sql(table))

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
                      .config("spark.sql.session.timeZone", "UTC")
                      .config("spark.sql.shuffle.partitions", "4")
                      .getOrCreate())
        for table in TABLES:
            if lake.files(table):
                frame = self.spark.read.option("mergeSchema", "true").parquet(
                    str(lake.table_dir(table)))
            else:
                frame = self.spark.createDataFrame(
                    [], schema=_spark_schema(self.spark, SCHEMAS[table]))
            frame.createOrReplaceTempView(f"{table}_files")
            self.spark.sql(view_sql(table))

    def rows(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        from pyspark.errors import PySparkException

        try:
            frame = self.spark.sql(sql)
            return list(frame.columns), [_plain(tuple(r)) for r in frame.collect()]
        except PySparkException as exc:
            raise QueryError(str(exc)) from exc

    def close(self) -> None:
        self.spark.stop()


def _plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(v.asDict(recursive=True) if hasattr(v, "asDict") else v for v in row)


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
