"""Alerts-service helpers: an injected clock, loopback webhook receivers (an honest one and one that trickles),
and the alert and revocation records the tests deliver."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.events import Alert, Revocation

#: The admin token of the alerts services the tests start.
ADMIN = "admin-token-0123456789abcdef"


class FakeClock:
    """The service's clock, moved only by the test (retries and backoff without waiting)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def to(self, moment: float) -> None:
        self.now = max(self.now, moment)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A loopback webhook receiver: records every request; answers from a per-path script (else 200)."""

    base: str = ""
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.base}/hook/{name}"

    def script(self, name: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        self.scripts[f"/hook/{name}"] = [a if isinstance(a, tuple) else (a, {}) for a in answers]

    def at(self, name: str) -> list[Received]:
        return [r for r in self.requests if r.path == f"/hook/{name}"]

    def reset(self) -> None:
        self.requests.clear()
        self.scripts.clear()

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            path = request.url.path
            self.requests.append(Received(path, dict(request.headers), body))
            script = self.scripts.get(path)
            status, headers = script.pop(0) if script else (200, {})
            return Response(b"ok", status_code=status, headers=headers)

        async def elsewhere(request: Request) -> Response:
            self.requests.append(Received(request.url.path, dict(request.headers), await request.body()))
            return Response(b"redirected here", status_code=200)

        return Starlette(
            routes=[
                Route("/hook/{name}", hook, methods=["POST"]),
                Route("/elsewhere", elsewhere, methods=["POST", "GET"]),
            ]
        )


class TrickleServer:
    """A loopback webhook receiver that reads the request, then sends its response headers one byte per
    ``interval_s`` — within any per-read timeout, for as long as the client listens (or ``close()``)."""

    RESPONSE = b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"." * 200 + b"\r\ncontent-length: 0\r\n\r\n"

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.accepted = 0
        self.bytes_sent = 0
        self.active = 0  # connections being trickled to right now
        self.most_active = 0
        self.cut_off = 0  # connections the client closed before the response was complete
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="trickle")]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            thread = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn, self._lock_count():
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:  # the headers; the small body follows, unread
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            for byte in self.RESPONSE:
                if self._stop.wait(self.interval_s):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    with self._lock:
                        self.cut_off += 1
                    return
                with self._lock:
                    self.bytes_sent += 1

    @contextlib.contextmanager
    def _lock_count(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


def wait_until(condition: Callable[[], object], timeout_s: float) -> bool:
    """Whether ``condition()`` came true within ``timeout_s`` (polled; checked once more at the end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


#: The one-line summary of :func:`make_alert`'s alert.
SUMMARY = (
    "token of alice used from 45.9.0.0/16 and 203.0.0.0/16 within 4 s, 23 times — "
    "by 2 client families (Chrome and curl)"
)


def make_alert(alert_id: str = "a-1", severity: str = "high", score: float = 0.8, **extra: object) -> Alert:
    fields: dict[str, object] = {
        "alert_id": alert_id,
        "ts": "2025-03-01T12:00:00.000Z",
        "entity_type": "jti",
        "entity": "tok-123",
        "jti": "tok-123",
        "sub": "alice",
        "ip": "203.0.113.7",
        "window_start": "2025-03-01T11:55:00.000Z",
        "window_end": "2025-03-01T12:00:00.000Z",
        "score": score,
        "severity": severity,
        "model_version": "m1",
        "features": {"distinct_ips": 4.0},
        "reasons": [
            {"feature": "distinct_ips", "value": 4, "baseline": 1, "text": "distinct client IPs: 4 (usually ≤ 1)"}
        ],
        "summary": SUMMARY,
    }
    fields.update(extra)
    return Alert(**fields)  # type: ignore[arg-type]


def make_revocation(revocation_id: str = "rev-1") -> Revocation:
    return Revocation(
        revocation_id=revocation_id,
        kind="jti",
        iss="https://issuer.example",
        value="tok-123",
        reason="auto: high alert a-1",
        source="auto",
        alert_id="a-1",
        created_at="2025-03-01T12:00:01.000Z",
        expires_at="2025-03-02T12:00:01.000Z",
        version=3,
    )
