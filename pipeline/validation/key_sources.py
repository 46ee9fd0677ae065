"""Where a validator's keys come from: a JWKS file, an HTTPS JWKS URL, or a JWK Set given inline.

The rules (design.md): keys only from the configured source; a URL is fetched over HTTPS only, without
following redirects, with a size cap; an unknown ``kid`` triggers at most one refetch per cooldown (so a
flood of random kids cannot turn the validator into a DoS cannon against the issuer); when a refresh
fails the last good keys stay in use.

A URL is fetched by a background thread of its own, one fetch at a time, each under a total deadline
(connect, TLS, headers and body together: httpx's own timeouts are per read, so a server trickling a byte
at a time would never trip them). Request threads never wait for a periodic refresh, and never for one
already under way: they answer from the keys they have. Only the one request whose unknown ``kid`` starts
a refetch (at most once per cooldown) waits for it, and no longer than its deadline.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pipeline.errors import JwksError, JwksFetchError
from pipeline.keys.key_set import KeySet, parse_jwks

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1 << 20
#: Scheduled retries after a failed fetch come no faster than this, whatever the unknown-kid cooldown.
MIN_RETRY_S = 1.0
#: How much longer than its deadline a fetch may run before readiness calls the key source stuck (the
#: deadline cancels the HTTP exchange; only a wedged name lookup or a dead thread can outlast it).
STUCK_GRACE_S = 5.0


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
    """A JWKS served over HTTPS, refreshed every ``refresh_s`` and on unknown kids (rate-limited).

    ``timeout_s`` is the total deadline of one fetch. A fetch still running well past it (a hung name lookup, a
    wedged thread) is a problem of this process, and :meth:`problem` says so (``/readyz`` is 503). Refreshes that
    merely keep failing are a problem of the issuer's JWKS, shared by every validator of it: taking them all out
    of a load balancer at once would turn its outage into ours, while the last good keys still verify tokens. So
    staleness alone makes :meth:`problem` speak only when ``max_stale_s`` is set (refreshes failing that long past
    their schedule); it always shows in ``jwtwatch_jwks_seconds_since_refresh`` and the log.
    """

    ACCEPT = "application/json"
    may_block = True  # refresh_for_unknown_kid() may wait for the refetch it starts (at most timeout_s)

    def __init__(
        self,
        url: str,
        algorithms: tuple[str, ...],
        *,
        refresh_s: float = 300.0,
        cooldown_s: float = 60.0,
        timeout_s: float = 5.0,
        max_stale_s: float | None = None,
        ca_file: Path | None = None,
    ) -> None:
        if not url.startswith("https://"):
            raise JwksError("a JWKS URL must use https://")
        self.url = url
        self._algorithms = algorithms
        self._refresh_s = refresh_s
        self._cooldown_s = cooldown_s
        self._retry_s = max(cooldown_s, MIN_RETRY_S)
        self._timeout_s = timeout_s
        self._max_stale_s = max_stale_s
        self._tls = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
        self._keys: KeySet = KeySet()
        self.generation = 0
        self.last_error: str | None = None
        self.fetches = 0
        #: Answers refused, by reason: ``fetch`` (HTTP, TLS, size, deadline), ``invalid`` (not a usable key set),
        #: and for signed sets ``rollback``, ``conflict`` and ``state`` (see :class:`SignedJwksUrlSource`).
        self.refusals: Counter[str] = Counter()
        # Everything below is guarded by _cond; it is never held during I/O.
        self._cond = threading.Condition()
        self._fetched_at = float("-inf")  # last successful fetch (monotonic)
        self._attempted_at = float("-inf")  # last fetch started, successful or not
        self._running_since: float | None = None  # the fetch under way, if any
        # the number of the latest fetch someone asked for: the first key set is fetched before the source is
        # used (startup fails clearly without keys)
        self._requested = 1
        self._started = 0  # fetches started
        self._finished = 0  # fetches finished
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="jwks-refresh", daemon=True)
        self._thread.start()
        with self._cond:
            self._wait_for(1, self._timeout_s + STUCK_GRACE_S)

    # ------------------------------------------------------------------------------- request threads

    @property
    def has_keys(self) -> bool:
        return len(self._keys) > 0

    def current(self) -> KeySet:
        """The keys in use now; never waits (the refresher thread keeps them fresh)."""
        return self._keys

    def refresh_for_unknown_kid(self) -> bool:
        """Start a refetch if none is under way and the cooldown allows, and wait for it (at most its deadline).

        True when the key set changed. While a fetch is under way the answer is False at once: the token is
        judged on the current keys, so a flood of unknown kids never queues request threads behind a slow URL.
        """
        with self._cond:
            if self._closed or self._busy() or time.monotonic() - self._attempted_at < self._cooldown_s:
                return False
            generation = self.generation
            self._wait_for(self._request(), self._timeout_s + STUCK_GRACE_S)
            return self.generation != generation

    def refresh(self) -> bool:
        """Fetch now, whatever the schedule, and wait for it (at most its deadline); True when the keys changed."""
        with self._cond:
            generation = self.generation
            self._wait_for(self._request(), self._timeout_s + STUCK_GRACE_S)
            return self.generation != generation

    def seconds_since_refresh(self) -> float:
        """Seconds since the last successful fetch (inf: never)."""
        return time.monotonic() - self._fetched_at

    def problem(self) -> str | None:
        """Why this source should not be trusted to stay current (for ``/readyz``), or None.

        Says neither the URL nor the error (``/readyz`` is unauthenticated); the log and ``last_error`` do.
        """
        now = time.monotonic()
        with self._cond:
            running = self._running_since
            if running is not None and now - running > self._timeout_s + STUCK_GRACE_S:
                return f"a JWKS URL fetch has been running for {now - running:.0f} s, past its deadline"
            if self._max_stale_s is not None and now - self._fetched_at > self._refresh_s + self._max_stale_s:
                if self._fetched_at == float("-inf"):
                    return "a JWKS URL has never been fetched successfully"
                return f"a JWKS URL has not been refreshed for {now - self._fetched_at:.0f} s (refreshes failing)"
        return None

    def close(self) -> None:
        """Stop the refresher. An idle one ends at once; one in a fetch ends with it (a daemon thread, at the
        fetch's deadline at the latest), and closing does not wait for that."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    # ------------------------------------------------------------------------- the refresher thread

    def _busy(self) -> bool:
        """A fetch is under way or asked for (caller holds _cond)."""
        return self._started > self._finished or self._requested > self._started

    def _request(self) -> int:
        """Ask for a fetch that starts from now on; its number (caller holds _cond)."""
        ticket = self._started + 1
        self._requested = max(self._requested, ticket)
        self._cond.notify_all()
        return ticket

    def _wait_for(self, ticket: int, timeout: float) -> None:
        """Wait until fetch ``ticket`` has finished, at most ``timeout`` seconds (caller holds _cond)."""
        self._cond.wait_for(lambda: self._finished >= ticket or self._closed, timeout=timeout)

    def _next_due(self) -> float:
        if self._fetched_at >= self._attempted_at:  # the last fetch worked: refresh on schedule
            return self._fetched_at + self._refresh_s
        # it failed: retry when the keys are due anyway, but not faster than _retry_s
        return max(self._fetched_at + self._refresh_s, self._attempted_at + self._retry_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._requested <= self._started:
                    delay = self._next_due() - time.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(timeout=delay)
                if self._closed:
                    return
                self._started += 1
                self._running_since = self._attempted_at = time.monotonic()
            try:
                self._fetch()
            except Exception:  # the refresher never dies: the next fetch may work
                log.exception("JWKS refresh from %s failed unexpectedly", self.url)
            finally:
                with self._cond:
                    self._finished = self._started
                    self._running_since = None
                    self._cond.notify_all()

    def _fetch(self) -> bool:
        self.fetches += 1
        try:
            keys = self._parse(self._download())
        except Exception as exc:
            reason = getattr(exc, "reason", None)
            if not isinstance(reason, str):
                reason = "fetch" if isinstance(exc, JwksFetchError | httpx.HTTPError | OSError) else "invalid"
            self.refusals[reason] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("JWKS fetch from %s refused, keeping the last good keys: %s", self.url, self.last_error)
            return False
        with self._cond:
            self._fetched_at = time.monotonic()
            self.last_error = None
            changed = keys.public_jwks() != self._keys.public_jwks()
            self._accept(keys)
            if changed:
                self.generation += 1
        return changed

    def _accept(self, keys: KeySet) -> None:
        """Put a verified key set in use (caller holds _cond)."""
        self._keys = keys

    def _download(self) -> bytes:
        """The body of one GET, all of it within ``timeout_s`` (anyio cancels whatever is still running)."""

        async def within_deadline() -> bytes:
            with anyio.fail_after(self._timeout_s):
                return await self._get()

        try:
            return anyio.run(within_deadline)
        except TimeoutError:
            raise JwksFetchError(f"no complete answer within the {self._timeout_s:g} s deadline") from None

    async def _get(self) -> bytes:
        client = httpx.AsyncClient(
            timeout=self._timeout_s,
            follow_redirects=False,
            verify=self._tls,
            trust_env=False,
        )
        # identity encoding: the size cap then counts what is held in memory, not a compressed stand-in for it
        headers = {"Accept": self.ACCEPT, "Accept-Encoding": "identity"}
        async with client, client.stream("GET", self.url, headers=headers) as response:
            if response.status_code != 200:
                raise JwksFetchError(f"HTTP {response.status_code}")
            if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
                raise JwksFetchError(f"content-encoding {response.headers['content-encoding']!r} not asked for")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksFetchError(f"larger than {MAX_JWKS_BYTES} bytes")
        return bytes(body)

    def _parse(self, body: bytes) -> KeySet:
        return parse_jwks(body, self._algorithms)


class SignedJwksUrlSource(UrlKeySource):
    """A signed JWKS (``jwk-set+jwt``) over HTTPS, checked against a pinned root public key.

    A key set is used only when it is signed by the root, comes from ``issuer``, and is fresh: not expired,
    not issued in the future, not issued longer than ``max_age_s`` ago — and not older than the newest set
    already accepted (a rollback), nor a different set with the same ``iat`` (see
    :class:`~pipeline.validation.signed_jwks.SignedJwksHighWater`; with ``state_dir`` that mark survives
    restarts and is shared by every process using the directory). A refused set is never used; the last good
    one stays in use until its own ``exp`` — after that no keys at all (fail closed), since nobody vouches for
    them any more.
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
        state_dir: Path | None = None,
        **kwargs: Any,
    ) -> None:
        from pipeline.validation.signed_jwks import SignedJwksHighWater

        self._root_jwk = dict(root_jwk)
        self._issuer = issuer
        self._max_age_s = max_age_s
        self._leeway_s = leeway_s
        self._clock = clock
        self._expires_at = float("inf")
        self._pending_exp = float("inf")
        self.high_water = SignedJwksHighWater(state_dir, root_jwk=self._root_jwk, issuer=issuer)
        super().__init__(url, algorithms, **kwargs)

    def _parse(self, body: bytes) -> KeySet:
        from pipeline.keys.signed_jwks import verify_signed_key_set

        signed = verify_signed_key_set(
            body,
            self._root_jwk,
            issuer=self._issuer,
            max_age_s=self._max_age_s,
            leeway_s=self._leeway_s,
            now=self._clock(),
        )
        keys = parse_jwks(signed.jwks, self._algorithms)
        # Last: only a set that is otherwise usable may raise the mark (and it is recorded before it is used).
        self.high_water.admit(signed, source=self.url)
        self._pending_exp = signed.exp
        return keys

    def _accept(self, keys: KeySet) -> None:
        self._keys = keys
        self._expires_at = self._pending_exp

    def current(self) -> KeySet:
        keys = self._keys
        if self._clock() < self._expires_at + self._leeway_s:
            return keys
        with self._cond:
            if len(self._keys) and self._clock() >= self._expires_at + self._leeway_s:
                log.warning("signed JWKS from %s expired and could not be renewed: no keys trusted", self.url)
                self._keys = KeySet()
                self.generation += 1
            return self._keys


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
    def generation(self) -> int:
        return sum(s.generation for s in self.sources)

    def current(self) -> KeySet:
        sets = [s.current() for s in self.sources]
        stamp = tuple(s.generation for s in self.sources)
        if self._merged is None or stamp != self._stamp:
            self._merged, self._stamp = _merge(sets), stamp
        return self._merged

    def refresh_for_unknown_kid(self) -> bool:
        return any([s.refresh_for_unknown_kid() for s in self.sources])

    def problem(self) -> str | None:
        return next((p for s in self.sources if (p := key_source_problem(s)) is not None), None)

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()


def _merge(sets: list[KeySet]) -> KeySet:
    from pipeline.keys.jwk import BoundKey

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


def key_source_problem(source: object) -> str | None:
    """Why ``source`` cannot be trusted to stay current (``/readyz``), or None; sources without a notion say None."""
    problem = getattr(source, "problem", None)
    return problem() if callable(problem) else None


def _url_sources(source: object) -> Iterator[UrlKeySource]:
    if isinstance(source, UrlKeySource):
        yield source
    for inner in getattr(source, "sources", ()):
        yield from _url_sources(inner)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class KeySourceCollector:
    """Prometheus metrics of the JWKS URLs behind a validator's key source (looked up at each scrape, since
    the CLI may replace the key source after the service's metrics are set up)."""

    def __init__(self, key_source: Callable[[], object]) -> None:
        self._key_source = key_source

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        refusals = CounterMetricFamily(
            "jwtwatch_jwks_refusals",
            "JWKS URL answers refused, by source and reason (fetch, invalid, rollback, conflict, state)",
            labels=["source", "reason"],
        )
        age = GaugeMetricFamily(
            "jwtwatch_jwks_seconds_since_refresh",
            "Seconds since a JWKS URL was last fetched successfully (-1: never)",
            labels=["source"],
        )
        for source in _url_sources(self._key_source()):
            label = _without_userinfo(source.url)
            for reason, count in sorted(source.refusals.items()):
                refusals.add_metric([label, reason], count)
            seconds = source.seconds_since_refresh()
            age.add_metric([label], seconds if seconds != float("inf") else -1.0)
        yield refusals
        yield age


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
        max_stale_s=config.jwks_max_stale_s,
        ca_file=config.jwks_ca_file,
    )
