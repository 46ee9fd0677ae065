"""Where a validator's keys come from: a JWKS file, an HTTPS JWKS URL, or a JWK Set given inline.

The rules (design.md): keys only from the configured source; a URL is fetched over HTTPS only, without
following redirects, with a size cap; an unknown ``kid`` triggers at most one refetch per cooldown (so a
flood of random kids cannot turn the validator into a DoS cannon against the issuer); when a refresh
fails the last good keys stay in use.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from pipeline.validation.jwks import JwksError, KeySet, parse_jwks

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1 << 20


class KeySource(Protocol):
    #: Bumped whenever the key set changes, so caches of verified tokens can be dropped.
    generation: int
    #: Whether ``current()`` / ``refresh_for_unknown_kid()`` can do network I/O (then the HTTP fast path
    #: validates in a worker thread, not on the event loop). A source that does not say is assumed to.
    may_block: bool

    def current(self) -> KeySet: ...

    def refresh_for_unknown_kid(self) -> bool:
        """Maybe refetch (rate-limited); True when the key set changed."""
        ...


class StaticKeySource:
    may_block = False

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys
        self.generation = 0

    def current(self) -> KeySet:
        return self._keys

    def refresh_for_unknown_kid(self) -> bool:
        return False


class FileKeySource:
    """A JWKS file, re-read when its modification time changes (checked at most once a second)."""

    may_block = False

    def __init__(self, path: Path, algorithms: tuple[str, ...]) -> None:
        self.path = Path(path)
        self._algorithms = algorithms
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        self.generation = 0
        try:
            self._keys = self._load()
        except OSError as exc:
            raise JwksError(f"cannot read JWKS file {self.path}: {exc.strerror or exc}") from None

    def _load(self) -> KeySet:
        stat = self.path.stat()
        keys = parse_jwks(self.path.read_bytes(), self._algorithms)
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return keys

    def _maybe_reload(self) -> bool:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return False
        with self._lock:
            self._checked = now
            try:
                stat = self.path.stat()
                if (stat.st_mtime_ns, stat.st_size) == self._stamp:
                    return False
                self._keys = self._load()
            except (OSError, JwksError) as exc:
                log.warning("JWKS file %s could not be reloaded, keeping the last good keys: %s", self.path, exc)
                return False
            self.generation += 1
            log.info("JWKS file %s reloaded: %d keys", self.path, len(self._keys))
            return True

    def current(self) -> KeySet:
        self._maybe_reload()
        return self._keys

    def refresh_for_unknown_kid(self) -> bool:
        return self._maybe_reload()


class UrlKeySource:
    """A JWKS served over HTTPS, refreshed every ``refresh_s`` and on unknown kids (rate-limited)."""

    ACCEPT = "application/json"
    may_block = True

    def __init__(
        self,
        url: str,
        algorithms: tuple[str, ...],
        *,
        refresh_s: float = 300.0,
        cooldown_s: float = 60.0,
        timeout_s: float = 5.0,
        ca_file: Path | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if not url.startswith("https://"):
            raise JwksError("a JWKS URL must use https://")
        self.url = url
        self._algorithms = algorithms
        self._refresh_s = refresh_s
        self._cooldown_s = cooldown_s
        tls = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
        self._client = client or httpx.Client(timeout=timeout_s, follow_redirects=False, verify=tls, trust_env=False)
        self._lock = threading.Lock()
        self._keys: KeySet = KeySet()
        self._fetched_at = float("-inf")  # last successful fetch
        self._attempted_at = float("-inf")  # last attempt, successful or not
        self.generation = 0
        self.last_error: str | None = None
        self.fetches = 0
        self._fetch()

    def _fetch(self) -> bool:
        self._attempted_at = time.monotonic()
        self.fetches += 1
        try:
            with self._client.stream("GET", self.url, headers={"Accept": self.ACCEPT}) as response:
                if response.status_code != 200:
                    raise JwksError(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
            keys = self._parse(bytes(body))
        except (httpx.HTTPError, JwksError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("JWKS fetch from %s failed, keeping the last good keys: %s", self.url, self.last_error)
            return False
        self._fetched_at = time.monotonic()
        self.last_error = None
        changed = keys.public_jwks() != self._keys.public_jwks()
        self._keys = keys
        if changed:
            self.generation += 1
        return changed

    def _parse(self, body: bytes) -> KeySet:
        return parse_jwks(body, self._algorithms)

    @property
    def has_keys(self) -> bool:
        return len(self._keys) > 0

    def current(self) -> KeySet:
        now = time.monotonic()
        if now - self._fetched_at >= self._refresh_s and now - self._attempted_at >= self._cooldown_s:
            with self._lock:
                if now - self._attempted_at >= self._cooldown_s:
                    self._fetch()
        return self._keys

    def refresh_for_unknown_kid(self) -> bool:
        with self._lock:
            if time.monotonic() - self._attempted_at < self._cooldown_s:
                return False
            return self._fetch()

    def refresh(self) -> bool:
        """Fetch now, whatever the schedule; True when the key set changed."""
        with self._lock:
            return self._fetch()

    def close(self) -> None:
        self._client.close()


class SignedJwksUrlSource(UrlKeySource):
    """A signed JWKS (``jwk-set+jwt``) over HTTPS, checked against a pinned root public key.

    A key set is used only when it is signed by the root, comes from ``issuer``, and is fresh: not expired,
    not issued in the future, not issued longer than ``max_age_s`` ago. A refused set is never used; the last
    good one stays in use until its own ``exp`` — after that no keys at all (fail closed), since nobody vouches
    for them any more.
    """

    ACCEPT = "application/jwk-set+jwt"

    def __init__(
        self,
        url: str,
        algorithms: tuple[str, ...],
        *,
        root_jwk: dict[str, Any],
        issuer: str,
        max_age_s: float = 7 * 86400,
        leeway_s: float = 30.0,
        clock: Any = time.time,
        **kwargs: Any,
    ) -> None:
        self._root_jwk = dict(root_jwk)
        self._issuer = issuer
        self._max_age_s = max_age_s
        self._leeway_s = leeway_s
        self._clock = clock
        self._expires_at = float("inf")
        self._pending_exp = float("inf")
        super().__init__(url, algorithms, **kwargs)

    def _parse(self, body: bytes) -> KeySet:
        from pipeline.validation.signed_jwks import verify_signed_jwks

        jwks, exp = verify_signed_jwks(
            body,
            self._root_jwk,
            issuer=self._issuer,
            max_age_s=self._max_age_s,
            leeway_s=self._leeway_s,
            now=self._clock(),
        )
        keys = parse_jwks(jwks, self._algorithms)
        self._expires_at = exp
        return keys

    def current(self) -> KeySet:
        keys = super().current()
        if self._clock() >= self._expires_at + self._leeway_s:
            if len(keys):
                log.warning("signed JWKS from %s expired and could not be renewed: no keys trusted", self.url)
                self._keys = KeySet()
                self.generation += 1
            return self._keys
        return keys


class CombinedKeySource:
    """Several key sources trusted side by side (``--keys-dir`` beside ``--jwks-file``/``--jwks-url``).

    A kid found in two sources with different keys is refused in both: it would be ambiguous.
    """

    def __init__(self, sources: list[KeySource]) -> None:
        self.sources = list(sources)
        self._merged: KeySet | None = None
        self._stamp: tuple[int, ...] = ()

    @property
    def may_block(self) -> bool:
        return any(getattr(source, "may_block", True) for source in self.sources)

    @property
    def generation(self) -> int:  # type: ignore[override]
        return sum(s.generation for s in self.sources)

    def current(self) -> KeySet:
        sets = [s.current() for s in self.sources]
        stamp = tuple(s.generation for s in self.sources)
        if self._merged is None or stamp != self._stamp:
            self._merged, self._stamp = _merge(sets), stamp
        return self._merged

    def refresh_for_unknown_kid(self) -> bool:
        return any([s.refresh_for_unknown_kid() for s in self.sources])

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()


def _merge(sets: list[KeySet]) -> KeySet:
    from pipeline.validation.jwks import BoundKey

    by_kid: dict[str, BoundKey] = {}
    problems: list[str] = []
    for keys in sets:
        problems.extend(keys.problems)
        for kid, key in keys.by_kid.items():
            seen = by_kid.get(kid)
            if seen is None:
                by_kid[kid] = key
            elif (seen.alg, seen.public_jwk) != (key.alg, key.public_jwk):
                problems.append(f"key {kid}: different keys under one kid in two sources")
                by_kid[kid] = BoundKey(kid, key.alg, None, {}, refused="duplicate kid")
    without_kid = tuple(k for keys in sets for k in keys.without_kid)
    return KeySet(by_kid, without_kid, tuple(problems))


def key_source_for(config: Any) -> KeySource:
    """The key source a :class:`~pipeline.validation.config.ValidatorConfig` names."""
    if config.jwks is not None:
        return StaticKeySource(parse_jwks(config.jwks, config.algorithms))
    if config.jwks_file is not None:
        return FileKeySource(config.jwks_file, config.algorithms)
    return UrlKeySource(
        config.jwks_url,
        config.algorithms,
        refresh_s=config.jwks_refresh_s,
        cooldown_s=config.jwks_refetch_cooldown_s,
        timeout_s=config.jwks_timeout_s,
        ca_file=config.jwks_ca_file,
    )
