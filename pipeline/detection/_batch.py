"""A micro-batch of usage events in columns — what the engine consumes, from the bus or from files."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import msgspec
import numpy as np
import orjson
import pandas as pd

from pipeline.events import (
    MAX_STRING,
    OUTCOMES,
    REASON_SET,
    TOKEN_USAGE_SCHEMA,
    UUID_PATTERN,
    TokenUsage,
    event_time_ms,
    is_ip,
    second_start_ms,
    ts_to_epoch_ms,
)

COLUMNS = ("ts", "jti", "sub", "client_id", "ip", "user_agent", "reason", "iat", "exp")

#: One event as the engine reads it: the values of ``COLUMNS`` in that order (``ts`` in epoch seconds).
Row = tuple[float, str | None, str | None, str | None, str, str | None, str | None, int | None, int | None]


@dataclass
class EventBatch:
    """Parallel lists, one entry per event; ``ts`` in epoch seconds (float), ``reason`` None = accepted."""

    ts: list[float] = field(default_factory=list)
    jti: list[str | None] = field(default_factory=list)
    sub: list[str | None] = field(default_factory=list)
    client_id: list[str | None] = field(default_factory=list)
    ip: list[str] = field(default_factory=list)
    user_agent: list[str | None] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)
    iat: list[int | None] = field(default_factory=list)
    exp: list[int | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def append(self, event: TokenUsage, ts_s: float | None = None) -> None:
        """Add one event; ``ts_s`` saves parsing its timestamp again when the caller already has it."""
        self.ts.append(ts_to_epoch_ms(event.ts) / 1000.0 if ts_s is None else ts_s)
        self.jti.append(event.jti)
        self.sub.append(event.sub)
        self.client_id.append(event.client_id)
        self.ip.append(event.ip)
        self.user_agent.append(event.user_agent)
        self.reason.append(event.reason)
        self.iat.append(event.iat)
        self.exp.append(event.exp)

    @classmethod
    def from_rows(cls, rows: Sequence[Row]) -> EventBatch:
        """Columns of the rows — as tuples, which the engine only reads (no copy into lists)."""
        if not rows:
            return cls()
        return cls(*zip(*rows, strict=True))  # type: ignore[arg-type]  # tuples for lists: only read

    @classmethod
    def from_records(cls, records: Iterable[TokenUsage]) -> EventBatch:
        batch = cls()
        for record in records:
            batch.append(record)
        return batch

    def slice(self, start: int, stop: int) -> EventBatch:
        return EventBatch(*(getattr(self, name)[start:stop] for name in COLUMNS))


def _nullable(series: pd.Series) -> list[Any]:
    """Column values with every kind of missing (None, NaN, pd.NA) as None."""
    return series.astype(object).where(series.notna(), None).tolist()


def frame_to_batch(frame: pd.DataFrame) -> EventBatch:
    """A DataFrame of token-usage/1 columns (``ts`` as epoch ms, or datetimes) as one batch."""
    ts = frame["ts"]
    if pd.api.types.is_datetime64_any_dtype(ts):
        per_second = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[ts.dt.unit]
        seconds = (ts.astype("int64") / per_second).tolist()
    else:
        seconds = (ts.astype("int64") / 1000.0).tolist()
    return EventBatch(
        ts=seconds,
        jti=_nullable(frame["jti"]),
        sub=_nullable(frame["sub"]),
        client_id=_nullable(frame["client_id"]),
        ip=frame["ip"].astype(str).tolist(),
        user_agent=_nullable(frame["user_agent"]),
        reason=_nullable(frame["reason"]),
        iat=_nullable(frame["iat"]),
        exp=_nullable(frame["exp"]),
    )


def micro_batches(batch: EventBatch, max_events: int = 4096, max_span_s: float = 1.0) -> Iterator[EventBatch]:
    """Cut an event-time-ordered batch into micro-batches of at most ``max_span_s`` of event time."""
    ts = batch.ts
    start = 0
    n = len(ts)
    while start < n:
        stop = min(start + max_events, n)
        limit = ts[start] + max_span_s
        if ts[stop - 1] >= limit:
            lo, hi = start + 1, stop - 1
            while lo < hi:  # first index at or past the span
                mid = (lo + hi) // 2
                if ts[mid] >= limit:
                    hi = mid
                else:
                    lo = mid + 1
            stop = lo
        yield batch.slice(start, stop)
        start = stop


# ------------------------------------------------------------------------------ decoding from the bus
#
# The streaming runner decodes a poll in slices of ``DECODE_SLICE`` messages and never builds a ``TokenUsage``:
# msgspec decodes each message into a typed struct (``_Wire``: the type of every field checked in C), and every
# other rule of ``TokenUsage.from_json`` is checked once per slice on the columns — the schema, the (outcome,
# reason) pairs, the distinct IPs, event ids and timestamps as byte grids in numpy. A slice the typed path cannot
# take (a message that is not such an object) goes through orjson into tuples of its fields, and only a slice
# that fails a column check is checked row by row, to find the culprits. A message the decoder refuses is parsed
# again by ``from_json``, whose error names the field; the decoder accepts exactly what ``from_json`` accepts
# (tests/detection/test_runner_decode.py checks them side by side on hostile records, on both paths).


def _wire_specs(record: type) -> list[tuple[Any, ...]]:
    """msgspec field specs for the fields of a record dataclass, in its order after ``schema``: a required field
    is a str that must be present and not null; an optional one is an exact int (``int`` in its type: a JSON true
    is a bool) or a str, or null. Extra fields are ignored (as by ``from_json``); a duplicate key's last value
    wins (as with orjson). ``schema`` may be missing or null here: ``_columns_valid`` refuses any value other
    than the record's schema, as ``from_json`` does."""
    hints = typing.get_type_hints(record)
    specs: list[tuple[Any, ...]] = [("schema", str | None, None)]
    for spec in dataclasses.fields(record):
        kind = int if int in typing.get_args(hints[spec.name]) else str
        specs.append((spec.name, kind) if spec.default is dataclasses.MISSING else (spec.name, kind | None, None))
    return specs


