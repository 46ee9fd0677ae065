"""``jwtwatch alerts serve``: the alerts service as its own process, fed by Kafka."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli._options import (
    DataDir,
    Host,
    InsecureHttp,
    Kafka,
    RequiredAdminTokenFile,
    RequireTls,
    RevocationKeys,
    TlsCert,
    TlsKey,
    env,
)
from pipeline.cli._output import console, err, fail, failing_on, log_to_stderr
from pipeline.cli._startup import choose_transport, metrics_note, metrics_socket


def alerts_serve(
    admin_token_file: RequiredAdminTokenFile,
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=env("alerts_port"), help="Port to listen on.")] = 8081,
    kafka: Kafka = None,
    data_dir: DataDir = Path("data"),
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            envvar=env("alerts_metrics_port"),
            help="Serve Prometheus metrics (GET /metrics) on this port, apart from the service's port, which has "
            "none (default: no metrics).",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(envvar=env("alerts_metrics_host"), help="Address of the metrics listener (--metrics-port)."),
    ] = "127.0.0.1",
    revocation_keys: RevocationKeys = None,
    trusted_proxies: Annotated[
        str | None,
        typer.Option(
            envvar=env("trusted_proxies"),
            help="CIDRs of the TLS-terminating proxies in front (allows plain HTTP on a non-loopback address).",
        ),
    ] = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    require_tls: RequireTls = False,
    insecure_http: InsecureHttp = False,
) -> None:
    """Webhook subscriptions, alert log and signed deliveries; consumes alerts and revocations from Kafka."""
    from pipeline.errors import NodeError
    from pipeline.nodes import AlertsNode, Listener, open_bus, open_feed_keys
    from pipeline.serving.web import read_admin_token

    log_to_stderr()
    transport = choose_transport(host, tls_cert, tls_key, trusted_proxies, require_tls, insecure_http)
    metrics_sock = metrics_socket(host, port, metrics_host, metrics_port)
    with failing_on(ValueError, OSError):
        admin_token = read_admin_token(admin_token_file)  # refused before anything is created
    with failing_on(NodeError):
        verifier = open_feed_keys(revocation_keys, kafka, data_dir).verifier()
        bus = open_bus(kafka)
    try:
        node = AlertsNode(bus, data_dir=data_dir, admin_token=admin_token, verifier=verifier)
    except (ValueError, OSError) as exc:
        bus.close()
        fail(str(exc))
    if kafka is None:
        err.print(
            "[yellow]note:[/] no --kafka: nothing feeds this service alerts (use `jwtwatch serve` for one process)"
        )
    node.start()
    console.print(
        f"alerts service on {transport.scheme}://{host}:{port}, data in {data_dir}{metrics_note(metrics_sock)}"
    )
    try:
        node.serve(Listener(host, port, transport.context, metrics_sock))
    finally:
        bus.close()
