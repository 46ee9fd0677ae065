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

# Counter rows kept per bucket.
TOTAL, FORGED, STALE, OTHER_REJECTED, SWITCHES = range(5)
ROWS = 5
_SATURATED = 65535


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
    """The sliding-window state of one entity."""

    __slots__ = (
        "client",
        "counts",
        "dirty",
        "exp",
        "first_ts",
        "head",
        "iat",
        "ips",
        "last_ip",
        "last_prefix",
        "last_ts",
        "learned_at",
        "max_age_s",
        "others",
        "overflow",
        "owner",
        "scored_at",
        "suspect_since",
        "uas",
    )

    def __init__(self, buckets: int) -> None:
        # uint16 counters, saturating at 65535 per bucket (beyond that a count is extreme anyway).
        self.counts = array("H", [0]) * (ROWS * buckets)
        self.head = -1  # the newest bucket number in the ring; slots hold buckets head-B+1 .. head
        self.first_ts = 0.0
        self.last_ts = 0.0
        self.ips: dict[str, float] = {}
        self.uas: dict[str, float] = {}
        self.others: dict[str, float] | None = None  # subjects per IP, or tokens per subject
        self.overflow = 0
        self.last_prefix = 0
        self.owner: str | None = None  # the subject of a token, the client of a subject
        self.client: str | None = None  # the client a token was issued to (tokens only)
        self.iat = 0.0
        self.exp = 0.0
        self.max_age_s = 0.0
        self.last_ip = ""
        self.scored_at = float("-inf")  # event time of the last scoring
        self.learned_at = float("-inf")  # event time the baseline last learned from this window
        self.suspect_since = float("-inf")  # first of a run of above-threshold forest scores
        self.dirty = False  # something new (an address, a client, a rejection): re-score at once

    def window_counts(self, now_bucket: int, buckets: int) -> tuple[list[int], int, int]:
        """Per-row sums over the window ending at ``now_bucket``, the busiest bucket, and active buckets."""
        sums = [0] * ROWS
        busiest = 0
        active = 0
        counts = self.counts
        for bucket in range(max(self.head, now_bucket) - buckets + 1, min(self.head, now_bucket) + 1):
            base = (bucket % buckets) * ROWS
            total = counts[base]
            if total:
                active += 1
                busiest = max(busiest, total)
                for row in range(ROWS):
                    sums[row] += counts[base + row]
        return sums, busiest, active


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
_ZEROS = array("H", [0]) * ROWS


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
    """All windows of one entity type, with the watermark and eviction."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.entities: dict[str, EntityWindow] = {}
        self.evicted = 0
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

    def add(
        self,
        key: str,
        ts: float,
        ip: str,
        user_agent: str | None,
        row: int,
        other: str | None = None,
    ) -> EntityWindow:
        """Count one event for ``key``. ``row`` says which rejection counter it adds to, if any.

        This runs three times per usage event: it is written for speed (locals, no helper calls on the
        common path of a value already in its distinct map).
        """
        window = self.entities.get(key)
        if window is None:
            window = self.entities[key] = EntityWindow(self._buckets)
            window.first_ts = ts
        buckets = self._buckets
        bucket = int(ts // self._bucket_s)
        counts = window.counts
        head = window.head
        if bucket > head:
            # The window slides: clear the slots of the buckets it moves over (at most a whole ring).
            for skipped in range(max(head + 1, bucket - buckets + 1), bucket + 1):
                base = (skipped % buckets) * ROWS
                counts[base : base + ROWS] = _ZEROS
            window.head = bucket
        elif bucket <= head - buckets:
            return window  # older than anything the ring still holds (late within grace)
        base = (bucket % buckets) * ROWS
        if counts[base] < _SATURATED:
            counts[base] += 1
            if row:
                counts[base + row] += 1
                window.dirty = True
        # Only equality matters here, so keep the prefix's hash rather than another string per entity.
        prefix = _PREFIX_HASH.get(ip)
        if prefix is None:
            prefix = _prefix_hash(ip)
        if prefix != window.last_prefix:
            if window.last_prefix and counts[base + SWITCHES] < _SATURATED:
                counts[base + SWITCHES] += 1
            window.last_prefix = prefix
        seen = window.ips.get(ip)
        if seen is None:
            _remember(window.ips, ip, ts, self._max_distinct, window, ts - self._length_s)
            window.dirty = True
        elif ts > seen:
            window.ips[ip] = ts
        if user_agent is not None:
            seen = window.uas.get(user_agent)
            if seen is None:
                _remember(window.uas, user_agent, ts, self._max_distinct, window, ts - self._length_s)
                window.dirty = True
            elif ts > seen:
                window.uas[user_agent] = ts
        if other is not None:
            if window.others is None:
                window.others = {}
            _remember(window.others, other, ts, self._max_distinct, window, ts - self._length_s)
        if ts >= window.last_ts:
            window.last_ts = ts
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
