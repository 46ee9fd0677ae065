"""Claiming due deliveries: a lease per claim, a cap per webhook, and the release of a dead process's claims.

A claimed delivery is not claimed again for :data:`CLAIM_LEASE_S` (the lease covers the attempt, even if the
process dies in it); at most ``per_target`` claims are in flight to one webhook, so that a slow receiver can hold
only its own slots. A claim names its holder, ``host:pid``: the file is local (SQLite), so every process that can
claim is on this host and its liveness can be checked — a restarted service does not wait out the lease of a
process that no longer runs (:func:`release_dead_claims`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass

from pipeline.alerts.database import Database

log = logging.getLogger(__name__)

#: A claimed delivery is not claimed again for this long (covers the attempt, even if the process dies in it).
#: A restarted service does not wait for it: claims of a process on this host that no longer runs are released
#: at start (see :func:`release_dead_claims`).
CLAIM_LEASE_S = 300.0
#: Attempts in flight at once to one webhook (by default): a receiver that stalls holds only these.
PER_TARGET_CONCURRENCY = 2


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


def this_claimer() -> str:
    """Who holds a claim made by this process: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (a PID reused by another process looks alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def release_dead_claims(database: Database, now: float) -> int:
    """Make deliveries claimed by a process of this host that has died due now, not after the lease.

    A process killed in the middle of an attempt leaves its claims behind; waiting out the lease would
    hold those alerts back for minutes after a restart. A claimer that still runs (or a PID reused by
    another process, which looks alive) keeps its lease: at worst that delivery waits for the lease.
    """
    host = socket.gethostname()
    released = 0
    with database.tx() as db:
        claimers = db.execute(
            "SELECT DISTINCT claimed_by FROM deliveries WHERE status = 'pending' AND claimed_by IS NOT NULL"
        ).fetchall()
        for (claimer,) in claimers:
            claimer_host, _, pid = str(claimer).rpartition(":")
            if claimer_host != host or not pid.isdigit() or process_alive(int(pid)):
                continue
            released += db.execute(
                "UPDATE deliveries SET next_attempt_at = ?, claimed_by = NULL"
                " WHERE status = 'pending' AND claimed_by = ? AND next_attempt_at > ?",
                (now, claimer, now),
            ).rowcount
    if released:
        log.warning("released %d webhook deliveries claimed by a process that is gone", released)
    return released


def claim(
    database: Database, now: float, limit: int, per_target: int | None, claimer: str, rng: random.Random
) -> list[ClaimedDelivery]:
    """Claim up to ``limit`` due deliveries for ``claimer``, oldest first; with ``per_target``, only as many per
    webhook as keep its claims in flight (any process's unexpired ones) at ``per_target`` or fewer. Each claim
    gets its own jitter generator seeded from ``rng``."""
    cap = -1 if per_target is None else max(1, per_target)
    with database.tx() as db:
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
            [(now + CLAIM_LEASE_S, claimer, r[0]) for r in rows],
        )
    # Jitter drawn in claim order, so that a seeded service gives the same schedule whatever order the
    # attempts finish in.
    return [
        ClaimedDelivery(
            delivery, message, webhook, url, secret, body, retries, first,
            random.Random(rng.getrandbits(64)),  # noqa: S311 - jitter
        )
        for delivery, message, webhook, url, secret, body, retries, first in rows
    ]  # fmt: skip


__all__ = [
    "CLAIM_LEASE_S",
    "PER_TARGET_CONCURRENCY",
    "ClaimedDelivery",
    "claim",
    "process_alive",
    "release_dead_claims",
    "this_claimer",
]
