"""The ``jwtwatch`` command. Every option also reads ``JWTWATCH_<NAME>`` from the environment."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pipeline.detection.calibration import MIN_BENIGN as MIN_BENIGN_VERDICTS
from pipeline.detection.history import HISTORY_FILE
from pipeline.networks import identity_warning
from pipeline.validation.keystore import (
    ALGORITHMS,
    KeyStore,
    KeyStoreError,
    parse_duration,
    read_secret_file,
    verify_audit,
    verify_store,
)

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="jwtwatch",
    help="Catch stolen and abused JWT access tokens, and stop them within seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
validator_app = typer.Typer(help="The hardened token validator (forward-auth HTTP service).", no_args_is_help=True)
keys_app = typer.Typer(help="The bundled issuer's signing keys: init, rotate, list, audit.", no_args_is_help=True)
token_app = typer.Typer(help="Issue tokens from a key store (for demos and tests).", no_args_is_help=True)
app.add_typer(validator_app, name="validator")
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")


def _env(name: str) -> str:
    return f"JWTWATCH_{name.upper().replace('-', '_')}"


def config_errors(exc: Any) -> str:
    """A pydantic ValidationError as one line: ``field: problem; field: problem``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


DataDir = Annotated[Path, typer.Option("--data-dir", envvar=_env("data_dir"), help="Where state is kept.")]
KeysDir = Annotated[Path, typer.Option("--dir", envvar=_env("keys_dir"), help="The key store directory.")]
Issuer = Annotated[str, typer.Option(envvar=_env("issuer"), help="The exact iss tokens must carry.")]
Audience = Annotated[str, typer.Option(envvar=_env("audience"), help="An audience aud must contain.")]
JwksFile = Annotated[Path | None, typer.Option(envvar=_env("jwks_file"), help="JWKS file (re-read when it changes).")]
JwksUrl = Annotated[str | None, typer.Option(envvar=_env("jwks_url"), help="JWKS https:// URL.")]
Host = Annotated[str, typer.Option(envvar=_env("host"), help="Address to listen on.")]
Port = Annotated[int, typer.Option(envvar=_env("port"), help="Port to listen on.")]
Algorithms = Annotated[str, typer.Option(envvar=_env("algorithms"), help="Allowed algorithms, comma-separated.")]
TrustedProxies = Annotated[
    str | None, typer.Option(envvar=_env("trusted_proxies"), help="CIDRs whose X-Forwarded-For is believed.")
]
AdminTokenFile = Annotated[
    Path | None, typer.Option(envvar=_env("admin_token_file"), help="File (mode 0600) holding the admin bearer token.")
]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=65535,
        envvar=_env("metrics_port"),
        help="Serve Prometheus metrics (GET /metrics) on this port, apart from the service's port, which has none "
        "(default: no metrics). They count why tokens fail: keep them on loopback or a monitoring network.",
    ),
]
MetricsHost = Annotated[
    str, typer.Option(envvar=_env("metrics_host"), help="Address of the metrics listener (--metrics-port).")
]
RequireTyp = Annotated[
    str | None, typer.Option(envvar=_env("require_typ"), help="'at+jwt' for strict RFC 9068 typing.")
]
Leeway = Annotated[int, typer.Option(envvar=_env("leeway"), help="Clock skew allowed, seconds.")]
EventsOut = Annotated[
    Path | None, typer.Option(envvar=_env("events_out"), help="Also append usage events to this JSONL file.")
]
TlsCert = Annotated[
    Path | None,
    typer.Option(envvar=_env("tls_cert"), help="Serve HTTPS with this PEM certificate (chain after the leaf)."),
]
TlsKey = Annotated[Path | None, typer.Option(envvar=_env("tls_key"), help="The PEM private key of --tls-cert.")]
RequireTls = Annotated[
    bool,
    typer.Option(
        "--require-tls", envvar=_env("require_tls"), help="Refuse plain HTTP altogether: no start without --tls-cert."
    ),
]
InsecureHttp = Annotated[
    bool,
    typer.Option(
        "--insecure-http",
        envvar=_env("insecure_http"),
        help="Allow plain HTTP on a non-loopback address without --trusted-proxies (not for production).",
    ),
]
MaxTokenLifetime = Annotated[
    int,
    typer.Option(
        envvar=_env("max_token_lifetime"),
        help="Longest token lifetime (exp - iat) accepted, seconds; longer tokens are rejected (reason lifetime).",
    ),
]
OneTimeAudiences = Annotated[
    str | None,
    typer.Option(
        envvar=_env("one_time_audiences"),
        help="Comma-separated audiences whose tokens are one-time: accepted once, a second use rejected (replayed).",
    ),
]
OneTimeScopes = Annotated[
    str | None,
    typer.Option(envvar=_env("one_time_scopes"), help="Comma-separated scopes that make a token one-time."),
]
OneTimeClaims = Annotated[
    str | None,
    typer.Option(
        envvar=_env("one_time_claims"),
        help="Comma-separated claims that make a token one-time: NAME (the claim is true) or NAME=VALUE.",
    ),
]
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
ModelDir = Annotated[
    Path,
    typer.Option("--model-dir", envvar=_env("model_dir"), help="Model directory (default: the shipped model)."),
]
IpDb = Annotated[
    list[Path] | None,
    typer.Option(
        "--ip-db",
        envvar=_env("ip_db"),
        help="MaxMind DB file (.mmdb) giving each client address its network: ASN and kind (GeoLite2-ASN, DB-IP "
        "ASN, GeoIP2 ISP / Connection-Type / Anonymous-IP, or your own with network_kind). Repeatable: for each "
        "field the first file that has it wins (in JWTWATCH_IP_DB, separate files with ':'). Without one, networks "
        "are /16 prefixes.",
    ),
]


def _networks(ip_db: list[Path] | None, *, say: str = "stderr"):  # type: ignore[no-untyped-def]
    """The network resolver for ``--ip-db`` (the /16 fallback without), built once at startup, and one line saying
    which (``describe``): to the log for a service (``say="log"``), else to stderr (``"none"``: the caller says
    it). A file it cannot use stops the command with one line naming it."""
    from pipeline.networks import IpDbError, describe, open_ip_db

    try:
        resolver = open_ip_db(ip_db or [])
    except IpDbError as exc:
        fail(str(exc))
    if say == "log":
        logging.getLogger("pipeline.networks").info(describe(resolver))
    elif say == "stderr":
        err.print(describe(resolver), markup=False, highlight=False)
    return resolver


def _bus(kafka: str | None, consumer_client: str = "kafka-python"):  # type: ignore[no-untyped-def]
    """The bus a service runs on: Kafka when a bootstrap address is given, else the in-process bus."""
    if kafka is None:
        from pipeline.bus.memory import MemoryBus

        return MemoryBus()
    from pipeline.bus.kafka import KafkaBus, KafkaBusError

    try:
        return KafkaBus(kafka, consumer_client=consumer_client)
    except (KafkaBusError, ValueError) as exc:
        fail(str(exc))


