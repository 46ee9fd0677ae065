"""The runner's fast decoder accepts and refuses exactly what ``TokenUsage.from_json`` accepts and refuses.

``decode_rows`` checks a whole poll column by column and never builds a ``TokenUsage``; a message it
refuses is parsed again by ``from_json`` for the dead letter's error. So the two must agree on every
message — checked here on a table of hostile records, on random mutations of good ones (hypothesis),
and on polls that mix good and bad messages (a bad one must not change how its neighbours decode). Every
test runs twice: with the typed fast path (msgspec) and with the orjson path a poll falls back to.
"""

from __future__ import annotations

import calendar
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.detection.batch import DECODE_SLICE, decode_rows, row_of
from pipeline.errors import RecordError
from pipeline.events import MAX_STRING, REASONS, TokenUsage
from tests.support.records import DROP, EVENT_ID, usage_dict

#: The module whose ``decode_rows`` runs: the compiled twin, or the source (``pipeline.detection.batch`` only
#: re-exports it, so the typed path is turned off there).
DECODER = sys.modules[decode_rows.__module__]


@pytest.fixture(scope="module", autouse=True, params=["typed-path", "orjson-path"])
def decoder_path(request: pytest.FixtureRequest) -> Any:
    """Module-scoped (hypothesis runs its examples inside one test call): the orjson path by turning the
    typed one off, as when some message of a poll is not a token-usage object."""
    typed = DECODER._typed_columns
    if request.param == "orjson-path":
        DECODER._typed_columns = lambda values: None
    try:
        yield request.param
    finally:
        DECODER._typed_columns = typed


def good(**changes: Any) -> dict[str, Any]:
    """A valid token-usage/1 record (tests/support/records.py's), dated in 2026; ``DROP`` leaves a field out."""
    return usage_dict(**{"ts": "2026-11-28T12:00:00.123Z", **changes})


def raw(**changes: Any) -> bytes:
    return orjson.dumps(good(**changes))


def from_json_row(message: bytes) -> tuple[Any, ...] | None:
    try:
        return row_of(TokenUsage.from_json(message))
    except RecordError:
        return None


def assert_agree(messages: list[bytes]) -> None:
    """Decoded as one poll, every message gives the row from_json gives, or None where from_json fails."""
    assert decode_rows(messages) == [from_json_row(m) for m in messages]


