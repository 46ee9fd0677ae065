"""The Parquet archive: events, window features, scores and alerts by date and hour, committed once on disk."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from pipeline import events
from pipeline.archive import ArchiveConsumer, ArchiveWriter, ScoreRecorder, partitions, read_archive, read_features
from pipeline.bus import ALERTS, DEAD_LETTER, TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.cli import DEFAULT_MODEL_DIR as DEFAULT_MODEL
from pipeline.cli import app
from pipeline.detection.replay import replay
from pipeline.events import Alert
from pipeline.features import FEATURES
from pipeline.scoring.model import load_model
from pipeline.simulate import SimulationParams, iter_records, simulate
from pipeline.simulate.io import write_events


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


def test_scored_windows_are_archived_as_features_and_scores(tmp_path: Path) -> None:
    sim = simulate(SimulationParams(minutes=4, seed=5, browsers=10, mobile=4, services=1, offices=1))
    model = load_model(DEFAULT_MODEL)
    writer = ArchiveWriter(tmp_path)
    alerts, engine = replay(sim.events.drop(columns=["incident_id"]), model, on_scored=ScoreRecorder(writer, model))
    writer.add_event_frame(sim.events)
    writer.add("alerts", alerts)
    writer.flush()
    scores = read_archive(tmp_path, "scores")
    assert len(scores) == engine.stats.scored > 0
    assert set(scores["entity_type"]) == {"jti", "sub", "ip"}
    assert (scores["model_version"] == model.version).all()
    above = scores["score"] >= scores["threshold"]
    assert scores.loc[above, "severity"].notna().all() and scores.loc[~above, "severity"].isna().all()
    for entity_type, names in FEATURES.items():
        features = read_features(tmp_path, entity_type)
        assert list(features.columns[3 : 3 + len(names)]) == list(names)
        assert len(features) == int((scores["entity_type"] == entity_type).sum())
    assert len(read_archive(tmp_path, "scores", entity_type="ip")) == int((scores["entity_type"] == "ip").sum())
    events = read_archive(tmp_path, "events")
    assert set(events["event_id"]) == set(sim.events["event_id"])
    kinds = set(partitions(tmp_path)["kind"])
    assert kinds == {"events", "features", "scores", "alerts"} if alerts else {"events", "features", "scores"}


def test_readers_say_what_they_need(tmp_path: Path) -> None:
    assert read_archive(tmp_path, "events").empty  # nothing archived yet is not an error
    with pytest.raises(ValueError, match="kind"):
        read_archive(tmp_path, "windows")
    with pytest.raises(ValueError, match="entity_type"):
        read_archive(tmp_path, "features")


def test_detect_writes_the_archive_when_given_a_data_dir(tmp_path: Path) -> None:
    sim = simulate(SimulationParams(minutes=3, seed=6, browsers=8, mobile=3, services=1, offices=1))
    write_events(sim, tmp_path / "events.parquet")
    result = CliRunner().invoke(
        app,
        ["detect", "--events", str(tmp_path / "events.parquet"), "--alerts-out", str(tmp_path / "alerts.jsonl"),
         "--data-dir", str(tmp_path / "data")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(read_archive(tmp_path / "data", "events")) == len(sim.events)
    assert len(read_archive(tmp_path / "data", "scores")) > 0
    assert len(read_features(tmp_path / "data", "sub")) > 0


def test_a_record_arrow_cannot_hold_does_not_block_the_archive(tmp_path: Path) -> None:
    sim = simulate(SimulationParams(minutes=2, seed=8, browsers=4, mobile=2, services=1, offices=1))
    records = list(iter_records(sim))[:50]
    poison = dataclasses.replace(records[10], iat=2**63)  # valid JSON integer, beyond int64
    writer = ArchiveWriter(tmp_path)
    writer.add("events", [*records[:10], poison, *records[11:]])
    assert writer.flush() == len(records) - 1  # what was written, not what was handed over
    assert writer.unarchivable == 1
    assert writer.written["events"] == len(records) - 1
    assert len(read_archive(tmp_path, "events")) == len(records) - 1


def test_the_consumer_parks_what_it_cannot_archive_and_archives_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message that fails for a reason of its own — not parsed, or parsed but not writable — is dead-lettered
    by the archive (consumer ``jwtwatch-archive``) and the others are archived and committed."""
    # lift the parse-time bound to reach the write path
    monkeypatch.setattr("pipeline.events._checks.MAX_NESTING", 10_000)
    sim = simulate(SimulationParams(minutes=2, seed=8, browsers=4, mobile=2, services=1, offices=1))
    records = list(iter_records(sim))[:30]
    ts = records[0].ts
    alert = Alert("al-ok", ts, "jti", "j", ts, ts, 0.9, "high", "m", features={"f": 1.0})
    deep = alert.to_json().replace(b'"features":{"f":1.0}', b'"features":' + b'{"d":' * 300 + b"1" + b"}" * 300)
    bus = MemoryBus()
    for record in records:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    bus.publish(TOKEN_USAGE, "arrays", b"[" * 1000 + b"]" * 1000)
    bus.publish(ALERTS, "deep", deep)
    bus.publish(ALERTS, "ok", alert.to_json())
    archive = ArchiveConsumer(bus, ArchiveWriter(tmp_path), flush_interval_s=0.0)
    while archive.step(0.05):
        pass
    ends = archive.consumer.end_offsets()
    archive.close()
    assert bus._groups["jwtwatch-archive"].committed == ends
    assert archive.dead_letters == 2
    assert len(read_archive(tmp_path, "events")) == len(records)
    assert list(read_archive(tmp_path, "alerts")["alert_id"]) == ["al-ok"]
    letters = {m.key: orjson.loads(m.value) for m in bus.consumer([DEAD_LETTER], "r").poll(10, 0.1)}
    assert letters[b"deep"]["error"] == "TypeError: Recursion limit reached"
    assert {letter["consumer"] for letter in letters.values()} == {"jwtwatch-archive"}