def _transport(
    host: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    trusted_proxies: str | None,
    require_tls: bool,
    insecure_http: bool,
):  # type: ignore[no-untyped-def]
    """HTTPS, or plain HTTP only on loopback / behind trusted proxies (pipeline.validation.tls); says which."""
    from pipeline.validation.client_ip import parse_networks
    from pipeline.validation.tls import TransportError, choose_transport

    try:
        parse_networks(trusted_proxies)
        transport = choose_transport(
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


def _metrics_socket(host: str, port: int, metrics_host: str, metrics_port: int | None):  # type: ignore[no-untyped-def]
    """The metrics listener's socket (bound now, so that a taken port stops the start), or None without one."""
    from pipeline.validation.server import is_loopback
    from pipeline.validation.workers import listening_socket

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


def _metrics_note(sock: Any) -> str:
    if sock is None:
        return ", no metrics (--metrics-port)"
    host, port = sock.getsockname()[:2]
    return f", metrics on http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def _run_until_interrupted(loops: list, stop: Callable[[], None]) -> None:  # type: ignore[type-arg]
    import signal
    import threading

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


Kafka = Annotated[str | None, typer.Option(envvar=_env("kafka"), help="Kafka bootstrap HOST:PORT.")]
RevocationKeys = Annotated[
    Path | None,
    typer.Option(
        envvar=_env("revocation_keys"),
        help="Key store (jwtwatch keys init --dir DIR) that signs and verifies the revocation feed; "
        "needed with --kafka. Default without Kafka: DATA_DIR/revocation-keys.",
    ),
]


def _feed_keys(directory: Path | None, kafka: str | None, data_dir: Path):  # type: ignore[no-untyped-def]
    """The revocation feed's signer and verifier. Over Kafka the key store must be given (and shared)."""
    from pipeline.validation.keystore import KeyStore, KeyStoreError
    from pipeline.validation.revocation_feed import FeedSigner, FeedVerifier, open_or_create_keys

    try:
        if directory is not None:
            keys = KeyStore.open(directory)
        elif kafka is not None:
            fail("--revocation-keys DIR is needed with --kafka: every process must share the feed's keys")
        else:
            keys = open_or_create_keys(data_dir / "revocation-keys")
    except KeyStoreError as exc:
        fail(str(exc))
    return FeedSigner(keys), FeedVerifier.from_store(keys)


# ------------------------------------------------------------------------------------------- keys

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        envvar="JWTWATCH_KEYS_PASSPHRASE_FILE",
        help="File (mode 0600) holding the passphrase that encrypts the private keys at rest; "
        "or set JWTWATCH_KEYS_PASSPHRASE. Never on the command line.",
    ),
]


def _passphrase(file: Path | None) -> bytes | None:
    """--passphrase-file, else None: the key store then reads JWTWATCH_KEYS_PASSPHRASE(_FILE) itself."""
    return read_secret_file(file, "passphrase") if file is not None else None


PinFile = Annotated[
    Path | None,
    typer.Option(
        envvar="JWTWATCH_PKCS11_PIN_FILE",
        help="For a key store in a PKCS#11 token (HSM): file (mode 0600) holding the token's user PIN; "
        "or set JWTWATCH_PKCS11_PIN. Never on the command line.",
    ),
]


def _pin(file: Path | None) -> bytes | None:
    """--pin-file, else None: a PKCS#11 key store then reads JWTWATCH_PKCS11_PIN(_FILE) itself."""
    return read_secret_file(file, "PIN") if file is not None else None


@keys_app.command("init")
def keys_init(
    dir: KeysDir,
    alg: Annotated[str, typer.Option(envvar=_env("alg"), help=f"One of {', '.join(ALGORITHMS)}.")] = "ES256",
    issuer: Annotated[str | None, typer.Option(envvar=_env("issuer"), help="Issuer (iss) of its tokens.")] = None,
    max_token_lifetime: Annotated[
        int, typer.Option(envvar=_env("max_token_lifetime"), help="Longest token lifetime, seconds.")
    ] = 3600,
    passphrase_file: PassphraseFile = None,
    backend: Annotated[
        str,
        typer.Option(
            envvar=_env("keys_backend"),
            help="Where the private keys live: file (under DIR/private) or pkcs11 (generated in and never leaving "
            "a PKCS#11 token / HSM; ES256 or RS256).",
        ),
    ] = "file",
    pkcs11_module: Annotated[
        Path | None,
        typer.Option(envvar=_env("pkcs11_module"), help="With --backend pkcs11: the PKCS#11 library (absolute path)."),
    ] = None,
    token_label: Annotated[
        str | None,
        typer.Option(envvar=_env("pkcs11_token_label"), help="With --backend pkcs11: the label of the token."),
    ] = None,
    pin_file: PinFile = None,
) -> None:
    """Create a key store with one signing key (and its jwks.json for validators)."""
    options: dict[str, Any] = {}
    if backend == "pkcs11":
        if pkcs11_module is None or not token_label:
            fail("--backend pkcs11 needs --pkcs11-module and --token-label")
        options = {"module": pkcs11_module, "token_label": token_label}
    elif backend != "file" or pkcs11_module is not None or token_label is not None:
        fail("--backend is file or pkcs11; --pkcs11-module and --token-label go with --backend pkcs11")
    try:
        if backend == "pkcs11":
            options["pin"] = _pin(pin_file)
        store = KeyStore.init(
            dir,
            alg=alg,
            issuer=issuer,
            max_token_lifetime=max_token_lifetime,
            passphrase=_passphrase(passphrase_file),
            backend=backend,
            **options,
        )
    except KeyStoreError as exc:
        fail(str(exc))
    key = store.current()
    console.print(f"key store created in [bold]{dir}[/]: {key.alg} key [bold]{key.kid}[/]")
    if not store._meta().get("encrypted") and store.BACKEND == "file":
        err.print("[yellow]warning:[/] private keys are not encrypted at rest (set JWTWATCH_KEYS_PASSPHRASE)")
    console.print(f"public keys: {dir / 'jwks.json'}")


@keys_app.command("rotate")
def keys_rotate(
    dir: KeysDir,
    alg: Annotated[str | None, typer.Option(envvar=_env("alg"), help="Algorithm of the new key.")] = None,
    if_older_than: Annotated[
        str | None,
        typer.Option(
            "--if-older-than",
            envvar=_env("rotate_if_older_than"),
            help="Rotate only when the current key is at least this old (90d, 12h, 1d12h, seconds), else only drop "
            "expired retired keys; idempotent, for cron.",
        ),
    ] = None,
    passphrase_file: PassphraseFile = None,
    root: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("jwks_root"), help="Root key dir (keys init-root): sign jwks.jwt afresh, rotated or not."
        ),
    ] = None,
    validity: Annotated[
        str, typer.Option(envvar=_env("jwks_validity"), help="With --root: signed JWKS lifetime.")
    ] = "7d",
    pin_file: PinFile = None,
) -> None:
    """Make a new current key; the previous one stays published until its tokens have expired."""
    from pipeline.validation.signed_jwks import RootKey, publish_signed_jwks

    try:
        store = KeyStore.open(dir, passphrase=_passphrase(passphrase_file), pin=_pin(pin_file))
        root_key = RootKey.open(root, passphrase=_passphrase(passphrase_file)) if root is not None else None
        if if_older_than is None:
            key = store.rotate(alg)
        else:
            key = store.rotate_if_older_than(parse_duration(if_older_than), alg)
        if root_key is not None:
            signed = publish_signed_jwks(store, root_key, validity_s=parse_duration(validity))
            console.print(f"signed key set: {signed}")
    except KeyStoreError as exc:
        fail(str(exc))
    if key is None:
        current = store.current()
        age = int(time.time() - current.created_at)
        console.print(f"current key [bold]{current.kid}[/] is {age} s old, younger than {if_older_than}: not rotated")
        return
    console.print(f"new current key [bold]{key.kid}[/] ({key.alg})")


@keys_app.command("init-root")
def keys_init_root(
    dir: KeysDir,
    issuer: Annotated[str, typer.Option(envvar=_env("issuer"), help="The iss of the key sets it signs.")],
    alg: Annotated[str, typer.Option(envvar=_env("alg"), help=f"One of {', '.join(ALGORITHMS)}.")] = "ES256",
    passphrase_file: PassphraseFile = None,
) -> None:
    """Create the long-lived root key that signs published key sets (keep it apart from the signing keys)."""
    from pipeline.validation.signed_jwks import ROOT_PUBLIC, RootKey

    try:
        root = RootKey.init(dir, issuer, alg, passphrase=_passphrase(passphrase_file))
    except KeyStoreError as exc:
        fail(str(exc))
    console.print(f"root key [bold]{root.kid}[/] ({root.alg}) in {dir}; pin {dir / ROOT_PUBLIC} on validators")


@keys_app.command("sign-jwks")
def keys_sign_jwks(
    dir: KeysDir,
    root: Annotated[Path, typer.Option(envvar=_env("jwks_root"), help="Root key directory (keys init-root).")],
    validity: Annotated[str, typer.Option(envvar=_env("jwks_validity"), help="Lifetime of the signed set.")] = "7d",
    passphrase_file: PassphraseFile = None,
) -> None:
    """Sign the store's public keys with the root key into DIR/jwks.jwt (served at /.well-known/jwks.jwt)."""
    from pipeline.validation.signed_jwks import RootKey, publish_signed_jwks

    try:
        store = KeyStore.open(dir, passphrase=_passphrase(passphrase_file))
        path = publish_signed_jwks(
            store, RootKey.open(root, passphrase=_passphrase(passphrase_file)), validity_s=parse_duration(validity)
        )
    except KeyStoreError as exc:
        fail(str(exc))
    console.print(f"signed key set: {path}")


