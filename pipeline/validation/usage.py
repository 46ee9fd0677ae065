"""Turning a validation into a token-usage/1 event, and sending it on (bus, JSON Lines file)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.bus import TOKEN_USAGE, Bus
from pipeline.events import TokenUsage, format_ts
from pipeline.validation.verifier import Verdict

log = logging.getLogger(__name__)

_MAX_FIELD = 1024  # a usage event never carries more than this of any attacker-controlled string


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:_MAX_FIELD]


def _epoch(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = int(value)
    except (OverflowError, ValueError):
        return None
    # An attacker's iat of 10**30 must not break the event (int64 on the wire and in Arrow).
    return number if -(2**63) <= number < 2**63 else None


def _audience(value: object) -> str | None:
    if isinstance(value, list):
        return _text(" ".join(str(v) for v in value))
    return _text(value)


def usage_event(
    verdict: Verdict,
    *,
    now: float,
    ip: str,
    user_agent: str | None = None,
    service: str | None = None,
    method: str | None = None,
    path: str | None = None,
) -> TokenUsage:
    """One token-usage/1 record. A rejected token contributes its *unverified* claims, if it parsed."""
    claims: Mapping[str, Any] = verdict.any_claims or {}
    return TokenUsage(
        event_id=TokenUsage.new_event_id(),
        ts=format_ts(now),
        ip=ip,
        outcome="accepted" if verdict.ok else "rejected",
        reason=verdict.reason,
        jti=_text(claims.get("jti")),
        sub=_text(claims.get("sub")),
        iss=_text(claims.get("iss")),
        aud=_audience(claims.get("aud")),
        client_id=_text(claims.get("client_id") or claims.get("azp")),
        iat=_epoch(claims.get("iat")),
        exp=_epoch(claims.get("exp")),
        user_agent=_text(user_agent),
        service=_text(service),
        method=_text(method),
        path=_text(path),
    )


class UsageEmitter:
    """Publishes usage events to the bus and, optionally, appends them to a JSON Lines file."""

    def __init__(self, bus: Bus | None, events_out: Path | None = None) -> None:
        self.bus = bus
        self._lock = threading.Lock()
        self._file = None
        if events_out is not None:
            Path(events_out).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(events_out, "ab")  # noqa: SIM115 - lives as long as the emitter
        self.emitted = 0

    def emit(self, event: TokenUsage) -> None:
        raw = event.to_json()
        if self.bus is not None:
            self.bus.publish(TOKEN_USAGE, event.bus_key, raw)
        if self._file is not None:
            with self._lock:
                # One write per line, flushed: a crash loses at most the line being written.
                self._file.write(raw + b"\n")
                self._file.flush()
        self.emitted += 1

    def close(self) -> None:
        if self._file is not None:
            with self._lock:
                self._file.close()
                self._file = None
