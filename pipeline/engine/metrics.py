"""What a worker counts, served two ways from one source: JSON at /cem/stats/ and Prometheus
text at /metrics. A custom collector reads these counters at scrape time, so there is one
place that counts and nothing to keep in sync.

Metric names (all prefixed `cem_`), see docs/operations.md:
  events_in_total{topic}, deadletter_total{reason}, alerts_total{kind,status},
  late_events_total, duplicates_total, row_rewrites_total (corrections), profiles_total{outcome},
  touchpoints_judged_total, timeline_rows_written_total, alert_rows_written_total,
  clickhouse_errors_total, clickhouse_rows_refused_total, source_commit_failures_total, touchpoints_replayed_total,
  partitions_loaded_total (_from_disk, _from_snapshot, _from_empty), snapshots_written_total,
  snapshot_bytes_total, snapshot_us_total,
  snapshot_failures_total, erasures_completed_total, retried_steps_total, profile_wait_timeouts_total,
  clickhouse_batch_rows (summary), clickhouse_write_seconds (summary),
  consumer_lag{topic} (gauge), customers (gauge), identity_entries (gauge), ready (gauge)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

_PLAIN = {
    "late_events": "events later than the allowed lateness (still written, judged against what is kept)",
    "duplicates": "touchpoints seen before (same channel and event_id), dropped",
    "row_rewrites": "timeline rows written again because a late event changed their flags",
    "touchpoints_judged": "touchpoints judged by the detectors",
    "timeline_rows_written": "timeline row versions written to ClickHouse",
    "alert_rows_written": "alert revisions written to ClickHouse",
    "clickhouse_errors": "failed ClickHouse writes (each retried)",
    "clickhouse_rows_refused": "rows ClickHouse refused for good (a value it cannot hold), "
    "sent to the dead-letter topic",
    "retried_steps": "judge steps (ClickHouse write, alerts and state) retried after an error",
    "source_commit_failures": "offset commits that failed (a rebalance, the broker away); "
    "the batch may be forwarded or judged again, which writes nothing new",
    "touchpoints_replayed": "touchpoints applied again to rebuild state after a restart or rebalance "
    "(written before it; nothing is written for them)",
    "partitions_loaded": "partitions of the internal topic whose state this worker loaded",
    "partitions_loaded_from_disk": "partitions opened from this worker's disk (read on from the offset stored there)",
    "partitions_loaded_from_snapshot": "partitions rebuilt from a snapshot in Kafka (no usable copy on disk)",
    "partitions_loaded_from_empty": "partitions rebuilt from the start of the log (no snapshot yet)",
    "snapshots_written": "snapshots of a partition's state written",
    "snapshot_bytes": "bytes of snapshots written (compressed)",
    "snapshot_us": "microseconds spent encoding snapshots",
    "snapshot_failures": "snapshots abandoned because a chunk could not be written (retried later)",
    "erasures_completed": "erasure requests completed (rows deleted, receipt written)",
    "idle_customers_dropped": "customers let go after being idle longer than the kept history "
    "(an anonymous or unknown one whole, a CRM customer's events)",
    "matters_unknown": "contacts whose reason is not in rules.matter_vocabulary (matter `other`, not judged)",
    "customer_caps_hit": "touchpoints whose customer reached a per-customer cap (events kept, evidence listed)",
    "loop_stalls": "times the event loop was held for more than 100 ms (every stage and heartbeat waited)",
    "profile_wait_timeouts": "batches of touchpoints resolved before other workers' CRM profiles were indexed "
    "(worker.profile_wait_s passed)",
}


class Stats:
    def __init__(self) -> None:
        self.events_in: Counter[str] = Counter()  # per source topic
        self.deadletter: Counter[str] = Counter()  # per reason
        self.alerts: Counter[str] = Counter()  # per kind:status
        self.profiles: Counter[str] = Counter()  # held | ignored_older | erased
        self.counters: Counter[str] = Counter()  # the _PLAIN ones
        self.lag: dict[str, int] = {}  # per topic, refreshed by the worker
        self.ready = False
        self.identity_entries = 0
        self.customers = 0  # held by this worker, on the partitions it owns
        self.partitions: list[int] = []  # of the internal topic, owned and loaded
        self.batch_rows_sum = 0
        self.batch_count = 0
        self.write_seconds_sum = 0.0
        self.gc_count = 0
        self.loop_late_max = 0.0
        self.gc_seconds_sum = 0.0
        self.gc_seconds_max = 0.0

    def observe_loop(self, late: float) -> None:
        self.loop_late_max = max(self.loop_late_max, late)
        if late > 0.1:
            self.counters["loop_stalls"] += 1

    def observe_gc(self, seconds: float) -> None:
        self.gc_count += 1
        self.gc_seconds_sum += seconds
        self.gc_seconds_max = max(self.gc_seconds_max, seconds)

    def observe_write(self, rows: int, seconds: float) -> None:
        self.batch_count += 1
        self.batch_rows_sum += rows
        self.write_seconds_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {
            "events_in": dict(self.events_in),
            "deadletter": dict(self.deadletter),
            "alerts": dict(self.alerts),
            "profiles": dict(self.profiles),
            "consumer_lag": dict(self.lag),
            "ready": self.ready,
            "identity_entries": self.identity_entries,
            "customers": self.customers,
            "partitions": self.partitions,
            "clickhouse_batches": self.batch_count,
            "clickhouse_batch_rows_avg": round(self.batch_rows_sum / self.batch_count, 1) if self.batch_count else 0,
            "clickhouse_write_seconds": round(self.write_seconds_sum, 3),
            "loop_stall_seconds_max": round(self.loop_late_max, 3),
            "gc_settles": self.gc_count,
            "gc_settle_seconds": round(self.gc_seconds_sum, 3),
            "gc_settle_seconds_max": round(self.gc_seconds_max, 3),
            **{name: self.counters[name] for name in _PLAIN},
        }

    # ---- Prometheus
    def collect(self) -> Iterator[Metric]:
        def labelled(name: str, doc: str, label: str, values: Counter[str]) -> CounterMetricFamily:
            fam = CounterMetricFamily(f"cem_{name}", doc, labels=[label])
            for key, value in sorted(values.items()):
                fam.add_metric([key], value)
            return fam

        yield labelled("events_in", "messages read per source topic", "topic", self.events_in)
        yield labelled("deadletter", "messages sent to the dead-letter topic, by reason", "reason", self.deadletter)
        yield labelled("profiles", "CRM profile messages by outcome", "outcome", self.profiles)
        alerts = CounterMetricFamily("cem_alerts", "alert revisions published", labels=["kind", "status"])
        for key, value in sorted(self.alerts.items()):
            alerts.add_metric(key.split(":", 1), value)
        yield alerts
        for name, doc in _PLAIN.items():
            yield CounterMetricFamily(f"cem_{name}", doc, value=self.counters[name])
        yield SummaryMetricFamily(
            "cem_clickhouse_batch_rows", "rows per ClickHouse batch", count_value=self.batch_count,
            sum_value=self.batch_rows_sum,
        )  # fmt: skip
        yield SummaryMetricFamily(
            "cem_clickhouse_write_seconds", "time to write one batch to ClickHouse", count_value=self.batch_count,
            sum_value=self.write_seconds_sum,
        )  # fmt: skip
        yield SummaryMetricFamily(
            "cem_gc_settle_seconds", "freezing what the worker holds (pipeline/engine/memory.py)",
            count_value=self.gc_count, sum_value=self.gc_seconds_sum,
        )  # fmt: skip
        lag = GaugeMetricFamily("cem_consumer_lag", "messages not yet committed, per topic", labels=["topic"])
        for topic, value in sorted(self.lag.items()):
            lag.add_metric([topic], value)
        yield lag
        yield GaugeMetricFamily(
            "cem_loop_stall_seconds_max",
            "the longest the event loop was held since the start",
            value=self.loop_late_max,
        )
        yield GaugeMetricFamily("cem_customers", "customers whose state this worker holds", value=self.customers)
        yield GaugeMetricFamily(
            "cem_identity_entries", "fingerprints in this worker's identity index", value=self.identity_entries
        )
        yield GaugeMetricFamily(
            "cem_ready", "1 when the worker is assigned, recovered and processing", value=self.ready
        )

    def prometheus_text(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)
