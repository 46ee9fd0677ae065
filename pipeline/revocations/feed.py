"""The revocation feed's messages: revocation/1 records inside signed Security Event Tokens (RFC 8417).

A message on ``jwtwatch.revocations`` is a JWS with ``typ: secevent+jwt``, signed with the current key of
a key store made by ``jwtwatch keys init --dir DIR`` (``--revocation-keys DIR``). Its ``events`` claim
carries a CAEP ``session-revoked`` event whose subject is the token (``jwt_id`` format) or the subject
(``iss_sub`` format), and ``jwtwatch_revocation`` carries the revocation/1 record; ``jwtwatch_version`` is
a per-publisher monotonic number (milliseconds). Consumers verify the signature against the store's
public keys, check that the event and the record agree, and refuse a version not newer than the last one
seen for the same revocation key — so a forged, unsigned or replayed message on the bus can neither
revoke nor un-revoke anything.

A message is signed once and must verify until its revocation expires, also for a validator that starts
later and reads the compacted topic from the beginning. The key store drops a retired key after its
retention (by default the longest token lifetime, often shorter than a revocation lives), so before signing,
:class:`FeedSigner` raises the store's retention to cover the revocation (:meth:`KeyStore.retain_for`,
rounded up to the hour, recorded in the audit log): the key stays published, and trusted by
:class:`FeedVerifier`, until every revocation it signed has expired, and no longer. Re-signing live
revocations with the new key on rotation was the alternative; it needs a process on the bus that holds every
live revocation at each rotation (``keys rotate`` runs from cron, without the bus) and leaves a window.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import jwt
from jwt.exceptions import PyJWTError

from pipeline.errors import FeedError, KeyStoreError, RecordError
from pipeline.events import Revocation, parse_ts
from pipeline.keys import KeyStore
from pipeline.keys.key_set import KeySet, parse_jwks

log = logging.getLogger(__name__)

SET_TYPE = "secevent+jwt"
AUDIENCE = "urn:jwtwatch:validators"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
ALGORITHMS = ("ES256", "EdDSA", "RS256")
RETENTION_STEP_S = 3600  # retention grows in whole hours: one audit entry per longer lifetime, not per revocation
#: The longest a revocation can keep a retired feed key published. Retention only ever grows, store-wide: one
#: revocation reaching far ahead (a subject revoked "before" a date years away) must not keep every later key
#: trusted for years. A revocation outliving it is still published and enforced by every running validator;
#: only one that starts after the key is dropped misses it — logged and counted like any retention failure.
MAX_RETENTION_S = 30 * 24 * 3600


class FeedSigner:
    """Signs revocations for the feed with a key store's current key."""

    def __init__(self, store: KeyStore, *, issuer: str = "urn:jwtwatch") -> None:
        self.store = store
        self.issuer = issuer
        self._lock = threading.Lock()
        self._last_version = 0
        #: Revocations signed although the key store could not keep the key long enough (logged each time).
        self.retention_failures = 0

    def _next_version(self) -> int:
        with self._lock:
            self._last_version = max(self._last_version + 1, int(time.time() * 1000))
            return self._last_version

    def _retain_key_until(self, expires_at: float) -> None:
        """Keep the signing key published until ``expires_at``, however soon it is rotated."""
        lifetime = expires_at - time.time()
        try:
            if lifetime > MAX_RETENTION_S:
                raise KeyStoreError(f"the revocation lives longer than the {MAX_RETENTION_S // 86400}-day cap")
            if lifetime > self.store.retention:
                self.store.retain_for(math.ceil(lifetime / RETENTION_STEP_S) * RETENTION_STEP_S)
        except KeyStoreError as exc:
            # the revocation is still published: validators running now verify it; only one that starts after
            # the key is dropped would not, which is what the log says
            self.retention_failures += 1
            log.error(
                "revocation feed: cannot keep the feed key of %s published for %.0f s (%s); validators that start "
                "after it is rotated and dropped will not verify this revocation",
                self.store.path,
                lifetime,
                exc,
            )

    def sign(self, record: Revocation) -> bytes:
        self._retain_key_until(parse_ts(record.expires_at).timestamp())
        if record.kind == "jti":
            subject = {"format": "jwt_id", "iss": record.iss, "jti": record.value}
        else:
            subject = {"format": "iss_sub", "iss": record.iss, "sub": record.value}
        created = int(parse_ts(record.created_at).timestamp())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "iat": int(time.time()),
            "jti": record.revocation_id,
            "events": {
                SESSION_REVOKED: {"subject": subject, "event_timestamp": created, "reason_admin": {"en": record.reason}}
            },
            "jwtwatch_revocation": record.to_dict() | {"version": None},
            "jwtwatch_version": self._next_version(),
        }
        return self.store.sign(claims, {"typ": SET_TYPE}).encode("ascii")


