"""ValidatorService: the validator wired to its revocation store, usage events and metrics.

The HTTP app (``app.py``) and the ASGI middleware (``middleware.py``) are thin layers over this.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.bus import REVOCATIONS, Bus
from pipeline.bus.topics import REPLAY
from pipeline.errors import RevocationsUnavailable
from pipeline.events import Revocation
from pipeline.revocations.feed import FeedSigner
from pipeline.revocations.store import RevocationStore
from pipeline.revocations.store_sync import RevocationStoreSync
from pipeline.serving.client_ip import Network, parse_networks
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.key_sources import KeySourceCollector, key_source_problem
from pipeline.validation.one_time import ReplayFollower, use_message
from pipeline.validation.usage import UsageEmitter
from pipeline.validation.validator import TokenValidator
from pipeline.validation.verifier import Verdict, reject


class FeedProgress(Protocol):
    """How far the revocation feed a validator follows is applied (a :class:`~pipeline.revocations.follower.
    RevocationFollower`)."""

    @property
    def caught_up_at(self) -> float | None: ...

    def lag_seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the validator knows about the protected request besides the token."""

    ip: str
    user_agent: str | None = None
    service: str | None = None
    method: str | None = None
    path: str | None = None


class ValidatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.validations = Counter(
            "jwtwatch_validations_total",
            "Token validations by outcome and reason",
            ["outcome", "reason"],
            registry=registry,
        )
        self.seconds = Histogram(
            "jwtwatch_validation_seconds",
            "Time to validate one token",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=registry,
        )
        self.no_credentials = Counter(
            "jwtwatch_requests_without_token_total", "Validation requests carrying no bearer token", registry=registry
        )
        self.revocation_version = Gauge(
            "jwtwatch_revocation_version", "Version of the revocation list being enforced", registry=registry
        )
        self.revocations_active = Gauge(
            "jwtwatch_revocations_active", "Revocation entries being enforced", registry=registry
        )
        self.cache_entries = Gauge("jwtwatch_verified_cache_entries", "Verified tokens cached", registry=registry)
        self.feed_lag = Gauge(
            "jwtwatch_revocation_feed_lag_messages", "Revocation feed messages not yet applied", registry=registry
        )
        self.replay_races = Counter(
            "jwtwatch_replay_races_total",
            "One-time tokens accepted here and at another instance within the bus's propagation delay",
            registry=registry,
        )
        self.replay_entries = Gauge("jwtwatch_replay_entries", "One-time token uses remembered", registry=registry)
        self.feed_age = Gauge(
            "jwtwatch_revocation_feed_seconds_since_caught_up",
            "Seconds since the revocation feed was last fully applied (-1: no feed)",
            registry=registry,
        )
        self.usage_dead_lettered = Counter(
            "jwtwatch_usage_events_dead_lettered_total",
            "Usage events that could not be built or encoded, parked on the dead-letter topic (or logged) alone",
            registry=registry,
        )


