"""Event-time windows: sliding by bucket, out-of-order within grace, bounded distinct sets, eviction."""

from __future__ import annotations

import tracemalloc

from pipeline.windows import FORGED, STALE, SWITCHES, TOTAL, WindowSpec, WindowStore, prefix16, prefix24

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


def test_prefix_switches_count_alternation() -> None:
    store = WindowStore(SPEC)
    for i, ip in enumerate(["1.2.3.4", "5.6.7.8", "1.2.9.9", "5.6.0.1", "5.6.0.2"]):
        store.add("t", T0 + i, ip, None, 0)
    assert sums(store, "t", T0 + 5)[SWITCHES] == 3


def test_distinct_values_are_bounded() -> None:
    store = WindowStore(SPEC)
    for i in range(100):
        store.add("ip", T0 + i, "10.0.0.1", f"ua-{i}", 0, f"user-{i}")
    window = store.get("ip")
    assert window is not None
    assert len(window.uas) == SPEC.max_distinct and len(window.others) == SPEC.max_distinct
    assert window.overflow > 0
    assert "ua-99" in window.uas  # the newest are kept


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