_WIRE_SPECS = _wire_specs(TokenUsage)
#: token-usage/1 as the decoder reads it, derived from ``TokenUsage``: msgspec checks every field's type in C.
_Wire = msgspec.defstruct("_Wire", _WIRE_SPECS, kw_only=True, gc=False)
#: The fields of token-usage/1 in the order the decoder reads them.
_FIELDS: tuple[str, ...] = _Wire.__struct_fields__
_SCHEMA, _EVENT_ID, _TS, _IP, _OUTCOME, _REASON, _JTI, _SUB, _CLIENT_ID, _USER_AGENT, _IAT, _EXP = map(
    _FIELDS.index,
    ("schema", "event_id", "ts", "ip", "outcome", "reason", "jti", "sub", "client_id", "user_agent", "iat", "exp"),
)
_GET_FIELDS = itemgetter(*_FIELDS)
#: Allowed types per field (after ``schema``), in ``_FIELDS`` order: a type signature is a tuple of types.
_TYPES = tuple(set(typing.get_args(spec[1])) or {spec[1]} for spec in _WIRE_SPECS[1:])
#: (outcome, reason): accepted events have no reason, rejected ones a known one (TokenUsage.__post_init__).
_OUTCOME_REASON = frozenset({("accepted", None), *(("rejected", reason) for reason in REASON_SET)})
if {o for o, _ in _OUTCOME_REASON} != OUTCOMES:  # _OUTCOME_REASON spells the outcomes out
    raise ImportError("token-usage/1 outcomes changed: update _OUTCOME_REASON in pipeline/detection/batch.py")

_UUID = re.compile(UUID_PATTERN)
_UUID_DASHES = np.array([8, 13, 18, 23])
_UUID_HEX = np.setdiff1d(np.arange(36), _UUID_DASHES)
_IS_HEX = np.zeros(256, dtype=bool)
_IS_HEX[[ord(c) for c in "0123456789abcdefABCDEF"]] = True
# The canonical timestamp (format_ts): YYYY-MM-DDTHH:MM:SS.mmmZ.
_TS_SEPARATORS = {4: "-", 7: "-", 10: "T", 13: ":", 16: ":", 19: ".", 23: "Z"}
_TS_SEP_AT = np.array(list(_TS_SEPARATORS))
_TS_SEP = np.frombuffer("".join(_TS_SEPARATORS.values()).encode(), dtype=np.uint8)
_TS_DIGITS = np.array([i for i in range(24) if i not in _TS_SEPARATORS])
_TS_SECOND_DIGITS = _TS_DIGITS[:-3]  # YYYYMMDDhhmmss
_TS_MS_DIGITS = np.array([20, 21, 22])
_POWERS = 10 ** np.arange(len(_TS_SECOND_DIGITS) - 1, -1, -1, dtype=np.int64)


