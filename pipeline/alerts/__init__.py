"""Alerts: webhook subscriptions, signing, a durable outbox with retries, the alert log, and its HTTP app.

* :class:`AlertsService` — subscriptions, ``accept_alert`` (a ``revocation.storm`` is an alert of that type)
  and ``accept_revocation`` into a SQLite outbox under the data dir, ``deliver_due`` (Standard Webhooks, signed);
* :func:`create_alerts_app` — the admin HTTP API (``/v1/webhooks``, ``/v1/alerts``, ``/v1/deliveries``),
  health and metrics;
* :class:`AlertsWorker` — the delivery loop in a thread; :class:`AlertsConsumer` — feeds the service
  from the bus (ALERTS and REVOCATIONS topics);
* :mod:`pipeline.alerts.targets` — which URLs may receive webhooks (SSRF rules).
"""

from __future__ import annotations

from pipeline.alerts.app import create_alerts_app
from pipeline.alerts.delivery import EVENT_TYPES
from pipeline.alerts.retry import RetryPolicy
from pipeline.alerts.service import AlertsService
from pipeline.alerts.targets import check_target_url
from pipeline.alerts.worker import AlertsConsumer, AlertsWorker
from pipeline.errors import TargetError

__all__ = [
    "EVENT_TYPES",
    "AlertsConsumer",
    "AlertsService",
    "AlertsWorker",
    "RetryPolicy",
    "TargetError",
    "check_target_url",
    "create_alerts_app",
]
