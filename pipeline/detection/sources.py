"""Reading token-usage/1 files (.jsonl, .jsonl.gz, .parquet) for ``train`` and ``detect``.

Fast path: Arrow's C++ readers parse the whole file into columns, then every rule of the record is
checked on the columns (unique values only where a check is per value, such as IP syntax). When Arrow
cannot parse a JSON file at all (a broken line), the file is read line by line with the exact same
rules (:meth:`TokenUsage.from_json`), so every bad line is reported with its number and skipped — one
bad line never loses the rest of the file.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline.errors import RecordError
from pipeline.events import EARLIEST_TS, LATEST_TS, OUTCOMES, REASON_SET, TOKEN_USAGE_SCHEMA, UUID_PATTERN, TokenUsage

STRING_FIELDS = ("event_id", "ts", "jti", "sub", "iss", "aud", "client_id", "ip", "user_agent", "outcome", "reason",
                 "service", "method", "path")  # fmt: skip
INT_FIELDS = ("iat", "exp")
_JSON_SCHEMA = pa.schema(
    [("schema", pa.string())] + [(n, pa.string()) for n in STRING_FIELDS] + [(n, pa.int64()) for n in INT_FIELDS]
)


@dataclass
class BadLine:
    path: str
    line: int
    error: str


@dataclass
class ReadResult:
    frame: pd.DataFrame
    bad: list[BadLine] = field(default_factory=list)
    files: int = 0


def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _arrow(values: pd.Series) -> pa.Array:
    return pa.array(values.astype(object).where(values.notna(), None), type=pa.string())


def _check_unique(values: pd.Series, check: Callable[[str], bool]) -> np.ndarray:
    """Apply a per-value check to the unique values only; a boolean mask for the whole column."""
    column = _arrow(values)
    uniques = pc.unique(column.drop_null()).to_pylist()
    good = pa.array([v for v in uniques if check(v)], type=pa.string())
    mask: np.ndarray = pc.fill_null(pc.is_in(column, value_set=good), False).to_numpy(zero_copy_only=False)
    return mask


def _matches(values: pd.Series, pattern: str) -> np.ndarray:
    mask: np.ndarray = pc.fill_null(pc.match_substring_regex(_arrow(values), pattern), False).to_numpy(
        zero_copy_only=False
    )
    return mask


def validate_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Check every token-usage/1 rule on the columns; returns the good rows and (row, error) for the rest."""
    problems: list[tuple[np.ndarray, str]] = []
    if "schema" in frame:
        problems.append((frame["schema"].to_numpy(dtype=object) == TOKEN_USAGE_SCHEMA, "schema is not token-usage/1"))
    for name in ("event_id", "ts", "ip", "outcome"):
        problems.append((frame[name].notna().to_numpy(), f"field {name!r} missing"))
    problems.append((_matches(frame["event_id"], UUID_PATTERN), "field 'event_id' is not a UUID"))
    problems.append((_check_unique(frame["ip"], _valid_ip), "field 'ip' is not an IP address"))
    problems.append((frame["outcome"].isin(OUTCOMES).to_numpy(), "field 'outcome' is not accepted/rejected"))
    reason = frame["reason"]
    problems.append(((reason.isna() | reason.isin(REASON_SET)).to_numpy(), "field 'reason' is not a known reason"))
    accepted = (frame["outcome"] == "accepted").to_numpy()
    problems.append((accepted == reason.isna().to_numpy(), "accepted events have no reason; rejected ones have one"))
    if pd.api.types.is_datetime64_any_dtype(frame["ts"]):  # Parquet: already a UTC timestamp column
        ts = frame["ts"].dt.tz_convert("UTC") if frame["ts"].dt.tz is not None else frame["ts"].dt.tz_localize("UTC")
        has_offset = np.ones(len(frame), dtype=bool)
    else:
        ts = pd.to_datetime(frame["ts"], utc=True, errors="coerce", format="ISO8601")
        has_offset = frame["ts"].astype(str).str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True).to_numpy()
    problems.append((ts.notna().to_numpy() & has_offset, "field 'ts' is not an RFC 3339 timestamp with offset"))
    in_range = ((ts >= pd.Timestamp(EARLIEST_TS)) & (ts < pd.Timestamp(LATEST_TS))).fillna(False).to_numpy(dtype=bool)
    problems.append((in_range, "field 'ts' is outside 1970..2100"))
    good = np.ones(len(frame), dtype=bool)
    errors: dict[int, str] = {}
    for mask, message in problems:
        for index in np.flatnonzero(good & ~mask):
            errors[int(index)] = message
        good &= mask
    out = frame.loc[good].copy()
    out["ts"] = (
        (ts[good].astype("int64") // 1_000_000).astype("int64") if ts.dt.unit == "ns" else ts[good].astype("int64")
    )
    out["ts"] = _as_epoch_ms(ts[good])
    return out, sorted(errors.items())


def _as_epoch_ms(ts: pd.Series) -> pd.Series:
    unit_per_ms = {"s": 1e-3, "ms": 1, "us": 1_000, "ns": 1_000_000}[ts.dt.unit]
    return (ts.astype("int64") // unit_per_ms if unit_per_ms >= 1 else ts.astype("int64") * 1000).astype("int64")


def _frame_from_records(records: Iterable[TokenUsage]) -> pd.DataFrame:
    rows = [r.to_dict() for r in records]
    columns = ("schema", *STRING_FIELDS, *INT_FIELDS)
    frame = pd.DataFrame({c: [row.get(c) for row in rows] for c in columns})
    for name in INT_FIELDS:
        frame[name] = frame[name].astype("Int64")
    return frame


def _read_json_lines(path: Path, bad: list[BadLine]) -> pd.DataFrame:
    data = _open_bytes(path)
    try:
        table = pajson.read_json(
            io.BytesIO(data),
            parse_options=pajson.ParseOptions(explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore"),
            read_options=pajson.ReadOptions(block_size=1 << 24),
        )
        frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        lines = None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Some line is not JSON or not of the schema: find each such line exactly, keep the rest.
        records = []
        lines = []
        for number, raw in enumerate(_lines(data), start=1):
            if not raw.strip():
                continue
            try:
                records.append(TokenUsage.from_json(raw))
                lines.append(number)
            except RecordError as exc:
                bad.append(BadLine(str(path), number, str(exc)))
        frame = _frame_from_records(records)
    frame, errors = validate_frame(frame)
    numbers = _line_numbers(data) if lines is None else lines
    bad.extend(BadLine(str(path), numbers[row], message) for row, message in errors)
    return frame


def _line_numbers(data: bytes) -> list[int]:
    """Line number of each non-blank line (what Arrow's rows correspond to)."""
    return [n for n, raw in enumerate(_lines(data), start=1) if raw.strip()]


def _lines(data: bytes) -> list[bytes]:
    """JSON Lines are split on \\n only: a stray \\r inside a garbage line must not shift line numbers."""
    return [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]


def _read_parquet(path: Path, bad: list[BadLine]) -> pd.DataFrame:
    table = pq.read_table(path)
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    for name in STRING_FIELDS:
        if name not in frame:
            frame[name] = None
    for name in ("outcome", "reason"):
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    frame, errors = validate_frame(frame)
    bad.extend(BadLine(str(path), row + 1, message) for row, message in errors)
    return frame


def read_events(paths: Iterable[Path]) -> ReadResult:
    """Read and check token-usage/1 files; events sorted by event time (stable)."""
    frames = []
    bad: list[BadLine] = []
    count = 0
    for path in map(Path, paths):
        count += 1
        name = path.name.lower()
        if name.endswith(".parquet"):
            frames.append(_read_parquet(path, bad))
        elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
            frames.append(_read_json_lines(path, bad))
        else:
            raise ValueError(f"{path}: unknown format (expected .jsonl, .jsonl.gz or .parquet)")
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*STRING_FIELDS, *INT_FIELDS])
    frame = frame.sort_values("ts", kind="stable", ignore_index=True)
    return ReadResult(frame, bad, count)
