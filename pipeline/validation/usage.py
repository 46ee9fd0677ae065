"""Turning a validation into a token-usage/1 event, and sending it on (bus, JSON Lines file)."""

from __future__ import annotations

import json
import logging
import os
import re
import reprlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.bus import TOKEN_USAGE, Bus
from pipeline.bus.base import Message
from pipeline.bus.dead_letter import dead_letter, worth_logging
from pipeline.events import TokenUsage, format_ts
from pipeline.validation.verifier import Verdict

log = logging.getLogger(__name__)

_MAX_FIELD = 1024  # a usage event never carries more than this of any attacker-controlled string
#: Ends a value cut at ``_MAX_FIELD`` characters, so that an analyst never takes a prefix for the whole value.
TRUNCATED = "\u2026[truncated]"
#: Lone surrogates: valid in JSON text (``"\\ud800"``) and in a Python ``str``, but not Unicode — no UTF-8 encoder
#: takes them, so one in a claim made the whole batch of events fail to encode.
_SURROGATES = re.compile("[\ud800-\udfff]")
#: Non-string claims (objects, arrays, numbers) are shown through this: bounded depth and width, so that a
#: claim nested hundreds deep or a huge array costs neither the stack nor the memory that ``str()`` would.
_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel = 3
_BOUNDED.maxstring = _BOUNDED.maxother = _BOUNDED.maxlong = 256


def _text(value: object) -> str | None:
    """Any value from outside as text a usage event can always carry, or None.

    Made safe here, once, where the event is built: a non-string is rendered bounded, a value longer than
    ``_MAX_FIELD`` characters is cut and ends in ``TRUNCATED``, and every lone surrogate becomes U+FFFD — the
    result always encodes as UTF-8 and JSON. Everything else (NUL and control characters included) is kept:
    JSON escapes it, and an investigator wants to see it.
    """
    if value is None:
        return None
    text = value if isinstance(value, str) else _BOUNDED.repr(value)
    if len(text) > _MAX_FIELD:
        text = text[: _MAX_FIELD - len(TRUNCATED)] + TRUNCATED
    if not text.isascii():  # ASCII, the common case, cannot hold a surrogate
        text = _SURROGATES.sub("\ufffd", text)
    return text


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
        return _text(" ".join(v if isinstance(v, str) else _BOUNDED.repr(v) for v in value))
    return _text(value)


