"""How a node runs: an HTTP app on its listener (uvicorn ends it on SIGINT/SIGTERM), or loops until a signal."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp

from pipeline.loop import BackgroundLoop
from pipeline.serving.server import Server, uvicorn_config


@dataclass(frozen=True)
class Listener:
    """Where a node serves HTTP: its address, its TLS context (None: plain HTTP, already judged allowed) and the
    metrics listener's socket, bound by the caller so that a taken port stops the start (None: no metrics)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    metrics_socket: socket.socket | None = None

    def server(self, app: ASGIApp, metrics: Callable[[], ASGIApp]) -> Server:
        """The server of ``app``; ``metrics`` makes the metrics app, only when there is a metrics listener."""
        apart = (self.metrics_socket, metrics()) if self.metrics_socket is not None else None
        return Server(uvicorn_config(app, self.host, self.port, tls=self.tls), metrics=apart)


def run_until_signalled(loops: Sequence[BackgroundLoop], stop: Callable[[], None]) -> None:
    """Start ``loops``, wait for SIGINT or SIGTERM, stop them, then ``stop()`` (close what they used)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    for loop in loops:
        loop.start()
    try:
        done.wait()
    finally:
        for loop in loops:
            loop.stop()
        stop()
