"""The records that travel on the bus: token-usage/1, alert/1, revocation/1 and verdict/1.

Each record is a frozen dataclass with

* ``to_dict()`` / ``to_json()`` — the wire form (one JSON object per message, ``schema`` names the version);
* ``from_dict()`` / ``from_json()`` — strict parsing that raises :class:`RecordError` naming the field and
  the offending value, never a bare ``KeyError``/``TypeError`` traceback;
* an Arrow schema (``TOKEN_USAGE_ARROW`` ...) for the Parquet archive.

This module is the bottom of the dependency graph: it imports nothing from the rest of ``pipeline``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar, Literal, Self, TypeVar

import orjson
import pyarrow as pa

from pipeline.errors import RecordError

TOKEN_USAGE_SCHEMA = "token-usage/1"
ALERT_SCHEMA = "alert/1"
REVOCATION_SCHEMA = "revocation/1"
VERDICT_SCHEMA = "verdict/1"

Outcome = Literal["accepted", "rejected"]
OUTCOMES: frozenset[str] = frozenset({"accepted", "rejected"})

#: Every reason a validation can fail with; an accepted event has reason ``None``.
REASONS: tuple[str, ...] = (
    "malformed",
    "bad_signature",
    "alg_not_allowed",
    "unknown_kid",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "missing_claim",
    "type",
    "revoked",
    "replayed",
    "too_large",
    "weak_key",
    "lifetime",
)
REASON_SET: frozenset[str] = frozenset(REASONS)

ENTITY_TYPES: frozenset[str] = frozenset({"jti", "sub", "ip"})
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
#: A severity's rank, for comparing severities (``SEVERITY_RANK["high"] > SEVERITY_RANK["medium"]``).
SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}
ALERT_ACTIONS: frozenset[str] = frozenset({"none", "revoked", "revocation_suppressed"})
REVOCATION_KINDS: frozenset[str] = frozenset({"jti", "sub"})
REVOCATION_SOURCES: frozenset[str] = frozenset({"auto", "manual"})
VERDICT_KINDS: frozenset[str] = frozenset({"benign", "compromised"})
#: A verdict names at most this many rules (the engine has a handful), each at most this long.
MAX_VERDICT_RULES = 32
MAX_RULE_NAME = 64

# Wire values are bounded so that one hostile message cannot balloon memory downstream.
MAX_STRING = 8192
#: How deep an alert's ``features`` and ``reasons`` may nest (the engine writes flat maps). Deeper values parse,
#: but orjson refuses to write past 254 levels: a record every consumer could read and none could store again.
MAX_NESTING = 32


# --------------------------------------------------------------------------------------------- time


def format_ts(moment: datetime | float) -> str:
    """RFC 3339, UTC, millisecond precision, ``Z`` suffix — the one timestamp form on the wire."""
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    elif moment.tzinfo is None:
        raise ValueError("naive datetime: jwtwatch timestamps are always UTC")
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries an explicit offset; returns an aware UTC datetime."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range in UTC") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts_to_epoch_ms(text: str) -> int:
    # Integer arithmetic: float seconds lose the millisecond for dates far from 1970.
    return (parse_ts(text) - _EPOCH) // timedelta(milliseconds=1)


#: ``YYYY-MM-DDTHH:MM:SS`` in ASCII digits — the whole-second part of the canonical wire form.
_SECOND = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", re.ASCII)


# ------------------------------------------------------------------------------------ field checks

Check = Callable[[str, str, object], object]


def _fail(record: str, name: str, value: object, problem: str) -> RecordError:
    return RecordError(record, name, value, problem)


def _str(record: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(record, name, value, "must be a string")
    if len(value) > MAX_STRING:
        raise _fail(record, name, value, f"longer than {MAX_STRING} characters")
    return value


def _opt_str(record: str, name: str, value: object) -> str | None:
    return None if value is None else _str(record, name, value)


def _opt_int(record: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    # bool is an int subclass; a JSON true is not a NumericDate.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(record, name, value, "must be an integer or null")
    # int64, as on the wire from the validator (it leaves out larger claims) and in the Arrow archive: a
    # larger value from a foreign producer would be a poison message for the archive.
    if not -(2**63) <= value < 2**63:
        raise _fail(record, name, value, "must fit in a signed 64-bit integer")
    return value


def _number(record: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(record, name, value, "must be a number")
    return float(value)


#: Event times outside this range are refused: nothing real happens then, and one event from the year
#: 9999 would push the watermark so far that every later event counted as late.
EARLIEST_TS = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TS = datetime(2100, 1, 1, tzinfo=UTC)


def _ts(record: str, name: str, value: object) -> str:
    text = _str(record, name, value)
    try:
        moment = parse_ts(text)
    except ValueError as exc:
        raise _fail(record, name, value, f"not an RFC 3339 timestamp with offset ({exc})") from None
    if not EARLIEST_TS <= moment < LATEST_TS:
        raise _fail(record, name, value, "outside 1970..2100")
    return text


def _opt_ts(record: str, name: str, value: object) -> str | None:
    return None if value is None else _ts(record, name, value)


def event_time_ms(value: object) -> int | None:
    """Epoch milliseconds of a token-usage ``ts``, or None exactly where :func:`_ts` refuses the value.

    The streaming runner calls this once per event, so the canonical form ``format_ts`` writes
    (``2026-11-28T12:34:56.789Z``) takes a shortcut: its whole-second part is parsed and range-checked
    once per second of event time (memoised), and the milliseconds are added. Every other form goes
    through the very checks of ``_ts``.
    """
    if type(value) is not str:  # orjson gives exact types; _ts refuses anything but a str
        return None
    if len(value) == 24 and value[19] == "." and value[23] == "Z" and value.isascii() and value[20:23].isdigit():
        second_ms = second_start_ms(value[:19])
        if second_ms is not None:
            return second_ms + int(value[20:23])
    return _general_time_ms(value)


@lru_cache(maxsize=1 << 14)
def second_start_ms(prefix: str) -> int | None:
    """``prefix + ".000Z"`` in epoch ms if ``prefix`` is ``YYYY-MM-DDTHH:MM:SS``, a valid time in range, else None.

    Range bounds are whole seconds, so adding .000 to .999 to a second inside the range stays inside it.
    """
    if not _SECOND.fullmatch(prefix):
        return None
    return _general_time_ms(prefix + ".000Z")


def _general_time_ms(text: str) -> int | None:
    if len(text) > MAX_STRING:
        return None
    try:
        moment = parse_ts(text)
    except ValueError:
        return None
    if not EARLIEST_TS <= moment < LATEST_TS:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


#: The canonical 8-4-4-4-12 hex form (also what the vectorised file reader checks).
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)


def _uuid(record: str, name: str, value: object) -> str:
    text = _str(record, name, value)
    if not _UUID.fullmatch(text):
        raise _fail(record, name, value, "not a UUID")
    return text


@lru_cache(maxsize=1 << 16)
def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (memoised: addresses repeat)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ip(record: str, name: str, value: object) -> str:
    text = _str(record, name, value)
    if not is_ip(text):  # addresses repeat: checked once each
        raise _fail(record, name, value, "not an IP address")
    return text


def _one_of(allowed: frozenset[str] | tuple[str, ...], optional: bool = False) -> Check:
    def check(record: str, name: str, value: object) -> object:
        if value is None and optional:
            return None
        if not isinstance(value, str) or value not in allowed:
            raise _fail(record, name, value, f"must be one of {sorted(allowed)}")
        return value

    return check


def _nested_within(value: object, limit: int) -> bool:
    """Whether the objects and arrays in ``value`` nest at most ``limit`` deep (no recursion to exhaust)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if children and depth >= limit and any(isinstance(c, dict | list) for c in children):
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def _str_map(record: str, name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _fail(record, name, value, "must be an object with string keys")
    if not _nested_within(value, MAX_NESTING):
        raise _fail(record, name, "<nested>", f"nested deeper than {MAX_NESTING} levels")
    return value


def _list_of_maps(record: str, name: str, value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _fail(record, name, value, "must be a list of objects")
    if not _nested_within(value, MAX_NESTING):
        raise _fail(record, name, "<nested>", f"nested deeper than {MAX_NESTING} levels")
    return value


def _rule_names(record: str, name: str, value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_VERDICT_RULES:
        raise _fail(record, name, value, f"must be a list of at most {MAX_VERDICT_RULES} rule names")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_RULE_NAME:
            raise _fail(record, name, item, f"a rule name is a string of 1..{MAX_RULE_NAME} characters")
    return value


_R = TypeVar("_R", bound="_Record")


def _parse(cls: type[_R], checks: Mapping[str, Check], data: object) -> _R:
    record = cls.SCHEMA
    if not isinstance(data, dict):
        raise RecordError(record, "<record>", data, "must be a JSON object")
    schema = data.get("schema")
    if schema != record:
        raise RecordError(record, "schema", schema, f"expected {record!r}")
    values: dict[str, object] = {}
    for name, required in _fields(cls):
        if name not in data:
            if required:
                raise RecordError(record, name, None, "missing")
            continue
        values[name] = checks[name](record, name, data[name])
    return cls(**values)


_FIELDS: dict[type[Any], tuple[tuple[str, bool], ...]] = {}


def _fields(cls: type[Any]) -> tuple[tuple[str, bool], ...]:
    """(name, required) of a record's fields — computed once per record type, not per record. (A dict, not
    ``functools.cache``: mypy takes a class for unhashable.)"""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = tuple(
            (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        )
    return fields


def _loads(schema: str, raw: bytes | str) -> object:
    """The JSON value of a ``schema`` record; RecordError if ``raw`` is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(schema, "<json>", raw[:80], f"not valid JSON ({exc})") from None


class _Record:
    SCHEMA: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": self.SCHEMA}
        out.update((name, getattr(self, name)) for name, _ in _fields(type(self)))
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


# -------------------------------------------------------------------------------------- token-usage


@dataclass(frozen=True, slots=True)
class TokenUsage(_Record):
    """One validation of one token, accepted or rejected (``token-usage/1``)."""

    SCHEMA: ClassVar[str] = TOKEN_USAGE_SCHEMA

    event_id: str
    ts: str
    ip: str
    outcome: Outcome
    reason: str | None = None
    jti: str | None = None
    sub: str | None = None
    iss: str | None = None
    aud: str | None = None
    client_id: str | None = None
    iat: int | None = None
    exp: int | None = None
    user_agent: str | None = None
    service: str | None = None
    method: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if (self.outcome == "accepted") != (self.reason is None):
            raise RecordError(
                self.SCHEMA, "reason", self.reason, "an accepted event has no reason; a rejected one has one"
            )

    @property
    def bus_key(self) -> str:
        """The bus key: the token id keeps one token's events in one partition; else the client IP."""
        return self.jti if self.jti else self.ip

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return _parse(cls, _TOKEN_USAGE_CHECKS, data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        return cls.from_dict(_loads(cls.SCHEMA, raw))

    @staticmethod
    def new_event_id() -> str:
        return str(uuid.uuid4())


_TOKEN_USAGE_CHECKS: dict[str, Check] = {
    "event_id": _uuid,
    "ts": _ts,
    "ip": _ip,
    "outcome": _one_of(OUTCOMES),
    "reason": _one_of(REASON_SET, optional=True),
    "jti": _opt_str,
    "sub": _opt_str,
    "iss": _opt_str,
    "aud": _opt_str,
    "client_id": _opt_str,
    "iat": _opt_int,
    "exp": _opt_int,
    "user_agent": _opt_str,
    "service": _opt_str,
    "method": _opt_str,
    "path": _opt_str,
}

# ------------------------------------------------------------------------------------------- alert


@dataclass(frozen=True, slots=True)
class Alert(_Record):
    """An anomaly raised for one entity in one window (``alert/1``)."""

    SCHEMA: ClassVar[str] = ALERT_SCHEMA

    alert_id: str
    ts: str
    entity_type: str
    entity: str
    window_start: str
    window_end: str
    score: float
    severity: str
    model_version: str
    type: str = "token.anomaly"
    sub: str | None = None
    jti: str | None = None
    ip: str | None = None
    features: dict[str, Any] = field(default_factory=dict)
    reasons: list[dict[str, Any]] = field(default_factory=list)
    action: str = "none"
    revocation_id: str | None = None
    #: One line a person can act on (what the entity did, with the facts of its window). Optional: alerts
    #: written before it existed still parse.
    summary: str | None = None
    #: How the alert's client addresses were put in networks: the network resolver's ``source`` — ``prefix``
    #: (/16 prefixes, no ``--ip-db``) or ``mmdb:<database type>(<build date>)[+...]``. Optional: alerts
    #: written before it existed still parse.
    network_source: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise RecordError(self.SCHEMA, "score", self.score, "must lie in 0..1")

    @property
    def bus_key(self) -> str:
        return self.alert_id

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return _parse(cls, _ALERT_CHECKS, data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        return cls.from_dict(_loads(cls.SCHEMA, raw))


_ALERT_CHECKS: dict[str, Check] = {
    "alert_id": _str,
    "type": _str,
    "ts": _ts,
    "entity_type": _one_of(ENTITY_TYPES),
    "entity": _str,
    "sub": _opt_str,
    "jti": _opt_str,
    "ip": _opt_str,
    "window_start": _ts,
    "window_end": _ts,
    "score": _number,
    "severity": _one_of(SEVERITIES),
    "features": _str_map,
    "reasons": _list_of_maps,
    "model_version": _str,
    "action": _one_of(ALERT_ACTIONS),
    "revocation_id": _opt_str,
    "summary": _opt_str,
    "network_source": _opt_str,
}

# -------------------------------------------------------------------------------------- revocation


@dataclass(frozen=True, slots=True)
class Revocation(_Record):
    """A revoked token (``kind="jti"``) or every token of a subject issued up to ``revoked_before``."""

    SCHEMA: ClassVar[str] = REVOCATION_SCHEMA

    revocation_id: str
    kind: str
    iss: str
    value: str
    reason: str
    source: str
    created_at: str
    expires_at: str
    alert_id: str | None = None
    revoked_before: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "sub" and self.revoked_before is None:
            raise RecordError(self.SCHEMA, "revoked_before", None, "a subject revocation needs revoked_before")

    @property
    def bus_key(self) -> str:
        """Compaction key: one live entry per revoked token or subject."""
        return f"{self.kind}:{self.iss}:{self.value}"

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return _parse(cls, _REVOCATION_CHECKS, data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        return cls.from_dict(_loads(cls.SCHEMA, raw))


_REVOCATION_CHECKS: dict[str, Check] = {
    "revocation_id": _str,
    "kind": _one_of(REVOCATION_KINDS),
    "iss": _str,
    "value": _str,
    "reason": _str,
    "source": _one_of(REVOCATION_SOURCES),
    "alert_id": _opt_str,
    "created_at": _ts,
    "expires_at": _ts,
    "revoked_before": _opt_ts,
    "version": _opt_int,
}

# ----------------------------------------------------------------------------------------- verdict


@dataclass(frozen=True, slots=True)
class AlertVerdict(_Record):
    """An analyst's judgement of one alert (``verdict/1``), published by the alerts service.

    It carries what the pipeline needs to act without the alert log: the alert's entity, the subject, token and
    IP it named, its severity and its *pattern* (``rules``: the rules that fired; empty when the forest alone
    raised it). ``benign`` verdicts suppress that pattern for that entity until ``suppress_until``;
    ``compromised`` ones revoke (see ``pipeline.response.verdicts``). Key on the bus: ``alert_id`` (the topic is
    compacted: the last verdict on an alert wins).
    """

    SCHEMA: ClassVar[str] = VERDICT_SCHEMA

    verdict_id: str
    alert_id: str
    verdict: str
    ts: str  # when the verdict was recorded
    by: str
    entity_type: str
    entity: str
    severity: str
    rules: list[str] = field(default_factory=list)
    sub: str | None = None
    jti: str | None = None
    ip: str | None = None
    note: str | None = None
    suppress_until: str | None = None

    def __post_init__(self) -> None:
        if (self.verdict == "benign") != (self.suppress_until is not None):
            raise RecordError(
                self.SCHEMA, "suppress_until", self.suppress_until, "a benign verdict has one; a compromised one none"
            )

    @property
    def bus_key(self) -> str:
        return self.alert_id

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return _parse(cls, _VERDICT_CHECKS, data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        return cls.from_dict(_loads(cls.SCHEMA, raw))


_VERDICT_CHECKS: dict[str, Check] = {
    "verdict_id": _uuid,
    "alert_id": _str,
    "verdict": _one_of(VERDICT_KINDS),
    "ts": _ts,
    "by": _str,
    "entity_type": _one_of(ENTITY_TYPES),
    "entity": _str,
    "severity": _one_of(SEVERITIES),
    "rules": _rule_names,
    "sub": _opt_str,
    "jti": _opt_str,
    "ip": _opt_str,
    "note": _opt_str,
    "suppress_until": _opt_ts,
}

# ------------------------------------------------------------------------------------ Arrow schemas

_TS = pa.timestamp("ms", tz="UTC")

TOKEN_USAGE_ARROW = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", _TS),
        ("jti", pa.string()),
        ("sub", pa.string()),
        ("iss", pa.string()),
        ("aud", pa.string()),
        ("client_id", pa.string()),
        ("iat", pa.int64()),
        ("exp", pa.int64()),
        ("ip", pa.string()),
        ("user_agent", pa.string()),
        ("outcome", pa.dictionary(pa.int8(), pa.string())),
        ("reason", pa.dictionary(pa.int8(), pa.string())),
        ("service", pa.string()),
        ("method", pa.string()),
        ("path", pa.string()),
    ],
    metadata={"schema": TOKEN_USAGE_SCHEMA},
)

ALERT_ARROW = pa.schema(
    [
        ("alert_id", pa.string()),
        ("type", pa.string()),
        ("ts", _TS),
        ("entity_type", pa.string()),
        ("entity", pa.string()),
        ("sub", pa.string()),
        ("jti", pa.string()),
        ("ip", pa.string()),
        ("window_start", _TS),
        ("window_end", _TS),
        ("score", pa.float64()),
        ("severity", pa.string()),
        ("features_json", pa.string()),
        ("reasons_json", pa.string()),
        ("model_version", pa.string()),
        ("action", pa.string()),
        ("revocation_id", pa.string()),
        ("summary", pa.string()),
        ("network_source", pa.string()),
    ],
    metadata={"schema": ALERT_SCHEMA},
)

REVOCATION_ARROW = pa.schema(
    [
        ("revocation_id", pa.string()),
        ("kind", pa.string()),
        ("iss", pa.string()),
        ("value", pa.string()),
        ("reason", pa.string()),
        ("source", pa.string()),
        ("alert_id", pa.string()),
        ("created_at", _TS),
        ("expires_at", _TS),
        ("revoked_before", _TS),
        ("version", pa.int64()),
    ],
    metadata={"schema": REVOCATION_SCHEMA},
)

VERDICT_ARROW = pa.schema(
    [
        ("verdict_id", pa.string()),
        ("alert_id", pa.string()),
        ("verdict", pa.string()),
        ("ts", _TS),
        ("by", pa.string()),
        ("entity_type", pa.string()),
        ("entity", pa.string()),
        ("severity", pa.string()),
        ("rules", pa.list_(pa.string())),
        ("sub", pa.string()),
        ("jti", pa.string()),
        ("ip", pa.string()),
        ("note", pa.string()),
        ("suppress_until", _TS),
    ],
    metadata={"schema": VERDICT_SCHEMA},
)

_TS_COLUMNS = {
    TOKEN_USAGE_SCHEMA: ("ts",),
    ALERT_SCHEMA: ("ts", "window_start", "window_end"),
    REVOCATION_SCHEMA: ("created_at", "expires_at", "revoked_before"),
    VERDICT_SCHEMA: ("ts", "suppress_until"),
}


def to_arrow(records: Sequence[TokenUsage | Alert | Revocation | AlertVerdict]) -> pa.Table:
    """A batch of records of one type as an Arrow table with that type's schema (ValueError for a mix)."""
    if not records:
        raise ValueError("to_arrow needs at least one record to know its type")
    kind = records[0].SCHEMA
    schema = {
        TOKEN_USAGE_SCHEMA: TOKEN_USAGE_ARROW,
        ALERT_SCHEMA: ALERT_ARROW,
        REVOCATION_SCHEMA: REVOCATION_ARROW,
        VERDICT_SCHEMA: VERDICT_ARROW,
    }[kind]
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for record in records:
        if kind != record.SCHEMA:
            raise ValueError("to_arrow takes records of one type")
        row = record.to_dict()
        if kind == ALERT_SCHEMA:
            row["features_json"] = orjson.dumps(row.pop("features")).decode()
            row["reasons_json"] = orjson.dumps(row.pop("reasons")).decode()
        for ts_name in _TS_COLUMNS[kind]:
            if row.get(ts_name) is not None:
                row[ts_name] = parse_ts(row[ts_name])
        for name in schema.names:
            columns[name].append(row.get(name))
    return pa.table(columns, schema=schema)
