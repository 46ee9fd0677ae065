"""AlertsService: webhook subscriptions, the alert log and a durable outbox of deliveries, in SQLite.

Durability: ``<data_dir>/alerts.sqlite`` in WAL mode with ``synchronous=FULL``. ``accept_alert`` (and
``accept_revocation``) write the alert, the message to send and one delivery row per
matching subscription in *one* transaction, committed before they return — so a caller that commits its
bus offsets afterwards never loses an alert, whatever crashes when.

Delivery: :meth:`AlertsService.claim_due` claims deliveries whose time has come (a lease, so that two
workers never send the same one at once) — at most ``per_target_concurrency`` in flight per webhook, so
that a slow receiver can hold only its own slots — and :meth:`AlertsService.attempt` makes one attempt
outside the database lock and records it. Every attempt has a total deadline (``timeout_s``: connecting,
TLS, the request and the response headers together; see ``delivery.py``). The ``AlertsWorker`` keeps a
pool of attempts going without rounds: a delivery starts as soon as a slot is free, whatever else is still
in flight; ``deliver_due`` is the one-shot, synchronous form.

2xx = delivered; 410 = the endpoint is disabled with all its pending deliveries; 429/503 with
``Retry-After`` wait as told; anything else (other status codes, timeouts, refused connections, a host
that now resolves to a forbidden address) is retried with exponential backoff and full jitter, until a
day has passed since the first attempt — then the delivery is ``failed``. Any delivery can be queued
again (``redeliver``).

Alerts re-issued under the same ``alert_id`` are *revisions*: a revision that escalates (higher severity,
or the same severity with a higher score) replaces the logged alert and is sent as a new message
(``webhook-id`` = ``alert_<alert_id>_<revision>``); an exact repeat, or a stale version below what was
already accepted (a replay), changes nothing.

Secrets are returned once, by ``create_subscription``, and are never logged or listed. The database files
are readable by their owner only; deleting a webhook overwrites its secret with secure_delete on and
checkpoints the WAL, so the secret is left in none of ``alerts.sqlite``, ``-wal`` and ``-shm``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.alerts.delivery import (
    EVENT_TYPES,
    AttemptResult,
    DeliveryClient,
    RetryPolicy,
    default_client,
    new_secret,
    parse_retry_after,
    payload,
    send,
    signed_headers,
)
from pipeline.alerts.targets import Resolver, check_target_url, parse_target_url, resolve_target, system_resolver
from pipeline.bus import VERDICTS, Bus
from pipeline.errors import TargetError, Unavailable
from pipeline.events import (
    MAX_RULE_NAME,
    MAX_VERDICT_RULES,
    SEVERITIES,
    SEVERITY_RANK,
    Alert,
    AlertVerdict,
    Revocation,
    format_ts,
    parse_ts,
)

log = logging.getLogger(__name__)

DB_NAME = "alerts.sqlite"
SCHEMA_VERSION = 3  # 2: deliveries.claimed_by; 3: verdicts
DELIVERY_STATUSES: tuple[str, ...] = ("pending", "delivered", "failed", "disabled")
#: A claimed delivery is not claimed again for this long (covers the attempt, even if the process dies in it).
#: A restarted service does not wait for it: claims of a process on this host that no longer runs are released
#: at start (see ``_release_dead_claims``).
CLAIM_LEASE_S = 300.0
#: Attempts in flight at once to one webhook (by default): a receiver that stalls holds only these.
PER_TARGET_CONCURRENCY = 2
#: The database and its WAL and shared-memory files.
DB_SUFFIXES: tuple[str, ...] = ("", "-wal", "-shm")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    min_severity TEXT NOT NULL,
    secret TEXT NOT NULL,
    status TEXT NOT NULL,                -- active | disabled | deleted
    created_at REAL NOT NULL,
    disabled_at REAL,
    disabled_reason TEXT
);
CREATE TABLE IF NOT EXISTS alerts (      -- the alert log: the latest accepted revision of each alert
    alert_id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    entity_type TEXT NOT NULL,
    entity TEXT NOT NULL,
    severity_rank INTEGER NOT NULL,
    score REAL NOT NULL,
    record BLOB NOT NULL,
    accepted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts(ts);
CREATE INDEX IF NOT EXISTS alerts_entity ON alerts(entity_type, entity);
CREATE TABLE IF NOT EXISTS alert_revisions (
    alert_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    severity TEXT NOT NULL,
    score REAL NOT NULL,
    accepted_at REAL NOT NULL,
    PRIMARY KEY (alert_id, revision)
);
CREATE TABLE IF NOT EXISTS messages (    -- what is sent: one per alert revision, revocation, storm
    id TEXT PRIMARY KEY,                 -- the webhook-id
    type TEXT NOT NULL,
    ref TEXT,                            -- alert_id or revocation_id
    body BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (  -- the outbox: one per message and matching subscription
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id),
    webhook_id TEXT NOT NULL REFERENCES subscriptions(id),
    status TEXT NOT NULL,                -- pending | delivered | failed | disabled
    next_attempt_at REAL NOT NULL,
    retries INTEGER NOT NULL DEFAULT 0,  -- failed attempts since it was last queued
    attempt_count INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,               -- of the current run; the retry window counts from here
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_status_code INTEGER,
    last_error TEXT,
    UNIQUE (message_id, webhook_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_webhook ON deliveries(webhook_id, status);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms REAL NOT NULL,
    outcome TEXT NOT NULL                -- delivered | retry | failed | disabled
);
CREATE INDEX IF NOT EXISTS delivery_attempts_delivery ON delivery_attempts(delivery_id);
CREATE TABLE IF NOT EXISTS verdicts (    -- analysts' verdicts, every one kept; an alert's verdict is its latest
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    verdict_id TEXT NOT NULL UNIQUE,
    alert_id TEXT NOT NULL,
    verdict TEXT NOT NULL,               -- benign | compromised
    ts REAL NOT NULL,
    record BLOB NOT NULL                 -- the verdict/1 record as published
);
CREATE INDEX IF NOT EXISTS verdicts_alert ON verdicts(alert_id, id);
"""
#: An alert's current verdict: the latest recorded for it.
_LATEST_VERDICT = "(SELECT v.record FROM verdicts v WHERE v.alert_id = alerts.alert_id ORDER BY v.id DESC LIMIT 1)"
_LATEST_KIND = "(SELECT v.verdict FROM verdicts v WHERE v.alert_id = alerts.alert_id ORDER BY v.id DESC LIMIT 1)"
#: Bounds of a benign verdict's suppression.
MIN_SUPPRESS_S = 60
MAX_SUPPRESS_S = 30 * 86400
DEFAULT_SUPPRESS_S = 86400
#: How long publishing a verdict may take before the request fails (and the verdict is not kept).
PUBLISH_TIMEOUT_S = 10.0


