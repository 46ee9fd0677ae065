"""Reading token-usage/1 files for ``train``/``detect``: every good event kept, every bad line named by number."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.detection.sources import read_events
from pipeline.events import ts_to_epoch_ms
from pipeline.simulate import SimulationParams, iter_records, simulate
from pipeline.simulate.io import write_events


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    sim = simulate(SimulationParams(minutes=3, seed=3, browsers=20, mobile=8, services=1, offices=1))
    return sim.events.drop(columns="incident_id")


@pytest.fixture(scope="module")
def records(events: pd.DataFrame) -> list[dict]:
    return [r.to_dict() for r in iter_records(events.iloc[:40])]


def _line(record: dict, **changes: object) -> bytes:
    out = dict(record)
    for name, value in changes.items():
        if value is ...:
            del out[name]
        else:
            out[name] = value
    return orjson.dumps(out)


# Bad rows a JSON parser can read, each with the field its message must name. The timestamps that are "out of
# range" are fine as text but leave the range of a UTC datetime once their offset is applied.
SEMANTIC_BAD = [
    ("wrong schema", {"schema": "token-usage/2"}, "schema"),
    ("missing field", {"ip": ...}, "ip"),
    ("bad ip", {"ip": "999.1.1.1"}, "ip"),
    ("bad uuid", {"event_id": "not-a-uuid"}, "event_id"),
    ("accepted with reason", {"outcome": "accepted", "reason": "expired"}, "reason"),
    ("ts without offset", {"ts": "2026-09-21T12:00:00.000"}, "ts"),
    ("ts not a date", {"ts": "2026-13-01T00:00:00.000Z"}, "ts"),
]
OUT_OF_RANGE_TS = [
    ("ts before year 1 in UTC", {"ts": "0001-01-01T00:00:00.000+01:00"}, "ts"),
    ("ts after year 9999 in UTC", {"ts": "9999-12-31T23:59:59.000-01:00"}, "ts"),
]


def _assert_reported(result, path: Path, expected: dict[int, str]) -> None:
    """Exactly the expected line numbers are reported, each naming its field."""
    reported = {bad.line: bad.error for bad in result.bad}
    assert sorted(reported) == sorted(expected), reported
    for number, field in expected.items():
        assert field in reported[number], (number, reported[number])
    assert all(bad.path == str(path) for bad in result.bad)


# ------------------------------------------------------------------------------------- good files


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "parquet"])
def test_files_written_by_the_simulator_read_back_whole(events: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events.{suffix}"
    write_events(events, path)
    result = read_events([path])
    assert result.bad == []
    assert result.files == 1
    frame = result.frame
    assert len(frame) == len(events)
    assert frame["ts"].dtype == "int64"
    assert frame["ts"].is_monotonic_increasing
    # ts as epoch milliseconds, exactly the simulator's; same events in the same (stable) order.
    assert frame["ts"].tolist() == events["ts"].tolist()
    assert frame["event_id"].tolist() == events["event_id"].tolist()
    assert frame["ip"].tolist() == events["ip"].tolist()
    assert frame["reason"].isna().tolist() == events["reason"].isna().tolist()


def test_events_are_sorted_by_event_time_across_files(events: pd.DataFrame, tmp_path: Path) -> None:
    shuffled = events.sample(frac=1.0, random_state=7)
    write_events(shuffled.iloc[: len(events) // 2], tmp_path / "a.jsonl")
    write_events(shuffled.iloc[len(events) // 2 :], tmp_path / "b.parquet")
    result = read_events([tmp_path / "a.jsonl", tmp_path / "b.parquet"])
    assert result.files == 2
    assert len(result.frame) == len(events)
    assert result.frame["ts"].is_monotonic_increasing
    assert sorted(result.frame["event_id"]) == sorted(events["event_id"])


def test_ts_is_epoch_milliseconds_of_the_wire_timestamp(records: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "offsets.jsonl"
    lines = [
        _line(records[0], ts="2026-09-21T12:00:00.123Z"),
        _line(records[1], ts="2026-09-21T14:00:00.456+02:00"),  # the same instant as 12:00:00.456Z
        _line(records[2], ts="2026-09-21T11:59:59.999Z"),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = read_events([path])
    assert result.bad == []
    assert result.frame["ts"].tolist() == [
        ts_to_epoch_ms("2026-09-21T11:59:59.999Z"),
        ts_to_epoch_ms("2026-09-21T12:00:00.123Z"),
        ts_to_epoch_ms("2026-09-21T12:00:00.456Z"),
    ]


# -------------------------------------------------------------------------------------- bad lines


def test_bad_lines_mixed_in_are_reported_by_number_and_the_rest_kept(records: list[dict], tmp_path: Path) -> None:
    lines: list[bytes] = []
    expected: dict[int, str] = {}
    good = 0

    def add_good() -> None:
        nonlocal good
        lines.append(orjson.dumps(records[len(lines)]))
        good += 1

    def add_bad(raw: bytes, field: str) -> None:
        lines.append(raw)
        expected[len(lines)] = field

    add_good()
    add_bad(b"{not json", "json")
    add_good()
    add_bad(b"\xff\xfe\x80 binary \xc3\x28 garbage", "json")
    add_bad(b"[1, 2, 3]", "record")
    for _, changes, field in SEMANTIC_BAD + OUT_OF_RANGE_TS:
        add_bad(_line(records[len(lines)], **changes), field)
        add_good()
    lines.append(b"")  # blank lines are neither events nor errors
    add_good()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = read_events([path])  # does not raise
    _assert_reported(result, path, expected)
    assert len(result.frame) == good
    assert result.frame["ts"].is_monotonic_increasing
    kept = set(result.frame["event_id"])
    assert kept == {orjson.loads(lines[n])["event_id"] for n in range(len(lines)) if n + 1 not in expected and lines[n]}


def test_bad_lines_in_a_file_of_json_objects_are_reported_by_number(records: list[dict], tmp_path: Path) -> None:
    """Every line is JSON of the right shape (Arrow's fast path): the checks on the columns find the rest."""
    lines = [orjson.dumps(records[0]), b""]
    expected: dict[int, str] = {}
    for i, (_, changes, field) in enumerate(SEMANTIC_BAD, start=1):
        lines.append(_line(records[i], **changes))
        expected[len(lines)] = field
        lines.append(orjson.dumps(records[20 + i]))
    path = tmp_path / "objects.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = read_events([path])
    _assert_reported(result, path, expected)
    assert len(result.frame) == 1 + len(SEMANTIC_BAD)


def test_bad_lines_in_a_gzipped_file_are_reported_by_number(records: list[dict], tmp_path: Path) -> None:
    lines = [orjson.dumps(records[0]), b"oops", orjson.dumps(records[1]), _line(records[2], ip="10.0.0.256")]
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    result = read_events([path])
    _assert_reported(result, path, {2: "json", 4: "ip"})
    assert len(result.frame) == 2


def test_crlf_line_endings_keep_line_numbers(records: list[dict], tmp_path: Path) -> None:
    lines = [orjson.dumps(records[0]), _line(records[1], event_id="x"), b"oops", orjson.dumps(records[2])]
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    result = read_events([path])
    _assert_reported(result, path, {2: "event_id", 3: "json"})
    assert len(result.frame) == 2


def test_a_carriage_return_inside_a_garbage_line_does_not_shift_line_numbers(
    records: list[dict], tmp_path: Path
) -> None:
    """JSON Lines are separated by "\\n" (as `wc -l`, editors and Arrow count them): a stray "\\r" in a binary
    line is part of that line, not a line break of its own."""
    lines = [orjson.dumps(records[0]), b"\xff\r\xfe", orjson.dumps(records[1]), _line(records[2], ip="nope"), b"x"]
    path = tmp_path / "cr.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = read_events([path])
    _assert_reported(result, path, {2: "json", 4: "ip", 5: "json"})
    assert len(result.frame) == 2


# Values one reading path might let through: every path must refuse them alike.
EDGE_VALUES = [
    *OUT_OF_RANGE_TS,
    ("uuid with a trailing newline", {"event_id": "6f4776d0-eeb6-416f-9b40-2deb6511670f\n"}, "event_id"),
    ("uuid without hyphens", {"event_id": "6f4776d0eeb6416f9b402deb6511670f"}, "event_id"),
    ("ip with a trailing newline", {"ip": "10.0.0.1\n"}, "ip"),
]


@pytest.mark.parametrize("path_kind", ["jsonl line by line", "jsonl fast path", "parquet"])
@pytest.mark.parametrize(
    ("case", "changes", "field"), [(c, ch, f) for c, ch, f in EDGE_VALUES], ids=[c for c, *_ in EDGE_VALUES]
)
def test_edge_values_are_refused_on_every_path(
    records: list[dict], tmp_path: Path, path_kind: str, case: str, changes: dict, field: str
) -> None:
    """The module promises the exact same rules on the columns (fast path, Parquet) as line by line."""
    rows = [records[0], {**records[1], **changes}, records[2]]
    if path_kind == "parquet":
        path = tmp_path / "events.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path = tmp_path / "events.jsonl"
        lines = [orjson.dumps(row) for row in rows]
        if path_kind == "jsonl line by line":
            lines.append(b"not json")  # forces the line-by-line reader
        path.write_bytes(b"\n".join(lines) + b"\n")
    result = read_events([path])
    assert 2 in {bad.line for bad in result.bad}, (case, result.frame[field].tolist())
    assert field in next(bad.error for bad in result.bad if bad.line == 2)
    assert len(result.frame) == 2


def test_bad_rows_in_parquet_with_timestamp_column_are_reported_by_row(events: pd.DataFrame, tmp_path: Path) -> None:
    frame = events.iloc[:12].copy().reset_index(drop=True)
    frame.loc[1, "ip"] = "999.1.1.1"
    frame.loc[3, "event_id"] = "not-a-uuid"
    frame.loc[4, "ip"] = None
    frame.loc[6, "outcome"] = "accepted"
    frame.loc[6, "reason"] = "expired"
    frame.loc[9, "outcome"] = "rejected"
    frame.loc[9, "reason"] = None
    path = tmp_path / "bad.parquet"
    write_events(frame, path)
    result = read_events([path])
    _assert_reported(result, path, {2: "ip", 4: "event_id", 5: "ip", 7: "reason", 10: "reason"})
    assert len(result.frame) == 12 - 5
    assert set(result.frame["event_id"]) == set(frame["event_id"].drop([1, 3, 4, 6, 9]))


def test_bad_rows_in_parquet_with_string_columns_are_reported_by_row(records: list[dict], tmp_path: Path) -> None:
    """A parquet file from another producer: every column a string, ``ts`` as RFC 3339 text."""
    rows: list[dict] = []
    expected: dict[int, str] = {}
    for i, (_, changes, field) in enumerate(SEMANTIC_BAD):
        rows.append(records[20 + i])
        row = dict(records[i])
        for name, value in changes.items():
            row[name] = None if value is ... else value
        rows.append(row)
        expected[len(rows)] = field
    path = tmp_path / "strings.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = read_events([path])
    _assert_reported(result, path, expected)
    assert len(result.frame) == len(SEMANTIC_BAD)
    assert result.frame["ts"].dtype == "int64"


# ---------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", ["events.csv", "events.json.bz2", "events.txt", "events"])
def test_unknown_extension_is_a_value_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown format"):
        read_events([path])


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "parquet"])
def test_an_empty_file_gives_an_empty_frame(events: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty.{suffix}"
    if suffix == "jsonl":
        path.write_bytes(b"")
    elif suffix == "jsonl.gz":
        path.write_bytes(gzip.compress(b""))
    else:
        write_events(events.iloc[:0], path)
    result = read_events([path])
    assert result.bad == []
    assert result.frame.empty
    assert "ts" in result.frame


def test_an_empty_file_beside_a_full_one_changes_nothing(events: pd.DataFrame, tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    write_events(events, tmp_path / "full.jsonl")
    result = read_events([tmp_path / "empty.jsonl", tmp_path / "full.jsonl"])
    assert result.bad == []
    assert result.frame["ts"].tolist() == events["ts"].tolist()