def test_the_archive_is_its_owners_only_whatever_the_umask(tmp_path: Path) -> None:
    sim = simulate(SimulationParams(minutes=2, seed=8, browsers=4, mobile=2, services=1, offices=1))
    (tmp_path / "archive").mkdir(mode=0o755)  # as an older version left it
    old = os.umask(0o022)
    try:
        writer = ArchiveWriter(tmp_path)
        writer.add("events", list(iter_records(sim))[:20])
        assert writer.flush() == 20
    finally:
        os.umask(old)
    root = tmp_path / "archive"
    paths = [root, *root.rglob("*")]
    assert any(p.is_file() for p in paths) and any(p.name.startswith("hour=") for p in paths)
    for path in paths:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


def test_a_failed_flush_loses_nothing(tmp_path: Path) -> None:
    """The disk refuses (the archive root is a file here): nothing is committed, the consumer rewinds to its last
    commit, and once the disk is back every record is archived."""
    sim = simulate(SimulationParams(minutes=2, seed=8, browsers=4, mobile=2, services=1, offices=1))
    records = list(iter_records(sim))[:40]
    bus = MemoryBus()
    for record in records[:20]:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    data = tmp_path / "data"
    data.mkdir()
    (data / "archive").write_text("not a directory")
    archive = ArchiveConsumer(bus, ArchiveWriter(data), flush_interval_s=3600)
    archive.step(0.05)
    with pytest.raises(OSError):
        archive.flush()
    assert archive.dead_letters == 0  # good data is not parked for the disk's fault
    (data / "archive").unlink()
    for record in records[20:]:
        bus.publish(TOKEN_USAGE, record.bus_key, record.to_json())
    while archive.step(0.05):
        pass
    archive.close()
    assert sorted(read_archive(data, "events")["event_id"]) == sorted(r.event_id for r in records)


def test_alerts_archived_before_the_summary_existed_read_alongside_new_ones(tmp_path: Path) -> None:
    """An archive outlives versions: an hour written before alert/1 had ``summary`` (no such column) must not
    drop the column of the hours after it, whichever file the reader looks at first."""
    import pyarrow.parquet as pq

    def alert(alert_id: str, ts: str, summary: str | None) -> Alert:
        return Alert(
            alert_id=alert_id, ts=ts, entity_type="ip", entity="192.0.2.1", window_start=ts, window_end=ts,
            score=0.8, severity="high", model_version="m", ip="192.0.2.1", summary=summary,
        )  # fmt: skip

    old = events.to_arrow([alert("old", "2026-01-01T10:00:00.000Z", None)]).drop_columns(["summary"])
    old_hour = archive_root_for(tmp_path) / "alerts" / "date=2026-01-01" / "hour=10"
    old_hour.mkdir(parents=True)
    pq.write_table(old, old_hour / "part-old.parquet")
    writer = ArchiveWriter(tmp_path)
    writer.add("alerts", [alert("new", "2026-01-01T11:00:00.000Z", "IP 192.0.2.1 made 40 requests within 30 s")])
    writer.flush()
    alerts = read_archive(tmp_path, "alerts")
    assert list(alerts["alert_id"]) == ["old", "new"]
    assert alerts["summary"].isna().tolist() == [True, False]
    assert alerts["summary"].iloc[1] == "IP 192.0.2.1 made 40 requests within 30 s"


def test_alerts_archived_before_network_source_existed_read_alongside_new_ones(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    def alert(alert_id: str, ts: str, source: str | None) -> Alert:
        return Alert(
            alert_id=alert_id, ts=ts, entity_type="ip", entity="192.0.2.1", window_start=ts, window_end=ts,
            score=0.8, severity="high", model_version="m", ip="192.0.2.1", network_source=source,
        )  # fmt: skip

    # The oldest hour has neither optional column, the next one has summary only (as written before this field).
    oldest = events.to_arrow([alert("oldest", "2026-01-01T09:00:00.000Z", None)])
    older = events.to_arrow([alert("older", "2026-01-01T10:00:00.000Z", None)])
    for name, table, hour in (
        ("oldest", oldest.drop_columns(["summary", "network_source"]), 9),
        ("older", older.drop_columns(["network_source"]), 10),
    ):
        where = archive_root_for(tmp_path) / "alerts" / "date=2026-01-01" / f"hour={hour:02d}"
        where.mkdir(parents=True)
        pq.write_table(table, where / f"part-{name}.parquet")
    writer = ArchiveWriter(tmp_path)
    writer.add("alerts", [alert("new", "2026-01-01T11:00:00.000Z", "mmdb:GeoLite2-ASN(2026-11-30)")])
    writer.add("alerts", [alert("plain", "2026-01-01T11:30:00.000Z", "prefix")])
    writer.flush()
    alerts = read_archive(tmp_path, "alerts")
    assert list(alerts["alert_id"]) == ["oldest", "older", "new", "plain"]
    assert alerts["network_source"].isna().tolist() == [True, True, False, False]
    assert alerts["network_source"].tolist()[2:] == ["mmdb:GeoLite2-ASN(2026-11-30)", "prefix"]


def archive_root_for(data_dir: Path) -> Path:
    from pipeline.archive import archive_root

    return archive_root(data_dir)
