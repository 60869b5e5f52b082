"""Prometheus metrics: what an operator alerts on.

One `Metrics` object per process, on its own registry (tests make their own).
The receiver serves it at `GET /metrics`; `stockaj-rules worker` on
`--metrics-port`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deliveries_received = Counter(
            "stockaj_deliveries_received",
            "Deliveries answered by the receiver, by event and outcome "
            "(accepted, duplicate, rejected_signature, rejected_request, too_large, store_unavailable).",
            ["event", "outcome"],
            registry=r,
        )
        self.signature_failures = Counter(
            "stockaj_signature_failures",
            "Deliveries refused for a missing, malformed or wrong signature.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "stockaj_duplicate_deliveries", "Redeliveries recognised by delivery id.", registry=r
        )
        self.enqueue_failures = Counter(
            "stockaj_enqueue_failures",
            "Stored deliveries the queue did not take (the sweeper retries).",
            registry=r,
        )
        self.deliveries_processed = Counter(
            "stockaj_deliveries_processed",
            "Deliveries finished by a worker, by event and final status.",
            ["event", "status"],
            registry=r,
        )
        self.rule_outcomes = Counter(
            "stockaj_rule_outcomes",
            "Rule verdicts (fired, condition_false, throttled, ...).",
            ["status"],
            registry=r,
        )
        self.action_runs = Counter(
            "stockaj_action_runs",
            "Action executions by type and outcome (succeeded, pending = will retry, failed).",
            ["type", "outcome"],
            registry=r,
        )
        self.action_latency = Histogram(
            "stockaj_action_latency_seconds",
            "Time an action execution took, by type.",
            ["type"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.processing_lag = Histogram(
            "stockaj_processing_lag_seconds",
            "From a delivery's receipt to its final status.",
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600),
        )
        self.queue_lag = Gauge(
            "stockaj_queue_lag_seconds",
            "Age of the oldest delivery still waiting to be processed (0 when none).",
            registry=r,
        )
        self.requeued = Counter(
            "stockaj_requeued_deliveries", "Deliveries the sweeper enqueued again.", registry=r
        )
        self.rules_reload_failures = Counter(
            "stockaj_rules_reload_failures", "Rule reloads refused because a file is broken.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