@keys_app.command("encrypt")
def keys_encrypt(dir: KeysDir, passphrase_file: PassphraseFile = None) -> None:
    """Encrypt the private keys of a store made without a passphrase (recorded in the audit log)."""
    try:
        count = KeyStore.open(dir, passphrase=_passphrase(passphrase_file)).encrypt()
    except KeyStoreError as exc:
        fail(str(exc))
    console.print(f"encrypted {count} private key(s)" if count else "private keys were already encrypted")


@keys_app.command("list")
def keys_list(
    dir: KeysDir,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key, for scripts.")] = False,
) -> None:
    """The published keys, oldest first."""
    try:
        keys = KeyStore.open(dir).keys()
    except KeyStoreError as exc:
        fail(str(exc))
    if as_json:
        for key in keys:
            sys.stdout.write(json.dumps(dataclasses.asdict(key)) + "\n")
        return
    table = Table("kid", "alg", "status", "created", "retired")
    for key in keys:
        retired = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.retired_at)) if key.retired_at else ""
        table.add_row(
            key.kid, key.alg, key.status, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.created_at)), retired
        )
    console.print(table)


@keys_app.command("audit")
def keys_audit(
    dir: KeysDir,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also check the key directory against the log and the rotation policy (for CI/CD gates): "
            "exit 1 on any problem, and on a log that nothing outside DIR authenticates.",
        ),
    ] = False,
    max_key_age: Annotated[
        str,
        typer.Option(envvar=_env("max_key_age"), help="With --verify: the oldest the current key may be (90d, 12h)."),
    ] = "90d",
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            envvar=_env("expect_audit_head"),
            help="A head an earlier audit printed, recorded outside DIR: exit 1 unless the log still holds it "
            "(catches a rewritten or rolled-back directory); it authenticates the log up to that entry.",
        ),
    ] = None,
    passphrase_file: PassphraseFile = None,
    pin_file: PinFile = None,
) -> None:
    """Verify the key audit log: its hash chain, its MACs (with the passphrase or PIN) and a recorded head."""
    if verify:
        try:
            check = verify_store(
                dir,
                max_key_age=parse_duration(max_key_age),
                expect_head=expect_head,
                passphrase=_passphrase(passphrase_file),
                pin=_pin(pin_file),
            )
        except KeyStoreError as exc:
            fail(str(exc))
        if check.ok:
            by = " and ".join(check.audit.authenticated_by)
            console.print(
                f"key store verified: audit log intact and authenticated by {by} ({check.audit.entries} entries), "
                "keys within policy"
            )
            console.print(f"head: {check.audit.head}")
            return
        for problem in check.problems:
            err.print(f"[bold red]problem:[/] {escape(problem)}")
        raise typer.Exit(1)
    try:
        audit_key, why_no_key = None, ""
        try:
            audit_key = KeyStore.open(dir, passphrase=_passphrase(passphrase_file), pin=_pin(pin_file)).audit_key()
        except KeyStoreError as exc:  # the chain can still be checked; the MACs cannot
            why_no_key = f" ({exc})"
        report = verify_audit(dir, key=audit_key, expect_head=expect_head)
    except KeyStoreError as exc:
        fail(str(exc))
    if not report.ok:
        where = f" at entry {report.first_broken}" if report.first_broken is not None else ""
        err.print(f"[bold red]audit log broken[/]{where}: {escape(report.problem or '')}")
        raise typer.Exit(1)
    if report.authenticated:
        console.print(
            f"audit log intact and authenticated by {' and '.join(report.authenticated_by)}: {report.entries} entries"
        )
    else:
        err.print(
            f"[bold yellow]audit log UNAUTHENTICATED[/]: {report.entries} entries chain, but "
            f"{escape(report.unauthenticated or '')}{escape(why_no_key)}"
        )
    console.print(f"head: {report.head}  (record it outside {dir}; check later with --expect-head)")


# ------------------------------------------------------------------------------------------ token


@token_app.command("issue")
def token_issue(
    dir: KeysDir,
    sub: Annotated[str, typer.Option(help="Subject (sub).")],
    aud: Annotated[list[str], typer.Option(help="Audience (aud); repeat for several.")],
    ttl: Annotated[
        int, typer.Option(help="Lifetime in seconds (default 10 minutes; at most --max-token-lifetime).")
    ] = 600,
    max_token_lifetime: Annotated[
        int,
        typer.Option(
            envvar=_env("max_token_lifetime"),
            help="Refuse a --ttl above this, seconds: validators reject longer tokens (reason lifetime).",
        ),
    ] = 3600,
    issuer: Annotated[str | None, typer.Option(envvar=_env("issuer"), help="Issuer; default: the store's.")] = None,
    client_id: Annotated[str | None, typer.Option(help="client_id claim.")] = None,
    scope: Annotated[str | None, typer.Option(help="scope claim.")] = None,
    passphrase_file: PassphraseFile = None,
    pin_file: PinFile = None,
) -> None:
    """Sign an access token (typ at+jwt) with the store's current key and print it."""
    if ttl > max_token_lifetime:
        fail(
            f"--ttl {ttl} exceeds the maximum token lifetime of {max_token_lifetime} s (--max-token-lifetime): "
            "validators would reject the token (reason lifetime)"
        )
    try:
        store = KeyStore.open(dir, passphrase=_passphrase(passphrase_file), pin=_pin(pin_file))
        if issuer is None and store.issuer is None:
            fail("no issuer: pass --issuer or create the store with one")
        token = store.issue_token(
            sub, aud if len(aud) > 1 else aud[0], ttl=ttl, issuer=issuer, client_id=client_id, scope=scope
        )
    except KeyStoreError as exc:
        fail(str(exc))
    sys.stdout.write(token + "\n")


# -------------------------------------------------------------------------------------- validator


def _extra_key_sources(  # type: ignore[no-untyped-def]
    keys_dir, signed_url, root_key, signed_issuer, max_age, jwks_file, jwks_url, algorithms, ca_file=None,
    state_dir=None,
):  # fmt: skip
    """Key sources beside --jwks-file/--jwks-url: a key store's jwks.json and a signed JWKS URL.

    ``state_dir`` (the data dir) keeps the newest signed set's iat, so that an older one is refused after a restart.

    Returns (extra sources, the jwks_file for the config, an inline JWKS for the config): the config needs
    one source of its own, so a store alone becomes its jwks.json, a signed URL alone its first verified set.
    """
    from pipeline.validation.jwks import JwksError
    from pipeline.validation.key_sources import FileKeySource, SignedJwksUrlSource
    from pipeline.validation.keystore import JWKS_FILE

    algs = tuple(a.strip() for a in algorithms.split(",") if a.strip())
    sources: list[Any] = []
    if keys_dir is not None:
        try:
            KeyStore.open(keys_dir)
        except KeyStoreError as exc:
            fail(f"--keys-dir: {exc}")
        if root_key is None:
            logging.getLogger(__name__).warning(
                "--keys-dir without --jwks-root-key: %s is trusted as it stands, so whoever can write %s can add a "
                "signing key; pin a root key (jwtwatch keys init-root) to trust only what it signed",
                keys_dir / JWKS_FILE,
                keys_dir,
            )
        if root_key is not None:
            # the root vouches for the store's keys: only its signed jwks.jwt counts, never jwks.json, which anyone
            # who can write the directory can rewrite (issue 14, MEDIUM 5)
            from pipeline.validation.signed_jwks import SIGNED_JWKS_FILE, SignedJwksFileSource

            if signed_issuer is None:
                fail("--keys-dir with --jwks-root-key needs --signed-jwks-issuer (the iss of the signed key set)")
            try:
                sources.append(
                    SignedJwksFileSource(
                        keys_dir / SIGNED_JWKS_FILE,
                        algs,
                        root_jwk=json.loads(root_key.read_bytes()),
                        issuer=signed_issuer,
                        max_age_s=parse_duration(max_age),
                        state_dir=state_dir,
                    )
                )
            except (OSError, ValueError, JwksError, KeyStoreError) as exc:
                fail(f"--keys-dir: {exc}")
        elif jwks_file is None and jwks_url is None:
            jwks_file = keys_dir / JWKS_FILE  # the store's keys are the config's own source
        else:
            try:
                sources.append(FileKeySource(keys_dir / JWKS_FILE, algs))
            except JwksError as exc:
                fail(f"--keys-dir: {exc}")
    if signed_url is not None:
        if root_key is None or signed_issuer is None:
            fail("--signed-jwks-url needs --jwks-root-key (the pinned root public key) and --signed-jwks-issuer")
        try:
            root_jwk = json.loads(root_key.read_bytes())
            source = SignedJwksUrlSource(
                signed_url,
                algs,
                root_jwk=root_jwk,
                issuer=signed_issuer,
                max_age_s=parse_duration(max_age),
                ca_file=ca_file,
                state_dir=state_dir,
            )
        except (OSError, ValueError, JwksError, KeyStoreError) as exc:
            fail(f"--signed-jwks-url: {exc}")
        if not source.has_keys:
            fail(f"--signed-jwks-url: no verified key set from {signed_url}: {source.last_error}")
        sources.append(source)
    if jwks_file is None and jwks_url is None and sources:
        return sources, None, sources[0].current().public_jwks()
    return sources, jwks_file, None