def _salvage(value: object) -> str:
    """``value`` as ASCII JSON (any type, any text) — what a dead letter keeps of a record that could not be sent."""
    try:
        return json.dumps(value, ensure_ascii=True, default=_BOUNDED.repr)
    except (ValueError, TypeError, RecursionError):
        return ascii(_BOUNDED.repr(value))


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
    (``validator serve --workers N``) can append to the same file without interleaving partial lines. A file or
    directory it creates is the owner's alone (0600, 0700): usage events name subjects, addresses and clients.

    ``emit`` sends one event at once. With ``background=True``, ``defer`` only queues what the event is made of
    and a thread builds, publishes and writes the events in batches every ``interval_s`` — the request path then
    pays a deque append and nothing else. At most ``max_pending`` events wait; beyond that new ones are dropped
    and counted (``dropped``), so that a stuck bus cannot exhaust the memory.

    Each event is built and encoded on its own: one that fails (it should not — :func:`usage_event` makes every
    value safe) is dead-lettered and counted (``dead_lettered``, ``on_dead_letter``) alone, and the others of its
    batch go on. Neither ``emit`` nor ``defer`` raises, so no usage event can fail the request it describes.
    """

    def __init__(
        self,
        bus: Bus | None,
        events_out: Path | None = None,
        *,
        background: bool = False,
        interval_s: float = 0.02,
        max_pending: int = 200_000,
        on_dead_letter: Callable[[], None] | None = None,
    ) -> None:
        self.bus = bus
        self._lock = threading.Lock()
        self._fd: int | None = None
        if events_out is not None:
            self._fd = _open_private(Path(events_out))
        self.emitted = 0
        self.dropped = 0
        self.dead_lettered = 0
        self._on_dead_letter = on_dead_letter
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
        raw = self._encoded(event)
        if raw is None:
            return
        self._publish(event, raw)
        if self._fd is not None:
            # One write per line: a crash loses at most the line being written.
            self._write_lines([raw])
        self.emitted += 1

    def defer(self, verdict: Verdict, context: Any, now: float) -> None:
        """Queue the event of one validation (``context``: ip, user_agent, service, method, path attributes)."""
        if self.bus is None and self._fd is None:
            return  # nowhere to send it: not even built
        if self._thread is None:
            event = self._built(verdict, context, now, None)
            if event is not None:
                self.emit(event)
            return
        if len(self._pending) >= self._max_pending:
            self._count_dropped(1, "the bus or the file cannot keep up")
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
            lines = []
            for (verdict, context, now), event_id in zip(batch, ids, strict=True):
                event = self._built(verdict, context, now, event_id)
                raw = None if event is None else self._encoded(event)
                if event is None or raw is None:
                    continue  # dead-lettered on its own; the rest of the batch goes on
                self._publish(event, raw)
                lines.append(raw)
            if self._fd is not None:
                # Whole lines only, at most ~64 KiB per write(2).
                chunk: list[bytes] = []
                size = 0
                for raw in lines:
                    chunk.append(raw)
                    size += len(raw) + 1
                    if size >= 65536:
                        self._write_lines(chunk)
                        chunk, size = [], 0
                if chunk:
                    self._write_lines(chunk)
            self.emitted += len(lines)
        if not pending:
            self._idle.set()

    def _built(self, verdict: Verdict, context: Any, now: float, event_id: str | None) -> TokenUsage | None:
        try:
            return _event(verdict, context, now, event_id)
        except Exception as exc:
            self._dead_letter({"verdict": verdict, "context": context, "now": now}, None, exc)
            return None

    def _encoded(self, event: TokenUsage) -> bytes | None:
        try:
            return event.to_json()
        except Exception as exc:
            self._dead_letter(event.to_dict(), event.bus_key, exc)
            return None

    def _publish(self, event: TokenUsage, raw: bytes) -> None:
        if self.bus is None:
            return
        try:
            self.bus.publish(TOKEN_USAGE, event.bus_key, raw)
        except Exception:
            # The bus, not the event, failed: the file still gets the event, and the request its answer.
            self._count_dropped(1, "the bus refused them", exc_info=True)

    def _dead_letter(self, record: object, key: str | None, exc: Exception) -> None:
        """Park one event that cannot be built or encoded: counted, logged, and on the bus's dead-letter topic.

        It never reached ``jwtwatch.token-usage``, so its dead letter names partition and offset -1; ``original``
        is the record as JSON with everything outside ASCII escaped (lone surrogates included), so nothing is lost.
        """
        self.dead_lettered += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter()
        error = f"usage event could not be built or encoded: {type(exc).__name__}: {exc}"[:1000]
        if worth_logging(self.dead_lettered):
            log.warning("usage events: %d dead-lettered, the latest: %r", self.dead_lettered, error)
        if self.bus is None:
            return  # counted and logged: with no bus there is no dead-letter topic
        try:
            key_bytes = key.encode("utf-8", "backslashreplace") if key is not None else None  # its bus key
            message = Message(TOKEN_USAGE, -1, -1, key_bytes, _salvage(record).encode("ascii"), int(time.time() * 1000))
            dead_letter(self.bus, message, error, consumer="validator-usage-events")
        except Exception:
            log.exception("usage events: a dead letter could not be published")

    def _count_dropped(self, count: int, why: str, *, exc_info: bool = False) -> None:
        before = self.dropped
        self.dropped += count
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning("usage events: %d dropped, %s", self.dropped, why, exc_info=exc_info)

    def _write_lines(self, lines: list[bytes]) -> None:
        try:
            self._write(b"\n".join(lines) + b"\n")
        except OSError:
            self._count_dropped(len(lines), "the events file refused them", exc_info=True)

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


def _open_private(path: Path) -> int:
    """``path`` opened for appending; the directories and the file it creates are the owner's alone."""
    missing = [parent for parent in (path.parent, *path.parent.parents) if not parent.exists()]
    for directory in reversed(missing):  # Path.mkdir(parents=True) would give the parents the umask's mode
        directory.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if os.fstat(fd).st_mode & 0o007:
        log.warning("usage events: %s is open to every user of this machine (chmod o-rwx it)", path)
    return fd


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
