"""Strict parsing: one check per field kind, and the parse of a record from its JSON value.

A check takes ``(record, field, value)`` and returns the value or raises :class:`~pipeline.errors.RecordError`
naming the record, the field and the offending value — never a bare ``KeyError``/``TypeError``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, ClassVar, TypeVar

import orjson

from pipeline.errors import RecordError
from pipeline.events._time import EARLIEST_TS, LATEST_TS, parse_ts
from pipeline.events._vocabulary import MAX_NESTING, MAX_RULE_NAME, MAX_STRING, MAX_VERDICT_RULES

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


__all__ = ["UUID_PATTERN", "Check", "is_ip"]