@validator_app.command("serve")
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
        float, typer.Option(envvar=_env("max_feed_lag"), help="Not ready when the revocation feed lags this long (s).")
    ] = 30.0,
    fail_closed: Annotated[
        bool,
        typer.Option("--fail-closed", envvar=_env("fail_closed"), help="Answer 503 while the revocation feed lags."),
    ] = False,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    require_tls: RequireTls = False,
    insecure_http: InsecureHttp = False,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("keys_dir"),
            help="Key store (jwtwatch keys init) whose public keys to trust and publish, beside any JWKS; "
            "its signed jwks.jwt is served at /.well-known/jwks.jwt. With --jwks-root-key only the keys of that "
            "root-signed jwks.jwt are trusted, not jwks.json (which whoever can write the directory can change).",
        ),
    ] = None,
    signed_jwks_url: Annotated[
        str | None,
        typer.Option(
            envvar=_env("signed_jwks_url"),
            help="https:// URL of a signed JWKS (jwk-set+jwt) to trust. The newest set's iat is kept under "
            "DATA_DIR/signed-jwks/: an older set is refused (rollback), also after a restart.",
        ),
    ] = None,
    jwks_root_key: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("jwks_root_key"),
            help="The root public JWK (root.jwk.json) pinned for --signed-jwks-url and --keys-dir.",
        ),
    ] = None,
    signed_jwks_issuer: Annotated[
        str | None,
        typer.Option(envvar=_env("signed_jwks_issuer"), help="The iss the signed JWKS must carry."),
    ] = None,
    signed_jwks_max_age: Annotated[
        str, typer.Option(envvar=_env("signed_jwks_max_age"), help="Refuse a signed JWKS issued longer ago.")
    ] = "7d",
    jwks_ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("jwks_ca_file"),
            help="CA bundle (PEM) to verify --jwks-url and --signed-jwks-url with (default: the system's CAs).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            envvar=_env("workers"),
            help="Worker processes sharing the port (about one per core). They share the data dir's revocation "
            "store (each reads the others' revocations within ~100 ms) and --events-out; with one-time token rules "
            "more than one needs --kafka.",
        ),
    ] = 1,
) -> None:
    """Serve GET /v1/validate (forward-auth), introspection, JWKS, revocations and health; metrics apart."""
    import gc

    from pydantic import ValidationError

    from pipeline.loop import BackgroundLoop
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.follower import RevocationFollower
    from pipeline.validation.jwks import JwksError
    from pipeline.validation.server import Server, uvicorn_config
    from pipeline.validation.service import ValidatorService
    from pipeline.validation.store_sync import RevocationStoreSync
    from pipeline.validation.workers import listening_socket, run_workers
    from pipeline.web import metrics_app, read_admin_token

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transport = _transport(host, tls_cert, tls_key, trusted_proxies, require_tls, insecure_http)
    extra_keys, jwks_file, inline_jwks = _extra_key_sources(
        keys_dir, signed_jwks_url, jwks_root_key, signed_jwks_issuer, signed_jwks_max_age, jwks_file, jwks_url,
        algorithms, jwks_ca_file, data_dir,
    )  # fmt: skip
    try:
        config = ValidatorConfig(
            issuer=issuer,
            audience=audience,
            jwks_file=jwks_file,
            jwks_url=jwks_url,
            jwks=inline_jwks,
            jwks_ca_file=jwks_ca_file,
            algorithms=algorithms,
            require_typ=require_typ,
            leeway_s=leeway,
            max_token_lifetime_s=max_token_lifetime,
            one_time_audiences=one_time_audiences,
            one_time_scopes=one_time_scopes,
            one_time_claims=one_time_claims,
        )
        admin_token = read_admin_token(admin_token_file)
    except ValidationError as exc:
        fail(config_errors(exc))
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if workers > 1 and config.one_time and kafka is None:
        fail(
            "--workers > 1 with one-time token rules needs --kafka: the workers share one-time uses over the bus "
            "(jwtwatch.replay), and without one a token could be used once at each worker"
        )
    # Only a valid configuration gets keys, a bus connection and state on disk.
    signer, verifier = _feed_keys(revocation_keys, kafka, data_dir)
    # bound here, before any fork: every worker serves its own metrics on it (jwtwatch_validator_worker names it)
    metrics_sock = _metrics_socket(host, port, metrics_host, metrics_port)

    def run(sock: Any = None, worker: int | None = None) -> None:
        sources = extra_keys
        if worker is not None:
            # fresh key sources after the fork: no HTTP connection shared with the parent or a sibling
            sources = _extra_key_sources(
                keys_dir, signed_jwks_url, jwks_root_key, signed_jwks_issuer, signed_jwks_max_age, jwks_file,
                jwks_url, algorithms, jwks_ca_file, data_dir,
            )[0]  # fmt: skip
        bus = _bus(kafka)
        try:
            service = ValidatorService(
                config,
                data_dir=data_dir,
                bus=bus,
                events_out=events_out,
                trusted_proxies=trusted_proxies,
                admin_token=admin_token,
                max_feed_lag_s=max_feed_lag,
                fail_closed=fail_closed,
                # a lone validator's in-process bus has no reader for usage events: only --events-out gets them
                usage_to_bus=kafka is not None,
                background=True,
                worker=worker,
            )
        except (JwksError, ValueError, OSError) as exc:
            fail(str(exc))
        if sources:
            from pipeline.validation.key_sources import CombinedKeySource

            # an inline copy stood in for the config only: the live sources replace it (a signed set that expires
            # must stop being trusted)
            base = [] if inline_jwks is not None else [service.validator.keys]
            service.validator.keys = CombinedKeySource([*base, *sources])
        service.keys_dir = keys_dir  # type: ignore[attr-defined]  # serves KEYS_DIR/jwks.jwt
        # Every validator follows the revocation feed: what the pipeline or another validator revokes applies here.
        follower = RevocationFollower(bus, service.revocations, verifier=verifier)
        service.feed = follower
        service.signer = signer
        loops = [BackgroundLoop("revocation-feed", follower.step)]
        # One-time tokens used at other instances (jwtwatch.replay): only with --one-time-* rules.
        if service.replay_feed is not None:
            loops.append(BackgroundLoop("replay-feed", service.replay_feed.step))
        if worker is not None:
            # revocations the other workers stored (admin API) reach this one through the shared store
            service.store_sync = RevocationStoreSync(service.revocations)
            service.store_sync.sync()
            loops.append(BackgroundLoop("revocation-store", service.store_sync.step))
        loops.append(BackgroundLoop("maintenance", lambda: (service.maintain(), time.sleep(1.0))))
        for loop in loops:
            loop.start()
        try:
            metrics = (metrics_sock, metrics_app(service.registry)) if metrics_sock is not None else None
            http = uvicorn_config(create_validator_app(service), host, port, tls=transport.context)
            server = Server(http, metrics=metrics)
            # everything built so far lives as long as the process: keep it out of the collector's way
            gc.collect()
            gc.freeze()
            server.run(sockets=[sock] if sock is not None else None)
        finally:
            if service.store_sync is not None:
                service.store_sync.close()
            for loop in loops:
                loop.stop()
            follower.close()
            service.close()
            bus.close()

    if admin_token is None:
        err.print("[yellow]note:[/] no --admin-token-file: the admin API (revocations, introspection) is closed")
    plural = f" ({workers} workers)" if workers > 1 else ""
    console.print(
        f"validator for [bold]{issuer}[/] / [bold]{audience}[/] on {transport.scheme}://{host}:{port}{plural}"
        f"{_metrics_note(metrics_sock)}"
    )
    if workers == 1:
        run()
        return
    for source in extra_keys:  # the workers make their own
        close = getattr(source, "close", None)
        if close is not None:
            close()
    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc}")
    try:
        status = run_workers(workers, lambda index: run(sock, index))
    finally:
        sock.close()
    if status:
        raise typer.Exit(status)


