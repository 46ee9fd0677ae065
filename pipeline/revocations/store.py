"""Revocations: which tokens (by jti) and which subjects (tokens issued up to a time) are no longer good.

:class:`RevocationIndex` is the in-memory lookup every validation consults — pure, no I/O.
:class:`RevocationStore` persists it in SQLite under the data dir, so a restarted validator keeps
enforcing, and hands out monotonic versions (``GET /v1/revocations?since=V``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from pipeline.errors import RevocationStoreError
from pipeline.events import Revocation, format_ts, parse_ts

DEFAULT_MAX_TOKEN_LIFETIME_S = 24 * 3600


class RevocationIndex:
    """Revoked jtis and subjects, with expiry. Versions only move forward."""

    def __init__(self) -> None:
        self._jti: dict[tuple[str, str], float] = {}  # (iss, jti) -> expires_at
        self._sub: dict[tuple[str, str], tuple[float, float]] = {}  # (iss, sub) -> (revoked_before, expires_at)
        self.version = 0

    def __len__(self) -> int:
        return len(self._jti) + len(self._sub)

    def apply(self, revocation: Revocation) -> None:
        expires = parse_ts(revocation.expires_at).timestamp()
        key = (revocation.iss, revocation.value)
        if revocation.kind == "jti":
            self._jti[key] = max(expires, self._jti.get(key, 0.0))
        else:
            assert revocation.revoked_before is not None
            before = parse_ts(revocation.revoked_before).timestamp()
            old_before, old_expires = self._sub.get(key, (float("-inf"), 0.0))
            # A later subject revocation only widens what is revoked, never narrows it.
            self._sub[key] = (max(before, old_before), max(expires, old_expires))
        if revocation.version is not None:
            self.version = max(self.version, revocation.version)

    def is_revoked(
        self, iss: str | None, jti: str | None, sub: str | None, iat: float | None, leeway_s: float = 0.0
    ) -> bool:
        """Whether a token with these claims is revoked.

        A subject revocation covers every token *issued* at or before ``revoked_before``. ``iat`` is the issuer's
        clock, which the validator trusts only to within ``leeway_s``: a token stamped up to ``leeway_s`` after
        ``revoked_before`` may have been issued before it, so it is covered too. (Without this, a token whose
        issuer clock ran 25 s fast was still accepted after its subject was revoked.)
        """
        if iss is None:
            return False
        if jti is not None and (iss, jti) in self._jti:
            return True
        if sub is not None:
            entry = self._sub.get((iss, sub))
            if entry is not None and (iat is None or iat - leeway_s <= entry[0]):
                return True
        return False

    def purge(self, now: float) -> list[str]:
        """Drop entries whose tokens can no longer be valid anyway; returns their bus keys."""
        dead_jti = [k for k, expires in self._jti.items() if expires <= now]
        dead_sub = [k for k, (_, expires) in self._sub.items() if expires <= now]
        for k in dead_jti:
            del self._jti[k]
        for k in dead_sub:
            del self._sub[k]
        return [f"jti:{iss}:{value}" for iss, value in dead_jti] + [f"sub:{iss}:{value}" for iss, value in dead_sub]


def new_revocation(
    *,
    kind: str,
    iss: str,
    value: str,
    reason: str,
    source: str = "manual",
    alert_id: str | None = None,
    revoked_before: float | None = None,
    token_exp: float | None = None,
    leeway_s: int = 30,
    max_token_lifetime_s: int = DEFAULT_MAX_TOKEN_LIFETIME_S,
    now: float | None = None,
) -> Revocation:
    """A new revocation/1 record (no version yet: the store that enforces it assigns one).

    It expires when no token it covers can still be valid: the token's ``exp`` plus leeway, or — when
    that is unknown, or for a subject — the longest token lifetime after ``revoked_before``. A subject
    revocation covers tokens stamped up to one leeway after ``revoked_before``, which are accepted up to
    one leeway past their ``exp``: hence two leeways.
    """
    now = time.time() if now is None else now
    if kind == "jti":
        expires = (token_exp + leeway_s) if token_exp is not None else now + max_token_lifetime_s
        before_text = None
    elif kind == "sub":
        before = now if revoked_before is None else revoked_before
        expires = before + max_token_lifetime_s + 2 * leeway_s
        before_text = format_ts(before)
    else:
        raise ValueError(f"kind must be 'jti' or 'sub', not {kind!r}")
    return Revocation(
        revocation_id=str(uuid.uuid4()),
        kind=kind,
        iss=iss,
        value=value,
        reason=reason,
        source=source,
        alert_id=alert_id,
        created_at=format_ts(now),
        expires_at=format_ts(expires),
        revoked_before=before_text,
    )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS revocations (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    revocation_id TEXT NOT NULL UNIQUE,
    expires_at REAL NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_expiry ON revocations(expires_at);
"""


