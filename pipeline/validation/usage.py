"""Turning a validation into a token-usage/1 event, and sending it on (bus, JSON Lines file)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
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
    event_id: str | None = None,
) -> TokenUsage:
    """One token-usage/1 record. A rejected token contributes its *unverified* claims, if it parsed."""
    claims: Mapping[str, Any] = verdict.any_claims or {}
    return TokenUsage(
        event_id=event_id or TokenUsage.new_event_id(),
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


def event_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs from one ``os.urandom`` call instead of one each."""
    pool = os.urandom(16 * count)
    return [str(uuid.UUID(bytes=pool[i : i + 16], version=4)) for i in range(0, 16 * count, 16)]


class UsageEmitter:
    """Publishes usage events to the bus and, optionally, appends them to a JSON Lines file.

    The file is opened ``O_APPEND`` and every write is whole lines in one ``write(2)``: several processes
    (``validator serve --workers N``) can append to the same file without interleaving partial lines.

    ``emit`` sends one event at once. With ``background=True``, ``defer`` only queues what the event is made of
    and a thread builds, publishes and writes the events in batches every ``interval_s`` — the request path then
    pays a deque append and nothing else. At most ``max_pending`` events wait; beyond that new ones are dropped
    and counted (``dropped``), so that a stuck bus cannot exhaust the memory.
    """

    def __init__(
        self,
        bus: Bus | None,
        events_out: Path | None = None,
        *,
        background: bool = False,
        interval_s: float = 0.02,
        max_pending: int = 200_000,
    ) -> None:
        self.bus = bus
        self._lock = threading.Lock()
        self._fd: int | None = None
        if events_out is not None:
            Path(events_out).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(events_out, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self.emitted = 0
        self.dropped = 0
        self._pending: deque[tuple[Verdict, Any, float]] = deque()
        self._max_pending = max_pending
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="usage-events", daemon=True)
            self._thread.start()

    def emit(self, event: TokenUsage) -> None:
        raw = event.to_json()
        if self.bus is not None:
            self.bus.publish(TOKEN_USAGE, event.bus_key, raw)
        if self._fd is not None:
            # One write per line: a crash loses at most the line being written.
            self._write(raw + b"\n")
        self.emitted += 1

    def defer(self, verdict: Verdict, context: Any, now: float) -> None:
        """Queue the event of one validation (``context``: ip, user_agent, service, method, path attributes)."""
        if self.bus is None and self._fd is None:
            return  # nowhere to send it: not even built
        if self._thread is None:
            self.emit(_event(verdict, context, now, None))
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            if self.dropped in (1, 1000) or self.dropped % 100_000 == 0:
                log.warning("usage events: %d dropped, the bus or the file cannot keep up", self.dropped)
            return
        self._idle.clear()
        self._pending.append((verdict, context, now))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued event has been sent on; False on timeout."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        while self._pending or not self._idle.is_set():
            if time.monotonic() > deadline:
                return False
            self._idle.wait(0.01)
        return True

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self._interval_s)
            try:
                self._drain()
            except Exception:  # pragma: no cover - never let the event thread die
                log.exception("usage events: batch failed")
            if stopping:
                return

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            batch = [pending.popleft() for _ in range(min(len(pending), 4096))]
            ids = event_ids(len(batch))
            events = [_event(v, c, n, i) for (v, c, n), i in zip(batch, ids, strict=True)]
            lines = []
            for event in events:
                raw = event.to_json()
                if self.bus is not None:
                    self.bus.publish(TOKEN_USAGE, event.bus_key, raw)
                lines.append(raw)
            if self._fd is not None:
                # Whole lines only, at most ~64 KiB per write(2).
                chunk: list[bytes] = []
                size = 0
                for raw in lines:
                    chunk.append(raw)
                    size += len(raw) + 1
                    if size >= 65536:
                        self._write(b"\n".join(chunk) + b"\n")
                        chunk, size = [], 0
                if chunk:
                    self._write(b"\n".join(chunk) + b"\n")
            self.emitted += len(events)
        if not pending:
            self._idle.set()

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _event(verdict: Verdict, context: Any, now: float, event_id: str | None) -> TokenUsage:
    return usage_event(
        verdict,
        now=now,
        ip=context.ip,
        user_agent=context.user_agent,
        service=context.service,
        method=context.method,
        path=context.path,
        event_id=event_id,
    )
