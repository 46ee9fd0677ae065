"""The records that travel on the bus: token-usage/1, alert/1, revocation/1 and verdict/1.

Each record is a frozen dataclass with

* ``to_dict()`` / ``to_json()`` — the wire form (one JSON object per message, ``schema`` names the version);
* ``from_dict()`` / ``from_json()`` — strict parsing that raises :class:`RecordError` naming the field and
  the offending value, never a bare ``KeyError``/``TypeError`` traceback;
* an Arrow schema (``TOKEN_USAGE_ARROW`` ...) for the Parquet archive.

The records are in ``_records.py``, their field checks in ``_checks.py``, the values fields may take in
``_vocabulary.py``, the one timestamp form in ``_time.py`` and the Arrow schemas in ``_arrow.py``; import them
from here. This package is the bottom of the dependency graph: it imports nothing from the rest of ``pipeline``
but :mod:`pipeline.errors`.
"""

from __future__ import annotations

from pipeline.errors import RecordError
from pipeline.events._arrow import (
    ALERT_ARROW,
    REVOCATION_ARROW,
    TOKEN_USAGE_ARROW,
    VERDICT_ARROW,
    to_arrow,
    to_arrow_table,
)
from pipeline.events._checks import UUID_PATTERN, Check, is_ip
from pipeline.events._records import Alert, AlertVerdict, Revocation, TokenUsage
from pipeline.events._time import (
    EARLIEST_TS,
    LATEST_TS,
    event_time_ms,
    format_ts,
    parse_ts,
    second_start_ms,
    ts_to_epoch_ms,
)
from pipeline.events._vocabulary import (
    ALERT_ACTIONS,
    ALERT_SCHEMA,
    ENTITY_TYPES,
    MAX_NESTING,
    MAX_RULE_NAME,
    MAX_STRING,
    MAX_VERDICT_RULES,
    OUTCOMES,
    REASON_SET,
    REASONS,
    REVOCATION_KINDS,
    REVOCATION_SCHEMA,
    REVOCATION_SOURCES,
    SEVERITIES,
    SEVERITY_RANK,
    TOKEN_USAGE_SCHEMA,
    VERDICT_KINDS,
    VERDICT_SCHEMA,
    Outcome,
)

__all__ = [
    "ALERT_ACTIONS",
    "ALERT_ARROW",
    "ALERT_SCHEMA",
    "EARLIEST_TS",
    "ENTITY_TYPES",
    "LATEST_TS",
    "MAX_NESTING",
    "MAX_RULE_NAME",
    "MAX_STRING",
    "MAX_VERDICT_RULES",
    "OUTCOMES",
    "REASONS",
    "REASON_SET",
    "REVOCATION_ARROW",
    "REVOCATION_KINDS",
    "REVOCATION_SCHEMA",
    "REVOCATION_SOURCES",
    "SEVERITIES",
    "SEVERITY_RANK",
    "TOKEN_USAGE_ARROW",
    "TOKEN_USAGE_SCHEMA",
    "UUID_PATTERN",
    "VERDICT_ARROW",
    "VERDICT_KINDS",
    "VERDICT_SCHEMA",
    "Alert",
    "AlertVerdict",
    "Check",
    "Outcome",
    "RecordError",
    "Revocation",
    "TokenUsage",
    "event_time_ms",
    "format_ts",
    "is_ip",
    "parse_ts",
    "second_start_ms",
    "to_arrow",
    "to_arrow_table",
    "ts_to_epoch_ms",
]
