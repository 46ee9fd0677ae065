"""The Parquet archive: events and alerts partitioned by date and hour, committed only once on disk."""

from __future__ import annotations

from pathlib import Path

from pipeline.archive import ArchiveConsumer, ArchiveWriter, read_archive
from pipeline.bus import ALERTS, TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import Alert
from pipeline.simulate import SimulationParams, iter_records, simulate


def test_bus_traffic_lands_in_hourly_partitions(tmp_path: Path) -> None:
    sim = simulate(SimulationParams(minutes=90, seed=3, browsers=20, mobile=5, services=1, offices=1))
    records = list(iter_records(sim))
    bus = MemoryBus()
    for record in records:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    alert = Alert(
        alert_id="a-1", ts=records[5].ts, entity_type="ip", entity=records[5].ip, window_start=records[0].ts,
        window_end=records[5].ts, score=0.8, severity="high", model_version="m", ip=records[5].ip,
        reasons=[{"rule": "forged_probing", "text": "x"}],
    )  # fmt: skip
    bus.publish(ALERTS, alert.alert_id, alert.to_json())
    consumer = ArchiveConsumer(bus, ArchiveWriter(tmp_path), flush_records=10**9, flush_interval_s=3600)
    while consumer.step(timeout_s=0.01):
        pass
    assert not list((tmp_path / "archive").glob("**/*.parquet"))  # nothing flushed yet ...
    consumer.close()  # ... until now
    hours = sorted(p.name for p in (tmp_path / "archive" / "events").glob("date=*/hour=*"))
    assert len(hours) >= 2  # 90 minutes span at least two hours
    events = read_archive(tmp_path, "events")
    assert len(events) == len(records)
    assert set(events["event_id"]) == {r.event_id for r in records}
    alerts = read_archive(tmp_path, "alerts")
    assert list(alerts["alert_id"]) == ["a-1"]


def test_offsets_are_committed_only_after_the_files_are_written(tmp_path: Path) -> None:
    sim = simulate(SimulationParams(minutes=5, seed=4, browsers=5, mobile=2, services=1, offices=1))
    bus = MemoryBus()
    for record in iter_records(sim):
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    first = ArchiveConsumer(bus, ArchiveWriter(tmp_path), flush_records=10**9, flush_interval_s=3600)
    first.step(timeout_s=0.01)
    first.consumer.close()  # a crash before the flush: nothing was committed ...
    second = ArchiveConsumer(bus, ArchiveWriter(tmp_path), flush_records=10**9, flush_interval_s=3600)
    while second.step(timeout_s=0.01):
        pass
    second.close()
    assert len(read_archive(tmp_path, "events")) == len(sim.events)  # ... so nothing was lost