# ------------------------------------------------------------------------------------------- serve


@app.command("serve")
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
    auto_revoke: Annotated[
        bool, typer.Option("--auto-revoke", envvar=_env("auto_revoke"), help="Revoke tokens of severe alerts.")
    ] = False,
    revoke_min_severity: Annotated[
        str, typer.Option(envvar=_env("revoke_min_severity"), help="Lowest severity that revokes.")
    ] = "high",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", envvar=_env("dry_run"), help="Decide revocations, carry none out.")
    ] = False,
    allow_subjects: Annotated[
        str | None, typer.Option(envvar=_env("allow_subjects"), help="Never revoke these.")
    ] = None,
    allow_clients: Annotated[str | None, typer.Option(envvar=_env("allow_clients"), help="Never revoke these.")] = None,
    allow_cidrs: Annotated[
        str | None, typer.Option(envvar=_env("allow_cidrs"), help="Never revoke for alerts from these networks.")
    ] = None,
    max_revocations_per_minute: Annotated[
        int, typer.Option(envvar=_env("max_revocations_per_minute"), help="Circuit breaker: then alert-only.")
    ] = 10,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    require_tls: RequireTls = False,
    insecure_http: InsecureHttp = False,
    ip_db: IpDb = None,
) -> None:
    """Validator, detection pipeline and alerts service in one process, on one port (embedded bus)."""
    from pydantic import ValidationError

    from pipeline.allinone import AllInOne, ServeOptions
    from pipeline.response.policy import ResponsePolicy
    from pipeline.scoring.model import ModelError
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.jwks import JwksError
    from pipeline.validation.server import Server, uvicorn_config
    from pipeline.web import read_admin_token

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transport = _transport(host, tls_cert, tls_key, trusted_proxies, require_tls, insecure_http)
    metrics_sock = _metrics_socket(host, port, metrics_host, metrics_port)
    networks = _networks(ip_db, say="none")  # AllInOne logs which
    try:
        options = ServeOptions(
            config=ValidatorConfig(
                issuer=issuer,
                audience=audience,
                jwks_file=jwks_file,
                jwks_url=jwks_url,
                algorithms=algorithms,
                require_typ=require_typ,
                leeway_s=leeway,
                max_token_lifetime_s=max_token_lifetime,
                one_time_audiences=one_time_audiences,
                one_time_scopes=one_time_scopes,
                one_time_claims=one_time_claims,
            ),
            data_dir=data_dir,
            model_dir=model_dir,
            admin_token=read_admin_token(admin_token_file),
            trusted_proxies=trusted_proxies,
            events_out=events_out,
            policy=ResponsePolicy.from_options(
                enabled=auto_revoke,
                min_severity=revoke_min_severity,
                dry_run=dry_run,
                allow_subjects=allow_subjects,
                allow_clients=allow_clients,
                allow_cidrs=allow_cidrs,
                max_per_minute=max_revocations_per_minute,
            ),
            networks=networks,
        )
        node = AllInOne(options)
    except ValidationError as exc:
        fail(config_errors(exc))
    except (JwksError, ModelError, ValueError, OSError) as exc:
        fail(str(exc))
    if options.admin_token is None:
        err.print("[yellow]note:[/] no --admin-token-file: the admin API (revocations, webhooks, alerts) is closed")
    mode = "off" if not auto_revoke else ("dry run" if dry_run else f"on, severity ≥ {revoke_min_severity}")
    console.print(
        f"jwtwatch on {transport.scheme}://{host}:{port} — model {node.model.version}, auto-revocation {mode}, "
        f"data in {data_dir}{_metrics_note(metrics_sock)}"
    )
    node.start()
    try:
        metrics = (metrics_sock, node.metrics_app) if metrics_sock is not None else None
        Server(uvicorn_config(node.app, host, port, tls=transport.context), metrics=metrics).run()
    finally:
        node.stop()


# ------------------------------------------------------------------------------- pipeline, alerts