_decode_wire = msgspec.json.Decoder(_Wire).decode
_wire_fields = msgspec.structs.astuple


#: Messages decoded together. A poll is decoded in slices of this many, so that one slice's structs, strings and
#: tuples stay in the CPU cache: a 16,384-message poll decoded at once took 1.7x as long per message on this
#: machine as in slices of 1,024-4,096 (docs/performance.md, "Typed hot path").
DECODE_SLICE = 2048


def decode_rows(values: Sequence[bytes]) -> list[Row | None]:
    """Decode token-usage/1 messages into engine rows; ``None`` where ``TokenUsage.from_json`` would fail."""
    if len(values) <= DECODE_SLICE:
        return _decode_slice(values)
    rows: list[Row | None] = []
    for start in range(0, len(values), DECODE_SLICE):
        rows.extend(_decode_slice(values[start : start + DECODE_SLICE]))
    return rows


def _decode_slice(values: Sequence[bytes]) -> list[Row | None]:
    if not values:
        return []
    # A JSON string takes at least one byte per character: no string is too long in a short message.
    short = max(map(len, values)) <= MAX_STRING
    columns = _typed_columns(values)
    if columns is not None and short and _columns_valid(columns, typed=True):
        bad: set[int] = set()
    else:  # some message is not what the fast path expects: every rule, and row by row where a column fails
        fields = _field_tuples(values)
        columns = list(zip(*fields, strict=True))
        if short and _columns_valid(columns):
            bad = set()
        else:
            bad = {i for i, row in enumerate(fields) if not _fields_valid(row, len(values[i]))}
    times = _event_times_ms(columns[_TS])
    seconds = [ms / 1000.0 if ms is not None else 0.0 for ms in times]
    if None in times:
        bad.update(i for i, ms in enumerate(times) if ms is None)
    rows: list[Row | None] = list(
        zip(seconds, columns[_JTI], columns[_SUB], columns[_CLIENT_ID], columns[_IP], columns[_USER_AGENT],
            columns[_REASON], columns[_IAT], columns[_EXP], strict=True)
    )  # fmt: skip
    for i in bad:
        rows[i] = None
    return rows


def _typed_columns(values: Sequence[bytes]) -> list[Any] | None:
    """The columns of the messages, every value's type checked — or None if any message is not a JSON object
    of such fields (then the slice takes the orjson path, which finds the culprits)."""
    try:
        wires = list(map(_decode_wire, values))
    except (msgspec.MsgspecError, ValueError):  # not JSON, a wrong type, a required field missing, bad UTF-8
        return None
    # Each message's fields as one tuple, then the tuples turned into columns: both in C.
    return list(zip(*map(_wire_fields, wires), strict=True))


def _field_tuples(values: Sequence[bytes]) -> list[tuple[Any, ...]]:
    """Each message's fields in ``_FIELDS`` order; a missing field reads as null (as in ``from_json``,
    where a missing optional field is null and a missing required one is refused anyway)."""
    try:
        # All in C: each dict is dropped as soon as its fields are taken.
        return list(map(_GET_FIELDS, map(orjson.loads, values)))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return [_fields_of(value) for value in values]


_NOT_A_RECORD = (None,) * len(_FIELDS)  # schema None: refused


def _fields_of(value: bytes) -> tuple[Any, ...]:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _NOT_A_RECORD
    if type(data) is not dict:
        return _NOT_A_RECORD
    return tuple(data.get(name) for name in _FIELDS)


