"""Valid wire records as plain dicts, one change away from the hostile ones the parsing tests build."""

from __future__ import annotations

from typing import Any

#: A value for a field that means "leave the field out".
DROP = object()

EVENT_ID = "4f9c1f0e-7d1b-4c55-9a8e-2b7f6f1d2c3a"


def usage_dict(**changes: Any) -> dict[str, Any]:
    """A valid token-usage/1 record as a dict, with ``changes`` (``DROP`` leaves a field out)."""
    data: dict[str, Any] = {
        "schema": "token-usage/1",
        "event_id": EVENT_ID,
        "ts": "2024-05-01T12:00:00.123Z",
        "jti": "jti-1",
        "sub": "user-1",
        "iss": "https://issuer.test",
        "aud": "https://api.test",
        "client_id": "web-app",
        "iat": 1714564800,
        "exp": 1714565400,
        "ip": "203.0.113.7",
        "user_agent": "curl/8.5",
        "outcome": "accepted",
        "reason": None,
        "service": "api.test",
        "method": "GET",
        "path": "/orders",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not DROP}


def alert_dict(**changes: Any) -> dict[str, Any]:
    """A valid alert/1 record as a dict, with ``changes`` (``DROP`` leaves a field out)."""
    data: dict[str, Any] = {
        "schema": "alert/1",
        "alert_id": "al-0001",
        "type": "token.anomaly",
        "ts": "2024-05-01T12:05:00.000Z",
        "entity_type": "jti",
        "entity": "jti-1",
        "sub": "user-1",
        "jti": "jti-1",
        "ip": None,
        "window_start": "2024-05-01T12:00:00.000Z",
        "window_end": "2024-05-01T12:05:00.000Z",
        "score": 0.93,
        "severity": "high",
        "features": {"distinct_ips": 7, "rate": 1.5},
        "reasons": [{"feature": "distinct_ips", "value": 7, "baseline": 1}],
        "model_version": "m-2024-05-01",
        "action": "revoked",
        "revocation_id": "rev-1",
        "summary": "token of user-1 used from 10.1.0.0/16 and 45.33.0.0/16 within 4 s, 23 times",
        "network_source": "mmdb:GeoLite2-ASN(2026-11-30)",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not DROP}


def revocation_dict(**changes: Any) -> dict[str, Any]:
    """A valid revocation/1 record as a dict, with ``changes`` (``DROP`` leaves a field out)."""
    data: dict[str, Any] = {
        "schema": "revocation/1",
        "revocation_id": "rev-1",
        "kind": "sub",
        "iss": "https://issuer.test",
        "value": "user-1",
        "reason": "anomaly",
        "source": "auto",
        "alert_id": "al-0001",
        "created_at": "2024-05-01T12:05:00.000Z",
        "expires_at": "2024-05-02T12:05:30.000Z",
        "revoked_before": "2024-05-01T12:05:00.000Z",
        "version": 12,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not DROP}
