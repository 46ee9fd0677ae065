"""Webhook subscriptions: registering a checked URL with its signing secret, listing them, deleting them.

Secrets are returned once, by :func:`create_subscription`, and are never logged or listed. Deleting a webhook
overwrites its secret (``secure_delete`` is on) and checkpoints the WAL, so the secret is left in none of the
database files.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from pipeline.alerts.database import Database
from pipeline.alerts.delivery import EVENT_TYPES, new_secret
from pipeline.alerts.outbox import disable_pending
from pipeline.alerts.targets import Resolver, check_target_url
from pipeline.events import SEVERITIES, SEVERITY_RANK, format_ts

log = logging.getLogger(__name__)


def create_subscription(
    database: Database, url: str, event_types: Sequence[str], min_severity: str, resolver: Resolver | None, now: float
) -> tuple[str, str]:
    """Register a webhook; returns ``(id, secret)``. The secret is never shown again.

    Raises :class:`~pipeline.errors.TargetError` (a ``ValueError``) for a refused URL and ``ValueError`` for bad
    event types or severity.
    """
    if isinstance(event_types, str) or not event_types:
        raise ValueError("event_types must be a non-empty list")
    unknown = [t for t in event_types if t not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event types {unknown!r}: choose from {list(EVENT_TYPES)}")
    if min_severity not in SEVERITY_RANK:
        raise ValueError(f"min_severity must be one of {list(SEVERITIES)}")
    resolved = check_target_url(url, resolver)
    types = [t for t in EVENT_TYPES if t in set(event_types)]
    webhook_id = "wh_" + uuid.uuid4().hex
    secret = new_secret()
    with database.tx() as db:
        db.execute(
            "INSERT INTO subscriptions (id, url, event_types, min_severity, secret, status, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'active', ?)",
            (webhook_id, resolved.target.url, orjson.dumps(types).decode(), min_severity, secret, now),
        )
    log.info("webhook %s registered for %s (min severity %s)", webhook_id, ",".join(types), min_severity)
    return webhook_id, secret


def list_subscriptions(database: Database) -> list[dict[str, Any]]:
    """Every webhook not deleted, oldest first, without its secret."""
    rows = database.query(
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


def delete_subscription(database: Database, webhook_id: str, now: float) -> bool:
    """Delete a webhook: its secret is wiped and its pending deliveries are dropped (``disabled``).

    The row stays (deliveries refer to it), its secret overwritten; with secure_delete the old cell is zeroed
    in the page, and the checkpoint then copies that page into the database and truncates the WAL, whose
    older frames still held the page with the secret."""
    with database.tx() as db:
        cursor = db.execute(
            "UPDATE subscriptions SET status = 'deleted', secret = '', disabled_at = ?,"
            " disabled_reason = 'deleted' WHERE id = ? AND status != 'deleted'",
            (now, webhook_id),
        )
        if cursor.rowcount == 0:
            return False
        disable_pending(db, webhook_id, "webhook deleted", now)
    database.checkpoint()
    log.info("webhook %s deleted", webhook_id)
    return True


__all__ = ["create_subscription", "delete_subscription", "list_subscriptions"]
