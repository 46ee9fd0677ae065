"""Event-time sliding windows per entity (a token, a subject, an IP) — pure, no I/O.

Vocabulary (after Quix Streams / Flink):

* **window** — the last ``length_s`` seconds of *event time* for one entity. It slides in steps of one
  *bucket* (``bucket_s``): per-bucket counters live in a ring, so the window's counts are exact to a
  bucket and the state stays a fixed size however busy the entity is.
* **watermark** — the highest event time seen, minus ``grace_s``. An event older than the watermark is
  *late*: it is counted (``late_events``) and left out of the windows (the archive still keeps it).
  Events within the grace period may arrive in any order: they land in the bucket of their own time.
* **eviction** — an entity with no event for a whole window plus grace is dropped; its state would be
  all zeros anyway.
* **distinct sets** — IPs, user agents, subjects, tokens seen in the window are kept as small maps of
  value → last time seen (bounded: past ``max_distinct`` the oldest value is dropped and counted as
  overflow), so a distinct count is "values seen within the window".

Memory per active entity stays under 1 KiB for ordinary entities (measured in the benchmark).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

# Counter rows kept per bucket. SWITCHES: the network changed from the entity's previous event. RETURNS: it
# changed back to the network before that within ``RETURN_S`` of last being there — one token in use from two
# networks at once (a thief replaying it while its owner goes on), not a handover (no way back) nor a phone
# flipping between Wi-Fi and its carrier (which stays on each for a minute or more).
TOTAL, FORGED, STALE, OTHER_REJECTED, SWITCHES, RETURNS = range(6)
ROWS = 6
#: How soon after leaving a network coming back to it counts as a return: within one person's think time
#: between two pages. A device is on one network at a time and does not re-associate twice in this long.
RETURN_S = 30.0
_SATURATED = 65535
_ZEROS = array("H", [0]) * ROWS  # one bucket's counters
#: "Never": the one shared object, not a new float per window (three per window add up).
NEVER = float("-inf")
#: Interned strings (user agents, client ids) per engine; cleared past this size (a UA spray).
_MAX_INTERNED = 50_000


@dataclass(frozen=True, slots=True)
class WindowSpec:
    length_s: int = 300
    bucket_s: int = 30
    grace_s: int = 30
    max_distinct: int = 32

    def __post_init__(self) -> None:
        if self.length_s % self.bucket_s:
            raise ValueError("window length must be a whole number of buckets")

    @property
    def buckets(self) -> int:
        return self.length_s // self.bucket_s


class EntityWindow:
    """The sliding-window state of one entity — as kept for an IP, which needs no set of IPs.

    Memory is what limits how many entities one process can watch, so each entity type gets only the
    fields it uses (:class:`SubjectWindow` adds the set of IPs, :class:`TokenWindow` the token's claims),
    and the distinct sets are kept lazily: most tokens use one IP and one user agent in a window, so the
    first value of a set lives inline (``*_one`` and its time) and a dict (``*_many``) is made only when a
    second distinct value arrives.
    """

    __slots__ = (
        "counts",
        "dirty",
        "first_ts",
        "head",
        "key",
        "last_ip",
        "last_prefix",
        "last_ts",
        "learned_at",
        "other_many",
        "other_one",
        "other_one_ts",
        "overflow",
        "owner",
        "previous_prefix",
        "previous_prefix_ts",
        "scored_at",
        "suspect_since",
        "ua_many",
        "ua_one",
        "ua_one_ts",
    )

    # Fields of the subclasses, read as "none" on a window type that does not keep them.
    ip_one: str | None = None
    ip_one_ts = 0.0
    ip_many: dict[str, float] | None = None
    client: str | None = None
    lifetime = 0.0
    max_age_s = 0.0

    def __init__(self, buckets: int, key: str = "") -> None:
        # uint16 counters, saturating at 65535 per bucket (beyond that a count is extreme anyway).
        self.counts = _ZEROS * buckets
        self.key = key  # the first copy of the key seen: the engine shares it instead of keeping more
        self.head = -1  # the newest bucket number in the ring; slots hold buckets head-B+1 .. head
        self.first_ts = 0.0
        self.last_ts = 0.0
        # Distinct sets: one value inline (``*_one``, ``*_one_ts``), or all of them in ``*_many``.
        self.ua_one: str | None = None
        self.ua_one_ts = 0.0
        self.ua_many: dict[str, float] | None = None
        self.other_one: str | None = None  # subjects per IP, or tokens per subject
        self.other_one_ts = 0.0
        self.other_many: dict[str, float] | None = None
        self.overflow = 0
        self.last_prefix = 0
        self.previous_prefix = 0  # the network before the last switch, and when it was last used
        self.previous_prefix_ts = NEVER
        self.owner: str | None = None  # the subject of a token, the client of a subject
        self.last_ip = ""
        self.scored_at = NEVER  # event time of the last scoring
        self.learned_at = NEVER  # event time the baseline last learned from this window
        self.suspect_since = NEVER  # first of a run of above-threshold forest scores
        self.dirty = False  # something new (an address, a client, a rejection): re-score at once

    # -- the distinct sets, as maps of value -> last time seen (for tests and tools: built on demand) --

    @property
    def ips(self) -> dict[str, float]:
        return _as_map(self.ip_one, self.ip_one_ts, self.ip_many)

    @property
    def uas(self) -> dict[str, float]:
        return _as_map(self.ua_one, self.ua_one_ts, self.ua_many)

    @property
    def others(self) -> dict[str, float]:
        return _as_map(self.other_one, self.other_one_ts, self.other_many)

    def ips_within(self, horizon: float) -> list[str]:
        """The IPs seen at or after ``horizon``, in the order first seen."""
        return _within(self.ip_one, self.ip_one_ts, self.ip_many, horizon)

    def uas_within(self, horizon: float) -> list[str]:
        return _within(self.ua_one, self.ua_one_ts, self.ua_many, horizon)

    def others_within(self, horizon: float) -> list[str]:
        return _within(self.other_one, self.other_one_ts, self.other_many, horizon)

    def window_counts(self, now_bucket: int, buckets: int) -> tuple[list[int], int, int]:
        """Per-row sums over the window ending at ``now_bucket``, the busiest bucket, and active buckets."""
        counts = self.counts
        if now_bucket == self.head:
            # The usual case (scoring at the newest event): the ring holds exactly the window, because
            # sliding clears every slot it moves over — so sum whole rows with strided slices, in C.
            totals = counts[TOTAL::ROWS]
            return [sum(counts[row::ROWS]) for row in range(ROWS)], max(totals), buckets - totals.count(0)
        sums = [0] * ROWS
        busiest = 0
        active = 0
        for bucket in range(max(self.head, now_bucket) - buckets + 1, min(self.head, now_bucket) + 1):
            base = (bucket % buckets) * ROWS
            total = counts[base]
            if total:
                active += 1
                busiest = max(busiest, total)
                for row in range(ROWS):
                    sums[row] += counts[base + row]
        return sums, busiest, active


class SubjectWindow(EntityWindow):
    """A subject's window: also the set of IPs it was used from."""

    __slots__ = ("ip_many", "ip_one", "ip_one_ts")

    def __init__(self, buckets: int, key: str = "") -> None:
        super().__init__(buckets, key)
        self.ip_one = None
        self.ip_one_ts = 0.0
        self.ip_many = None


class TokenWindow(SubjectWindow):
    """A token's window: also its client, lifetime and greatest age at use (from its claims)."""

    __slots__ = ("client", "lifetime", "max_age_s")

    def __init__(self, buckets: int, key: str = "") -> None:
        super().__init__(buckets, key)
        self.client = None  # the client the token was issued to
        self.lifetime = 0.0  # exp - iat
        self.max_age_s = 0.0


def _as_map(one: str | None, one_ts: float, many: dict[str, float] | None) -> dict[str, float]:
    if many is not None:
        return dict(many)
    return {one: one_ts} if one is not None else {}


def _within(one: str | None, one_ts: float, many: dict[str, float] | None, horizon: float) -> list[str]:
    if many is not None:
        return [value for value, seen in many.items() if seen >= horizon]
    return [one] if one is not None and one_ts >= horizon else []


def _remember(values: dict[str, float], value: str, ts: float, cap: int, window: EntityWindow, horizon: float) -> None:
    if value in values:
        if ts > values[value]:
            values[value] = ts
        return
    if len(values) >= cap:
        # Drop what fell out of the window first; if still full, the oldest value.
        for key in [k for k, seen in values.items() if seen < horizon]:
            del values[key]
        if len(values) >= cap:
            del values[min(values, key=values.__getitem__)]
            window.overflow += 1
    values[value] = ts


@lru_cache(maxsize=1 << 16)
def prefix16(ip: str) -> str:
    """The /16 of an IPv4 address (``a.b``), or the /32 of an IPv6 one — the 'network' an IP is in."""
    if ":" in ip:
        return ":".join(ip.split(":")[:2])
    first = ip.find(".")
    second = ip.find(".", first + 1)
    return ip[:second]


_PREFIX_HASH: dict[str, int] = {}


def _prefix_hash(ip: str) -> int:
    """The hash of an IP's /16, memoised (IPs repeat); the memo is cleared when it grows large."""
    if len(_PREFIX_HASH) > 200_000:
        _PREFIX_HASH.clear()
    value = _PREFIX_HASH[ip] = hash(prefix16(ip)) or 1  # 0 means "no previous prefix"
    return value


def prefix24(ip: str) -> str:
    if ":" in ip:
        return ":".join(ip.split(":")[:3])
    return ip[: ip.rfind(".")]


class WindowStore:
    """All windows of one entity type, with the watermark and eviction.

    ``window_type`` says what is kept per entity. A plain :class:`EntityWindow` is for windows keyed by the
    IP itself: their set of IPs would only ever hold the key, so it is not kept (no feature reads it), and
    ``last_ip`` is the key — the engine shares that one copy of the address with the token and subject
    windows. ``strings`` interns user agents and client ids across the stores of one engine: thousands of
    windows then share a handful of strings.
    """

    def __init__(
        self,
        spec: WindowSpec,
        *,
        window_type: type[EntityWindow] = TokenWindow,
        strings: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.entities: dict[str, EntityWindow] = {}
        self.evicted = 0
        self.window_type = window_type
        self.track_ips = issubclass(window_type, SubjectWindow)
        self.strings: dict[str, str] = strings if strings is not None else {}
        self._buckets = spec.buckets
        self._bucket_s = spec.bucket_s
        self._length_s = spec.length_s
        self._max_distinct = spec.max_distinct

    def __len__(self) -> int:
        return len(self.entities)

    def __iter__(self) -> Iterator[tuple[str, EntityWindow]]:
        return iter(self.entities.items())

    def get(self, key: str) -> EntityWindow | None:
        return self.entities.get(key)

    def intern(self, value: str) -> str:
        """The shared copy of a string that many windows hold (a user agent, a client id)."""
        strings = self.strings
        shared = strings.get(value)
        if shared is None:
            if len(strings) >= _MAX_INTERNED:
                strings.clear()  # only sharing is lost, never a value
            shared = strings[value] = value
        return shared

    def add(
        self,
        key: str,
        ts: float,
        ip: str,
        user_agent: str | None,
        row: int,
        other: str | None = None,
    ) -> EntityWindow:
        """Count one event for ``key``. ``row`` says which rejection counter it adds to, if any."""
        prefix = _PREFIX_HASH.get(ip) or _prefix_hash(ip)
        return self.add_at(key, ts, int(ts // self._bucket_s), prefix, ip, user_agent, row, other)

    def add_at(
        self,
        key: str,
        ts: float,
        bucket: int,
        prefix: int,
        ip: str,
        user_agent: str | None,
        row: int,
        other: str | None = None,
    ) -> EntityWindow:
        """:meth:`add` with the event's bucket and /16 hash already computed: the engine computes them once
        per event rather than once per window (each event updates three windows).

        This runs three times per usage event, so it reads the store's settings once into locals and makes
        no helper calls on the common path of a value already in its set. Compiled (the twin ``_windows_c``),
        ``_windows_c.pxd`` types the windows, the store and these locals: fields are read and written as C
        struct fields, times as C doubles.
        """
        entities = self.entities
        buckets = self._buckets
        length_s = self._length_s
        cap = self._max_distinct
        zeros = _ZEROS
        saturated = _SATURATED
        window = entities.get(key)
        if window is None:
            window = entities[key] = self.window_type(buckets, key)
            window.first_ts = ts
            if not self.track_ips:
                window.last_ip = key
                window.dirty = True  # as a first IP would make it (it is due anyway: never scored)
        counts = window.counts
        head = window.head
        if bucket > head:
            # The window slides: clear the slots of the buckets it moves over (at most a whole ring).
            for skipped in range(max(head + 1, bucket - buckets + 1), bucket + 1):
                base = (skipped % buckets) * ROWS
                counts[base : base + ROWS] = zeros
            window.head = bucket
        elif bucket <= head - buckets:
            return window  # older than anything the ring still holds (late within grace)
        base = (bucket % buckets) * ROWS
        if counts[base] < saturated:
            counts[base] += 1
            if row:
                counts[base + row] += 1
                window.dirty = True
        # Only equality matters here, so keep the prefix's hash rather than another string per entity. A late
        # event (older than the window's last) is no move between networks: in time order it came before.
        if prefix != window.last_prefix and ts >= window.last_ts:
            if window.last_prefix:
                if counts[base + SWITCHES] < saturated:
                    counts[base + SWITCHES] += 1
                if (
                    prefix == window.previous_prefix
                    and ts - window.previous_prefix_ts <= RETURN_S
                    and counts[base + RETURNS] < saturated
                ):
                    counts[base + RETURNS] += 1
                window.previous_prefix = window.last_prefix
                window.previous_prefix_ts = window.last_ts
            window.last_prefix = prefix
        if isinstance(window, SubjectWindow):  # exactly when self.track_ips: it keeps the set of IPs
            subject = window
            if ip == subject.ip_one:
                if ts > subject.ip_one_ts:
                    subject.ip_one_ts = ts
            else:
                many = subject.ip_many
                if many is not None:
                    seen = many.get(ip)
                    if seen is None:
                        _remember(many, ip, ts, cap, subject, ts - length_s)
                        subject.dirty = True
                    elif ts > seen:
                        many[ip] = ts
                elif subject.ip_one is None:
                    subject.ip_one = ip
                    subject.ip_one_ts = ts
                    subject.dirty = True
                else:
                    many = subject.ip_many = {subject.ip_one: subject.ip_one_ts}
                    subject.ip_one = None
                    _remember(many, ip, ts, cap, subject, ts - length_s)
                    subject.dirty = True
        if user_agent is not None:
            if user_agent == window.ua_one:
                if ts > window.ua_one_ts:
                    window.ua_one_ts = ts
            else:
                many = window.ua_many
                if many is not None:
                    seen = many.get(user_agent)
                    if seen is None:
                        _remember(many, self.intern(user_agent), ts, cap, window, ts - length_s)
                        window.dirty = True
                    elif ts > seen:
                        many[user_agent] = ts
                elif window.ua_one is None:
                    window.ua_one = self.intern(user_agent)
                    window.ua_one_ts = ts
                    window.dirty = True
                else:
                    many = window.ua_many = {window.ua_one: window.ua_one_ts}
                    window.ua_one = None
                    _remember(many, self.intern(user_agent), ts, cap, window, ts - length_s)
                    window.dirty = True
        if other is not None:
            # A new subject or token alone does not make the window due (it never did).
            if other == window.other_one:
                if ts > window.other_one_ts:
                    window.other_one_ts = ts
            else:
                many = window.other_many
                if many is not None:
                    seen = many.get(other)
                    if seen is None:
                        _remember(many, other, ts, cap, window, ts - length_s)
                    elif ts > seen:
                        many[other] = ts
                elif window.other_one is None:
                    window.other_one = other
                    window.other_one_ts = ts
                else:
                    many = window.other_many = {window.other_one: window.other_one_ts}
                    window.other_one = None
                    _remember(many, other, ts, cap, window, ts - length_s)
        if ts >= window.last_ts:
            window.last_ts = ts
            if self.track_ips:
                window.last_ip = ip
        return window

    def evict_idle(self, watermark: float) -> int:
        """Drop entities whose last event is older than a whole window before the watermark."""
        horizon = watermark - self.spec.length_s
        idle = [key for key, window in self.entities.items() if window.last_ts < horizon]
        for key in idle:
            del self.entities[key]
        self.evicted += len(idle)
        return len(idle)


#: What the public module re-exports (from this source, or from its compiled twin).
__all__ = [
    "FORGED",
    "NEVER",
    "OTHER_REJECTED",
    "RETURNS",
    "RETURN_S",
    "ROWS",
    "STALE",
    "SWITCHES",
    "TOTAL",
    "EntityWindow",
    "SubjectWindow",
    "TokenWindow",
    "WindowSpec",
    "WindowStore",
    "prefix16",
    "prefix24",
]
