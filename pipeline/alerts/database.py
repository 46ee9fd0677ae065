"""The alerts database: one SQLite connection, its lock, its transactions, its files kept owner-only.

Durability: ``<data_dir>/alerts.sqlite`` in WAL mode with ``synchronous=FULL``; a transaction is committed
before :meth:`Database.tx` returns. The files hold signing secrets: they are readable by their owner only, and
deleted content is overwritten (``secure_delete``) — :meth:`Database.checkpoint` then truncates the WAL, whose
older frames may still hold it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.alerts.schema import DB_SUFFIXES, create
from pipeline.errors import Unavailable

log = logging.getLogger(__name__)


class Database:
    """The connection to ``path`` (created, migrated), shared by threads under one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._closed = False
        own_files(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Deleted content (a webhook's secret) is overwritten with zeros, not merely unlinked from the b-tree.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA foreign_keys=ON")
        create(self._db)

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed on leaving, rolled back on any exception."""
        with self.lock:
            if self._closed:
                raise Unavailable("the alerts service is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            if self._closed:
                raise Unavailable("the alerts service is closed")
            return self._db.execute(sql, params).fetchall()

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to nothing (waits up to busy_timeout for readers)."""
        with self.lock:
            if self._closed:
                raise Unavailable("the alerts service is closed")
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            # Another connection kept reading throughout: its snapshot still needs the old frames. They go at the
            # next checkpoint that completes (every delete tries again).
            log.warning(
                "WAL checkpoint of %s incomplete: a reader held it; old frames remain until the next", self.path
            )

    def close(self) -> bool:
        """Close the connection; False if it was closed already."""
        with self.lock:
            if self._closed:
                return False
            self._closed = True
            self._db.close()
            return True


def own_files(path: Path) -> None:
    """The files hold signing secrets: readable by their owner only.

    A new database is created 0600 (SQLite gives its WAL and shm files the database's mode); files left
    wider by an older version or another tool are narrowed."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for suffix in DB_SUFFIXES:
        sibling = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if sibling.stat().st_mode & 0o077:
                os.chmod(sibling, 0o600)


__all__ = ["Database", "own_files"]
