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

    def current(self) -> KeySet: ...

    def refresh_for_unknown_kid(self) -> bool:
        """Maybe refetch (rate-limited); True when the key set changed."""
        ...


class StaticKeySource:
    def __init__(self, keys: KeySet) -> None:
        self._keys = keys
        self.generation = 0

    def current(self) -> KeySet:
        return self._keys

    def refresh_for_unknown_kid(self) -> bool:
        return False


class FileKeySource:
    """A JWKS file, re-read when its modification time changes (checked at most once a second)."""

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
            with self._client.stream("GET", self.url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise JwksError(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
            keys = parse_jwks(bytes(body), self._algorithms)
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
