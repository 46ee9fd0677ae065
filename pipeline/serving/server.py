"""Running a jwtwatch service over HTTP (uvicorn) — ``validator serve``, ``serve``, ``alerts serve`` and the demo.

Two limits uvicorn leaves open are closed here, in the HTTP protocol itself (:func:`guarded_protocol`):

- **time to send the headers**: uvicorn arms no timer while a request's headers arrive (its keep-alive timer is
  cancelled by the first byte), so a client trickling a request line held its connection — and a slot of the
  process — for ever. A request's headers must now be complete within ``header_timeout_s`` of the connection
  opening, of the previous answer, or of the request's first byte; else the connection is closed.
- **size of the headers**: httptools (uvicorn's parser when installed) buffers headers without a limit; h11's
  ``h11_max_incomplete_event_size`` bounds only a header block still *incomplete*, so either parser took a block
  of any size that arrived in one read. Each read's header bytes (up to the blank line that ends them) are now
  counted *before* the parser sees them: past :data:`MAX_HEADER_BYTES` the request gets ``431`` and never
  reaches the app, however the bytes were split.

:class:`Server` is uvicorn's server with an optional second listener in the same event loop: the metrics
listener (``--metrics-port``), which serves Prometheus metrics apart from the public port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: The token travels in a header: keep the parsers' limit above our own 8 KiB token cap, so that an oversized
#: token reaches the app and gets a clean 431 and a usage event.
MAX_HEADER_BYTES = 96 * 1024
#: A request's headers must have arrived this long after the connection opened (or the previous answer went).
#: A gateway or a client on the network sends them in one go; only a deliberately slow peer needs longer.
HEADER_TIMEOUT_S = 10.0


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _HeaderGuard:
    """The per-connection deadline for a request's headers, shared by the httptools and h11 protocols."""

    header_timeout_s: ClassVar[float] = HEADER_TIMEOUT_S
    max_header_bytes: ClassVar[int] = MAX_HEADER_BYTES
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            # no answer: the peer is either gone or slow on purpose, and a half-read request has no place for one
            log.debug("closing a connection whose request headers took over %.0f s", self.header_timeout_s)
            self.transport.close()

    _header_bytes = 0
    _header_tail = b""  # the last bytes of the previous read: a blank line may straddle two reads

    def _headers_fit(self, data: bytes) -> bool:
        """Count the header bytes of this read (all of it, or up to the blank line that ends the headers);
        False once the request's headers exceed the cap. Called before the parser sees ``data``."""
        window = self._header_tail + data
        end = window.find(b"\r\n\r\n")
        if end < 0:
            self._header_bytes += len(data)
            self._header_tail = window[-3:]
        else:
            self._header_bytes += max(0, end + 4 - len(self._header_tail))
            self._header_tail = b""
        return self._header_bytes <= self.max_header_bytes

    def _restart_header_count(self) -> None:
        self._header_bytes = 0
        self._header_tail = b""

    def _refuse_oversized_headers(self, answer_allowed: bool) -> None:
        self._disarm_header_deadline()
        if answer_allowed:
            message = b"Request header fields too large"
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message)
            )
        self.transport.close()


def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        return None

    class GuardedHttpToolsProtocol(_HeaderGuard, HttpToolsProtocol):
        """uvicorn's httptools protocol with a header deadline and a header size cap.

        The deadline runs from the connection's start, the previous answer (unless the next request is already
        queued) or a request's first byte, whichever comes first, to that request's last header line.
        """

        _awaiting_headers = True

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn has it
            super().connection_made(transport)
            self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # Counted per read, before parsing: httptools buffers a header line it has not finished in C, out of
            # the callbacks' sight, and dispatches a request whose headers came whole in one read at once.
            if self._awaiting_headers and not self._headers_fit(data):
                if not self.transport.is_closing():
                    self._refuse_oversized_headers(answer_allowed=self.cycle is None or self.cycle.response_complete)
                return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._awaiting_headers = True
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._restart_header_count()
            self._disarm_header_deadline()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._awaiting_headers = True  # what comes next on the connection is the next request's headers

        def on_response_complete(self) -> None:
            waiting_for_next = not self.pipeline  # a queued request has its headers already
            super().on_response_complete()
            if waiting_for_next:
                self._arm_header_deadline()

    return GuardedHttpToolsProtocol