class ValidatorService:
    def __init__(
        self,
        config: ValidatorConfig,
        *,
        data_dir: Path,
        bus: Bus | None = None,
        events_out: Path | None = None,
        trusted_proxies: tuple[Network, ...] | str | None = None,
        admin_token: str | None = None,
        max_token_lifetime_s: int | None = None,
        max_feed_lag_s: float = 30.0,
        fail_closed: bool = False,
        clock: Callable[[], float] = time.time,
        usage_to_bus: bool = True,
        background: bool = False,
        worker: int | None = None,
        keys_dir: Path | None = None,
    ) -> None:
        """``usage_to_bus=False``: usage events go to ``events_out`` only (nobody reads them from an in-process
        bus of a lone validator). ``background=True`` (``validator serve``): usage events are built and sent in
        batches by a thread, and expired revocations are purged by :meth:`maintain` (which the caller runs in a
        background loop), so that nothing but the validation itself happens on the request path. ``worker``: this
        process's index among ``validator serve --workers N`` (a metric). ``keys_dir``: the key store whose signed
        key set (``jwks.jwt``, written by ``jwtwatch keys sign-jwks``) is served at ``/.well-known/jwks.jwt``."""
        self.config = config
        self.clock = clock
        self.revocations = RevocationStore(
            Path(data_dir) / "revocations.sqlite",
            # No accepted token lives longer than the configured cap (reason `lifetime`), so a subject
            # revocation can be forgotten that long after its cut-off.
            max_token_lifetime_s=config.max_token_lifetime_s if max_token_lifetime_s is None else max_token_lifetime_s,
        )
        self.validator = TokenValidator(config, revocations=self.revocations, clock=clock)
        self.bus = bus
        self.registry = CollectorRegistry()
        self.metrics = ValidatorMetrics(self.registry)
        self.emitter = UsageEmitter(
            bus if usage_to_bus else None,
            events_out,
            background=background,
            on_dead_letter=self.metrics.usage_dead_lettered.inc,
        )
        self.background = background
        self.trusted_proxies = (
            trusted_proxies if isinstance(trusted_proxies, tuple) else parse_networks(trusted_proxies)
        )
        self.admin_token = admin_token
        self.metrics.revocation_version.set_function(lambda: self.revocations.version)
        self.metrics.revocations_active.set_function(lambda: len(self.revocations.index))
        self.metrics.cache_entries.set_function(lambda: len(self.validator.cache))
        # JWKS URL refusals (rollbacks included) and key age; the key source is looked up at each scrape
        self.registry.register(KeySourceCollector(lambda: self.validator.keys))
        self._counters: dict[tuple[bool, str | None], Any] = {}  # validations_total children, by (ok, reason)
        self.worker = worker
        self.keys_dir = keys_dir
        if worker is not None:
            about = "This process's index among validator serve --workers"
            Gauge("jwtwatch_validator_worker", about, registry=self.registry).set(worker)
        #: Reads what other processes wrote to the shared revocation store (``validator serve --workers N``).
        self.store_sync: RevocationStoreSync | None = None
        self._last_purge = 0.0
        #: The revocation feed this validator follows, if any.
        self.feed: FeedProgress | None = None
        #: Signs the revocations this validator's admin API puts on the feed (``--revocation-keys``).
        self.signer: FeedSigner | None = None
        #: Not ready when the feed was last caught up longer ago than this; with ``fail_closed`` the
        #: validator then refuses to answer validations (503) rather than miss a revocation.
        self.max_feed_lag_s = max_feed_lag_s
        self.fail_closed = fail_closed
        self.metrics.feed_lag.set_function(lambda: getattr(self.feed, "lag_messages", 0))
        self.metrics.feed_age.set_function(self._feed_age)
        #: This instance's name on the replay topic (a restarted instance is a new one).
        self.instance = str(uuid.uuid4())
        #: Follows the other instances' one-time uses (only with one-time rules and a bus); drive ``step``.
        self.replay_feed: ReplayFollower | None = None
        replay = self.validator.replay
        if replay is not None:
            self.metrics.replay_entries.set_function(lambda: len(replay))
            if bus is not None:
                replay.on_claim = self._announce_use
                self.replay_feed = ReplayFollower(
                    bus,
                    replay,
                    instance=self.instance,
                    max_ttl_s=config.max_token_lifetime_s + config.leeway_s,
                    clock=clock,
                    on_race=self.metrics.replay_races.inc,
                )

    def check(self, token: object, context: RequestContext) -> Verdict:
        """Validate one token for one request, emit its usage event, count it.

        Raises :class:`RevocationsUnavailable` instead when ``fail_closed`` and the revocation feed is stale: the
        one check every surface (forward-auth, introspection, middleware) goes through, so none can vouch for a
        token whose revocation it may have missed — and a surface that forgot to catch it fails closed too.
        """
        if self.fail_closed and self.feed_stale():
            raise RevocationsUnavailable("the revocation feed is stale")
        started = time.perf_counter()
        now = self.clock()
        verdict = self.validator.validate(token, now)
        self.metrics.seconds.observe(time.perf_counter() - started)
        self.record(verdict, context, now)
        if not self.background:
            self._maybe_purge(now)
        return verdict

    def too_large(self, context: RequestContext) -> Verdict:
        """A token refused before parsing because of its size: still one usage event."""
        return self.refuse("too_large", context)

    def refuse(self, reason: str, context: RequestContext) -> Verdict:
        """A request refused before its token was looked at (``reason`` from REASONS): still one usage event."""
        verdict = reject(reason)
        self.record(verdict, context, self.clock())
        return verdict

    def record(self, verdict: Verdict, context: RequestContext, now: float) -> None:
        key = (verdict.ok, verdict.reason)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.metrics.validations.labels(
                "accepted" if verdict.ok else "rejected", verdict.reason or "none"
            )
        counter.inc()
        self.emitter.defer(verdict, context, now)

    def maintain(self) -> None:
        """Background upkeep (with ``background=True``): purge expired revocations once a minute."""
        self._maybe_purge(self.clock())

    def announce(self, record: Revocation) -> None:
        """Put a revocation made here on the revocation feed, so every other validator enforces it too."""
        bus = self.bus
        if bus is not None:
            record = replace(record, version=None)
            bus.publish(REVOCATIONS, record.bus_key, self.signer.sign(record) if self.signer else record.to_json())
            bus.flush(timeout_s=10)

    def _announce_use(self, iss: str, jti: str, expires_at: float) -> None:
        """Tell every other validator instance that this one-time token has been used (``jwtwatch.replay``)."""
        bus = self.bus
        if bus is not None:
            bus.publish(REPLAY, f"{iss}:{jti}"[:2048], use_message(iss, jti, expires_at, self.instance, self.clock()))

    def _maybe_purge(self, now: float) -> None:
        if now - self._last_purge > 60:
            self._last_purge = now
            gone = self.revocations.purge(now)
            bus = self.bus
            if gone and bus is not None and self.signer is not None:
                # Tombstones let the compacted feed forget expired revocations. They carry no signature
                # and need none: a tombstone cannot revoke, and validators never un-revoke on one — their
                # entries expire on their own.
                for key in gone:
                    bus.publish(REVOCATIONS, key, None)

    def _feed_age(self) -> float:
        if self.feed is None:
            return -1.0
        age = self.feed.lag_seconds()
        return age if age != float("inf") else 1e9

    def feed_stale(self) -> bool:
        """The revocation feed has not been fully applied for longer than ``max_feed_lag_s``."""
        if self.store_sync is not None and self.store_sync.stale():
            return True
        return self.feed is not None and self._feed_age() > self.max_feed_lag_s

    def ready(self) -> tuple[bool, str]:
        if not self.validator.keys.current().usable():
            return False, "no usable signing keys"
        stuck = key_source_problem(self.validator.keys)  # refreshes failing for long, or a fetch past its deadline
        if stuck is not None:
            return False, stuck
        if self.feed is not None and self.feed.caught_up_at is None:
            return False, "revocation feed not caught up yet"
        if self.store_sync is not None and self.store_sync.stale():
            return False, self.store_sync.describe()
        if self.feed_stale():
            return False, f"revocation feed lagging for more than {self.max_feed_lag_s:.0f} s"
        if self.replay_feed is not None and self.replay_feed.caught_up_at is None:
            return False, "one-time token uses of other instances not read yet"
        return True, "ok"

    def close(self) -> None:
        if self.replay_feed is not None:
            self.replay_feed.close()
        self.emitter.close()
        self.revocations.close()
        self.validator.close()
