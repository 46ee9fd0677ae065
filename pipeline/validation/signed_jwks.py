"""Trusting signed JWK Sets over time, on a validator: no rollback to an older set, and a key directory's
``jwks.jwt`` trusted only as far as the pinned root vouches for it.

How the sets are made and checked one by one is :mod:`pipeline.keys.signed_jwks`.

A validator refuses a rollback: whoever controls the web server could otherwise serve an older set, still
signed and unexpired, and bring back a retired key. :class:`SignedJwksHighWater` remembers the ``iat`` and the
digest of the newest set accepted — in a state file (0600, written atomically and fsynced, under an exclusive
lock) when given a directory, so that a restart or another worker process on the same data dir remembers it too —
and a set issued earlier is refused, as is a different set issued in the same second (two sets that claim the
same moment cannot both be the newest; the same set served again is of course accepted).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from pipeline.errors import JwksError, RollbackError
from pipeline.files import atomic_write
from pipeline.keys.jwk import bind_key, canonical_json
from pipeline.keys.key_set import KeySet, parse_jwks
from pipeline.keys.signed_jwks import DEFAULT_VALIDITY_S, SignedKeySet, verify_signed_key_set

log = logging.getLogger(__name__)

__all__ = ["SignedJwksFileSource", "SignedJwksHighWater"]

HIGH_WATER_DIR = "signed-jwks"
HIGH_WATER_FORMAT = "jwtwatch-signed-jwks-high-water/1"


@dataclass(frozen=True, slots=True)
class _Mark:
    iat: float
    digest: str


class SignedJwksHighWater:
    """The newest signed key set accepted from one root and issuer: an older one is a rollback and is refused.

    With ``state_dir``, the mark lives in ``STATE_DIR/signed-jwks/<root and issuer fingerprint>.json`` (0600 in a
    0700 directory, replaced atomically and fsynced, read and written under an exclusive ``flock``), so that it
    survives restarts and is shared by the worker processes of one data dir. A set that cannot be recorded is
    not accepted: after a restart, an unrecorded mark would let the older sets back in. A state file that cannot
    be parsed refuses every set until it is fixed or removed (removing it resets the protection to "trust the
    first valid set", as on a first start). Without ``state_dir`` the mark is kept in memory only.
    """

    def __init__(self, state_dir: Path | None, *, root_jwk: dict[str, Any], issuer: str) -> None:
        root = bind_key(root_jwk)
        # one timeline per (root key, issuer): pinning another root starts a new one
        fingerprint = hashlib.sha256(canonical_json({"iss": issuer, "root": root.public_jwk})).hexdigest()[:32]
        self.path = Path(state_dir) / HIGH_WATER_DIR / f"{fingerprint}.json" if state_dir is not None else None
        self._issuer = issuer
        self._root_kid = root.kid
        self._mark: _Mark | None = None
        self._lock = threading.Lock()

    @property
    def iat(self) -> float | None:
        """The iat of the newest set accepted here (None: none yet)."""
        return self._mark.iat if self._mark is not None else None

    def admit(self, candidate: SignedKeySet, *, source: str = "") -> None:
        """Record ``candidate`` as the newest accepted set, or raise :class:`RollbackError` (it must not be used)."""
        with self._lock, self._file_lock():
            mark = self._mark
            recorded = self._read()
            if recorded is not None and (mark is None or recorded.iat > mark.iat):
                mark = recorded  # another process (or this one before a restart) got further
            if mark is not None and candidate.iat < mark.iat:
                log.error(
                    "signed JWKS from %s refused: issued at %d, before the newest accepted set (issued at %d) — "
                    "a rollback to an older key set",
                    source,
                    candidate.iat,
                    mark.iat,
                )
                raise RollbackError(
                    f"signed JWKS issued at {candidate.iat:.0f} is older than the accepted one ({mark.iat:.0f})",
                    "rollback",
                )
            if mark is not None and candidate.iat == mark.iat:
                if candidate.digest != mark.digest:
                    log.error(
                        "signed JWKS from %s refused: issued at %d like the accepted set, with other content",
                        source,
                        candidate.iat,
                    )
                    raise RollbackError(
                        f"signed JWKS issued at {candidate.iat:.0f} differs from the accepted set of the same iat",
                        "conflict",
                    )
                self._mark = mark  # the same set again
                return
            new = _Mark(candidate.iat, candidate.digest)
            self._write(new)
            self._mark = new

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RollbackError(f"cannot lock the signed JWKS state in {self.path.parent}: {exc}", "state") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> _Mark | None:
        if self.path is None:
            return None
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RollbackError(
                f"signed JWKS state {self.path} is unreadable ({exc}): fix or remove it", "state"
            ) from None
        iat, digest = (data.get("iat"), data.get("digest")) if isinstance(data, dict) else (None, None)
        if not (isinstance(iat, int | float) and not isinstance(iat, bool) and isinstance(digest, str)):
            raise RollbackError(f"signed JWKS state {self.path} is not a high-water mark: fix or remove it", "state")
        return _Mark(float(iat), digest)

    def _write(self, mark: _Mark) -> None:
        if self.path is None:
            return
        record = {
            "format": HIGH_WATER_FORMAT,
            "issuer": self._issuer,
            "root_kid": self._root_kid,
            "iat": mark.iat,
            "digest": mark.digest,
            "recorded_at": int(time.time()),
        }
        try:
            atomic_write(self.path, json.dumps(record, indent=2).encode() + b"\n", 0o600)
        except OSError as exc:
            raise RollbackError(f"cannot record the signed JWKS state in {self.path}: {exc}", "state") from None


class SignedJwksFileSource:
    """A key store's ``jwks.jwt``, trusted only as far as the pinned root key vouches for it.

    ``--keys-dir`` alone trusts ``DIR/jwks.json``, so whoever can write DIR can add a signing key (and the
    validator, holding no secret, cannot tell). With a pinned root (``--jwks-root-key``) the validator reads the
    root-signed ``DIR/jwks.jwt`` instead, checked as :func:`verify_signed_jwks` checks a fetched one: a set the
    root did not sign never counts, whatever else in DIR was rewritten. The file is re-read when it changes (at
    most once a second); a refused set, or an older one (a rollback, judged by the same
    :class:`SignedJwksHighWater` as a fetched set, kept under ``state_dir`` across restarts), keeps the last good
    one, which is trusted until its own ``exp``, then no key is (fail closed).
    """

    may_block = False

    def __init__(
        self,
        path: Path,
        algorithms: tuple[str, ...],
        *,
        root_jwk: dict[str, Any],
        issuer: str,
        max_age_s: float = DEFAULT_VALIDITY_S,
        leeway_s: float = 30.0,
        clock: Any = time.time,
        min_interval_s: float = 1.0,
        state_dir: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.high_water = SignedJwksHighWater(state_dir, root_jwk=root_jwk, issuer=issuer)
        self._min_interval_s = min_interval_s
        self._algorithms = algorithms
        self._root_jwk = dict(root_jwk)
        self._issuer = issuer
        self._max_age_s = max_age_s
        self._leeway_s = leeway_s
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._stamp: tuple[int, int, int] | None = None
        self._expires_at = float("-inf")
        self._keys = KeySet()
        self.generation = 0
        self.last_error: str | None = None
        if not self._reload():
            raise JwksError(f"{self.path}: no key set the pinned root vouches for: {self.last_error}")

    def _reload(self) -> bool:
        """Read the file if it changed; True when a newer verified set replaced the keys."""
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            signed = verify_signed_key_set(
                self.path.read_bytes(),
                self._root_jwk,
                issuer=self._issuer,
                max_age_s=self._max_age_s,
                leeway_s=self._leeway_s,
                now=self._clock(),
            )
            keys = parse_jwks(signed.jwks, self._algorithms)
            self.high_water.admit(signed, source=str(self.path))  # RollbackError (a JwksError) when older
        except (OSError, ValueError, JwksError, jwt.PyJWTError) as exc:
            self.last_error = str(exc)
            log.warning("signed key set %s refused, keeping the last good one: %s", self.path, exc)
            return False
        self._keys, self._expires_at, self.last_error = keys, signed.exp, None
        self.generation += 1
        log.info("signed key set %s loaded: %d keys", self.path, len(keys))
        return True

    def _maybe_reload(self) -> bool:
        now = time.monotonic()
        if now - self._checked < self._min_interval_s:
            return False
        with self._lock:
            self._checked = now
            return self._reload()

    def current(self) -> KeySet:
        self._maybe_reload()
        if self._clock() >= self._expires_at + self._leeway_s and len(self._keys):
            log.warning("signed key set %s expired and was not renewed: no keys trusted", self.path)
            self._keys = KeySet()
            self.generation += 1
        return self._keys

    def refresh_for_unknown_kid(self) -> bool:
        return self._maybe_reload()