class GuardedH11Protocol(_HeaderGuard, H11Protocol):
    """uvicorn's h11 protocol with the same header deadline and size cap."""

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and not self._headers_fit(data):
            if not self.transport.is_closing():
                self._refuse_oversized_headers(answer_allowed=self.cycle is None or self.cycle.response_complete)
            return
        super().data_received(data)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn has it
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_state()

    def _follow_state(self) -> None:
        # IDLE: the peer has not finished a request line and headers (or sent nothing yet).
        if self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()
        else:
            self._disarm_header_deadline()
            self._restart_header_count()


def guarded_protocol(
    header_timeout_s: float = HEADER_TIMEOUT_S, max_header_bytes: int = MAX_HEADER_BYTES
) -> type[asyncio.Protocol]:
    """The HTTP/1.1 protocol class for uvicorn (httptools when installed, as uvicorn's "auto", else h11),
    with the header deadline and size cap."""
    base = _httptools_protocol() or GuardedH11Protocol
    limits = {"header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes}
    return type(base.__name__, (base,), limits)


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    **extra: Any,
) -> uvicorn.Config:
    """uvicorn's configuration for a jwtwatch service; with ``tls`` (``pipeline.serving.tls.server_context``)
    it serves HTTPS with exactly that context (minimum version and ciphers included), else plain HTTP.

    The HTTP protocol is :func:`guarded_protocol`'s unless ``http`` names another (tests: the h11 variant)."""
    if tls is not None:
        extra["ssl_context_factory"] = lambda _config, _default: tls
    extra.setdefault("http", guarded_protocol(header_timeout_s))
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # client IPs are resolved by pipeline.serving.client_ip, trusted proxies only
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        **extra,
    )


class Server(uvicorn.Server):
    """uvicorn's server; with ``metrics`` (a listening socket and its app) it also serves that app there.

    The metrics listener runs in the same event loop, starts and stops with the server, speaks plain HTTP (it is
    meant for loopback or a monitoring network) and has the same header deadline. Under ``--workers`` the parent
    binds it and every worker accepts on it, as on the public port.
    """

    def __init__(self, config: uvicorn.Config, *, metrics: tuple[socket.socket, Any] | None = None) -> None:
        super().__init__(config)
        self.metrics = metrics

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.metrics is None or not self.started:
            return
        sock, app = self.metrics
        host, port = sock.getsockname()[:2]
        # the public listener's protocol, so the same header deadline and size cap; never its TLS context
        config = uvicorn_config(app, host, port, lifespan="off", http=self.config.http_protocol_class)
        config.load()
        state = self.server_state

        def protocol() -> asyncio.Protocol:
            # http_protocol_class is typed as any asyncio.Protocol; it is uvicorn's (or ours, its subclass)
            return config.http_protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]

        listener = await asyncio.get_running_loop().create_server(protocol, sock=sock, backlog=config.backlog)
        self.servers.append(listener)  # closed by uvicorn's shutdown with the public listener


@contextmanager
def background_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None, **config: Any
) -> Iterator[str]:
    """Serve ``app`` in a thread (for the demo, tools and tests); yields the base URL (https:// with ``tls``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config.setdefault("lifespan", "off")
    config.setdefault("timeout_graceful_shutdown", 3)
    server = Server(uvicorn_config(app, host, sock.getsockname()[1], tls=tls, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    try:
        scheme = "https" if tls is not None or config.get("ssl_certfile") else "http"
        yield f"{scheme}://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
