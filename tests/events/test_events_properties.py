"""Properties of the three bus records: any bytes parse to a record or a RecordError; valid records round-trip."""

from __future__ import annotations

import string
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.errors import RecordError
from pipeline.events import (
    ALERT_ACTIONS,
    ENTITY_TYPES,
    MAX_STRING,
    REASONS,
    REVOCATION_KINDS,
    REVOCATION_SOURCES,
    SEVERITIES,
    Alert,
    Revocation,
    TokenUsage,
    format_ts,
    to_arrow,
)

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
RECORDS = (TokenUsage, Alert, Revocation)

JSON_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)

# ------------------------------------------------------------------------------------- valid records

TIMES = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2099, 12, 30), timezones=st.just(UTC)).map(
    format_ts
)
OPT_TEXT = st.none() | st.text(max_size=40)
IPS = st.ip_addresses().map(str)
NUMERIC = st.none() | st.integers(-(2**63), 2**63 - 1)


@st.composite
def token_usages(draw: st.DrawFn) -> TokenUsage:
    outcome = draw(st.sampled_from(["accepted", "rejected"]))
    return TokenUsage(
        event_id=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        ts=draw(TIMES),
        ip=draw(IPS),
        outcome=outcome,
        reason=None if outcome == "accepted" else draw(st.sampled_from(REASONS)),
        jti=draw(OPT_TEXT),
        sub=draw(OPT_TEXT),
        iss=draw(OPT_TEXT),
        aud=draw(OPT_TEXT),
        client_id=draw(OPT_TEXT),
        iat=draw(NUMERIC),
        exp=draw(NUMERIC),
        user_agent=draw(OPT_TEXT),
        service=draw(OPT_TEXT),
        method=draw(OPT_TEXT),
        path=draw(OPT_TEXT),
    )


# JSON has no infinities or NaN (RFC 8259 §6): a record carrying one is not a valid record.
FEATURE_VALUES = (
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
) | st.text()


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    return Alert(
        alert_id=draw(st.text(min_size=1, max_size=40)),
        ts=draw(TIMES),
        entity_type=draw(st.sampled_from(sorted(ENTITY_TYPES))),
        entity=draw(st.text(max_size=40)),
        window_start=draw(TIMES),
        window_end=draw(TIMES),
        score=draw(st.floats(0.0, 1.0)),
        severity=draw(st.sampled_from(SEVERITIES)),
        model_version=draw(st.text(max_size=20)),
        type=draw(st.sampled_from(["token.anomaly", "revocation.storm"])),
        sub=draw(OPT_TEXT),
        jti=draw(OPT_TEXT),
        ip=draw(st.none() | IPS),
        features=draw(st.dictionaries(st.text(max_size=10), FEATURE_VALUES, max_size=5)),
        reasons=draw(st.lists(st.dictionaries(st.text(max_size=10), FEATURE_VALUES, max_size=3), max_size=3)),
        action=draw(st.sampled_from(sorted(ALERT_ACTIONS))),
        revocation_id=draw(OPT_TEXT),
        summary=draw(OPT_TEXT),
        network_source=draw(st.none() | st.sampled_from(["prefix", "mmdb:GeoLite2-ASN(2026-11-30)"]) | OPT_TEXT),
    )


@st.composite
def revocations(draw: st.DrawFn) -> Revocation:
    kind = draw(st.sampled_from(sorted(REVOCATION_KINDS)))
    return Revocation(
        revocation_id=draw(st.text(min_size=1, max_size=40)),
        kind=kind,
        iss=draw(st.text(max_size=40)),
        value=draw(st.text(max_size=40)),
        reason=draw(st.text(max_size=40)),
        source=draw(st.sampled_from(sorted(REVOCATION_SOURCES))),
        created_at=draw(TIMES),
        expires_at=draw(TIMES),
        alert_id=draw(OPT_TEXT),
        revoked_before=draw(TIMES) if kind == "sub" else draw(st.none() | TIMES),
        version=draw(st.none() | st.integers(0, 2**63 - 1)),
    )


VALID = {TokenUsage: token_usages(), Alert: alerts(), Revocation: revocations()}
ANY_VALID = st.one_of(*VALID.values())


def parse_or_error(cls: type, raw: bytes | str) -> object:
    """The record, or the RecordError — any other exception escapes and fails the test."""
    try:
        return cls.from_json(raw)
    except RecordError as exc:
        assert exc.record == cls.SCHEMA
        assert str(exc)  # a message naming the field
        return exc


# ------------------------------------------------------------------------------------------ arbitrary


@PROPERTY
@given(st.sampled_from(RECORDS), st.binary(max_size=512) | st.text(max_size=256))
@example(TokenUsage, b"")
@example(TokenUsage, b"\xff\xfe")
@example(Alert, '"\\ud800"')
@example(Revocation, "\ud800")
@example(Alert, b"[" * 5000)
@example(TokenUsage, b"1" * 400)
@example(Alert, b"1e400")
def test_any_bytes_are_a_record_or_a_record_error(cls: type, raw: bytes | str) -> None:
    parse_or_error(cls, raw)


