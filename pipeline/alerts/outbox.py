"""The outbox: messages to send, one delivery per message and matching subscription, and every attempt.

Written in the caller's transaction (:func:`enqueue`, inside ``accept_alert``'s) or in one of its own; read back
for ``GET /v1/deliveries``. A message's ``id`` is its ``webhook-id``: the same on every retry, so receivers can
de-duplicate. When to try again is not decided here (``retry.py``); what was decided is recorded here.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from pipeline.alerts.claims import ClaimedDelivery
from pipeline.alerts.database import Database
from pipeline.alerts.delivery import payload
from pipeline.alerts.retry import Decision
from pipeline.events import SEVERITY_RANK, format_ts

DELIVERY_STATUSES: tuple[str, ...] = ("pending", "delivered", "failed", "disabled")

_DELIVERY_SELECT = (
    "SELECT d.id, d.webhook_id, d.message_id, m.type, m.ref, d.status, d.attempt_count, d.created_at,"
    " d.next_attempt_at, d.first_attempt_at, d.last_status_code, d.last_error, d.updated_at"
    " FROM deliveries d JOIN messages m ON m.id = d.message_id"
)
_ATTEMPT_SELECT = "SELECT delivery_id, at, status_code, error, duration_ms, outcome FROM delivery_attempts"


def enqueue(
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


def disable_pending(db: sqlite3.Connection, webhook_id: str, why: str, now: float) -> int:
    """Mark a webhook's pending deliveries ``disabled`` (it was deleted, or answered 410)."""
    return db.execute(
        "UPDATE deliveries SET status = 'disabled', last_error = ?, updated_at = ?"
        " WHERE webhook_id = ? AND status = 'pending'",
        (why, now, webhook_id),
    ).rowcount


def record_attempt(
    database: Database,
    job: ClaimedDelivery,
    *,
    started: float,
    now: float,
    decision: Decision,
    status_code: int | None,
    error: str | None,
    duration_s: float,
) -> None:
    """Record one attempt of ``job`` and what was decided; a delivery deleted or disabled meanwhile keeps that
    state (the attempt is counted). A ``disabled`` outcome (410) disables the webhook with its pending deliveries.
    """
    outcome = decision.outcome
    with database.tx() as db:
        db.execute(
            "INSERT INTO delivery_attempts (delivery_id, at, status_code, error, duration_ms, outcome)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (job.delivery_id, started, status_code, error, round(duration_s * 1000.0, 3), outcome),
        )
        current = db.execute("SELECT status FROM deliveries WHERE id = ?", (job.delivery_id,)).fetchone()
        still_pending = current is not None and current[0] == "pending"
        if outcome == "delivered" or still_pending:
            status = "pending" if outcome == "retry" else outcome
            db.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = ?, retries = retries + ?, claimed_by = NULL,"
                " attempt_count = attempt_count + 1, first_attempt_at = ?, updated_at = ?,"
                " last_status_code = ?, last_error = ? WHERE id = ?",
                (
                    status,
                    decision.next_attempt_at,
                    0 if outcome == "delivered" else 1,
                    decision.first_attempt_at,
                    now,
                    status_code,
                    error,
                    job.delivery_id,
                ),
            )
        else:  # deleted or disabled meanwhile: keep that state, count the attempt
            db.execute(
                "UPDATE deliveries SET attempt_count = attempt_count + 1, updated_at = ?, last_status_code = ?"
                " WHERE id = ?",
                (now, status_code, job.delivery_id),
            )
        if outcome == "disabled":
            db.execute(
                "UPDATE subscriptions SET status = 'disabled', disabled_at = ?, disabled_reason = ?"
                " WHERE id = ? AND status = 'active'",
                (now, "endpoint answered 410 Gone", job.webhook_id),
            )
            disable_pending(db, job.webhook_id, "endpoint answered 410 Gone", now)


def redeliver(database: Database, delivery_id: int, now: float) -> str:
    """Queue a delivery again, due now: ``"queued"``, ``"not_found"`` or ``"inactive"`` (webhook gone)."""
    with database.tx() as db:
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


def pending_count(database: Database) -> int:
    return int(database.query("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")[0][0])


def list_deliveries(
    database: Database, *, status: str | None = None, webhook_id: str | None = None, limit: int = 100
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
    with database.lock:
        clause = " AND ".join(where)  # fixed clauses; the values are bound parameters
        sql = f"{_DELIVERY_SELECT} WHERE {clause} ORDER BY d.id DESC LIMIT ?"
        rows = database.query(sql, [*params, max(0, int(limit))])
        attempts: dict[int, list[dict[str, Any]]] = {r[0]: [] for r in rows}
        if rows:
            marks = ",".join("?" * len(rows))
            sql = f"{_ATTEMPT_SELECT} WHERE delivery_id IN ({marks}) ORDER BY id"
            for delivery_id, at, code, error, duration_ms, outcome in database.query(sql, list(attempts)):
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


def purge(database: Database, cutoff: float) -> int:
    """Forget finished deliveries (and their attempts and messages) last updated before ``cutoff``; returns the
    deliveries removed. The alert log is kept."""
    with database.tx() as db:
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


__all__ = [
    "DELIVERY_STATUSES",
    "disable_pending",
    "enqueue",
    "list_deliveries",
    "pending_count",
    "purge",
    "record_attempt",
    "redeliver",
]
