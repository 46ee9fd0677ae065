"""The four records: token-usage/1, alert/1, revocation/1 and verdict/1, each with the checks of its fields."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from pipeline.errors import RecordError
from pipeline.events._checks import (
    Check,
    _ip,
    _list_of_maps,
    _loads,
    _number,
    _one_of,
    _opt_int,
    _opt_str,
    _opt_ts,
    _parse,
    _Record,
    _rule_names,
    _str,
    _str_map,
    _ts,
    _uuid,
)
from pipeline.events._vocabulary import (
    ALERT_ACTIONS,
    ALERT_SCHEMA,
    ENTITY_TYPES,
    OUTCOMES,
    REASON_SET,
    REVOCATION_KINDS,
    REVOCATION_SCHEMA,
    REVOCATION_SOURCES,
    SEVERITIES,
    TOKEN_USAGE_SCHEMA,
    VERDICT_KINDS,
    VERDICT_SCHEMA,
    Outcome,
)

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


__all__ = ["Alert", "AlertVerdict", "Revocation", "TokenUsage"]