pipeline_app = typer.Typer(help="The detection pipeline as its own process (over Kafka).", no_args_is_help=True)
alerts_app = typer.Typer(help="The alerts service as its own process (over Kafka).", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(alerts_app, name="alerts")


@pipeline_app.command("run")
def pipeline_run(
    kafka: Annotated[str, typer.Option(envvar=_env("kafka"), help="Kafka bootstrap HOST:PORT.")],
    issuer: Annotated[str, typer.Option(envvar=_env("issuer"), help="Issuer (iss) of the revocations it makes.")],
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    data_dir: DataDir = Path("data"),
    auto_revoke: Annotated[
        bool, typer.Option("--auto-revoke", envvar=_env("auto_revoke"), help="Revoke tokens of severe alerts.")
    ] = False,
    revoke_min_severity: Annotated[str, typer.Option(envvar=_env("revoke_min_severity"))] = "high",
    dry_run: Annotated[bool, typer.Option("--dry-run", envvar=_env("dry_run"))] = False,
    allow_subjects: Annotated[str | None, typer.Option(envvar=_env("allow_subjects"))] = None,
    allow_clients: Annotated[str | None, typer.Option(envvar=_env("allow_clients"))] = None,
    allow_cidrs: Annotated[str | None, typer.Option(envvar=_env("allow_cidrs"))] = None,
    max_revocations_per_minute: Annotated[int, typer.Option(envvar=_env("max_revocations_per_minute"))] = 10,
    group: Annotated[str, typer.Option(envvar=_env("group"), help="Consumer group (share it to share work).")] = (
        "jwtwatch-pipeline"
    ),
    revocation_keys: RevocationKeys = None,
    kafka_consumer: Annotated[
        str,
        typer.Option(
            envvar=_env("kafka_consumer"),
            help="Library that reads the usage topic: kafka-python, or confluent-kafka (librdkafka: records "
            "decoded in C, about 1.5x the events per second; pip install 'jwtwatch[confluent]').",
        ),
    ] = "kafka-python",
    ip_db: IpDb = None,
) -> None:
    """Consume token-usage/1, score it, publish alert/1 (and revocations); archive events and alerts."""
    from pipeline.archive import ArchiveConsumer, ArchiveWriter, ScoreRecorder
    from pipeline.bus.kafka import check_consumer_client
    from pipeline.detection.runner import StreamingRunner
    from pipeline.loop import BackgroundLoop
    from pipeline.response.policy import AutoRevoker, ResponsePolicy
    from pipeline.response.responder import Responder
    from pipeline.scoring.model import ModelError, load_model

    try:
        check_consumer_client(kafka_consumer)  # before the model loads: a wrong name or a missing library
    except ValueError as exc:
        fail(f"--kafka-consumer: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model = load_model(model_dir)
        policy = ResponsePolicy.from_options(
            enabled=auto_revoke, min_severity=revoke_min_severity, dry_run=dry_run, allow_subjects=allow_subjects,
            allow_clients=allow_clients, allow_cidrs=allow_cidrs, max_per_minute=max_revocations_per_minute,
        )  # fmt: skip
    except (ModelError, ValueError) as exc:
        fail(str(exc))
    networks = _networks(ip_db, say="log")
    if warning := identity_warning(model.metadata.get("training", {}).get("network_identity"), networks.source):
        logging.getLogger("pipeline.networks").warning(warning)
    signer, _ = _feed_keys(revocation_keys, kafka, data_dir)
    bus = _bus(kafka, kafka_consumer)
    responder = Responder(AutoRevoker(policy), bus, issuer=issuer, signer=signer)
    runner = StreamingRunner(
        bus, model, group=group, baselines_path=data_dir / "baselines.json", respond=responder, networks=networks
    )
    # Analysts' verdicts from the alerts service: their consumers are polled by threads of the follower's own (never
    # by the runner's: see pipeline.response.verdicts), stopped and closed by runner.close().
    runner.follow_verdicts(responder.revoke_for_verdict)
    archive = ArchiveConsumer(bus, ArchiveWriter(data_dir), group=f"{group}-archive")
    runner.engine.on_scored = ScoreRecorder(archive.writer, model)  # window features and scores, archived
    console.print(f"pipeline on {kafka}: model {model.version}, group {group}, data in {data_dir}")

    def stop() -> None:
        runner.save_baselines()
        runner.close()
        archive.close()
        bus.close()

    _run_until_interrupted([BackgroundLoop("pipeline", runner.step), BackgroundLoop("archive", archive.step)], stop)


@alerts_app.command("serve")
def alerts_serve(
    admin_token_file: Annotated[
        Path, typer.Option(envvar=_env("admin_token_file"), help="File (mode 0600) holding the admin bearer token.")
    ],
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=_env("alerts_port"), help="Port to listen on.")] = 8081,
    kafka: Kafka = None,
    data_dir: DataDir = Path("data"),
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            envvar=_env("alerts_metrics_port"),
            help="Serve Prometheus metrics (GET /metrics) on this port, apart from the service's port, which has "
            "none (default: no metrics).",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(envvar=_env("alerts_metrics_host"), help="Address of the metrics listener (--metrics-port)."),
    ] = "127.0.0.1",
    revocation_keys: RevocationKeys = None,
    trusted_proxies: Annotated[
        str | None,
        typer.Option(
            envvar=_env("trusted_proxies"),
            help="CIDRs of the TLS-terminating proxies in front (allows plain HTTP on a non-loopback address).",
        ),
    ] = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    require_tls: RequireTls = False,
    insecure_http: InsecureHttp = False,
) -> None:
    """Webhook subscriptions, alert log and signed deliveries; consumes alerts and revocations from Kafka."""
    from pipeline.alerts import AlertsConsumer, AlertsService, AlertsWorker, create_alerts_app
    from pipeline.loop import BackgroundLoop
    from pipeline.validation.server import Server, uvicorn_config
    from pipeline.web import metrics_app, read_admin_token

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transport = _transport(host, tls_cert, tls_key, trusted_proxies, require_tls, insecure_http)
    metrics_sock = _metrics_socket(host, port, metrics_host, metrics_port)
    try:
        admin_token = read_admin_token(admin_token_file)  # refused before anything is created
    except (ValueError, OSError) as exc:
        fail(str(exc))
    _, verifier = _feed_keys(revocation_keys, kafka, data_dir)
    bus = _bus(kafka)
    try:
        # Verdicts are published on the bus, for the pipeline.
        service = AlertsService(data_dir, admin_token=admin_token, bus=bus)
    except (ValueError, OSError) as exc:
        bus.close()
        fail(str(exc))
    if kafka is None:
        err.print(
            "[yellow]note:[/] no --kafka: nothing feeds this service alerts (use `jwtwatch serve` for one process)"
        )
    consumer = AlertsConsumer(bus, service, parse_revocation=verifier.verify)
    worker = AlertsWorker(service)
    loop = BackgroundLoop("alerts-consumer", consumer.step)
    worker.start()
    loop.start()
    console.print(
        f"alerts service on {transport.scheme}://{host}:{port}, data in {data_dir}{_metrics_note(metrics_sock)}"
    )
    try:
        metrics = (metrics_sock, metrics_app(service.registry)) if metrics_sock is not None else None
        Server(uvicorn_config(create_alerts_app(service), host, port, tls=transport.context), metrics=metrics).run()
    finally:
        loop.stop()
        worker.stop()
        consumer.close()
        service.close()
        bus.close()


# ------------------------------------------------------------------------------------------ revoke


@app.command("revoke")
def revoke(
    url: Annotated[str, typer.Option(envvar=_env("validator_url"), help="The validator's base URL.")],
    admin_token_file: Annotated[
        Path, typer.Option(envvar=_env("admin_token_file"), help="Admin token file (mode 0600).")
    ],
    jti: Annotated[str | None, typer.Option(help="Revoke this token id.")] = None,
    sub: Annotated[str | None, typer.Option(help="Revoke every token of this subject issued until now.")] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the record).")] = "manual",
) -> None:
    """Revoke one token (--jti) or a subject (--sub) through the validator's admin API."""
    import httpx

    from pipeline.web import read_admin_token

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


# -------------------------------------------------------------------------------------- detection


def _progress(description: str, total: int):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip
    task = progress.add_task(description, total=total)
    return progress, lambda n: progress.advance(task, n)


def _read(paths: list[Path]):  # type: ignore[no-untyped-def]
    from pipeline.detection.sources import read_events

    for path in paths:
        if not path.exists():
            fail(f"{path}: no such file")
    try:
        with err.status("reading events…"):
            result = read_events(paths)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if result.bad:
        err.print(f"[yellow]{len(result.bad)} bad line(s) skipped[/]:")
        for bad in result.bad[:20]:
            err.print(f"  {bad.path}:{bad.line}: {bad.error}", markup=False)
        if len(result.bad) > 20:
            err.print(f"  … and {len(result.bad) - 20} more")
    return result


@app.command("train")
def train(
    events: Annotated[list[Path], typer.Option("--events", help="token-usage/1 files: .jsonl, .jsonl.gz, .parquet")],
    model_dir: Annotated[Path, typer.Option("--model-dir", envvar=_env("model_dir"), help="Where to write the model.")],
    seed: Annotated[int, typer.Option(envvar=_env("seed"), help="Random seed of the forests.")] = 0,
    target_alert_rate: Annotated[
        float, typer.Option(help="Share of benign entities allowed to alert on held-out baseline traffic.")
    ] = 0.001,
    verdicts: Annotated[
        Path | None,
        typer.Option(
            "--verdicts",
            help="Analysts' verdict/1 records (.jsonl, .jsonl.gz, or a data dir with an archive): report the "
            "precision of past alerts per entity type and rule; with --calibrate, also raise thresholds from them.",
        ),
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="With --verdicts: raise each entity type's threshold just above the alerts the forest alone raised "
            f"and analysts judged benign (at least {MIN_BENIGN_VERDICTS} of them), never above one judged "
            "compromised; their feature rows are scored by the new model. Never lowers a threshold.",
        ),
    ] = False,
    verdict_alerts: Annotated[
        Path | None,
        typer.Option(
            "--verdict-alerts",
            help="The alerts the verdicts judged (alert/1 .jsonl from `jwtwatch detect`, or a data dir with an "
            "archive); default: the --verdicts data dir.",
        ),
    ] = None,
    history: Annotated[
        bool,
        typer.Option(
            "--history/--no-history",
            help=f"Also write what training learned of each subject, client and IP (networks, client families, "
            f"usual volumes) to MODEL_DIR/{HISTORY_FILE}, which `jwtwatch detect` starts from: later traffic of the "
            "same users is then judged against their history, as a running pipeline does. --no-history for a "
            "model shipped to others.",
        ),
    ] = True,
    ip_db: IpDb = None,
) -> None:
    """Train one Isolation Forest per entity type on baseline (attack-free) traffic."""
    from pipeline.detection.history import save_baselines
    from pipeline.detection.training import TrainingParams, train_model
    from pipeline.scoring.model import save_model

    networks = _networks(ip_db)
    judged = _report_precision(verdicts) if verdicts is not None else []
    judged_alerts: dict[str, Any] = {}
    if calibrate:
        if verdicts is None:
            fail("--calibrate needs --verdicts")
        source = verdict_alerts or verdicts
        if not source.is_dir() and verdict_alerts is None:
            fail("--calibrate needs the judged alerts: --verdict-alerts FILE, or --verdicts DATA_DIR with an archive")
        judged_alerts = _read_judged_alerts(source)
    result = _read(events)
    if result.frame.empty:
        fail("no valid events to train on")
    progress, advance = _progress("training", len(result.frame))
    try:
        with progress:
            model, learned = train_model(
                result.frame,
                TrainingParams(seed=seed, target_alert_rate=target_alert_rate),
                progress=advance,
                networks=networks,
            )
    except ValueError as exc:
        fail(str(exc))
    if calibrate:
        _apply_calibration(model, judged, judged_alerts)
    version = save_model(model, model_dir)
    history_path = model_dir / HISTORY_FILE
    if history:
        save_baselines(learned, history_path)
    else:
        history_path.unlink(missing_ok=True)  # an older model's history is not this one's
    table = Table("entity", "windows fitted", "held-out entities", "threshold", title=f"model {version}")
    for entity_type, scorer in model.scorers.items():
        rows = model.metadata["training"]["rows"][entity_type]
        table.add_row(entity_type, str(rows["fit"]), str(rows["entities"]), f"{scorer.threshold_:.4f}")
    console.print(table)
    console.print(f"model written to {model_dir} ({len(result.frame)} events, data sha256 "
                  f"{model.metadata['training']['data_sha256'][:12]}…)")  # fmt: skip


