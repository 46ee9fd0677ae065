"""``jwtwatch serve``: validator, detection pipeline and alerts service in one process, on one port."""

from __future__ import annotations

from pathlib import Path

from pipeline.cli._options import (
    DEFAULT_MODEL_DIR,
    AdminTokenFile,
    Algorithms,
    AllowCidrs,
    AllowClients,
    AllowSubjects,
    Audience,
    AutoRevoke,
    DataDir,
    DryRun,
    EventsOut,
    Host,
    InsecureHttp,
    IpDb,
    Issuer,
    JwksFile,
    JwksUrl,
    Leeway,
    MaxRevocationsPerMinute,
    MaxTokenLifetime,
    MetricsHost,
    MetricsPort,
    ModelDir,
    OneTimeAudiences,
    OneTimeClaims,
    OneTimeScopes,
    Port,
    RequireTls,
    RequireTyp,
    RevokeMinSeverity,
    TlsCert,
    TlsKey,
    TrustedProxies,
)
from pipeline.cli._output import console, err, failing_on, log_to_stderr
from pipeline.cli._startup import choose_transport, metrics_note, metrics_socket, open_networks


def serve(
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
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    require_typ: RequireTyp = None,
    leeway: Leeway = 30,
    max_token_lifetime: MaxTokenLifetime = 3600,
    one_time_audiences: OneTimeAudiences = None,
    one_time_scopes: OneTimeScopes = None,
    one_time_claims: OneTimeClaims = None,
    auto_revoke: AutoRevoke = False,
    revoke_min_severity: RevokeMinSeverity = "high",
    dry_run: DryRun = False,
    allow_subjects: AllowSubjects = None,
    allow_clients: AllowClients = None,
    allow_cidrs: AllowCidrs = None,
    max_revocations_per_minute: MaxRevocationsPerMinute = 10,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    require_tls: RequireTls = False,
    insecure_http: InsecureHttp = False,
    ip_db: IpDb = None,
) -> None:
    """Validator, detection pipeline and alerts service in one process, on one port (embedded bus)."""
    from pipeline.errors import JwksError, ModelError
    from pipeline.nodes import AllInOne, Listener, ServeOptions, TokenRules
    from pipeline.response.policy import ResponsePolicy
    from pipeline.serving.web import read_admin_token

    log_to_stderr()
    transport = choose_transport(host, tls_cert, tls_key, trusted_proxies, require_tls, insecure_http)
    metrics_sock = metrics_socket(host, port, metrics_host, metrics_port)
    networks = open_networks(ip_db, say="none")  # AllInOne logs which
    rules = TokenRules(
        issuer=issuer, audience=audience, jwks_file=jwks_file, jwks_url=jwks_url, algorithms=algorithms,
        require_typ=require_typ, leeway_s=leeway, max_token_lifetime_s=max_token_lifetime,
        one_time_audiences=one_time_audiences, one_time_scopes=one_time_scopes, one_time_claims=one_time_claims,
    )  # fmt: skip
    with failing_on(JwksError, ModelError, ValueError, OSError):  # ValueError: a ValidationError of the rules too
        config, admin_token = rules.config(), read_admin_token(admin_token_file)
        policy = ResponsePolicy.from_options(
            enabled=auto_revoke, min_severity=revoke_min_severity, dry_run=dry_run, allow_subjects=allow_subjects,
            allow_clients=allow_clients, allow_cidrs=allow_cidrs, max_per_minute=max_revocations_per_minute,
        )  # fmt: skip
        options = ServeOptions(
            config=config, data_dir=data_dir, model_dir=model_dir, admin_token=admin_token,
            trusted_proxies=trusted_proxies, events_out=events_out, policy=policy, networks=networks,
        )  # fmt: skip
        node = AllInOne(options)
    if options.admin_token is None:
        err.print("[yellow]note:[/] no --admin-token-file: the admin API (revocations, webhooks, alerts) is closed")
    mode = "off" if not auto_revoke else ("dry run" if dry_run else f"on, severity ≥ {revoke_min_severity}")
    console.print(
        f"jwtwatch on {transport.scheme}://{host}:{port} — model {node.model.version}, auto-revocation {mode}, "
        f"data in {data_dir}{metrics_note(metrics_sock)}"
    )
    node.start()
    try:
        Listener(host, port, transport.context, metrics_sock).server(node.app, lambda: node.metrics_app).run()
    finally:
        node.stop()
