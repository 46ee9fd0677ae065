"""The alerts service's Prometheus metrics: deliveries, attempts, their duration, what was accepted, what waits."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.alerts.delivery import EVENT_TYPES, AttemptResult


class AlertsMetrics:
    """Every metric of one service, in its own ``registry``; ``pending`` reads the outbox's backlog."""

    def __init__(self, registry: CollectorRegistry, pending: Callable[[], float]) -> None:
        self.deliveries = Counter(
            "jwtwatch_webhook_deliveries_total",
            "Webhook deliveries by final outcome (delivered, failed after the retry window, disabled by 410)",
            ["outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "jwtwatch_webhook_attempts_total",
            "Webhook delivery attempts by result (2xx, 3xx, 4xx, 5xx, error, refused)",
            ["result"],
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "jwtwatch_webhook_attempt_seconds",
            "Duration of one webhook delivery attempt",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.accepted = Counter(
            "jwtwatch_alerts_accepted_total",
            "Events accepted into the outbox, by webhook event type",
            ["type"],
            registry=registry,
        )
        self.pending = Gauge(
            "jwtwatch_webhook_deliveries_pending", "Webhook deliveries waiting to be sent", registry=registry
        )
        self.pending.set_function(pending)
        for outcome in ("delivered", "failed", "disabled"):
            self.deliveries.labels(outcome)
        for result in ("2xx", "3xx", "4xx", "5xx", "error", "refused"):
            self.attempts.labels(result)
        for event_type in EVENT_TYPES:
            self.accepted.labels(event_type)


def result_label(result: AttemptResult) -> str:
    """The ``result`` label of an attempt: its status class (2xx..5xx), ``refused`` (the target) or ``error``."""
    if result.status_code is None:
        return "refused" if (result.error or "").startswith("target refused") else "error"
    return f"{min(max(result.status_code // 100, 2), 5)}xx"


__all__ = ["AlertsMetrics", "result_label"]