def _report_skipped(path: Path, bad: list[tuple[int, str]], what: str) -> None:
    """The first bad records of a file, by line, and how many were skipped (markup off: records are hostile)."""
    for line, error in bad[:20]:
        err.print(f"  {path}:{line}: {error}", markup=False)
    if bad:
        err.print(f"[yellow]{len(bad)} bad {what} record(s) skipped[/]")


def _read_judged_alerts(path: Path) -> dict[str, Any]:
    from pipeline.detection.precision import read_alert_features

    if not path.exists():
        fail(f"{path}: no such file or directory")
    try:
        alerts, bad = read_alert_features(path)
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}")
    _report_skipped(path, bad, "alert")
    return alerts


def _apply_calibration(model: Any, verdicts: list[Any], alerts: dict[str, Any]) -> None:
    """Raise the new model's thresholds from the verdicts (pipeline.detection.calibration), say what moved."""
    from pipeline.detection.calibration import calibrate
    from pipeline.scoring.model import finalize_metadata

    results = calibrate(model, verdicts, alerts)
    table = Table(
        "entity", "benign", "compromised", "threshold", "benign quiet after",
        title="calibration from analysts' verdicts (forest-only alerts)",
    )  # fmt: skip
    for c in results:
        shown = f"{c.threshold_before:.4f}" + (f" → {c.threshold_after:.4f}" if c.moved else " (unchanged)")
        table.add_row(c.entity_type, str(c.benign), str(c.compromised), shown, f"{c.benign_quiet_after}/{c.benign}")
        model.scorers[c.entity_type] = model.scorers[c.entity_type].with_threshold(c.threshold_after)
    console.print(table)
    model.metadata["calibration"] = {
        c.entity_type: {"from": c.threshold_before, "to": c.threshold_after, "benign": c.benign,
                        "compromised": c.compromised}
        for c in results
    }  # fmt: skip
    finalize_metadata(model)


def _report_precision(path: Path) -> list[Any]:
    from pipeline.detection.precision import precision_report, read_verdicts

    if not path.exists():
        fail(f"{path}: no such file or directory")
    try:
        read = read_verdicts(path)
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}")
    _report_skipped(path, read.bad, "verdict")
    rows = precision_report(read.verdicts)
    table = Table("alerts", "compromised", "benign", "precision", title="analysts' verdicts on past alerts")
    for row in rows:
        shown = "-" if row.precision is None else f"{row.precision:.2f}"
        table.add_row(row.group, str(row.compromised), str(row.benign), shown)
    console.print(table if rows else f"no verdicts in {path}")
    return read.verdicts


@app.command("detect")
def detect(
    events: Annotated[Path, typer.Option("--events", help="token-usage/1 file: .jsonl, .jsonl.gz, .parquet")],
    alerts_out: Annotated[Path, typer.Option("--alerts-out", help="Write alert/1 JSON lines here.")],
    model_dir: ModelDir = DEFAULT_MODEL_DIR,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Also archive the events, window features, scores and alerts as Parquet under DATA_DIR/archive "
            "(partitioned by date and hour; what the notebooks read).",
        ),
    ] = None,
    history: Annotated[
        bool,
        typer.Option(
            "--history/--no-history",
            help=f"Start from the history `jwtwatch train` learned (MODEL_DIR/{HISTORY_FILE}, when there is one): "
            "each subject's known networks and client software, usual volumes. --no-history judges the events "
            "as a fresh deployment would.",
        ),
    ] = True,
    ip_db: IpDb = None,
) -> None:
    """Replay recorded events in event time through the streaming engine; write the alerts."""
    from pipeline.archive import ArchiveWriter, ScoreRecorder
    from pipeline.detection.history import load_baselines
    from pipeline.detection.replay import replay
    from pipeline.scoring.model import ModelError, load_model

    try:
        model = load_model(model_dir)
    except ModelError as exc:
        fail(str(exc))
    networks = _networks(ip_db)
    if warning := identity_warning(model.metadata.get("training", {}).get("network_identity"), networks.source):
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    learned = None
    history_path = model_dir / HISTORY_FILE
    if history and history_path.exists():
        try:
            learned = load_baselines(history_path)
        except (OSError, ValueError) as exc:
            fail(f"{history_path}: not a history written by jwtwatch train ({exc}); --no-history to go without")
        err.print(f"history: {len(learned.subjects):,} subjects learned in training ({history_path})")
    else:
        err.print("history: none — every subject starts without known networks or clients")
    result = _read([events])
    archive = ArchiveWriter(data_dir) if data_dir is not None else None
    progress, advance = _progress("detecting", len(result.frame))
    started = time.perf_counter()
    with progress:
        recorder = ScoreRecorder(archive, model) if archive is not None else None
        alerts, engine = replay(
            result.frame, model, baselines=learned, progress=advance, on_scored=recorder, networks=networks
        )
    elapsed = time.perf_counter() - started
    alerts_out.parent.mkdir(parents=True, exist_ok=True)
    with open(alerts_out, "wb") as out:
        for alert in alerts:
            out.write(alert.to_json() + b"\n")
    if archive is not None:
        try:
            with err.status("archiving…"):
                archive.add_event_frame(result.frame)
                archive.add("alerts", alerts)
                archive.flush()
        except OSError as exc:
            fail(f"cannot write the archive under {data_dir}: {exc}")
        console.print(f"archive: {', '.join(f'{n} {k}' for k, n in archive.written.items())} under {archive.root}")
    table = Table("entity", *SEVERITY_COLUMNS, title=f"{len(alerts)} alerts (model {model.version})")
    for entity_type in ("jti", "sub", "ip"):
        counts = [sum(1 for a in alerts if a.entity_type == entity_type and a.severity == s) for s in SEVERITY_COLUMNS]
        table.add_row(entity_type, *map(str, counts))
    console.print(table)
    if alerts:
        console.print(_top_alerts(alerts))
    stats = engine.stats
    console.print(
        f"{stats.events} events ({stats.late_events} late, {len(result.bad)} bad lines) in {elapsed:.1f} s "
        f"({stats.events / max(elapsed, 1e-9):,.0f} events/s); alerts in {alerts_out}"
    )


SEVERITY_COLUMNS = ("low", "medium", "high", "critical")
TOP_ALERTS = 10


def _top_alerts(alerts: list[Any]) -> Table:
    """The most severe alerts, each with its one-line summary (the whole list is in the alerts file)."""
    latest = {alert.alert_id: alert for alert in alerts}  # an escalated alert is listed once, as it ended
    ranked = sorted(latest.values(), key=lambda a: (-SEVERITY_COLUMNS.index(a.severity), -a.score, a.ts, a.alert_id))[
        :TOP_ALERTS
    ]
    table = Table("severity", "type", "summary", title=f"top {len(ranked)} of {len(latest)} alerts")
    for alert in ranked:
        # Markup off: a summary quotes entity names (subjects come from tokens) that must print as they are.
        table.add_row(alert.severity, Text(alert.entity_type), Text(alert.summary or ""))
    return table


