"""AlertsService: webhook subscriptions, the alert log and a durable outbox of deliveries, in SQLite — the façade.

Durability: ``<data_dir>/alerts.sqlite`` in WAL mode with ``synchronous=FULL`` (``database.py``; its tables and
migrations in ``schema.py``). ``accept_alert`` (and ``accept_revocation``) write the alert, the message to send and
one delivery row per matching subscription in *one* transaction, committed before they return — so a caller that
commits its bus offsets afterwards never loses an alert, whatever crashes when.

Delivery: :meth:`AlertsService.claim_due` claims deliveries whose time has come (a lease, so that two
workers never send the same one at once) — at most ``per_target_concurrency`` in flight per webhook, so
that a slow receiver can hold only its own slots (``claims.py``) — and :meth:`AlertsService.attempt` makes one
attempt outside the database lock and records it (``outbox.py``). Every attempt has a total deadline
(``timeout_s``: connecting, TLS, the request and the response headers together; see ``delivery.py``). The
``AlertsWorker`` keeps a pool of attempts going without rounds: a delivery starts as soon as a slot is free,
whatever else is still in flight; ``deliver_due`` is the one-shot, synchronous form.

2xx = delivered; 410 = the endpoint is disabled with all its pending deliveries; 429/503 with
``Retry-After`` wait as told; anything else (other status codes, timeouts, refused connections, a host
that now resolves to a forbidden address) is retried with exponential backoff and full jitter, until a
day has passed since the first attempt — then the delivery is ``failed`` (the decision: ``retry.py``). Any
delivery can be queued again (``redeliver``).

Alerts re-issued under the same ``alert_id`` are *revisions* (``alert_log.py``): a revision that escalates
(higher severity, or the same severity with a higher score) replaces the logged alert and is sent as a new
message (``webhook-id`` = ``alert_<alert_id>_<revision>``); an exact repeat, or a stale version below what was
already accepted (a replay), changes nothing.

Secrets are returned once, by ``create_subscription``, and are never logged or listed (``subscriptions.py``).
The database files are readable by their owner only; deleting a webhook overwrites its secret with
secure_delete on and checkpoints the WAL, so the secret is left in none of ``alerts.sqlite``, ``-wal`` and
``-shm``.
"""

from __future__ import annotations

import logging
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from pipeline.alerts import alert_log, claims, outbox, subscriptions
from pipeline.alerts.claims import PER_TARGET_CONCURRENCY, ClaimedDelivery
from pipeline.alerts.database import Database
from pipeline.alerts.delivery import (
    EVENT_TYPES,
    AttemptResult,
    DeliveryClient,
    default_client,
    send,
    signed_headers,
)
from pipeline.alerts.metrics import AlertsMetrics, result_label
from pipeline.alerts.retry import RetryPolicy, decide
from pipeline.alerts.schema import DB_NAME
from pipeline.alerts.targets import Resolver, parse_target_url, resolve_target, system_resolver
from pipeline.bus import Bus
from pipeline.errors import TargetError
from pipeline.events import Alert, AlertVerdict, Revocation, format_ts

log = logging.getLogger(__name__)