_DELIVERY_SELECT = (
    "SELECT d.id, d.webhook_id, d.message_id, m.type, m.ref, d.status, d.attempt_count, d.created_at,"
    " d.next_attempt_at, d.first_attempt_at, d.last_status_code, d.last_error, d.updated_at"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
)
_ATTEMPT_SELECT = "SELECT delivery_id, at, status_code, error, duration_ms, outcome FROM delivery_attempts"


class AlertsMetrics:
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


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A claimed delivery: what one attempt needs. Made by :meth:`AlertsService.claim_due`, spent by ``attempt``."""

    delivery_id: int
    message_id: str
    webhook_id: str
    url: str
    secret: str
    body: bytes
    retries: int
    first_attempt_at: float | None
    rng: random.Random  # its retry jitter, drawn in claim order (a seeded service gives the same schedule)

    def __repr__(self) -> str:  # never the secret
        return (
            f"ClaimedDelivery(delivery_id={self.delivery_id}, message_id={self.message_id!r},"
            f" webhook_id={self.webhook_id!r})"
        )


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
        self._lock = threading.RLock()
        self._closed = False
        self._own_files()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # Deleted content (a webhook's secret) is overwritten with zeros, not merely unlinked from the b-tree.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # Who holds a claim: this host and process. The file is local (SQLite), so every process that can
        # claim is on this host and its liveness can be checked.
        self._claimer = f"{socket.gethostname()}:{os.getpid()}"
        self._release_dead_claims()
        self.registry = CollectorRegistry()
        self.metrics = AlertsMetrics(self.registry, self._pending_for_metrics)

    # ------------------------------------------------------------------------------------ plumbing

    def _own_files(self) -> None:
        """The files hold signing secrets: readable by their owner only.

        A new database is created 0600 (SQLite gives its WAL and shm files the database's mode); files left
        wider by an older version or another tool are narrowed."""
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        for suffix in DB_SUFFIXES:
            path = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mode & 0o077:
                    os.chmod(path, 0o600)

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
        if "claimed_by" not in columns:
            self._db.execute("ALTER TABLE deliveries ADD COLUMN claimed_by TEXT")

    def _release_dead_claims(self) -> int:
        """Make deliveries claimed by a process of this host that has died due now, not after the lease.

        A process killed in the middle of an attempt leaves its claims behind; waiting out the lease would
        hold those alerts back for minutes after a restart. A claimer that still runs (or a PID reused by
        another process, which looks alive) keeps its lease: at worst that delivery waits for the lease.
        """
        host = socket.gethostname()
        now = self.clock()
        released = 0
        with self._tx() as db:
            claimers = db.execute(
                "SELECT DISTINCT claimed_by FROM deliveries WHERE status = 'pending' AND claimed_by IS NOT NULL"
            ).fetchall()
            for (claimer,) in claimers:
                claimer_host, _, pid = str(claimer).rpartition(":")
                if claimer_host != host or not pid.isdigit() or _process_alive(int(pid)):
                    continue
                released += db.execute(
                    "UPDATE deliveries SET next_attempt_at = ?, claimed_by = NULL"
                    " WHERE status = 'pending' AND claimed_by = ? AND next_attempt_at > ?",
                    (now, claimer, now),
                ).rowcount
        if released:
            log.warning("released %d webhook deliveries claimed by a process that is gone", released)
        return released

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise Unavailable("the alerts service is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            if self._closed:
                raise Unavailable("the alerts service is closed")
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
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

        Raises :class:`~pipeline.alerts.targets.TargetError` (a ``ValueError``) for a refused URL and
        ``ValueError`` for bad event types or severity.
        """
        if isinstance(event_types, str) or not event_types:
            raise ValueError("event_types must be a non-empty list")
        unknown = [t for t in event_types if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {unknown!r}: choose from {list(EVENT_TYPES)}")
        if min_severity not in SEVERITY_RANK:
            raise ValueError(f"min_severity must be one of {list(SEVERITIES)}")
        resolved = check_target_url(url, self.resolver)
        types = [t for t in EVENT_TYPES if t in set(event_types)]
        webhook_id = "wh_" + uuid.uuid4().hex
        secret = new_secret()
        with self._tx() as db:
            db.execute(
                "INSERT INTO subscriptions (id, url, event_types, min_severity, secret, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'active', ?)",
                (webhook_id, resolved.target.url, orjson.dumps(types).decode(), min_severity, secret, self.clock()),
            )
        log.info("webhook %s registered for %s (min severity %s)", webhook_id, ",".join(types), min_severity)
        return webhook_id, secret

    def list_subscriptions(self) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT id, url, event_types, min_severity, status, created_at, disabled_at, disabled_reason"
            " FROM subscriptions WHERE status != 'deleted' ORDER BY created_at, id"
        )
        return [
            {
                "id": r[0],
                "url": r[1],
                "event_types": orjson.loads(r[2]),
                "min_severity": r[3],
                "status": r[4],
                "created_at": format_ts(r[5]),
                "disabled_at": format_ts(r[6]) if r[6] is not None else None,
                "disabled_reason": r[7],
            }
            for r in rows
        ]

    def delete_subscription(self, webhook_id: str) -> bool:
        """Delete a webhook: its secret is wiped and its pending deliveries are dropped (``disabled``).

        The row stays (deliveries refer to it), its secret overwritten; with secure_delete the old cell is zeroed
        in the page, and the checkpoint then copies that page into the database and truncates the WAL, whose
        older frames still held the page with the secret."""
        now = self.clock()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE subscriptions SET status = 'deleted', secret = '', disabled_at = ?,"
                " disabled_reason = 'deleted' WHERE id = ? AND status != 'deleted'",
                (now, webhook_id),
            )
            if cursor.rowcount == 0:
                return False
            self._disable_pending(db, webhook_id, "webhook deleted", now)
        self._checkpoint()
        log.info("webhook %s deleted", webhook_id)
        return True

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to nothing (waits up to busy_timeout for readers)."""
        with self._lock:
            if self._closed:
                raise Unavailable("the alerts service is closed")
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            # Another connection kept reading throughout: its snapshot still needs the old frames. They go at the
            # next checkpoint that completes (every delete tries again).
            log.warning(
                "WAL checkpoint of %s incomplete: a reader held it; old frames remain until the next", self.path
            )

    @staticmethod
    def _disable_pending(db: sqlite3.Connection, webhook_id: str, why: str, now: float) -> int:
        return db.execute(
            "UPDATE deliveries SET status = 'disabled', last_error = ?, updated_at = ?"
            " WHERE webhook_id = ? AND status = 'pending'",
            (why, now, webhook_id),
        ).rowcount

    # ------------------------------------------------------------------------------------ accepting

    def accept_alert(self, alert: Alert) -> bool:
        """Log ``alert`` and queue it for every matching subscription, durably, before returning.

        Returns False when nothing new was accepted: the same version (alert_id, severity, score) was
        accepted before, or a more severe version of this alert already was. An alert whose ``type`` is
        ``revocation.storm`` is delivered as that event type; any other type than these two is refused
        with ``ValueError``.
        """
        if alert.type not in ("token.anomaly", "revocation.storm"):
            raise ValueError(f"alert {alert.alert_id!r} has unknown type {alert.type!r}")
        rank = SEVERITY_RANK[alert.severity]
        ts = parse_ts(alert.ts).timestamp()
        now = self.clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT revision, severity_rank, score FROM alerts WHERE alert_id = ?", (alert.alert_id,)
            ).fetchone()
            if row is not None and (rank, alert.score) <= (row[1], row[2]):
                return False
            revision = 1 if row is None else row[0] + 1
            record = alert.to_json()
            db.execute(
                "INSERT INTO alerts (alert_id, revision, type, ts, entity_type, entity, severity_rank, score,"
                " record, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(alert_id) DO UPDATE SET revision = excluded.revision, type = excluded.type,"
                " ts = excluded.ts, entity_type = excluded.entity_type, entity = excluded.entity,"
                " severity_rank = excluded.severity_rank, score = excluded.score, record = excluded.record,"
                " accepted_at = excluded.accepted_at",
                (
                    alert.alert_id,
                    revision,
                    alert.type,
                    ts,
                    alert.entity_type,
                    alert.entity,
                    rank,
                    alert.score,
                    record,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO alert_revisions (alert_id, revision, severity, score, accepted_at) VALUES (?, ?, ?, ?, ?)",
                (alert.alert_id, revision, alert.severity, alert.score, now),
            )
            self._enqueue(
                db,
                f"alert_{alert.alert_id}_{revision}",
                alert.type,
                alert.alert_id,
                alert.to_dict(),
                now,
                severity=alert.severity,
            )
        self.metrics.accepted.labels(alert.type).inc()
        return True

    def accept_revocation(self, rev: Revocation) -> bool:
        """Queue a ``token.revoked`` message; False if this revocation_id was accepted before."""
        now = self.clock()
        with self._tx() as db:
            queued = self._enqueue(
                db, f"revocation_{rev.revocation_id}", "token.revoked", rev.revocation_id, rev.to_dict(), now
            )
        if queued:
            self.metrics.accepted.labels("token.revoked").inc()
        return queued

    def _enqueue(
        self,
        db: sqlite3.Connection,
        message_id: str,
        event_type: str,
        ref: str | None,
        data: dict[str, Any],
        now: float,
        *,
        severity: str | None = None,
    ) -> bool:
        """Store the message and one delivery per matching active subscription; False if already stored."""
        body = payload(event_type, now, data)
        cursor = db.execute(
            "INSERT OR IGNORE INTO messages (id, type, ref, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (message_id, event_type, ref, body, now),
        )
        if cursor.rowcount == 0:
            return False
        for webhook_id, types, min_severity in db.execute(
            "SELECT id, event_types, min_severity FROM subscriptions WHERE status = 'active'"
        ).fetchall():
            if event_type not in orjson.loads(types):
                continue
            below = severity is not None and SEVERITY_RANK[severity] < SEVERITY_RANK[min_severity]
            if event_type == "token.anomaly" and below:
                continue
            db.execute(
                "INSERT INTO deliveries (message_id, webhook_id, status, next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, 'pending', ?, ?, ?)",
                (message_id, webhook_id, now, now, now),
            )
        return True

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
        now = self.clock()
        cap = -1 if per_target is None else max(1, per_target)
        with self._tx() as db:
            rows = db.execute(
                "WITH busy AS ("
                "  SELECT webhook_id, COUNT(*) AS n FROM deliveries"
                "  WHERE status = 'pending' AND claimed_by IS NOT NULL AND next_attempt_at > ? GROUP BY webhook_id"
                "), due AS ("
                "  SELECT d.id, d.message_id, d.webhook_id, s.url, s.secret, m.body, d.retries, d.first_attempt_at,"
                "   d.next_attempt_at,"
                "   ROW_NUMBER() OVER (PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.id) AS nth"
                "  FROM deliveries d JOIN subscriptions s ON s.id = d.webhook_id JOIN messages m ON m.id = d.message_id"
                "  WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND s.status = 'active'"
                ")"
                " SELECT due.id, due.message_id, due.webhook_id, due.url, due.secret, due.body, due.retries,"
                " due.first_attempt_at FROM due LEFT JOIN busy ON busy.webhook_id = due.webhook_id"
                " WHERE ? < 0 OR due.nth + COALESCE(busy.n, 0) <= ?"
                " ORDER BY due.next_attempt_at, due.id LIMIT ?",
                (now, now, cap, cap, max(0, int(limit))),
            ).fetchall()
            db.executemany(
                "UPDATE deliveries SET next_attempt_at = ?, claimed_by = ? WHERE id = ?",
                [(now + CLAIM_LEASE_S, self._claimer, r[0]) for r in rows],
            )
        # Jitter drawn in claim order, so that a seeded service gives the same schedule whatever order the
        # attempts finish in.
        return [
            ClaimedDelivery(
                delivery, message, webhook, url, secret, body, retries, first,
                random.Random(self.rng.getrandbits(64)),  # noqa: S311 - jitter
            )
            for delivery, message, webhook, url, secret, body, retries, first in rows
        ]  # fmt: skip

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
        first = job.first_attempt_at if job.first_attempt_at is not None else started
        next_at = now
        if code is not None and 200 <= code < 300:
            outcome = "delivered"
        elif code == 410:
            outcome = "disabled"
        else:
            outcome = "retry"
            deadline = first + self.retry.give_up_after_s
            wait = parse_retry_after(result.retry_after, now) if code in (429, 503) else None
            if now >= deadline:
                outcome = "failed"
            elif wait is not None:
                next_at = now + max(wait, self.retry.min_delay_s)
                if next_at > deadline:
                    outcome = "failed"  # the receiver asks for more time than the retry window has left
            else:
                next_at = min(now + self.retry.backoff(job.retries + 1, rng), deadline)
        error = result.error
        if error is None and outcome != "delivered" and code is not None:
            error = f"HTTP {code}"
        with self._tx() as db:
            db.execute(
                "INSERT INTO delivery_attempts (delivery_id, at, status_code, error, duration_ms, outcome)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job.delivery_id, started, code, error, round(result.duration_s * 1000.0, 3), outcome),
            )
            current = db.execute("SELECT status FROM deliveries WHERE id = ?", (job.delivery_id,)).fetchone()
            still_pending = current is not None and current[0] == "pending"
            if outcome == "delivered" or still_pending:
                status = "pending" if outcome == "retry" else outcome
                db.execute(
                    "UPDATE deliveries SET status = ?, next_attempt_at = ?, retries = retries + ?, claimed_by = NULL,"
                    " attempt_count = attempt_count + 1, first_attempt_at = ?, updated_at = ?,"
                    " last_status_code = ?, last_error = ? WHERE id = ?",
                    (status, next_at, 0 if outcome == "delivered" else 1, first, now, code, error, job.delivery_id),
                )
            else:  # deleted or disabled meanwhile: keep that state, count the attempt
                db.execute(
                    "UPDATE deliveries SET attempt_count = attempt_count + 1, updated_at = ?, last_status_code = ?"
                    " WHERE id = ?",
                    (now, code, job.delivery_id),
                )
            if outcome == "disabled":
                db.execute(
                    "UPDATE subscriptions SET status = 'disabled', disabled_at = ?, disabled_reason = ?"
                    " WHERE id = ? AND status = 'active'",
                    (now, "endpoint answered 410 Gone", job.webhook_id),
                )
                self._disable_pending(db, job.webhook_id, "endpoint answered 410 Gone", now)
        self.metrics.attempts.labels(_result_label(result)).inc()
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
                format_ts(next_at),
            )

    def redeliver(self, delivery_id: int) -> str:
        """Queue a delivery again, due now: ``"queued"``, ``"not_found"`` or ``"inactive"`` (webhook gone)."""
        now = self.clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT s.status FROM deliveries d JOIN subscriptions s ON s.id = d.webhook_id WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()
            if row is None:
                return "not_found"
            if row[0] != "active":
                return "inactive"
            db.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, retries = 0, first_attempt_at = NULL,"
                " updated_at = ? WHERE id = ?",
                (now, now, delivery_id),
            )
        return "queued"

    # -------------------------------------------------------------------------------------- reading

    def pending_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")[0][0])

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
        its current ``verdict`` (see :func:`verdict_view`) or None; ``verdict`` filters on it (``none``: unjudged).
        """
        where: list[str] = ["1 = 1"]
        params: list[str | float] = []
        if verdict is not None:
            if verdict == "none":
                where.append(f"{_LATEST_KIND} IS NULL")
            elif verdict in ("benign", "compromised"):
                where.append(f"{_LATEST_KIND} = ?")
                params.append(verdict)
            else:
                raise ValueError("verdict must be benign, compromised or none")
        if entity_type is not None:
            where.append("entity_type = ?")
            params.append(entity_type)
        if entity is not None:
            where.append("entity = ?")
            params.append(entity)
        if severity is not None:
            if severity not in SEVERITY_RANK:
                raise ValueError(f"severity must be one of {list(SEVERITIES)}")
            where.append("severity_rank >= ?")
            params.append(SEVERITY_RANK[severity])
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts <= ?")
            params.append(until)
        rows = self._query(
            f"SELECT record, revision, {_LATEST_VERDICT} FROM alerts WHERE {' AND '.join(where)}"  # noqa: S608 - fixed clauses, values bound as ?  # nosec B608
            " ORDER BY ts DESC, alert_id LIMIT ?",
            [*params, max(0, int(limit))],
        )
        return [
            {**orjson.loads(record), "revision": revision, "verdict": verdict_view(judged)}
            for record, revision, judged in rows
        ]

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
        suppresses for ``suppress_for_s`` (default a day, :data:`MIN_SUPPRESS_S`..:data:`MAX_SUPPRESS_S`). The
        verdict is published and flushed before this returns; if that fails the verdict is not kept either
        (:class:`~pipeline.bus.dead_letter.Unavailable`), so what the log shows is what the pipeline was told.
        """
        if verdict not in ("benign", "compromised"):
            raise ValueError("verdict must be benign or compromised")
        if verdict == "compromised" and suppress_for_s is not None:
            raise ValueError("suppress_for applies to benign verdicts only")
        if suppress_for_s is None:
            suppress_for_s = DEFAULT_SUPPRESS_S
        if not MIN_SUPPRESS_S <= suppress_for_s <= MAX_SUPPRESS_S:
            raise ValueError(f"suppress_for must lie between {MIN_SUPPRESS_S} s and {MAX_SUPPRESS_S // 86400} days")
        rows = self._query("SELECT record FROM alerts WHERE alert_id = ?", (alert_id,))
        if not rows:
            return None
        alert = Alert.from_json(rows[0][0])
        now = self.clock()
        record = AlertVerdict(
            verdict_id=str(uuid.uuid4()),
            alert_id=alert.alert_id,
            verdict=verdict,
            ts=format_ts(now),
            by=by,
            entity_type=alert.entity_type,
            entity=alert.entity,
            severity=alert.severity,
            rules=alert_rules(alert),
            sub=alert.sub,
            jti=alert.jti,
            ip=alert.ip,
            note=note,
            suppress_until=format_ts(now + suppress_for_s) if verdict == "benign" else None,
        )
        with self._tx() as db:
            db.execute(
                "INSERT INTO verdicts (verdict_id, alert_id, verdict, ts, record) VALUES (?, ?, ?, ?, ?)",
                (record.verdict_id, record.alert_id, record.verdict, now, record.to_json()),
            )
        if self.bus is not None:
            try:
                self.bus.publish(VERDICTS, record.bus_key, record.to_json())
                self.bus.flush(PUBLISH_TIMEOUT_S)
            except Exception as exc:
                with self._tx() as db:
                    db.execute("DELETE FROM verdicts WHERE verdict_id = ?", (record.verdict_id,))
                raise Unavailable(f"the verdict could not be published: {exc}") from exc
        log.info("alert %s judged %s by %s", alert_id, verdict, by)
        return record

    def active_verdicts(self) -> list[AlertVerdict]:
        """Each alert's current verdict where it is benign and still suppresses (to publish again on a bus that
        forgot them: the embedded ``serve``'s in-process bus starts empty)."""
        now = self.clock()
        rows = self._query(
            "SELECT v.record FROM verdicts v"
            " WHERE v.id = (SELECT MAX(w.id) FROM verdicts w WHERE w.alert_id = v.alert_id)"
            " AND v.verdict = 'benign' ORDER BY v.id"
        )
        verdicts = [AlertVerdict.from_json(row[0]) for row in rows]
        return [v for v in verdicts if v.suppress_until and parse_ts(v.suppress_until).timestamp() > now]

    def list_deliveries(
        self, *, status: str | None = None, webhook_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Deliveries, newest first, each with its attempts (oldest first)."""
        where: list[str] = ["1 = 1"]
        params: list[str | float] = []
        if status is not None:
            if status not in DELIVERY_STATUSES:
                raise ValueError(f"status must be one of {list(DELIVERY_STATUSES)}")
            where.append("d.status = ?")
            params.append(status)
        if webhook_id is not None:
            where.append("d.webhook_id = ?")
            params.append(webhook_id)
        with self._lock:
            clause = " AND ".join(where)  # fixed clauses; the values are bound parameters
            sql = f"{_DELIVERY_SELECT} WHERE {clause} ORDER BY d.id DESC LIMIT ?"
            rows = self._query(sql, [*params, max(0, int(limit))])
            attempts: dict[int, list[dict[str, Any]]] = {r[0]: [] for r in rows}
            if rows:
                marks = ",".join("?" * len(rows))
                sql = f"{_ATTEMPT_SELECT} WHERE delivery_id IN ({marks}) ORDER BY id"
                for delivery_id, at, code, error, duration_ms, outcome in self._query(sql, list(attempts)):
                    attempts[delivery_id].append(
                        {
                            "at": format_ts(at),
                            "status_code": code,
                            "error": error,
                            "duration_ms": duration_ms,
                            "outcome": outcome,
                        }
                    )
        return [
            {
                "id": r[0],
                "webhook_id": r[1],
                "message_id": r[2],
                "type": r[3],
                "ref": r[4],
                "status": r[5],
                "attempt_count": r[6],
                "created_at": format_ts(r[7]),
                "next_attempt_at": format_ts(r[8]) if r[5] == "pending" else None,
                "first_attempt_at": format_ts(r[9]) if r[9] is not None else None,
                "last_status_code": r[10],
                "last_error": r[11],
                "updated_at": format_ts(r[12]),
                "attempts": attempts[r[0]],
            }
            for r in rows
        ]

    def purge(self, older_than_s: float = 30 * 24 * 3600.0) -> int:
        """Forget finished deliveries (and their attempts and messages) older than ``older_than_s``.

        The alert log is kept. Returns the deliveries removed.
        """
        cutoff = self.clock() - older_than_s
        with self._tx() as db:
            old = "SELECT id FROM deliveries WHERE status != 'pending' AND updated_at < ?"
            db.execute(f"DELETE FROM delivery_attempts WHERE delivery_id IN ({old})", (cutoff,))  # noqa: S608 - {old} is the constant query above  # nosec B608
            removed = db.execute("DELETE FROM deliveries WHERE status != 'pending' AND updated_at < ?", (cutoff,))
            # A message is kept while a delivery needs it; revocation messages stay as the idempotency record.
            db.execute(
                "DELETE FROM messages WHERE created_at < ? AND type != 'token.revoked'"
                " AND id NOT IN (SELECT message_id FROM deliveries)",
                (cutoff,),
            )
            return removed.rowcount


def alert_rules(alert: Alert) -> list[str]:
    """The rules that fired in an alert (its pattern, with its entity and severity), as its reasons name them."""
    rules = {
        reason["rule"]
        for reason in alert.reasons
        if isinstance(reason.get("rule"), str) and 0 < len(reason["rule"]) <= MAX_RULE_NAME
    }
    return sorted(rules)[:MAX_VERDICT_RULES]


def verdict_view(record: bytes | None) -> dict[str, Any] | None:
    """What ``GET /v1/alerts`` shows of an alert's current verdict (None when it has none)."""
    if record is None:
        return None
    verdict = AlertVerdict.from_json(record)
    return {
        "verdict_id": verdict.verdict_id,
        "verdict": verdict.verdict,
        "note": verdict.note,
        "by": verdict.by,
        "at": verdict.ts,
        "suppress_until": verdict.suppress_until,
    }


def _result_label(result: AttemptResult) -> str:
    if result.status_code is None:
        return "refused" if (result.error or "").startswith("target refused") else "error"
    return f"{min(max(result.status_code // 100, 2), 5)}xx"


__all__ = [
    "DB_NAME",
    "DEFAULT_SUPPRESS_S",
    "DELIVERY_STATUSES",
    "MAX_SUPPRESS_S",
    "MIN_SUPPRESS_S",
    "PER_TARGET_CONCURRENCY",
    "AlertsMetrics",
    "AlertsService",
    "ClaimedDelivery",
]