def _columns_valid(columns: list[Any], typed: bool = False) -> bool:
    """Every rule but the timestamp's, on whole columns. False means: look row by row.

    ``typed``: msgspec has checked every value's type already, and that the required fields are present and
    not null (``_typed_columns``)."""
    schema, event_id, ip, outcome, reason = (columns[i] for i in (_SCHEMA, _EVENT_ID, _IP, _OUTCOME, _REASON))
    if schema.count(TOKEN_USAGE_SCHEMA) != len(schema):
        return False
    # A row's type signature is valid when each of its fields is: so per column, the set of types (in C).
    if not typed and not all(
        set(map(type, column)) <= allowed for column, allowed in zip(columns[1:], _TYPES, strict=True)
    ):
        return False
    # Only str, int and None from here on: every value is hashable.
    if not set(zip(outcome, reason, strict=True)) <= _OUTCOME_REASON:
        return False
    if not all(map(_int64_or_none, set(columns[_IAT]) | set(columns[_EXP]))):
        return False
    return all(map(is_ip, set(ip))) and _uuids_valid(event_id)


def _int64_or_none(value: int | None) -> bool:
    """What ``TokenUsage.from_json`` allows for iat and exp (once their type is checked)."""
    return value is None or -(2**63) <= value < 2**63


def _signature_valid(signature: tuple[type, ...]) -> bool:
    return all(kind in allowed for kind, allowed in zip(signature, _TYPES, strict=True))


def _ascii_grid(column: Sequence[str], width: int) -> np.ndarray | None:
    """The column as an (n, width) byte array, if every value is an ASCII str of ``width`` characters."""
    if set(map(type, column)) != {str} or set(map(len, column)) != {width}:
        return None
    joined = "".join(column)
    if not joined.isascii():
        return None
    return np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(len(column), width)


def _uuids_valid(column: Sequence[str]) -> bool:
    grid = _ascii_grid(column, 36)
    if grid is None:
        return all(_UUID.fullmatch(value) for value in column)
    return bool((grid[:, _UUID_DASHES] == ord("-")).all() and _IS_HEX[grid[:, _UUID_HEX]].all())


def _event_times_ms(column: Sequence[Any]) -> list[int | None]:
    """Epoch ms per timestamp, None where ``from_json`` refuses it.

    Canonical timestamps are read as a byte grid; each distinct second is parsed and range-checked once
    (``event_time_ms``'s memo). Any other form goes through ``event_time_ms`` one by one.
    """
    grid = _ascii_grid(column, 24)
    if grid is None or not ((grid[:, _TS_SEP_AT] == _TS_SEP).all() and _all_digits(grid[:, _TS_DIGITS])):
        return list(map(event_time_ms, column))
    digits = grid.astype(np.int64) - 48
    second_keys = digits[:, _TS_SECOND_DIGITS] @ _POWERS
    _, first, inverse = np.unique(second_keys, return_index=True, return_inverse=True)
    starts = [second_start_ms(column[i][:19]) for i in first.tolist()]
    if None in starts:
        return list(map(event_time_ms, column))  # a non-existent date somewhere: let the slow path sort it out
    ms = np.asarray(starts, dtype=np.int64)[inverse] + digits[:, _TS_MS_DIGITS] @ np.array([100, 10, 1])
    times: list[int | None] = ms.tolist()
    return times


def _all_digits(grid: np.ndarray) -> bool:
    return bool(((grid - np.uint8(48)) <= 9).all())  # uint8 wraps: bytes below "0" become large


def _fields_valid(row: tuple[Any, ...], size: int) -> bool:
    """Every rule but the timestamp's, for one message (``size``: its length in bytes)."""
    if row[_SCHEMA] != TOKEN_USAGE_SCHEMA:
        return False
    if not _signature_valid(tuple(map(type, row[1:]))):
        return False
    if size > MAX_STRING and any(type(v) is str and len(v) > MAX_STRING for v in row):
        return False
    return (
        (row[_OUTCOME], row[_REASON]) in _OUTCOME_REASON
        and _int64_or_none(row[_IAT])
        and _int64_or_none(row[_EXP])
        and is_ip(row[_IP])
        and _UUID.fullmatch(row[_EVENT_ID]) is not None
    )


def row_of(event: TokenUsage) -> Row:
    """The engine row of a parsed record."""
    return (ts_to_epoch_ms(event.ts) / 1000.0, event.jti, event.sub, event.client_id, event.ip, event.user_agent,
            event.reason, event.iat, event.exp)  # fmt: skip


#: What the public module re-exports (from this source, or from its compiled twin).
__all__ = [
    "COLUMNS",
    "DECODE_SLICE",
    "EventBatch",
    "Row",
    "decode_rows",
    "frame_to_batch",
    "micro_batches",
    "row_of",
]
