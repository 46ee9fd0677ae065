"""Replay protection for one-time tokens: accepted once, and a second use rejected with reason ``replayed``.

Which tokens are one-time is configuration (``ValidatorConfig.one_time_audiences`` / ``one_time_scopes`` /
``one_time_claims``); ordinary access tokens never touch this module. A one-time token's ``(iss, jti)`` goes into
a :class:`ReplayCache` the first time it is accepted, atomically (check and record under one lock), and stays there
until the token could no longer be accepted anyway (``exp`` + leeway). Validator instances share their caches over
the bus (topic ``jwtwatch.replay``): each instance publishes the uses it accepted and follows every other
instance's (:class:`ReplayFollower`), so a second use is rejected at any instance once the first use has reached it.

The guarantee, honestly: within one instance a one-time token is accepted exactly once, even under concurrent
requests. Across instances, a second use is rejected once the first instance's message has been read — a window
of the bus's propagation delay (milliseconds in process, typically tens of milliseconds over Kafka). Two uses
landing on two instances inside that window are both accepted; the follower then sees the other instance's use of
a token it accepted itself, logs it and counts it (``jwtwatch_replay_races_total``). Where that window matters,
route one-time tokens to a single validator instance (or consistently by ``jti``). Memory only: a restarted
instance re-reads the topic from the beginning and is not ready until it has caught up.

The bus is not authenticated (docs/security.md): a forged message can mark a one-time token as used — a denial of
that one token — but can never make any token accepted. Entries from the bus live at most the maximum token
lifetime, whatever they claim.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.bus import Bus, Message
from pipeline.bus.checkpoint import CheckpointLoop
from pipeline.bus.topics import REPLAY

log = logging.getLogger(__name__)

SCHEMA = "token-use/1"
_MAX_FIELD = 1024


def replay_key(iss: str, jti: str) -> str:
    return f"{iss}\x1f{jti}"  # unit separator: neither part can fake the boundary of the other


class ReplayCache:
    """One-time uses seen, each kept until it expires. Thread-safe; ``claim`` is an atomic check-and-record."""

    LOCAL = "local"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, str]] = {}  # key -> (expires_at, origin)
        self._expiry: list[tuple[float, str]] = []  # heap of (expires_at, key); stale items skipped on purge
        #: Called with (iss, jti, expires_at) after a first use was recorded here (the service publishes it).
        self.on_claim: Callable[[str, str, float], None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        """Record the first use of ``(iss, jti)``: True if it is the first, False if it was seen before."""
        key = replay_key(iss, jti)
        with self._lock:
            self._purge(now)
            if key in self._entries:
                return False
            self._add(key, expires_at, self.LOCAL)
        if self.on_claim is not None:
            self.on_claim(iss, jti, expires_at)
        return True

    def remember(self, iss: str, jti: str, expires_at: float, now: float, origin: str) -> str | None:
        """A use made elsewhere. Returns the origin already recorded for it, if any (``LOCAL``: we accepted it too)."""
        key = replay_key(iss, jti)
        with self._lock:
            self._purge(now)
            if expires_at <= now:
                return None
            known = self._entries.get(key)
            if known is None:
                self._add(key, expires_at, origin)
                return None
            return known[1]

    def seen(self, iss: str, jti: str, now: float) -> bool:
        with self._lock:
            self._purge(now)
            return replay_key(iss, jti) in self._entries

    def _add(self, key: str, expires_at: float, origin: str) -> None:
        self._entries[key] = (expires_at, origin)
        heapq.heappush(self._expiry, (expires_at, key))

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, key = heapq.heappop(self._expiry)
            entry = self._entries.get(key)
            if entry is not None and entry[0] == expires_at:
                del self._entries[key]


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def is_one_time(
    claims: Mapping[str, Any],
    audiences: frozenset[str],
    scopes: frozenset[str],
    marks: tuple[tuple[str, str | None], ...],
) -> bool:
    """Whether verified ``claims`` make a one-time token under the configured rules."""
    if audiences and audiences.intersection(_listed(claims.get("aud"))):
        return True
    if scopes and scopes.intersection(_listed(claims.get("scope"))):
        return True
    for name, value in marks:
        claim = claims.get(name)
        if value is None:
            if claim is True:
                return True
        elif claim == value or (isinstance(claim, list) and value in claim):
            return True
    return False


def use_message(iss: str, jti: str, expires_at: float, instance: str, now: float) -> bytes:
    record = {"schema": SCHEMA, "iss": iss, "jti": jti, "expires_at": expires_at, "instance": instance, "ts": now}
    return json.dumps(record, separators=(",", ":")).encode()


def parse_use(raw: bytes) -> tuple[str, str, float, str]:
    """(iss, jti, expires_at, instance) of a token-use/1 message; ValueError if it is not one."""
    record = json.loads(raw)
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} message")
    iss, jti, instance = _text(record, "iss"), _text(record, "jti"), _text(record, "instance")
    expires = record.get("expires_at")
    if isinstance(expires, bool) or not isinstance(expires, int | float) or not 0 < expires < 2**62:
        raise ValueError("field 'expires_at' must be a positive number")
    return iss, jti, float(expires), instance


class ReplayFollower:
    """Reads every instance's one-time uses from ``jwtwatch.replay`` into this instance's :class:`ReplayCache`.

    Each use is its own record (the rule of ``pipeline.bus.dead_letter``): a bad one is parked and the uses after it
    in the same poll are still recorded — skipping them would let those one-time tokens be used twice."""

    def __init__(
        self,
        bus: Bus,
        cache: ReplayCache,
        *,
        instance: str,
        max_ttl_s: float,
        clock: Callable[[], float] = time.time,
        poll_timeout_s: float = 0.05,
        on_race: Callable[[], None] | None = None,
    ) -> None:
        self.bus = bus
        self.cache = cache
        self.instance = instance
        self.max_ttl_s = max_ttl_s
        self.clock = clock
        self.poll_timeout_s = poll_timeout_s
        self.on_race = on_race
        # A group of its own: every instance reads every use, from the beginning (entries expire by themselves).
        self.consumer = bus.consumer([REPLAY], f"jwtwatch-replay-{uuid.uuid4()}", from_beginning=True)
        self.loop = CheckpointLoop(
            bus,
            self.consumer,
            decode=lambda message: parse_use(message.value),
            sink=self,
            name="validator-replay",
            max_records=1000,
            poll_timeout_s=poll_timeout_s,
            error_prefix="replay feed: ",
        )
        self.races = 0
        self.own_uses = 0
        self.caught_up = False
        self.caught_up_at: float | None = None

    @property
    def applied(self) -> int:
        """Other instances' uses recorded (our own were recorded when we accepted them)."""
        return self.loop.handled - self.own_uses

    @property
    def rejected(self) -> int:
        return self.loop.dead_letters

    def step(self) -> int:
        read = self.loop.step()
        self.caught_up = self.loop.lag() == 0
        if self.caught_up:
            self.caught_up_at = time.monotonic()
        return read

    # The loop's sink: uses are remembered as they are read (the cache is memory; a restart re-reads the topic).

    def add(self, use: tuple[str, str, float, str], message: Message) -> None:
        iss, jti, expires_at, instance = use
        if instance == self.instance:
            self.own_uses += 1
            return  # our own use, recorded when we accepted it
        now = self.clock()
        # Whatever a message claims, no token outlives the lifetime cap: a forged entry cannot live forever.
        expires_at = min(expires_at, now + self.max_ttl_s)
        known = self.cache.remember(iss, jti, expires_at, now, instance)
        if known == ReplayCache.LOCAL:
            # Both this instance and another accepted the same one-time token inside the propagation window.
            self.races += 1
            log.warning("one-time token %r of %r was accepted here and at instance %s", jti[:64], iss[:64], instance)
            if self.on_race is not None:
                self.on_race()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.consumer.close()


def _text(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
        raise ValueError(f"field {name!r} must be a non-empty string of at most {_MAX_FIELD} characters")
    return value