LONG = "x" * (MAX_STRING + 1)
HOSTILE: dict[str, bytes] = {
    # not a token-usage/1 object
    "not json": b"not json",
    "empty": b"",
    "truncated": raw()[:-1],
    "non-utf-8": b'{"schema": "token-usage/1", "ip": "\xff\xfe"}',
    "lone surrogate escape": raw(user_agent="\\ud800").replace(b"\\\\ud800", b"\\ud800"),
    "array": b"[1, 2, 3]",
    "string": b'"token-usage/1"',
    "number": b"42",
    "null": b"null",
    "empty object": b"{}",
    "only the schema": b'{"schema": "token-usage/1"}',
    "wrong schema": raw(schema="token-usage/2"),
    "schema not a string": raw(schema=1),
    "schema missing": raw(schema=DROP),
    # required fields
    "event_id missing": raw(event_id=DROP),
    "event_id null": raw(event_id=None),
    "event_id not a uuid": raw(event_id="not-a-uuid"),
    "event_id uuid without dashes": raw(event_id=EVENT_ID.replace("-", "")),
    "event_id uuid with braces": raw(event_id="{" + EVENT_ID + "}"),
    "event_id uuid with a trailing newline": raw(event_id=EVENT_ID + "\n"),
    "event_id non-ascii hex-like": raw(event_id=EVENT_ID[:-1] + "\uff10"),
    "event_id uppercase (allowed)": raw(event_id=EVENT_ID.upper()),
    "event_id an int": raw(event_id=123),
    "ts missing": raw(ts=DROP),
    "ts null": raw(ts=None),
    "ts an int": raw(ts=1714564800),
    "ts without offset": raw(ts="2026-11-28T12:00:00.123"),
    "ts garbage": raw(ts="yesterday"),
    "ts month 13": raw(ts="2026-13-28T12:00:00.123Z"),
    "ts 30 February": raw(ts="2026-02-30T12:00:00.123Z"),
    "ts hour 24": raw(ts="2026-11-28T24:00:00.000Z"),
    "ts second 60": raw(ts="2026-11-28T12:00:60.000Z"),
    "ts before 1970": raw(ts="1969-12-31T23:59:59.999Z"),
    "ts first instant of 1970 (allowed)": raw(ts="1970-01-01T00:00:00.000Z"),
    "ts in 2100": raw(ts="2100-01-01T00:00:00.000Z"),
    "ts last ms before 2100 (allowed)": raw(ts="2099-12-31T23:59:59.999Z"),
    "ts year 9999": raw(ts="9999-12-31T23:59:59.999Z"),
    "ts offset pushes before 1970": raw(ts="1970-01-01T00:30:00.000+01:00"),
    "ts offset form (allowed)": raw(ts="2026-11-28T13:00:00.123+01:00"),
    "ts microseconds (allowed)": raw(ts="2026-11-28T12:00:00.123456Z"),
    "ts no fraction (allowed)": raw(ts="2026-11-28T12:00:00Z"),
    "ts space separator (allowed)": raw(ts="2026-11-28 12:00:00.123Z"),
    "ts non-ascii digit in ms": raw(ts="2026-11-28T12:00:00.12\u0663Z"),
    "ts non-ascii digit in year": raw(ts="\u0662026-11-28T12:00:00.123Z"),
    "ts 24 chars but wrong separators": raw(ts="2026/11/28T12:00:00.123Z"),
    "ts far offset (allowed)": raw(ts="2026-11-28T12:00:00.123+23:59"),
    "ts too long": raw(ts="2026-11-28T12:00:00.123" + "0" * MAX_STRING + "Z"),
    "ip missing": raw(ip=DROP),
    "ip null": raw(ip=None),
    "ip not an address": raw(ip="999.1.1.1"),
    "ip a hostname": raw(ip="localhost"),
    "ip v6 (allowed)": raw(ip="2001:db8::1"),
    "ip v6 with scope (allowed)": raw(ip="fe80::1%eth0"),
    "ip v6 with a scope too long": raw(ip="fe80::1%" + "e" * MAX_STRING),
    "ip an int": raw(ip=3232235777),
    "ip with spaces": raw(ip=" 203.0.113.7"),
    "outcome missing": raw(outcome=DROP),
    "outcome unknown": raw(outcome="maybe"),
    "outcome a bool": raw(outcome=True),
    "outcome a list": raw(outcome=["accepted"]),
    # the outcome/reason rule
    "accepted with a reason": raw(reason="expired"),
    "rejected without a reason": raw(outcome="rejected"),
    "rejected with a reason (allowed)": raw(outcome="rejected", reason="expired"),
    "rejected with an unknown reason": raw(outcome="rejected", reason="bored"),
    "rejected with a reason that is a list": raw(outcome="rejected", reason=["expired"]),
    "reason missing on accepted (allowed)": raw(reason=DROP),
    # optional fields
    "optional fields missing (allowed)": raw(
        jti=DROP,
        sub=DROP,
        iss=DROP,
        aud=DROP,
        client_id=DROP,
        iat=DROP,
        exp=DROP,
        user_agent=DROP,
        service=DROP,
        method=DROP,
        path=DROP,
    ),
    "optional fields null (allowed)": raw(
        jti=None,
        sub=None,
        iss=None,
        aud=None,
        client_id=None,
        iat=None,
        exp=None,
        user_agent=None,
        service=None,
        method=None,
        path=None,
    ),
    "jti an int": raw(jti=5),
    "sub an object": raw(sub={"id": 1}),
    "aud a list": raw(aud=["a", "b"]),
    "path a float": raw(path=1.5),
    "user_agent too long": raw(user_agent=LONG),
    "user_agent just short enough (allowed)": raw(user_agent="x" * MAX_STRING),
    "service empty (allowed)": raw(service=""),
    "iat a string": raw(iat="1714564800"),
    "iat a float": raw(iat=1714564800.0),
    "iat a bool": raw(iat=True),
    "exp a bool": raw(exp=False),
    "iat negative (allowed)": raw(iat=-1),
    "exp huge (allowed)": raw(exp=2**63 - 1),
    "exp past int64 (refused: the archive holds int64)": raw(exp=2**63),
    "iat at the top of uint64": raw(iat=2**64 - 1),
    "a number beyond 64 bits elsewhere (allowed)": raw()[:-1] + b', "huge": 123456789012345678901234567890}',
    "iat beyond 64 bits": raw(iat=0).replace(b'"iat":0', b'"iat":123456789012345678901234567890'),
    "iat in exponent form": raw(iat=0).replace(b'"iat":0', b'"iat":1e9'),
    # extra fields are ignored by from_json
    "extra field (allowed)": raw(extra="whatever"),
    "duplicate key, last wins": raw()[:-1] + b', "ip": "bad ip"}',
    "duplicate key, good last (allowed)": b'{"ip": "bad ip", ' + raw()[1:],
    "unicode strings (allowed)": raw(user_agent="Mozilla/5.0 \u00e9\u4e2d\U0001f600", path="/\u00fc"),
    "control characters (allowed)": raw(user_agent="a\nb\tc\x00"),
    # where the two JSON decoders (msgspec's typed fast path, orjson's) could part ways
    "a lone high surrogate escape": raw(user_agent="x").replace(b'"x"', b'"\\ud800"'),
    "a lone low surrogate escape": raw(user_agent="x").replace(b'"x"', b'"\\udc80x"'),
    "a surrogate pair escape (allowed)": raw(user_agent="x").replace(b'"x"', b'"\\ud83d\\ude00"'),
    "a nested extra field (allowed)": raw()[:-1] + b', "extra": {"deep": [1, {"x": null}], "s": "\\u00e9"}}',
    "NaN for iat": raw(iat=0).replace(b'"iat":0', b'"iat":NaN'),
    "two objects in one message": raw() + b"," + raw(),
    "an object then garbage": raw() + b"garbage",
    "whitespace around the object (allowed)": b" \n" + raw() + b"\t ",
    "a byte-order mark first": b"\xef\xbb\xbf" + raw(),
    "an empty message": b"",
    "a JSON array of a record": b"[" + raw() + b"]",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_decoder_agrees_with_from_json_on_hostile_records(name: str) -> None:
    message = HOSTILE[name]
    assert_agree([message])  # alone in a poll
    assert_agree([raw(), message, raw(ts="2026-11-28T12:00:01.000Z")])  # between good neighbours


def test_table_has_both_verdicts() -> None:
    verdicts = {name: from_json_row(m) is not None for name, m in HOSTILE.items()}
    assert all(verdicts[name] for name in verdicts if "(allowed)" in name)
    assert not any(verdicts[name] for name in verdicts if "(allowed)" not in name)


def test_decoder_agrees_on_a_poll_of_every_hostile_record_at_once() -> None:
    assert_agree(list(HOSTILE.values()) + [raw()] * 50)


def test_a_poll_longer_than_a_decode_slice_keeps_every_row_in_place() -> None:
    """A poll is decoded in slices: hostile records at the edges of slices, and a slice the typed path refuses
    beside slices it takes, still give each message its own row (or None), in order."""
    size = 2 * DECODE_SLICE + 7
    messages = [
        raw(ts=f"2026-11-28T12:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z") for i in range(size)
    ]
    for at, name in [(0, "not json"), (DECODE_SLICE - 1, "ip not an address"), (DECODE_SLICE, "jti an int"),
                     (2 * DECODE_SLICE, "an empty message"), (size - 1, "iat beyond 64 bits")]:  # fmt: skip
        messages[at] = HOSTILE[name]
    rows = decode_rows(messages)
    assert len(rows) == size
    assert rows == [from_json_row(m) for m in messages]
    assert [i for i, row in enumerate(rows) if row is None] == [0, DECODE_SLICE - 1, DECODE_SLICE, 2 * DECODE_SLICE,
                                                                size - 1]  # fmt: skip


def test_decoded_row_is_what_the_engine_reads() -> None:
    [row] = decode_rows([raw(outcome="rejected", reason="revoked", jti=None)])
    epoch_ms = calendar.timegm((2026, 11, 28, 12, 0, 0)) * 1000 + 123
    assert row == (epoch_ms / 1000.0, None, "user-1", "web-app", "203.0.113.7", "curl/8.5", "revoked", 1714564800,
                   1714565400)  # fmt: skip


def test_every_reason_is_accepted_on_rejected_events() -> None:
    assert_agree([raw(outcome="rejected", reason=reason) for reason in REASONS])


def test_empty_poll() -> None:
    assert decode_rows([]) == []


# ------------------------------------------------------------------------------ random mutations

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)  # fmt: skip
_FIELD_NAMES = [*good(), "extra"]
_NEAR_TIMES = st.builds(
    lambda y, mo, d, h, mi, s, ms, sep, end: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}.{ms:03d}{end}",
    st.integers(1960, 2110), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61),
    st.integers(0, 61), st.integers(0, 999), st.sampled_from(["T", "t", " ", "_"]),
    st.sampled_from(["Z", "z", "", "+00:00", "-05:30", "+24:00", " Z"]),
)  # fmt: skip
_NEAR_VALUES = {
    "event_id": st.uuids().map(str) | st.text(alphabet="0123456789abcdefABCDEF-xg", min_size=30, max_size=40),
    "ts": _NEAR_TIMES,
    "ip": st.ip_addresses().map(str) | st.text(alphabet="0123456789.:abcdef%", max_size=20),
    "outcome": st.sampled_from(["accepted", "rejected", "Accepted", ""]),
    "reason": st.none() | st.sampled_from([*REASONS, "other", ""]),
    "iat": st.none() | st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.floats(allow_nan=False),
}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    record = good()
    for name in draw(st.lists(st.sampled_from(_FIELD_NAMES), max_size=4, unique=True)):
        how = draw(st.sampled_from(["drop", "near", "any"]))
        if how == "drop":
            record.pop(name, None)
        elif how == "near" and name in _NEAR_VALUES:
            record[name] = draw(_NEAR_VALUES[name])
        else:
            record[name] = draw(_JSON_VALUES)
    return orjson.dumps(record)


@settings(max_examples=400, deadline=None)
@given(st.lists(mutated(), min_size=1, max_size=8))
def test_decoder_agrees_with_from_json_on_mutated_records(messages: list[bytes]) -> None:
    assert_agree(messages)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=60) | mutated(), min_size=1, max_size=6))
def test_decoder_agrees_with_from_json_on_arbitrary_bytes(messages: list[bytes]) -> None:
    assert_agree(messages)


@settings(max_examples=200, deadline=None)
@given(st.lists(_NEAR_TIMES, min_size=1, max_size=6))
def test_decoder_agrees_with_from_json_on_timestamps(times: list[str]) -> None:
    assert_agree([raw(ts=ts) for ts in times])