@app.command("simulate")
def simulate_command(
    out: Annotated[Path, typer.Option("--out", help="Events file: .jsonl, .jsonl.gz or .parquet.")],
    minutes: Annotated[float, typer.Option(envvar=_env("minutes"), help="Simulated minutes of traffic.")] = 30.0,
    seed: Annotated[
        int | None,
        typer.Option(
            envvar=_env("seed"),
            help="Random seed (same seed, same traffic). Default 0; with --family-seed, the drawn world's own.",
        ),
    ] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Write the injected incidents here (JSONL).")] = None,
    baseline_only: Annotated[
        bool,
        typer.Option(
            "--baseline-only", help="No attacks: training traffic (of a family world: its attack-free stream)."
        ),
    ] = False,
    users: Annotated[int | None, typer.Option(help="Browser users (default: the simulator's).")] = None,
    mobile: Annotated[
        int | None,
        typer.Option(help="Mobile-app users (default: the simulator's; of a family world: its share of --users)."),
    ] = None,
    services: Annotated[int | None, typer.Option(help="Service accounts (default: the simulator's).")] = None,
    offices: Annotated[int | None, typer.Option(help="Office NATs shared by users (default: the simulator's).")] = None,
    ip_db_out: Annotated[
        Path | None,
        typer.Option(
            "--ip-db-out",
            help="Also write the simulated world's networks (ASN, organisation, network_kind) as a MaxMind DB "
            "file, for --ip-db.",
        ),
    ] = None,
    family_seed: Annotated[
        int | None,
        typer.Option(
            "--family-seed",
            min=0,
            help="Draw the world's behaviours from the simulator family with this seed "
            "(pipeline/simulate/family.py: devices per user, network switching, IPv6, attackers' networks, ...) "
            "instead of the simulator's defaults. --minutes, --users, --mobile, --services and --offices still set "
            "the sizes; those not given are the family's defaults (WorldFamily).",
        ),
    ] = None,
    family_region: Annotated[
        str | None,
        typer.Option(
            "--family-region",
            help="With --family-seed: 'tuning' (default; tune and train on these worlds) or 'heldout' "
            "(evaluate only: worlds nobody tuned against).",
        ),
    ] = None,
    family_world: Annotated[
        int | None,
        typer.Option("--family-world", min=0, help="With --family-seed: which world of the region (default 0)."),
    ] = None,
) -> None:
    """Synthetic traffic — browsers, mobile apps, services, offices — with every threat injected and labelled."""
    from pipeline.simulate import SimulationParams, simulate
    from pipeline.simulate.family import REGIONS, WorldFamily, train_params
    from pipeline.simulate.io import write_events, write_ip_db, write_labels

    sizes = {"browsers": users, "services": services, "offices": offices}
    given = {k: v for k, v in sizes.items() if v is not None}
    if family_seed is None:
        if family_region is not None or family_world is not None:
            fail("--family-region and --family-world draw a world of a family: give --family-seed too")
        params = SimulationParams(minutes=minutes, seed=0 if seed is None else seed, **given)
        if mobile is not None:
            params = dataclasses.replace(params, mobile=mobile)
        if baseline_only:
            params = dataclasses.replace(params, threats=())
    else:
        region = next((r for r in REGIONS if r == (family_region or "tuning")), None)
        if region is None:
            fail(f"--family-region must be one of {', '.join(REGIONS)}, not {family_region!r}")
        index = family_world or 0
        world = WorldFamily(seed=family_seed, minutes=minutes, **given).world(index, region)
        # The attack-free stream of a world is another stretch of its time (train_params: a seed of its own).
        params = train_params(world.params) if baseline_only else world.params
        overrides = {"seed": seed, "mobile": mobile}
        params = dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})
        err.print(
            f"family {family_seed}, {region} world {index}: {params.browsers} browser and {params.mobile} mobile "
            f"users (drawn mobile ratio {world.draws['mobile_ratio']:.3f}), {params.services} services, "
            f"{params.offices} offices, {params.minutes:g} min, seed {params.seed}"
            + (" (its attack-free stream)" if baseline_only else ""),
            markup=False,
        )
    with err.status("simulating…"):
        sim = simulate(params)
        write_events(sim, out)
        if labels is not None:
            write_labels(sim, labels)
        networks = write_ip_db(sim, ip_db_out) if ip_db_out is not None else 0
    console.print(f"{len(sim.events)} events, {len(sim.incidents)} incidents → {out}")
    if ip_db_out is not None:
        console.print(f"{networks} networks → {ip_db_out}")


# -------------------------------------------------------------------------------------------- demo


@app.command("demo")
def demo(
    minutes: Annotated[
        float, typer.Option(envvar=_env("demo_minutes"), help="Minutes of simulated traffic (event time).")
    ] = 8.0,
    speed: Annotated[
        float,
        typer.Option(envvar=_env("demo_speed"), help="Event time runs this many times faster than the wall clock."),
    ] = 10.0,
    seed: Annotated[int, typer.Option(envvar=_env("demo_seed"), help="Simulation seed (same seed, same traffic).")] = 7,
    users: Annotated[
        int, typer.Option(envvar=_env("demo_users"), help="Browser users (plus half as many on mobile).")
    ] = 40,
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir",
            envvar=_env("demo_data_dir"),
            help="Where the demo keeps its state and archive; re-made on every run (only if a demo made it).",
        ),
    ] = Path("data/demo"),
    report_dir: Annotated[
        Path | None,
        typer.Option(envvar=_env("demo_report_dir"), help="Where the report goes (default: DATA_DIR/report)."),
    ] = None,
    revoke_min_severity: Annotated[
        str, typer.Option(envvar=_env("revoke_min_severity"), help="Lowest alert severity that auto-revokes.")
    ] = "high",
    live: Annotated[bool, typer.Option("--live/--no-live", help="The live view (on a terminal).")] = True,
) -> None:
    """The whole loop in one process: simulated services and attackers send real signed tokens through the
    real validator over HTTP; the pipeline scores them, alerts reach a local webhook receiver that verifies
    every signature, auto-revocations come back and the stolen tokens stop working.

    Minutes of traffic play in seconds (--speed). At the end: a summary table, and a report directory with
    index.html, PNG plots, summary.json and the Parquet archive (events, window features, scores, alerts)
    that the notebooks in notebooks/ explore.
    """
    from pipeline.demo import DemoError, DemoOptions, run_demo
    from pipeline.demo.report import headline_rows, write_report
    from pipeline.events import SEVERITIES
    from pipeline.scoring.model import ModelError

    if revoke_min_severity not in SEVERITIES:
        fail(f"--revoke-min-severity must be one of {', '.join(SEVERITIES)}")
    try:
        options = DemoOptions(
            data_dir=data_dir, report_dir=report_dir, minutes=minutes, speed=speed, seed=seed, users=users,
            revoke_min_severity=revoke_min_severity, live=live,
        )  # fmt: skip
        run = run_demo(options, console)
    except DemoError as exc:
        fail(str(exc))
    except ModelError as exc:
        fail(f"the shipped model cannot be used: {exc}")
    except OSError as exc:
        fail(f"{exc} (data dir {data_dir})")
    with console.status("writing the report…"):
        index, figures = write_report(run)
    table = Table("", "", title="jwtwatch demo", show_header=False)
    for name, value in headline_rows(figures):
        table.add_row(name, str(value))
    console.print(table)
    threats = Table("threat", "incidents", "detected", "median s to detect", title="detection per threat")
    for row in figures["threats"]:
        threats.add_row(
            row["threat"],
            str(row["incidents"]),
            str(row["detected"]),
            "—" if row["median_s"] is None else str(row["median_s"]),
        )
    console.print(threats)
    console.print(f"report: [bold]{index}[/]")
    if not run.drained:
        err.print("[yellow]warning:[/] the pipeline or the outbox had not drained when the demo stopped")


@validator_app.command("demo")
def validator_demo(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar=_env("demo_data_dir"), help="Where the demo keeps its state.")
    ] = Path("data/validator-demo"),
) -> None:
    """Run the validator end to end on loopback: good, forged and revoked tokens, with their verdicts."""
    from pipeline.validation.demo import run_validator_demo

    code = run_validator_demo(data_dir, console)
    raise typer.Exit(code)


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
