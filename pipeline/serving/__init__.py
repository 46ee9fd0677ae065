"""The HTTP serving every jwtwatch service shares (the validator, the alerts service, ``serve``, the demos).

* :mod:`~pipeline.serving.server` — uvicorn with a header deadline and size cap (:func:`uvicorn_config`),
  :class:`Server` with its optional metrics listener, :func:`background_server` for tools and tests;
* :mod:`~pipeline.serving.tls` — the transport: HTTPS, or plain HTTP only where safe (:func:`choose_transport`);
* :mod:`~pipeline.serving.prefork` — ``--workers``: forked processes on one listening socket (:func:`run_workers`);
* :mod:`~pipeline.serving.web` — security headers, admin-token checks, capped body reads, error answers that never
  echo the request, the metrics listener's app;
* :mod:`~pipeline.serving.client_ip` — which address is the client's, believing only trusted proxies.

It knows nothing of what is served: a service hands it an ASGI app, or a worker function to fork.
"""

from pipeline.serving.client_ip import client_ip, parse_networks
from pipeline.serving.prefork import listening_socket, run_workers
from pipeline.serving.server import Server, background_server, uvicorn_config
from pipeline.serving.tls import Transport, choose_transport, server_context
from pipeline.serving.web import metrics_app, read_admin_token

__all__ = [
    "Server",
    "Transport",
    "background_server",
    "choose_transport",
    "client_ip",
    "listening_socket",
    "metrics_app",
    "parse_networks",
    "read_admin_token",
    "run_workers",
    "server_context",
    "uvicorn_config",
]
