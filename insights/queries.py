"""The report's SQL, over the named views, one text for DuckDB and Spark.

Times are Unix seconds (doubles) as the agent publishes them, so a time bucket is plain
arithmetic (``floor(ts / 3600) * 3600``) and needs no engine's date functions. Parameters
are numbers formatted here, or strings quoted here; nothing else reaches the SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.contract import STATE_OFFLINE, STATE_STOPPED


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Scope:
    """Which rows a report covers: a time range (Unix seconds) and optionally one device."""

    since: float | None = None
    until: float | None = None
    device: str | None = None

    def where(self, ts: str = "ts", extra: str | None = None) -> str:
        terms = [] if extra is None else [extra]
        if self.since is not None:
            terms.append(f"{ts} >= {float(self.since)!r}")
        if self.until is not None:
            terms.append(f"{ts} < {float(self.until)!r}")
        if self.device is not None:
            terms.append(f"device = {quote(self.device)}")
        return ("WHERE " + " AND ".join(terms)) if terms else ""


def bucket(expr: str, seconds: float) -> str:
    s = float(seconds)
    return f"floor({expr} / {s!r}) * {s!r}"


def label_counts(scope: Scope, bucket_s: float) -> str:
    """What was seen: labels per device, label and time bucket."""
    b = bucket("ts", bucket_s)
    return (f"SELECT device, {b} AS bucket, top_label AS label, count(*) AS n, "
            f"avg(top_score) AS mean_score FROM labels {scope.where()} "
            f"GROUP BY device, {b}, top_label ORDER BY device, bucket, label")


def presence_episodes(scope: Scope, min_score: float, gap_s: float) -> str:
    """Episodes of a label on one source: frames where it is top with at least ``min_score``,
    an episode ending when the next such frame is more than ``gap_s`` later."""
    gap, score = float(gap_s), float(min_score)
    part = "PARTITION BY device, source, label ORDER BY t"
    return f"""
WITH hits AS (
  SELECT device, source, top_label AS label, frame_ts AS t, top_score AS score
  FROM labels {scope.where("frame_ts", f"top_score >= {score!r}")}),
marked AS (
  SELECT device, source, label, t, score,
         CASE WHEN lag(t) OVER ({part}) IS NULL OR t - lag(t) OVER ({part}) > {gap!r}
              THEN 1 ELSE 0 END AS starts
  FROM hits),
numbered AS (
  SELECT device, source, label, t, score,
         sum(starts) OVER ({part} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS episode
  FROM marked)
SELECT device, source, label, episode, min(t) AS start_ts, max(t) AS end_ts,
       max(t) - min(t) AS duration_s, count(*) AS frames, min(score) AS min_score,
       avg(score) AS mean_score
FROM numbered GROUP BY device, source, label, episode
ORDER BY device, source, start_ts, label"""


def score_moments(scope: Scope, window_s: float) -> str:
    """Mergeable moments of the top score per device, label and window: n, sum, sum of
    squares. Windows, devices and baselines combine by adding them."""
    w = bucket("ts", window_s)
    return (f"SELECT device, top_label AS label, {w} AS window_start, count(*) AS n, "
            f"sum(top_score) AS s, sum(top_score * top_score) AS ss FROM labels "
            f"{scope.where()} GROUP BY device, top_label, {w} "
            f"ORDER BY device, label, window_start")


def model_changes(scope: Scope) -> str:
    """Every point where a device's labels switch to another model (name or version)."""
    return f"""
WITH ordered AS (
  SELECT device, ts, model_name, model_version,
         lag(model_name) OVER (PARTITION BY device ORDER BY ts, run_id, seq) AS prev_name,
         lag(model_version) OVER (PARTITION BY device ORDER BY ts, run_id, seq) AS prev_version
  FROM labels {scope.where()})
SELECT device, ts AS change_ts, prev_name, prev_version, model_name, model_version
FROM ordered
WHERE prev_version IS NOT NULL AND (prev_version <> model_version OR prev_name <> model_name)
ORDER BY device, change_ts"""


def model_impact(changes_sql: str, window_s: float) -> str:
    """Label distribution and mean confidence in the window before and after each change."""
    w = float(window_s)
    return f"""
WITH changes AS ({changes_sql})
SELECT c.device, c.change_ts,
       CASE WHEN l.ts < c.change_ts THEN 'before' ELSE 'after' END AS side,
       l.top_label AS label, count(*) AS n, avg(l.top_score) AS mean_score
FROM changes c JOIN labels l
  ON l.device = c.device AND l.ts >= c.change_ts - {w!r} AND l.ts < c.change_ts + {w!r}
GROUP BY c.device, c.change_ts, CASE WHEN l.ts < c.change_ts THEN 'before' ELSE 'after' END,
         l.top_label
ORDER BY c.device, c.change_ts, side, label"""


def push_results(scope: Scope) -> str:
    return (f"SELECT device, coalesce(ts, received_ts) AS ts, push_id, result, name, version, "
            f"active_version, reason FROM model_events {scope.where('coalesce(ts, received_ts)')}"
            f" ORDER BY device, ts")


def device_health(scope: Scope, bucket_s: float) -> str:
    """fps, drops, frame age, outbox depth and memory per device and bucket (from stats)."""
    b = bucket("ts", bucket_s)
    return (f"SELECT device, {b} AS bucket, count(*) AS reports, avg(fps_in) AS fps_in, "
            f"avg(fps_out) AS fps_out, max(dropped_stale) - min(dropped_stale) AS dropped, "
            f"max(frame_age_ms_p50) AS frame_age_ms, max(inference_ms_p95) AS inference_ms_p95, "
            f"max(outbox_depth) AS outbox_depth, max(rss_mb) AS rss_mb FROM stats "
            f"{scope.where()} GROUP BY device, {b} ORDER BY device, bucket")


def offline_periods(scope: Scope) -> str:
    """From the status stream: each time a device went offline or stopped, until it was
    next heard from (``end_ts`` null while it still is)."""
    t = "received_ts"
    return f"""
WITH changes AS (
  SELECT device, {t} AS t, state,
         lead({t}) OVER (PARTITION BY device ORDER BY {t}) AS next_t
  FROM status {scope.where(t)})
SELECT device, state, t AS start_ts, next_t AS end_ts, next_t - t AS duration_s
FROM changes WHERE state IN ({quote(STATE_OFFLINE)}, {quote(STATE_STOPPED)})
ORDER BY device, start_ts"""


def last_status() -> str:
    return """
SELECT device, state, model_name, model_version, agent_version, received_ts FROM (
  SELECT device, state, model_name, model_version, agent_version, received_ts,
         row_number() OVER (PARTITION BY device ORDER BY received_ts DESC) AS newest
  FROM status) latest WHERE newest = 1 ORDER BY device"""


def quarantine_counts(scope: Scope) -> str:
    return (f"SELECT kind, count(*) AS n, min(reason) AS example FROM quarantine "
            f"{scope.where('received_ts')} GROUP BY kind ORDER BY n DESC")
