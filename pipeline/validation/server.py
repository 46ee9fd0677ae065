"""Running a jwtwatch service over HTTP (uvicorn) — ``validator serve``, ``serve``, ``alerts serve`` and the demo.

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
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def uvicorn_config(
    app: Any, host: str, port: int, *, tls: ssl.SSLContext | None = None, **extra: Any
) -> uvicorn.Config:
    """uvicorn's configuration for a jwtwatch service; with ``tls`` (``pipeline.validation.tls.server_context``)
    it serves HTTPS with exactly that context (minimum version and ciphers included), else plain HTTP."""
    if tls is not None:
        extra["ssl_context_factory"] = lambda _config, _default: tls
    # The token travels in a header: keep h11's/httptools' limits above our own 8 KiB cap so that
    # an oversized token reaches the app and gets a clean 431 and a usage event.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # client IPs are resolved by pipeline.validation.client_ip, trusted proxies only
        h11_max_incomplete_event_size=96 * 1024,
        **extra,
    )


class Server(uvicorn.Server):
    """uvicorn's server; with ``metrics`` (a listening socket and its app) it also serves that app there.

    The metrics listener runs in the same event loop, starts and stops with the server and speaks plain HTTP (it
    is meant for loopback or a monitoring network). Under ``--workers`` the parent binds it and every worker
    accepts on it, as on the public port.
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
        # the public listener's HTTP protocol; never its TLS context
        config = uvicorn_config(app, host, port, lifespan="off", http=self.config.http_protocol_class)
        config.load()
        state = self.server_state

        def protocol() -> asyncio.Protocol:
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