class FeedVerifier:
    """Checks feed messages against a key store's public keys; remembers versions per revocation key."""

    def __init__(
        self, keys: KeySet | dict[str, Any], *, issuer: str = "urn:jwtwatch", store: KeyStore | None = None
    ) -> None:
        self.keys = keys if isinstance(keys, KeySet) else parse_jwks(keys, ALGORITHMS)
        self.issuer = issuer
        self._store = store  # re-read on an unknown kid: the publisher may have rotated its key
        self._versions: dict[str, int] = {}  # revocation key -> newest version seen
        self._last_ids: dict[str, str] = {}  # ... and the message id that carried it
        self._lock = threading.Lock()

    @classmethod
    def from_store(cls, store: KeyStore, **kwargs: Any) -> FeedVerifier:
        return cls(store.public_jwks(), store=store, **kwargs)

    def verify(self, raw: bytes) -> Revocation:
        """The revocation a message carries — or :class:`FeedError` saying why it changes nothing."""
        try:
            token = raw.decode("ascii")
            header = jwt.get_unverified_header(token)
        except (UnicodeDecodeError, PyJWTError) as exc:
            raise FeedError(f"not a signed revocation (a JWS): {exc}") from None
        if str(header.get("typ", "")).lower() not in (SET_TYPE, f"application/{SET_TYPE}"):
            raise FeedError(f"typ {header.get('typ')!r} is not {SET_TYPE}")
        key = self.keys.find(header.get("kid"), str(header.get("alg")))
        if key is None and self._store is not None:
            self.keys = parse_jwks(self._store.public_jwks(), ALGORITHMS)
            key = self.keys.find(header.get("kid"), str(header.get("alg")))
        if key is None or key.jwk is None or key.alg != header.get("alg"):
            raise FeedError("signed with a key the revocation key store does not hold")
        try:
            claims = jwt.decode(
                token,
                key=key.jwk,
                algorithms=[key.alg],
                audience=AUDIENCE,
                issuer=self.issuer,
                options={"require": ["iat", "jti", "events"], "verify_exp": False},
            )
        except PyJWTError as exc:
            raise FeedError(f"signature or claims do not check out: {exc}") from None
        try:
            record = Revocation.from_dict({**claims["jwtwatch_revocation"], "version": None})
            event = claims["events"][SESSION_REVOKED]
            subject = event["subject"]
            version = claims["jwtwatch_version"]
            if not isinstance(subject, dict):  # a string subject would crash the follower at .get below
                raise TypeError(f"subject must be an object, not {type(subject).__name__}")
        except (KeyError, TypeError, RecordError) as exc:
            raise FeedError(f"malformed revocation event: {exc}") from None
        expected = record.value if record.kind == "jti" else None
        if (
            claims["jti"] != record.revocation_id
            or subject.get("iss") != record.iss
            or (record.kind == "jti" and (subject.get("format"), subject.get("jti")) != ("jwt_id", expected))
            or (record.kind == "sub" and (subject.get("format"), subject.get("sub")) != ("iss_sub", record.value))
            or isinstance(version, bool)
            or not isinstance(version, int)
        ):
            raise FeedError("the event and the revocation record disagree")
        with self._lock:
            last = self._versions.get(record.bus_key, 0)
            # The same message delivered again (at-least-once) is fine; an older one is a replay.
            if version <= last and claims["jti"] != self._last_ids.get(record.bus_key):
                raise FeedError(f"replayed: version {version} is not newer than {last} for {record.bus_key}")
            self._versions[record.bus_key] = max(last, version)
            self._last_ids[record.bus_key] = claims["jti"]
        return record


def open_or_create_keys(directory: Path) -> KeyStore:
    """The revocation key store in ``directory``, made on first use (the embedded ``serve``/``demo``)."""
    if (Path(directory) / "store.json").exists():
        return KeyStore.open(directory)
    return KeyStore.init(directory, alg="ES256", issuer="urn:jwtwatch")
