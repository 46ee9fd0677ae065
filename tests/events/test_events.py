"""The three wire records: round trips, strict parsing with errors that name the field, Arrow schemas, keys."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.errors import RecordError
from pipeline.events import (
    ALERT_ARROW,
    REASONS,
    REVOCATION_ARROW,
    TOKEN_USAGE_ARROW,
    Alert,
    Revocation,
    TokenUsage,
    format_ts,
    parse_ts,
    to_arrow,
    ts_to_epoch_ms,
)
from tests.support.records import DROP, EVENT_ID, alert_dict, revocation_dict, usage_dict

# ------------------------------------------------------------------------------------- round trips


def test_token_usage_round_trip() -> None:
    record = TokenUsage.from_dict(usage_dict())
    assert record.jti == "jti-1" and record.iat == 1714564800 and record.reason is None
    wire = record.to_json()
    assert orjson.loads(wire) == usage_dict()
    assert TokenUsage.from_json(wire) == record
    assert TokenUsage.from_json(wire.decode()) == record  # text works as well as bytes


def test_rejected_token_usage_round_trip_with_nulls() -> None:
    record = TokenUsage(
        event_id=TokenUsage.new_event_id(),
        ts="2024-05-01T12:00:00.000Z",
        ip="::1",
        outcome="rejected",
        reason="expired",
    )
    data = orjson.loads(record.to_json())
    assert data["schema"] == "token-usage/1"
    assert data["jti"] is None and data["iat"] is None  # absent claims are explicit nulls on the wire
    assert TokenUsage.from_json(record.to_json()) == record
    assert uuid.UUID(record.event_id).version == 4


def test_alert_round_trip() -> None:
    record = Alert.from_dict(alert_dict())
    assert record.features == {"distinct_ips": 7, "rate": 1.5}
    assert orjson.loads(record.to_json()) == alert_dict()
    assert Alert.from_json(record.to_json()) == record


def test_alert_written_before_summary_existed_still_parses() -> None:
    older = alert_dict(summary=DROP, network_source=DROP)
    record = Alert.from_json(orjson.dumps(older))
    assert record.summary is None
    assert orjson.loads(record.to_json()) == older | {"summary": None, "network_source": None}  # explicit nulls
    assert Alert.from_json(record.to_json()) == record


def test_alert_says_how_its_networks_were_identified() -> None:
    record = Alert.from_dict(alert_dict())
    assert record.network_source == "mmdb:GeoLite2-ASN(2026-11-30)"
    assert Alert.from_dict(alert_dict(network_source="prefix")).network_source == "prefix"
    older = alert_dict(network_source=DROP)  # written before the field existed
    assert Alert.from_json(orjson.dumps(older)).network_source is None
    assert Alert.from_dict(alert_dict(network_source=None)).network_source is None


def test_alert_defaults_fill_optional_fields() -> None:
    minimal = {
        k: v for k, v in alert_dict().items() if k not in {"type", "sub", "jti", "ip", "features", "reasons", "action"}
    }
    record = Alert.from_dict(minimal | {"revocation_id": None})
    assert record.type == "token.anomaly" and record.action == "none"
    assert record.features == {} and record.reasons == []


def test_integer_score_is_accepted_as_number() -> None:
    assert Alert.from_dict(alert_dict(score=1)).score == 1.0


def test_revocation_round_trip() -> None:
    for data in (revocation_dict(), revocation_dict(kind="jti", value="jti-1", revoked_before=None, version=None)):
        record = Revocation.from_dict(data)
        assert orjson.loads(record.to_json()) == data
        assert Revocation.from_json(record.to_json()) == record


# ------------------------------------------------------------------------------------- bad input


def _drop(name: str) -> dict[str, Any]:
    return {name: DROP}


BAD_USAGE: list[tuple[str, dict[str, Any], str]] = [
    ("wrong-schema", {"schema": "token-usage/2"}, "schema"),
    ("alert-schema", {"schema": "alert/1"}, "schema"),
    ("no-schema", _drop("schema"), "schema"),
    *[(f"missing-{f}", _drop(f), f) for f in ("event_id", "ts", "ip", "outcome")],
    ("ip-not-string", {"ip": 3405803783}, "ip"),
    ("jti-number", {"jti": 5}, "jti"),
    ("user-agent-list", {"user_agent": ["curl"]}, "user_agent"),
    ("sub-too-long", {"sub": "x" * 8193}, "sub"),
    ("iat-string", {"iat": "1714564800"}, "iat"),
    ("iat-float", {"iat": 1714564800.5}, "iat"),
    ("iat-bool", {"iat": True}, "iat"),
    ("exp-bool", {"exp": False}, "exp"),
    ("event-id-not-uuid", {"event_id": "event-1"}, "event_id"),
    ("event-id-number", {"event_id": 1}, "event_id"),
    ("ts-garbage", {"ts": "yesterday"}, "ts"),
    ("ts-epoch-number", {"ts": 1714564800}, "ts"),
    ("ts-impossible-date", {"ts": "2024-02-30T12:00:00.000Z"}, "ts"),
    ("ts-without-offset", {"ts": "2024-05-01T12:00:00.123"}, "ts"),
    ("ts-date-only", {"ts": "2024-05-01"}, "ts"),
    # Valid RFC 3339 text whose UTC form lies outside datetime's range.
    ("ts-underflows-in-utc", {"ts": "0001-01-01T00:00:00+01:00"}, "ts"),
    ("ts-overflows-in-utc", {"ts": "9999-12-31T23:59:59-01:00"}, "ts"),
    ("ip-out-of-range", {"ip": "999.1.1.1"}, "ip"),
    ("ip-hostname", {"ip": "localhost"}, "ip"),
    ("ip-cidr", {"ip": "10.0.0.0/8"}, "ip"),
    ("accepted-with-reason", {"reason": "expired"}, "reason"),
    ("rejected-without-reason", {"outcome": "rejected", "reason": None}, "reason"),
    ("rejected-reason-omitted", {"outcome": "rejected", "reason": DROP}, "reason"),
    ("unknown-reason", {"outcome": "rejected", "reason": "stolen"}, "reason"),
    ("reason-wrong-case", {"outcome": "rejected", "reason": "EXPIRED"}, "reason"),
    ("unknown-outcome", {"outcome": "maybe"}, "outcome"),
]


@pytest.mark.parametrize(("name", "changes", "field"), BAD_USAGE, ids=[c[0] for c in BAD_USAGE])
def test_bad_token_usage_names_the_field(name: str, changes: dict[str, Any], field: str) -> None:
    raw = orjson.dumps(usage_dict(**changes))
    with pytest.raises(RecordError) as caught:
        TokenUsage.from_json(raw)
    assert caught.value.field == field
    assert f"field {field!r}" in str(caught.value)
    assert caught.value.record == "token-usage/1"


BAD_ALERT: list[tuple[str, dict[str, Any], str]] = [
    ("score-above-one", {"score": 1.5}, "score"),
    ("score-below-zero", {"score": -0.01}, "score"),
    ("score-string", {"score": "0.9"}, "score"),
    ("score-bool", {"score": True}, "score"),
    ("missing-score", _drop("score"), "score"),
    ("entity-type-unknown", {"entity_type": "user"}, "entity_type"),
    ("severity-unknown", {"severity": "extreme"}, "severity"),
    ("features-list", {"features": [1, 2]}, "features"),
    ("reasons-of-strings", {"reasons": ["distinct_ips"]}, "reasons"),
    ("action-unknown", {"action": "nuke"}, "action"),
    ("window-end-no-offset", {"window_end": "2024-05-01T12:05:00"}, "window_end"),
    ("missing-model-version", _drop("model_version"), "model_version"),
    ("summary-number", {"summary": 42}, "summary"),
    ("summary-list", {"summary": ["token", "used"]}, "summary"),
    ("summary-too-long", {"summary": "x" * 8193}, "summary"),
    ("network-source-number", {"network_source": 16}, "network_source"),
    ("network-source-map", {"network_source": {"mmdb": "GeoLite2-ASN"}}, "network_source"),
    ("network-source-too-long", {"network_source": "m" * 8193}, "network_source"),
]


@pytest.mark.parametrize(("name", "changes", "field"), BAD_ALERT, ids=[c[0] for c in BAD_ALERT])
def test_bad_alert_names_the_field(name: str, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError) as caught:
        Alert.from_json(orjson.dumps(alert_dict(**changes)))
    assert caught.value.field == field


BAD_REVOCATION: list[tuple[str, dict[str, Any], str]] = [
    ("sub-without-revoked-before", {"revoked_before": None}, "revoked_before"),
    ("sub-revoked-before-omitted", {"revoked_before": DROP}, "revoked_before"),
    ("kind-unknown", {"kind": "user"}, "kind"),
    ("source-unknown", {"source": "robot"}, "source"),
    ("version-bool", {"version": True}, "version"),
    ("version-string", {"version": "12"}, "version"),
    ("expires-at-garbage", {"expires_at": "soon"}, "expires_at"),
    ("created-at-overflows-in-utc", {"created_at": "9999-12-31T23:59:59-01:00"}, "created_at"),
    ("missing-iss", _drop("iss"), "iss"),
]


@pytest.mark.parametrize(("name", "changes", "field"), BAD_REVOCATION, ids=[c[0] for c in BAD_REVOCATION])
def test_bad_revocation_names_the_field(name: str, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError) as caught:
        Revocation.from_json(orjson.dumps(revocation_dict(**changes)))
    assert caught.value.field == field


def test_constructing_inconsistent_records_directly_is_refused() -> None:
    # The invariants live in the dataclasses, not only in the parser.
    with pytest.raises(RecordError, match="reason"):
        TokenUsage(event_id=EVENT_ID, ts="2024-05-01T12:00:00.000Z", ip="::1", outcome="accepted", reason="expired")
    with pytest.raises(RecordError, match="score"):
        Alert(**{k: v for k, v in alert_dict(score=2.0).items() if k != "schema"})
    with pytest.raises(RecordError, match="revoked_before"):
        Revocation(**{k: v for k, v in revocation_dict(revoked_before=None).items() if k != "schema"})


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b'{"schema": "token-usage/1",}', b"\xff\xfe\x00", "\ud800", b"[1, 2]", b"null", b'"x"'],
    ids=["empty", "text", "truncated", "trailing-comma", "not-utf8", "lone-surrogate", "array", "null", "string"],
)
def test_not_a_json_object_is_a_record_error(raw: bytes | str) -> None:
    with pytest.raises(RecordError) as caught:
        TokenUsage.from_json(raw)
    assert caught.value.field in {"<json>", "<record>"}


def test_json_array_names_the_record_not_a_field() -> None:
    with pytest.raises(RecordError) as caught:
        Revocation.from_json(b"[]")
    assert caught.value.field == "<record>"
    with pytest.raises(RecordError) as caught:
        Alert.from_json(b"{]")
    assert caught.value.field == "<json>"


def test_record_error_is_a_value_error_with_a_short_value() -> None:
    with pytest.raises(ValueError) as caught:
        TokenUsage.from_json(orjson.dumps(usage_dict(sub="y" * 10_000)))
    assert isinstance(caught.value, RecordError)
    assert len(str(caught.value)) < 300  # the offending value is abbreviated


def nested_map(levels: int) -> dict[str, Any]:
    """``levels`` objects, each the only value of the one before."""
    value: Any = 1.0
    for _ in range(levels):
        value = {"d": value}
    return value


def test_alert_maps_may_nest_only_so_deep() -> None:
    """orjson reads ~1024 levels but writes at most 254: an alert parsed but never storable was a poison message."""
    from pipeline.events import MAX_NESTING

    ok = Alert.from_dict(alert_dict(features=nested_map(MAX_NESTING), reasons=[nested_map(MAX_NESTING - 1)]))
    assert Alert.from_json(ok.to_json()) == ok
    for changes in ({"features": nested_map(MAX_NESTING + 1)}, {"reasons": [nested_map(MAX_NESTING)]}):
        with pytest.raises(RecordError, match="nested deeper") as caught:
            Alert.from_dict(alert_dict(**changes))
        assert caught.value.field == next(iter(changes))
    raw = orjson.dumps(alert_dict(features={})).replace(
        b'"features":{}', b'"features":' + b'{"d":' * 300 + b"1" + b"}" * 300
    )
    with pytest.raises(RecordError, match="nested deeper"):
        Alert.from_json(raw)


@pytest.mark.parametrize("cls", [TokenUsage, Alert, Revocation])
def test_json_nested_past_what_repr_can_show_is_still_a_record_error(cls: type) -> None:
    """A RecordError shows the value's repr, which gives up (RecursionError) about 1000 levels down."""
    for raw in (b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000):
        with pytest.raises(RecordError):
            cls.from_json(raw)