def _use_wal(db: sqlite3.Connection, timeout_s: float = 10.0) -> None:
    """Switch the file to WAL once. Workers of one validator open the store at the same moment, and the switch
    takes an exclusive lock that SQLite's busy timeout does not wait for: retry while another process holds it."""
    deadline = time.monotonic() + timeout_s
    while db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class RevocationStore:
    """SQLite-backed revocations feeding a :class:`RevocationIndex`. Thread-safe."""

    def __init__(self, path: Path, *, max_token_lifetime_s: int = DEFAULT_MAX_TOKEN_LIFETIME_S) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_token_lifetime_s = max_token_lifetime_s
        self.index = RevocationIndex()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        _use_wal(self._db)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        now = time.time()
        for version, raw in self._db.execute(
            "SELECT version, record FROM revocations WHERE expires_at > ? ORDER BY version", (now,)
        ):
            self.index.apply(replace(Revocation.from_json(raw), version=version))
        (last,) = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM revocations").fetchone()
        self.index.version = max(self.index.version, last)

    @property
    def version(self) -> int:
        return self.index.version

    def is_revoked(
        self, iss: str | None, jti: str | None, sub: str | None, iat: float | None, leeway_s: float = 0.0
    ) -> bool:
        return self.index.is_revoked(iss, jti, sub, iat, leeway_s)

    def revoke(
        self,
        *,
        kind: str,
        iss: str,
        value: str,
        reason: str,
        source: str = "manual",
        alert_id: str | None = None,
        revoked_before: float | None = None,
        token_exp: float | None = None,
        leeway_s: int = 30,
        now: float | None = None,
    ) -> Revocation:
        """Record a revocation and enforce it at once; returns it with its version."""
        record = new_revocation(
            kind=kind,
            iss=iss,
            value=value,
            reason=reason,
            source=source,
            alert_id=alert_id,
            revoked_before=revoked_before,
            token_exp=token_exp,
            leeway_s=leeway_s,
            max_token_lifetime_s=self.max_token_lifetime_s,
            now=now,
        )
        return self.add(record)

    def add(self, record: Revocation) -> Revocation:
        """Store a revocation made elsewhere (the bus); idempotent on ``revocation_id``."""
        expires = parse_ts(record.expires_at).timestamp()
        find = "SELECT version, record FROM revocations WHERE revocation_id = ?"
        with self._lock:
            row = self._db.execute(find, (record.revocation_id,)).fetchone()
            inserted = None  # the version of the row inserted here
            if row is None:
                try:
                    inserted = self._db.execute(
                        "INSERT INTO revocations (revocation_id, expires_at, record) VALUES (?, ?, ?)",
                        (record.revocation_id, expires, replace(record, version=None).to_json()),
                    ).lastrowid
                except sqlite3.IntegrityError:
                    # Another process sharing this store (validator serve --workers N) stored it first.
                    row = self._db.execute(find, (record.revocation_id,)).fetchone()
                    if row is None:
                        raise RevocationStoreError(f"cannot store revocation {record.revocation_id}") from None
                except sqlite3.Error as exc:
                    # Enforced only once durable: a revocation that a restart would forget is not applied at all,
                    # and the caller (an admin, the feed follower) learns it must try again.
                    raise RevocationStoreError(
                        f"cannot store revocation {record.revocation_id} in {self.path}: {exc}"
                    ) from exc
            if row is None:
                stored = replace(record, version=inserted)
            else:
                # Stored already — perhaps by another process sharing this store, which this index has not
                # read yet: apply what is stored (not what came now), idempotently.
                stored = replace(Revocation.from_json(row[1]), version=row[0])
            self.index.apply(stored)
            return stored

    def since(self, version: int, limit: int = 1000) -> list[Revocation]:
        with self._lock:
            rows = self._db.execute(
                "SELECT version, record FROM revocations WHERE version > ? ORDER BY version LIMIT ?",
                (version, limit),
            ).fetchall()
        return [replace(Revocation.from_json(raw), version=v) for v, raw in rows]

    def apply_since(self, version: int, limit: int = 1000) -> tuple[list[Revocation], int]:
        """Apply to the index the rows after ``version`` — rows another process wrote to the same file.

        An expired row only moves the index's version. Returns the rows read (as :meth:`since`) and how many
        were applied."""
        records = self.since(version, limit)
        now = time.time()
        applied = 0
        with self._lock:  # as this store applies its own writes
            for record in records:
                if parse_ts(record.expires_at).timestamp() > now:
                    self.index.apply(record)
                    applied += 1
                elif record.version is not None:
                    self.index.version = max(self.index.version, record.version)
        return records, applied

    def purge(self, now: float | None = None) -> list[str]:
        """Forget expired revocations; returns the bus keys of the entries that are now gone entirely."""
        now = time.time() if now is None else now
        with self._lock:
            # The newest row stays, expired or not, so that versions never go backwards after a restart.
            self._db.execute(
                "DELETE FROM revocations WHERE expires_at <= ? AND version < (SELECT MAX(version) FROM revocations)",
                (now,),
            )
            return self.index.purge(now)

    def close(self) -> None:
        with self._lock:
            self._db.close()
