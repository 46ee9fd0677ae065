"""The vocabulary of the records: their schema names, the values their fields may take, and the bounds on them."""

from __future__ import annotations

from typing import Literal

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


__all__ = [
    "ALERT_ACTIONS",
    "ALERT_SCHEMA",
    "ENTITY_TYPES",
    "MAX_NESTING",
    "MAX_RULE_NAME",
    "MAX_STRING",
    "MAX_VERDICT_RULES",
    "OUTCOMES",
    "REASONS",
    "REASON_SET",
    "REVOCATION_KINDS",
    "REVOCATION_SCHEMA",
    "REVOCATION_SOURCES",
    "SEVERITIES",
    "SEVERITY_RANK",
    "TOKEN_USAGE_SCHEMA",
    "VERDICT_KINDS",
    "VERDICT_SCHEMA",
    "Outcome",
]
