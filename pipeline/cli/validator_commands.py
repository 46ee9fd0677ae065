"""``jwtwatch validator``: the hardened validator as a service and its walkthrough; ``jwtwatch revoke`` through its
admin API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli._options import (
    AdminTokenFile,
    Algorithms,
    Audience,
    DataDir,
    EventsOut,
    Host,
    InsecureHttp,
    Issuer,
    JwksFile,
    JwksUrl,
    Kafka,
    Leeway,
    MaxTokenLifetime,
    MetricsHost,
    MetricsPort,
    OneTimeAudiences,
    OneTimeClaims,
    OneTimeScopes,
    Port,
    RequireTls,
    RequireTyp,
    RevocationKeys,
    TlsCert,
    TlsKey,
    TrustedProxies,
    env,
)
from pipeline.cli._output import console, err, fail, fail_with, failing_on, log_to_stderr
from pipeline.cli._startup import choose_transport, metrics_note, metrics_socket


def validator_serve(
    issuer: Issuer,
    audience: Audience,
    jwks_file: JwksFile = None,
    jwks_url: JwksUrl = None,
    host: Host = "127.0.0.1",
    port: Port = 8080,
    algorithms: Algorithms = "RS256,ES256,EdDSA",
    trusted_proxies: TrustedProxies = None,
    admin_token_file: AdminTokenFile = None,
    events_out: EventsOut = None,
    data_dir: DataDir = Path("data"),
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
    require_typ: RequireTyp = None,
    leeway: Leeway = 30,
    max_token_lifetime: MaxTokenLifetime = 3600,
    one_time_audiences: OneTimeAudiences = None,
    one_time_scopes: OneTimeScopes = None,
    one_time_claims: OneTimeClaims = None,
    kafka: Kafka = None,
    revocation_keys: RevocationKeys = None,
    max_feed_lag: Annotated[
        float, typer.Option(envvar=env("max_feed_lag"), help="Not ready when the revocation feed lags this long (s).")
    ] = 30.0,
    fail_closed: Annotated[
        bool,
        typer.Option("--fail-closed", envvar=env("fail_closed"), help="Answer 503 while the revocation feed lags."),
    ] = False,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    require_tls: RequireTls = False,
    insecure_http: InsecureHttp = False,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=env("keys_dir"),
            help="Key store (jwtwatch keys init) whose public keys to trust and publish, beside any JWKS; "
            "its signed jwks.jwt is served at /.well-known/jwks.jwt. With --jwks-root-key only the keys of that "
            "root-signed jwks.jwt are trusted, not jwks.json (which whoever can write the directory can change).",
        ),
    ] = None,
    signed_jwks_url: Annotated[
        str | None,
        typer.Option(
            envvar=env("signed_jwks_url"),
            help="https:// URL of a signed JWKS (jwk-set+jwt) to trust. The newest set's iat is kept under "
            "DATA_DIR/signed-jwks/: an older set is refused (rollback), also after a restart.",
        ),
    ] = None,
    jwks_root_key: Annotated[
        Path | None,
        typer.Option(
            envvar=env("jwks_root_key"),
            help="The root public JWK (root.jwk.json) pinned for --signed-jwks-url and --keys-dir.",
        ),
    ] = None,
    signed_jwks_issuer: Annotated[
        str | None,
        typer.Option(envvar=env("signed_jwks_issuer"), help="The iss the signed JWKS must carry."),
    ] = None,
    signed_jwks_max_age: Annotated[
        str, typer.Option(envvar=env("signed_jwks_max_age"), help="Refuse a signed JWKS issued longer ago.")
    ] = "7d",
    jwks_ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar=env("jwks_ca_file"),
            help="CA bundle (PEM) to verify --jwks-url and --signed-jwks-url with (default: the system's CAs).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            envvar=env("workers"),
            help="Worker processes sharing the port (about one per core). They share the data dir's revocation "
            "store (each reads the others' revocations within ~100 ms) and --events-out; with one-time token rules "
            "more than one needs --kafka.",
        ),
    ] = 1,
) -> None:
    """Serve GET /v1/validate (forward-auth), introspection, JWKS, revocations and health; metrics apart."""
    from pipeline.errors import NodeError
    from pipeline.nodes import KeyTrust, Listener, TokenRules, ValidatorNode, ValidatorSettings

    log_to_stderr()
    transport = choose_transport(host, tls_cert, tls_key, trusted_proxies, require_tls, insecure_http)
    rules = TokenRules(
        issuer=issuer, audience=audience, jwks_file=jwks_file, jwks_url=jwks_url, algorithms=algorithms,
        require_typ=require_typ, leeway_s=leeway, max_token_lifetime_s=max_token_lifetime,
        one_time_audiences=one_time_audiences, one_time_scopes=one_time_scopes, one_time_claims=one_time_claims,
    )  # fmt: skip
    trust = KeyTrust(
        keys_dir=keys_dir, signed_jwks_url=signed_jwks_url, root_key=jwks_root_key, signed_issuer=signed_jwks_issuer,
        max_age=signed_jwks_max_age, ca_file=jwks_ca_file,
    )  # fmt: skip
    settings = ValidatorSettings(
        rules=rules, trust=trust, data_dir=data_dir, admin_token_file=admin_token_file, events_out=events_out,
        trusted_proxies=trusted_proxies, max_feed_lag_s=max_feed_lag, fail_closed=fail_closed, kafka=kafka,
        revocation_keys=revocation_keys, workers=workers,
    )  # fmt: skip
    with failing_on(NodeError, ValueError, OSError):  # ValueError: a ValidationError of the token rules too
        node = ValidatorNode(settings)
    # bound here, before any fork: every worker serves its own metrics on it (jwtwatch_validator_worker names it)
    metrics_sock = metrics_socket(host, port, metrics_host, metrics_port)
    if node.admin_token is None:
        err.print("[yellow]note:[/] no --admin-token-file: the admin API (revocations, introspection) is closed")
    plural = f" ({workers} workers)" if workers > 1 else ""
    console.print(
        f"validator for [bold]{issuer}[/] / [bold]{audience}[/] on {transport.scheme}://{host}:{port}{plural}"
        f"{metrics_note(metrics_sock)}"
    )
    status = node.serve(Listener(host, port, transport.context, metrics_sock), on_error=fail_with)
    if status:
        raise typer.Exit(status)


def validator_demo(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar=env("demo_data_dir"), help="Where the demo keeps its state.")
    ] = Path("data/validator-demo"),
) -> None:
    """Run the validator end to end on loopback: good, forged and revoked tokens, with their verdicts."""
    from pipeline.demo.validator_walkthrough import run_validator_demo

    code = run_validator_demo(data_dir, console)
    raise typer.Exit(code)


def revoke(
    url: Annotated[str, typer.Option(envvar=env("validator_url"), help="The validator's base URL.")],
    admin_token_file: Annotated[
        Path, typer.Option(envvar=env("admin_token_file"), help="Admin token file (mode 0600).")
    ],
    jti: Annotated[str | None, typer.Option(help="Revoke this token id.")] = None,
    sub: Annotated[str | None, typer.Option(help="Revoke every token of this subject issued until now.")] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the record).")] = "manual",
) -> None:
    """Revoke one token (--jti) or a subject (--sub) through the validator's admin API."""
    import httpx

    from pipeline.serving.web import read_admin_token

    if (jti is None) == (sub is None):
        fail("give exactly one of --jti or --sub")
    try:
        token = read_admin_token(admin_token_file)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    body = {"kind": "jti" if jti else "sub", "value": jti or sub, "reason": reason}
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/revocations", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}")
    if response.status_code != 201:
        fail(f"validator answered {response.status_code}: {response.text[:200]}")
    record = response.json()
    console.print(f"revoked {record['kind']} [bold]{record['value']}[/] (version {record['version']})")
