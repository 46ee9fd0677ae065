"""The alerts database's tables, and the migrations that bring an older file up to them.

Schema 1 had no ``deliveries.claimed_by``; schema 2 no ``verdicts`` table (``CREATE TABLE IF NOT EXISTS`` adds
it). :func:`create` runs on every open: it creates what is missing, migrates, and stamps ``user_version``.
"""

from __future__ import annotations

import sqlite3

DB_NAME = "alerts.sqlite"
SCHEMA_VERSION = 3  # 2: deliveries.claimed_by; 3: verdicts
#: The database and its WAL and shared-memory files.
DB_SUFFIXES: tuple[str, ...] = ("", "-wal", "-shm")

SCHEMA = """
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


def create(db: sqlite3.Connection) -> None:
    """Create the tables and indexes that are missing, migrate older ones, and record the schema version."""
    db.executescript(SCHEMA)
    migrate(db)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def migrate(db: sqlite3.Connection) -> None:
    """Bring the tables of an older schema up to this one (the tables it lacked are made by ``SCHEMA``)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
    if "claimed_by" not in columns:
        db.execute("ALTER TABLE deliveries ADD COLUMN claimed_by TEXT")


__all__ = ["DB_NAME", "DB_SUFFIXES", "SCHEMA", "SCHEMA_VERSION", "create", "migrate"]