@st.composite
def near_records(draw: st.DrawFn) -> tuple[type, bytes]:
    """A valid record's wire form with some fields replaced by arbitrary JSON, dropped or added."""
    record = draw(ANY_VALID)
    data: dict[str, Any] = record.to_dict()
    names = sorted(data)
    for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        action = draw(st.sampled_from(["replace", "drop", "huge"]))
        if action == "drop":
            del data[name]
        elif action == "huge":
            data[name] = "x" * (MAX_STRING + draw(st.integers(1, 10)))
        else:
            data[name] = draw(JSON)
    data.update(draw(st.dictionaries(st.text(max_size=8), JSON, max_size=2)))
    return type(record), orjson.dumps(data)


@PROPERTY
@given(near_records())
def test_near_valid_records_parse_or_fail_with_a_record_error(pair: tuple[type, bytes]) -> None:
    cls, raw = pair
    result = parse_or_error(cls, raw)
    if isinstance(result, cls):
        # What parses is valid: it serialises again, and to the same record.
        assert cls.from_json(result.to_json()) == result


@PROPERTY
@given(st.sampled_from(RECORDS), JSON)
def test_any_json_value_is_a_record_or_a_record_error(cls: type, value: object) -> None:
    parse_or_error(cls, orjson.dumps(value))


@PROPERTY
@given(
    st.sampled_from(RECORDS),
    st.dictionaries(
        st.sampled_from(["schema", "ts", "created_at", "expires_at", "window_start", "window_end", "revoked_before"]),
        st.text(alphabet=string.digits + "-:T.Z+ze\u0660\u00b2_", max_size=40) | JSON,
        max_size=7,
    ),
)
@example(TokenUsage, {"ts": "0001-01-01T00:00:00+01:00"})
@example(TokenUsage, {"ts": "9999-12-31T23:59:59-01:00"})
def test_hostile_timestamps_are_record_errors(cls: type, fields: dict[str, Any]) -> None:
    record = {TokenUsage: VALID_USAGE, Alert: VALID_ALERT, Revocation: VALID_REVOCATION}[cls]
    data = record.to_dict() | fields
    parse_or_error(cls, orjson.dumps(data))


VALID_USAGE = TokenUsage(
    event_id=str(uuid.UUID(int=1)), ts="2026-01-01T00:00:00.000Z", ip="192.0.2.1", outcome="rejected", reason="expired"
)
VALID_ALERT = Alert(
    alert_id="a1",
    ts="2026-01-01T00:00:00.000Z",
    entity_type="ip",
    entity="192.0.2.1",
    window_start="2026-01-01T00:00:00.000Z",
    window_end="2026-01-01T00:05:00.000Z",
    score=0.9,
    severity="high",
    model_version="m1",
)
VALID_REVOCATION = Revocation(
    revocation_id="r1",
    kind="sub",
    iss="https://issuer.example",
    value="user-1",
    reason="manual",
    source="manual",
    created_at="2026-01-01T00:00:00.000Z",
    expires_at="2026-01-02T00:00:00.000Z",
    revoked_before="2026-01-01T00:00:00.000Z",
)


# ---------------------------------------------------------------------------------------- round trip


@PROPERTY
@given(ANY_VALID)
def test_valid_records_round_trip_through_json(record: Any) -> None:
    raw = record.to_json()
    again = type(record).from_json(raw)
    assert again == record
    assert again.to_json() == raw
    assert type(record).from_json(raw.decode()) == record  # str and bytes alike


@PROPERTY
@given(st.lists(token_usages(), min_size=1, max_size=5) | st.lists(revocations(), min_size=1, max_size=5))
def test_valid_records_are_archivable(records: list[Any]) -> None:
    table = to_arrow(records)
    assert table.num_rows == len(records)


@pytest.mark.parametrize("iat", [2**63, 2**64 - 1])
def test_a_parsed_usage_event_is_always_archivable(iat: int) -> None:
    raw = orjson.dumps(VALID_USAGE.to_dict() | {"iat": iat})
    try:
        event = TokenUsage.from_json(raw)
    except RecordError:
        return  # refusing it at the parser is a fix too
    assert to_arrow([event]).num_rows == 1


def test_timestamps_out_of_range_and_offsets_are_refused() -> None:
    # Controls for the timestamp property: it exercises real refusals, not only acceptances.
    for bad in ("2026-01-01T00:00:00", "2100-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "x", ""):
        with pytest.raises(RecordError, match="'ts'"):
            TokenUsage.from_json(orjson.dumps(VALID_USAGE.to_dict() | {"ts": bad}))
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=7)
    assert TokenUsage.from_json(orjson.dumps(VALID_USAGE.to_dict() | {"ts": format_ts(moment)})).ts.endswith("007Z")