# ------------------------------------------------------------------------------------ timestamps

TS_SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_format_ts_shape() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 7, 123999, tzinfo=UTC)
    assert format_ts(moment) == "2024-05-01T12:00:07.123Z"  # truncated, never rounded into the next ms
    assert format_ts(datetime(2024, 5, 1, 14, 0, 7, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:00:07.000Z"
    assert format_ts(0) == "1970-01-01T00:00:00.000Z"
    assert format_ts(1714564800.25) == "2024-05-01T12:00:00.250Z"
    with pytest.raises(ValueError, match="naive"):
        format_ts(datetime(2024, 5, 1, 12, 0, 0))


@settings(max_examples=200, database=None)
@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2099, 12, 30), timezones=st.just(UTC)))
@example(datetime(2039, 3, 9, 19, 46, 13, 411000, tzinfo=UTC))  # float ms arithmetic is 1 ms off here
def test_format_ts_round_trips_to_the_millisecond(moment: datetime) -> None:
    text = format_ts(moment)
    assert TS_SHAPE.match(text), text
    back = parse_ts(text)
    assert back.tzinfo is not None
    assert back == moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert ts_to_epoch_ms(text) == (back - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    TokenUsage.from_dict(usage_dict(ts=text))  # what format_ts writes, the parser reads


@pytest.mark.parametrize(
    ("text", "epoch_ms"),
    [
        ("1970-01-01T00:00:00.000Z", 0),
        ("2024-05-01T12:00:00.123Z", 1714564800123),
        ("2024-05-01T14:00:00.999+02:00", 1714564800999),
        ("2107-01-01T00:00:00.011Z", 4323283200011),
    ],
)
def test_ts_to_epoch_ms_is_exact(text: str, epoch_ms: int) -> None:
    assert ts_to_epoch_ms(text) == epoch_ms


def test_parse_ts_requires_an_offset_and_normalises_to_utc() -> None:
    assert parse_ts("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_ts("2024-05-01T14:00:00+02:00").utcoffset() == timedelta(0)
    with pytest.raises(ValueError):
        parse_ts("2024-05-01T14:00:00")


# ----------------------------------------------------------------------------------------- Arrow


def test_token_usage_to_arrow() -> None:
    records = [
        TokenUsage.from_dict(usage_dict()),
        TokenUsage.from_dict(usage_dict(event_id=str(uuid.uuid4()), outcome="rejected", reason="revoked", jti=None)),
    ]
    table = to_arrow(records)
    assert table.schema.equals(TOKEN_USAGE_ARROW, check_metadata=True)
    assert table.schema.metadata[b"schema"] == b"token-usage/1"
    assert table.num_rows == 2
    rows = table.to_pylist()
    assert rows[0]["ts"] == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert [r["outcome"] for r in rows] == ["accepted", "rejected"]
    assert [r["reason"] for r in rows] == [None, "revoked"]
    assert rows[1]["jti"] is None and rows[0]["iat"] == 1714564800
    assert pa.types.is_dictionary(table.schema.field("reason").type)


def test_alert_to_arrow_serialises_features_and_reasons() -> None:
    table = to_arrow([Alert.from_dict(alert_dict())])
    assert table.schema.equals(ALERT_ARROW, check_metadata=True)
    [row] = table.to_pylist()
    assert orjson.loads(row["features_json"]) == {"distinct_ips": 7, "rate": 1.5}
    assert orjson.loads(row["reasons_json"]) == alert_dict()["reasons"]
    assert row["summary"] == alert_dict()["summary"]
    assert row["network_source"] == "mmdb:GeoLite2-ASN(2026-11-30)"
    assert row["window_start"] == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert row["score"] == pytest.approx(0.93)


def test_revocation_to_arrow_keeps_null_timestamps() -> None:
    records = [
        Revocation.from_dict(revocation_dict()),
        Revocation.from_dict(revocation_dict(kind="jti", value="j", revoked_before=None, version=None)),
    ]
    table = to_arrow(records)
    assert table.schema.equals(REVOCATION_ARROW, check_metadata=True)
    rows = table.to_pylist()
    assert rows[0]["revoked_before"] == datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
    assert rows[1]["revoked_before"] is None and rows[1]["version"] is None
    assert rows[0]["version"] == 12


def test_to_arrow_refuses_empty_and_mixed_batches() -> None:
    with pytest.raises(ValueError, match="at least one"):
        to_arrow([])
    with pytest.raises(ValueError, match="one type"):
        to_arrow([TokenUsage.from_dict(usage_dict()), Alert.from_dict(alert_dict())])  # type: ignore[list-item]


# -------------------------------------------------------------------------------------- bus keys


def test_token_usage_key_is_jti_else_ip() -> None:
    assert TokenUsage.from_dict(usage_dict()).bus_key == "jti-1"
    assert TokenUsage.from_dict(usage_dict(jti=None)).bus_key == "203.0.113.7"
    assert TokenUsage.from_dict(usage_dict(jti="")).bus_key == "203.0.113.7"


def test_alert_and_revocation_keys() -> None:
    assert Alert.from_dict(alert_dict()).bus_key == "al-0001"
    assert Revocation.from_dict(revocation_dict()).bus_key == "sub:https://issuer.test:user-1"
    jti = Revocation.from_dict(revocation_dict(kind="jti", value="abc", revoked_before=None))
    assert jti.bus_key == "jti:https://issuer.test:abc"


# ------------------------------------------------------------------------------------ properties

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)

OFFSETS = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
)
ISO_TEXT = st.datetimes(timezones=OFFSETS).map(datetime.isoformat) | st.datetimes().map(datetime.isoformat)
FIELD_VALUES = JSON_VALUES | ISO_TEXT | st.sampled_from([*REASONS, "accepted", "rejected", EVENT_ID, "10.0.0.1", "::1"])


def _parses_or_record_error(raw: bytes | str) -> None:
    try:
        record = TokenUsage.from_json(raw)
    except RecordError:
        return
    assert isinstance(record, TokenUsage)
    assert TokenUsage.from_json(record.to_json()) == record


@settings(max_examples=200, database=None)
@given(st.binary(max_size=300) | st.text(alphabet=st.characters(codec=None), max_size=100))
def test_arbitrary_bytes_parse_or_raise_record_error(raw: bytes | str) -> None:
    _parses_or_record_error(raw)


@settings(max_examples=200, database=None)
@given(JSON_VALUES)
def test_arbitrary_json_parses_or_raises_record_error(value: object) -> None:
    _parses_or_record_error(orjson.dumps(value))


@settings(max_examples=200, database=None)
@given(st.dictionaries(st.sampled_from(sorted(usage_dict())), FIELD_VALUES, max_size=8))
@example({"ts": "0001-01-01T00:00:00+01:00"})
def test_near_valid_records_parse_or_raise_record_error(changes: dict[str, Any]) -> None:
    _parses_or_record_error(orjson.dumps(usage_dict() | changes))
