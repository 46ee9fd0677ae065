"""Event-time windows: sliding by bucket, out-of-order within grace, bounded distinct sets, eviction."""

from __future__ import annotations

import random
import tracemalloc

from pipeline.windows import (
    FORGED,
    RETURN_S,
    RETURNS,
    ROWS,
    STALE,
    SWITCHES,
    TOTAL,
    EntityWindow,
    SubjectWindow,
    WindowSpec,
    WindowStore,
    prefix16,
    prefix24,
)

SPEC = WindowSpec(length_s=300, bucket_s=20, grace_s=30, max_distinct=8)  # 15 buckets
T0 = 1_790_000_000.0


def sums(store: WindowStore, key: str, now: float) -> list[int]:
    window = store.get(key)
    assert window is not None
    return window.window_counts(int(now // SPEC.bucket_s), SPEC.buckets)[0]


def test_counts_slide_out_of_the_window() -> None:
    store = WindowStore(SPEC)
    for i in range(10):
        store.add("t", T0 + i, "10.0.0.1", "ua", 0)
    assert sums(store, "t", T0 + 10)[TOTAL] == 10
    assert sums(store, "t", T0 + 290)[TOTAL] == 10
    # A whole window later the old buckets no longer count, even though nothing overwrote them.
    assert sums(store, "t", T0 + 320)[TOTAL] == 0


def test_ring_slot_reused_by_a_later_bucket_is_reset() -> None:
    store = WindowStore(SPEC)
    store.add("t", T0, "10.0.0.1", None, FORGED)
    store.add("t", T0 + SPEC.length_s, "10.0.0.1", None, 0)  # same ring slot, one window later
    counts = sums(store, "t", T0 + SPEC.length_s)
    assert counts[TOTAL] == 1 and counts[FORGED] == 0


def test_out_of_order_events_land_in_their_own_bucket() -> None:
    store = WindowStore(SPEC)
    store.add("t", T0 + 100, "10.0.0.1", None, 0)
    store.add("t", T0 + 5, "10.0.0.1", None, STALE)  # earlier, but still within the ring
    assert sums(store, "t", T0 + 100)[STALE] == 1
    assert store.get("t").last_ts == T0 + 100  # type: ignore[union-attr]


def test_network_switches_count_alternation() -> None:
    store = WindowStore(SPEC)
    for i, ip in enumerate(["1.2.3.4", "5.6.7.8", "1.2.9.9", "5.6.0.1", "5.6.0.2"]):
        store.add("t", T0 + i, ip, None, 0)
    assert sums(store, "t", T0 + 5)[SWITCHES] == 3


# ---------------------------------------------------------------- RETURNS: back to the network before, at once

HOME, CARRIER, OFFICE = "81.2.3.4", "100.64.1.5", "198.51.100.20"  # three /16 networks


def network_counts(visits: list[tuple[float, str]]) -> tuple[int, int]:
    """(switches, returns) of one token used at these (time, address) points, in order."""
    store = WindowStore(SPEC)
    for ts, ip in visits:
        store.add("t", T0 + ts, ip, None, 0)
    counts = sums(store, "t", T0 + visits[-1][0])
    return counts[SWITCHES], counts[RETURNS]


def away_times(visits: list[tuple[float, str]]) -> list[float]:
    """For each change of network back to one used before: how long since the token was last there."""
    last: dict[str, float] = {}
    away, before = [], ""
    for ts, ip in visits:
        if ip != before and ip in last:
            away.append(ts - last[ip])
        last[ip], before = ts, ip
    return away


def test_a_handover_makes_no_return() -> None:
    """A..A B..B: the network changes once and never comes back."""
    visits = [(5.0 * i, HOME) for i in range(12)] + [(60.0 + 5 * i, CARRIER) for i in range(12)]
    assert network_counts(visits) == (1, 0)


def test_a_phone_flipping_wifi_and_carrier_away_31_s_each_time_makes_no_return() -> None:
    """Every 5 s a call; 25 s on one network, 3 s to re-associate, 25 s on the other: back 31 s after leaving."""
    visits = [(28.0 * visit + 5 * i, (HOME, CARRIER)[visit % 2]) for visit in range(8) for i in range(6)]
    assert min(away_times(visits)) == RETURN_S + 1  # what the test is about
    assert network_counts(visits) == (7, 0)


def test_late_events_of_a_handover_make_no_switch_and_no_return() -> None:
    """Wi-Fi then carrier, with two Wi-Fi requests arriving late (within the grace period): in time order one
    switch and no return — arrival order must not turn a handover into use from two places at once."""
    store = WindowStore(SPEC)
    order = [(0.0, HOME), (5.0, HOME), (10.0, CARRIER), (7.0, HOME), (12.0, CARRIER), (8.0, HOME), (14.0, CARRIER)]
    for ts, ip in order:
        store.add("t", T0 + ts, ip, None, 0)
    counts = sums(store, "t", T0 + 14.0)
    assert (counts[SWITCHES], counts[RETURNS]) == (1, 0)


def test_a_token_used_from_two_networks_at_once_counts_each_return() -> None:
    """A B A B A B within seconds: every change after the first goes back to the network before."""
    visits = [(2.0 * i, (HOME, CARRIER)[i % 2]) for i in range(6)]
    assert network_counts(visits) == (5, 4)


def test_a_return_is_to_the_network_before_not_any_network_seen() -> None:
    """A B C A B C: a rotation over three networks leaves none for the one before it (the definition)."""
    visits = [(2.0 * i, (HOME, CARRIER, OFFICE)[i % 3]) for i in range(6)]
    assert network_counts(visits) == (5, 0)


def test_a_return_at_exactly_return_s_counts() -> None:
    assert network_counts([(0.0, HOME), (1.0, CARRIER), (RETURN_S, HOME)]) == (2, 1)


def test_a_return_just_past_return_s_does_not_count() -> None:
    assert network_counts([(0.0, HOME), (1.0, CARRIER), (RETURN_S + 0.001, HOME)]) == (2, 0)


def test_return_s_is_measured_from_the_last_use_of_the_network_left() -> None:
    """Long on HOME, briefly away: what counts is how long the token was away, not since HOME was first used."""
    visits = [(10.0 * i, HOME) for i in range(10)] + [(91.0, CARRIER), (90.0 + RETURN_S, HOME)]
    assert network_counts(visits) == (2, 1)


def test_distinct_values_are_bounded() -> None:
    store = WindowStore(SPEC)
    for i in range(100):
        store.add("ip", T0 + i, "10.0.0.1", f"ua-{i}", 0, f"user-{i}")
    window = store.get("ip")
    assert window is not None
    assert len(window.uas) == SPEC.max_distinct and len(window.others) == SPEC.max_distinct
    assert window.overflow > 0
    assert "ua-99" in window.uas  # the newest are kept


def test_a_set_keeps_one_value_inline_until_a_second_arrives() -> None:
    store = WindowStore(SPEC)
    window = store.add("t", T0, "10.0.0.1", "ua-a", 0, "x")
    assert window.ip_many is None and window.ua_many is None and window.other_many is None  # no dict yet
    store.add("t", T0 + 5, "10.0.0.1", "ua-a", 0, "x")
    assert window.ips == {"10.0.0.1": T0 + 5} and window.uas == {"ua-a": T0 + 5} and window.others == {"x": T0 + 5}
    store.add("t", T0 + 9, "10.0.0.2", "ua-b", 0, "y")
    store.add("t", T0 + 12, "10.0.0.1", "ua-a", 0, "x")
    # Promoted to a map in the order first seen, with each value's last time.
    assert list(window.ips.items()) == [("10.0.0.1", T0 + 12), ("10.0.0.2", T0 + 9)]
    assert list(window.uas.items()) == [("ua-a", T0 + 12), ("ua-b", T0 + 9)]
    assert list(window.others.items()) == [("x", T0 + 12), ("y", T0 + 9)]
    assert window.ips_within(T0 + 10) == ["10.0.0.1"] and window.uas_within(T0) == ["ua-a", "ua-b"]
    assert window.others_within(T0 + 13) == []


def test_an_inline_value_falls_out_of_the_window_by_time() -> None:
    store = WindowStore(SPEC)
    window = store.add("t", T0, "10.0.0.1", "ua-a", 0, "x")
    assert window.ips_within(T0) == ["10.0.0.1"] and window.ips_within(T0 + 1) == []
    assert window.uas_within(T0 + 1) == [] and window.others_within(T0 + 1) == []


def test_ip_windows_keep_no_set_of_ips_and_share_their_key() -> None:
    store = WindowStore(SPEC, window_type=EntityWindow)
    key = "".join(["10.0.0.", "1"])  # a fresh string, as parsed
    window = store.add(key, T0, key, "ua", 0, "alice")
    store.add("10.0.0.1", T0 + 1, "10.0.0.1", "ua", 0, "bob")
    assert window.ips == {} and window.ips_within(T0) == [] and not isinstance(window, SubjectWindow)
    assert window.last_ip is key and window.dirty  # as a first address makes a window due
    assert window.others_within(T0) == ["alice", "bob"]


def test_user_agents_are_shared_between_windows() -> None:
    strings: dict[str, str] = {}
    tokens, subjects = WindowStore(SPEC, strings=strings), WindowStore(SPEC, strings=strings)
    ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0"
    a = tokens.add("a", T0, "10.0.0.1", "".join([ua]), 0)
    b = subjects.add("s", T0, "10.0.0.1", ua[:10] + ua[10:], 0)  # an equal string, another object
    assert a.ua_one == b.ua_one == ua and a.ua_one is b.ua_one


def _window_counts_by_loop(window: EntityWindow, now_bucket: int, buckets: int) -> tuple[list[int], int, int]:
    """The plain definition: sum each bucket of the window that the ring still holds."""
    sums, busiest, active = [0] * ROWS, 0, 0
    for bucket in range(now_bucket - buckets + 1, now_bucket + 1):
        if window.head - buckets < bucket <= window.head:
            base = (bucket % buckets) * ROWS
            if window.counts[base]:
                active += 1
                busiest = max(busiest, window.counts[base])
                sums = [total + window.counts[base + row] for row, total in enumerate(sums)]
    return sums, busiest, active


def test_window_counts_match_the_plain_definition() -> None:
    rng = random.Random(7)
    store = WindowStore(SPEC)
    ts = T0
    for _ in range(3000):
        ts += rng.choice([0.5, 3, 19, 40, 350])
        late = ts - rng.random() * (SPEC.grace_s + SPEC.bucket_s)  # some out of order, some too old for the ring
        window = store.add("t", rng.choice([ts, late]), f"10.{rng.randrange(3)}.0.1", None, rng.randrange(4))
        now_bucket = int(window.last_ts // SPEC.bucket_s)
        for probe in (now_bucket, now_bucket - 3, now_bucket + 4):
            assert window.window_counts(probe, SPEC.buckets) == _window_counts_by_loop(window, probe, SPEC.buckets)


def test_idle_entities_are_evicted_after_a_window() -> None:
    store = WindowStore(SPEC)
    store.add("old", T0, "10.0.0.1", None, 0)
    store.add("new", T0 + 400, "10.0.0.2", None, 0)
    assert store.evict_idle(watermark=T0 + 400 - SPEC.grace_s) == 1
    assert store.get("old") is None and store.get("new") is not None


def test_prefixes() -> None:
    assert prefix16("192.168.10.20") == "192.168" and prefix24("192.168.10.20") == "192.168.10"
    assert prefix16("2001:db8:1:2::1") == "2001:db8"


def test_memory_per_active_entity_is_under_a_kibibyte() -> None:
    store = WindowStore(WindowSpec())
    ips = [f"10.{i % 250}.{i % 7}.{i % 13}" for i in range(2000)]
    warm = WindowStore(WindowSpec())
    for ip in ips:  # the /16 memo is shared and bounded, not per entity: fill it first
        warm.add("warm", T0, ip, None, 0)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(2000):
        # a typical token: a handful of uses from one or two IPs with one UA
        for j in range(5):
            store.add(f"token-{i}", T0 + j * 7, ips[i] if j % 4 else ips[(i + 1) % 2000], "Mozilla/5.0", 0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / 2000 < 1024, f"{grown / 2000:.0f} bytes per entity"
