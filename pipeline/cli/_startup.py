"""What a service command settles before its node starts, saying so on stderr: the transport, the metrics
listener and the networks of client addresses. Whatever cannot be used stops the command with one line."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.markup import escape

from pipeline.cli._output import err, fail

if TYPE_CHECKING:
    from pipeline.networks import NetworkResolver
    from pipeline.serving.tls import Transport


def choose_transport(
    host: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    trusted_proxies: str | None,
    require_tls: bool,
    insecure_http: bool,
) -> Transport:
    """HTTPS, or plain HTTP only on loopback / behind trusted proxies (pipeline.serving.tls); says which."""
    from pipeline.errors import TransportError
    from pipeline.serving.client_ip import parse_networks
    from pipeline.serving.tls import choose_transport as choose

    try:
        parse_networks(trusted_proxies)
        transport = choose(
            host,
            tls_cert=tls_cert,
            tls_key=tls_key,
            trusted_proxies=trusted_proxies,
            require_tls=require_tls,
            insecure_http=insecure_http,
        )
    except (TransportError, ValueError) as exc:
        fail(str(exc))
    logging.getLogger("jwtwatch").info("transport: %s", transport.mode)
    style = "green" if transport.tls else ("bold red" if transport.insecure else "yellow")
    err.print(f"[{style}]transport:[/] {escape(transport.mode)}")
    return transport


def metrics_socket(host: str, port: int, metrics_host: str, metrics_port: int | None) -> socket.socket | None:
    """The metrics listener's socket (bound now, so that a taken port stops the start), or None without one."""
    from pipeline.serving.prefork import listening_socket
    from pipeline.serving.server import is_loopback

    if metrics_port is None:
        return None
    if metrics_port == port and metrics_port != 0:
        fail("--metrics-port must differ from --port: metrics are never served on the service's port")
    if not is_loopback(metrics_host):
        err.print(
            f"[yellow]note:[/] metrics on {escape(metrics_host)}:{metrics_port} (plain HTTP): they show why tokens "
            "fail; let only your Prometheus reach that port"
        )
    try:
        return listening_socket(metrics_host, metrics_port)
    except OSError as exc:
        fail(f"cannot listen on {metrics_host}:{metrics_port} for metrics: {exc}")


def metrics_note(sock: socket.socket | None) -> str:
    """Where the metrics are, for the start-up line."""
    if sock is None:
        return ", no metrics (--metrics-port)"
    host, port = sock.getsockname()[:2]
    return f", metrics on http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def open_networks(ip_db: list[Path] | None, *, say: Literal["stderr", "log", "none"] = "stderr") -> NetworkResolver:
    """The network resolver for ``--ip-db`` (the /16 fallback without), built once at startup, and one line saying
    which (``describe``): to the log for a service (``say="log"``), else to stderr (``"none"``: the caller says
    it). A file it cannot use stops the command with one line naming it."""
    from pipeline.errors import IpDbError
    from pipeline.networks import describe, open_ip_db

    try:
        resolver = open_ip_db(ip_db or [])
    except IpDbError as exc:
        fail(str(exc))
    if say == "log":
        logging.getLogger("pipeline.networks").info(describe(resolver))
    elif say == "stderr":
        err.print(describe(resolver), markup=False, highlight=False)
    return resolver