class AlertsService:
    """The alerts half of jwtwatch: see the module docstring. Thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        *,
        admin_token: str | None,
        clock: Callable[[], float] = time.time,
        http: httpx.Client | None = None,
        resolver: Resolver | None = None,
        rng: random.Random | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 10.0,
        concurrency: int = 8,
        per_target_concurrency: int = PER_TARGET_CONCURRENCY,
        bus: Bus | None = None,
    ) -> None:
        """``timeout_s`` is the total deadline of one attempt; ``concurrency`` the attempts in flight at once, at
        most ``per_target_concurrency`` of them to one webhook. ``http``, if given, must come from
        :func:`~pipeline.alerts.delivery.default_client`: the deadline lives in its transport. ``bus`` is where
        analysts' verdicts are published (``jwtwatch.verdicts``); without one they are only stored."""
        self.bus = bus
        if http is not None and not isinstance(http, DeliveryClient):
            raise TypeError("http must come from pipeline.alerts.delivery.default_client (it enforces the deadline)")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / DB_NAME
        self.admin_token = admin_token
        self.clock = clock
        self._own_http = http is None
        self.http = http if http is not None else default_client(timeout_s)
        self.timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))
        self.attempt_deadline_s = timeout_s
        self.resolver: Resolver | None = resolver
        # Jitter only spreads retries out; it protects nothing, so a plain PRNG will do.
        self.rng = rng if rng is not None else random.Random(secrets.randbits(64))  # noqa: S311
        self.retry = retry or RetryPolicy()
        self.concurrency = max(1, concurrency)
        self.per_target_concurrency = max(1, per_target_concurrency)
        self.database = Database(self.path)
        self._claimer = claims.this_claimer()
        claims.release_dead_claims(self.database, self.clock())
        self.registry = CollectorRegistry()
        self.metrics = AlertsMetrics(self.registry, self._pending_for_metrics)

    # ------------------------------------------------------------------------------------ plumbing

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.database.tx() as db:
            yield db

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.database.query(sql, params)

    def close(self) -> None:
        if not self.database.close():
            return
        if self._own_http:
            self.http.close()

    def __enter__(self) -> AlertsService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self) -> tuple[bool, str]:
        try:
            self._query("SELECT 1")
        except (sqlite3.Error, RuntimeError) as exc:
            return False, f"database unavailable: {exc}"
        return True, "ok"

    # ------------------------------------------------------------------------------- subscriptions

    def create_subscription(
        self, url: str, event_types: Sequence[str] = EVENT_TYPES, min_severity: str = "low"
    ) -> tuple[str, str]:
        """Register a webhook; returns ``(id, secret)``. The secret is never shown again.

        Raises :class:`~pipeline.errors.TargetError` (a ``ValueError``) for a refused URL and
        ``ValueError`` for bad event types or severity.
        """
        return subscriptions.create_subscription(
            self.database, url, event_types, min_severity, self.resolver, self.clock()
        )

    def list_subscriptions(self) -> list[dict[str, Any]]:
        return subscriptions.list_subscriptions(self.database)

    def delete_subscription(self, webhook_id: str) -> bool:
        """Delete a webhook: its secret is wiped (in every database file) and its pending deliveries are dropped."""
        return subscriptions.delete_subscription(self.database, webhook_id, self.clock())

    # ------------------------------------------------------------------------------------ accepting

    def accept_alert(self, alert: Alert) -> bool:
        """Log ``alert`` and queue it for every matching subscription, durably, before returning.

        Returns False when nothing new was accepted: the same version (alert_id, severity, score) was
        accepted before, or a more severe version of this alert already was. An alert whose ``type`` is
        ``revocation.storm`` is delivered as that event type; any other type than these two is refused
        with ``ValueError``.
        """
        if not alert_log.accept_alert(self.database, alert, self.clock()):
            return False
        self.metrics.accepted.labels(alert.type).inc()
        return True

    def accept_revocation(self, rev: Revocation) -> bool:
        """Queue a ``token.revoked`` message; False if this revocation_id was accepted before."""
        now = self.clock()
        with self._tx() as db:
            queued = outbox.enqueue(
                db, f"revocation_{rev.revocation_id}", "token.revoked", rev.revocation_id, rev.to_dict(), now
            )
        if queued:
            self.metrics.accepted.labels("token.revoked").inc()
        return queued

    # ------------------------------------------------------------------------------------ delivering

    def deliver_due(self, limit: int = 100) -> int:
        """Attempt every delivery that is due (at most ``limit``) once, and wait for them; returns the attempts made.

        The one-shot, synchronous form (tests, a manual flush): the worker does not wait for rounds like this one
        (see :class:`~pipeline.alerts.worker.AlertsWorker`). Each attempt is recorded as soon as it ends, not when
        the whole batch has: a process killed in the middle of a batch repeats only the attempts that were in
        flight (at most ``concurrency``).
        """
        jobs = self.claim_due(limit)
        if not jobs:
            return 0
        if len(jobs) == 1 or self.concurrency == 1:
            for job in jobs:
                self.attempt(job)
            return len(jobs)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs)), thread_name_prefix="webhook") as pool:
            for done in as_completed([pool.submit(self.attempt, job) for job in jobs]):
                done.result()
        return len(jobs)

    def claim_due(self, limit: int, *, per_target: int | None = None) -> list[ClaimedDelivery]:
        """Claim up to ``limit`` due deliveries, oldest first; with ``per_target``, only as many per webhook as
        keep its claims in flight (any process's unexpired ones) at ``per_target`` or fewer."""
        return self._claim(limit, per_target)

    def _claim(self, limit: int, per_target: int | None = None) -> list[ClaimedDelivery]:
        return claims.claim(self.database, self.clock(), limit, per_target, self._claimer, self.rng)

    def attempt(self, job: ClaimedDelivery) -> None:
        """One attempt of a claimed delivery, recorded (a failure to record it leaves the claim to its lease)."""
        started, result = self._attempt(job)
        self._record(job, started, result, job.rng)

    def _attempt(self, job: ClaimedDelivery) -> tuple[float, AttemptResult]:
        started = self.clock()
        began = time.perf_counter()
        try:
            # Checked again now: the name may resolve elsewhere than at registration (DNS rebinding).
            resolved = resolve_target(parse_target_url(job.url), self.resolver or system_resolver)
        except TargetError as exc:
            return started, AttemptResult(None, f"target refused: {exc}", time.perf_counter() - began)
        headers = signed_headers(job.secret, job.message_id, started, job.body)
        try:
            return started, send(self.http, resolved, headers, job.body, self.timeout, self.attempt_deadline_s)
        except Exception as exc:  # a broken client must not lose the attempt's record
            log.exception("webhook %s: delivery %s failed unexpectedly", job.webhook_id, job.delivery_id)
            return started, AttemptResult(None, f"{type(exc).__name__}: {exc}"[:300], time.perf_counter() - began)

    def _record(self, job: ClaimedDelivery, started: float, result: AttemptResult, rng: random.Random) -> None:
        now = self.clock()
        code = result.status_code
        decision = decide(
            code,
            result.retry_after,
            now=now,
            started=started,
            first_attempt_at=job.first_attempt_at,
            retries=job.retries,
            policy=self.retry,
            rng=rng,
        )
        outcome = decision.outcome
        error = result.error
        if error is None and outcome != "delivered" and code is not None:
            error = f"HTTP {code}"
        outbox.record_attempt(
            self.database,
            job,
            started=started,
            now=now,
            decision=decision,
            status_code=code,
            error=error,
            duration_s=result.duration_s,
        )
        self.metrics.attempts.labels(result_label(result)).inc()
        self.metrics.attempt_seconds.observe(result.duration_s)
        if outcome != "retry":
            self.metrics.deliveries.labels(outcome).inc()
        if outcome == "delivered":
            log.debug("webhook %s: message %s delivered (%s)", job.webhook_id, job.message_id, code)
        elif outcome == "disabled":
            log.warning("webhook %s answered 410 Gone: disabled with its pending deliveries", job.webhook_id)
        elif outcome == "failed":
            log.warning("webhook %s: message %s failed for good: %s", job.webhook_id, job.message_id, error)
        else:
            log.info(
                "webhook %s: message %s not delivered (%s); retry at %s",
                job.webhook_id,
                job.message_id,
                error,
                format_ts(decision.next_attempt_at),
            )

    def redeliver(self, delivery_id: int) -> str:
        """Queue a delivery again, due now: ``"queued"``, ``"not_found"`` or ``"inactive"`` (webhook gone)."""
        return outbox.redeliver(self.database, delivery_id, self.clock())

    # -------------------------------------------------------------------------------------- reading

    def pending_count(self) -> int:
        return outbox.pending_count(self.database)

    def _pending_for_metrics(self) -> float:
        try:
            return float(self.pending_count())
        except (sqlite3.Error, RuntimeError):
            return float("nan")

    def list_alerts(
        self,
        *,
        entity_type: str | None = None,
        entity: str | None = None,
        severity: str | None = None,
        since: float | None = None,
        until: float | None = None,
        verdict: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The alert log (latest revision of each alert), newest first; ``severity`` is a minimum. Each alert has
        its current ``verdict`` (see :func:`~pipeline.alerts.alert_log.verdict_view`) or None; ``verdict`` filters
        on it (``none``: unjudged).
        """
        return alert_log.list_alerts(
            self.database,
            entity_type=entity_type,
            entity=entity,
            severity=severity,
            since=since,
            until=until,
            verdict=verdict,
            limit=limit,
        )

    # ------------------------------------------------------------------------------------- verdicts

    def record_verdict(
        self,
        alert_id: str,
        verdict: str,
        *,
        note: str | None = None,
        suppress_for_s: int | None = None,
        by: str = "admin",
    ) -> AlertVerdict | None:
        """Record an analyst's verdict on a logged alert and publish it (verdict/1 on ``jwtwatch.verdicts``).

        Returns None for an unknown alert. Every verdict is kept; the latest is the alert's verdict. A benign one
        suppresses for ``suppress_for_s`` (default a day, ``MIN_SUPPRESS_S``..``MAX_SUPPRESS_S`` of
        :mod:`pipeline.alerts.alert_log`). The verdict is published and flushed before this returns; if that fails
        the verdict is not kept either (:class:`~pipeline.errors.Unavailable`), so what the log shows is what the
        pipeline was told.
        """
        return alert_log.record_verdict(
            self.database,
            self.bus,
            alert_id,
            verdict,
            now=self.clock(),
            note=note,
            suppress_for_s=suppress_for_s,
            by=by,
        )

    def active_verdicts(self) -> list[AlertVerdict]:
        """Each alert's current verdict where it is benign and still suppresses (to publish again on a bus that
        forgot them: the embedded ``serve``'s in-process bus starts empty)."""
        return alert_log.active_verdicts(self.database, self.clock())

    def list_deliveries(
        self, *, status: str | None = None, webhook_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Deliveries, newest first, each with its attempts (oldest first)."""
        return outbox.list_deliveries(self.database, status=status, webhook_id=webhook_id, limit=limit)

    def purge(self, older_than_s: float = 30 * 24 * 3600.0) -> int:
        """Forget finished deliveries (and their attempts and messages) older than ``older_than_s``.

        The alert log is kept. Returns the deliveries removed.
        """
        return outbox.purge(self.database, self.clock() - older_than_s)


__all__ = ["AlertsService"]
