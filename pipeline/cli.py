"""The ``jwtwatch`` command. Every option also reads ``JWTWATCH_<NAME>`` from the environment."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from pipeline.validation.keystore import ALGORITHMS, KeyStore, KeyStoreError, verify_audit

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


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


DataDir = Annotated[Path, typer.Option("--data-dir", envvar=_env("data_dir"), help="Where state is kept.")]
KeysDir = Annotated[Path, typer.Option("--dir", envvar=_env("keys_dir"), help="The key store directory.")]


# ------------------------------------------------------------------------------------------- keys


@keys_app.command("init")
def keys_init(
    dir: KeysDir,
    alg: Annotated[str, typer.Option(envvar=_env("alg"), help=f"One of {', '.join(ALGORITHMS)}.")] = "ES256",
    issuer: Annotated[str | None, typer.Option(envvar=_env("issuer"), help="Issuer (iss) of its tokens.")] = None,
    max_token_lifetime: Annotated[
        int, typer.Option(envvar=_env("max_token_lifetime"), help="Longest token lifetime, seconds.")
    ] = 3600,
) -> None:
    """Create a key store with one signing key (and its jwks.json for validators)."""
    try:
        store = KeyStore.init(dir, alg=alg, issuer=issuer, max_token_lifetime=max_token_lifetime)
    except KeyStoreError as exc:
        fail(str(exc))
    key = store.current()
    console.print(f"key store created in [bold]{dir}[/]: {key.alg} key [bold]{key.kid}[/]")
    console.print(f"public keys: {dir / 'jwks.json'}")


@keys_app.command("rotate")
def keys_rotate(
    dir: KeysDir,
    alg: Annotated[str | None, typer.Option(envvar=_env("alg"), help="Algorithm of the new key.")] = None,
) -> None:
    """Make a new current key; the previous one stays published until its tokens have expired."""
    try:
        store = KeyStore.open(dir)
        key = store.rotate(alg)
    except KeyStoreError as exc:
        fail(str(exc))
    console.print(f"new current key [bold]{key.kid}[/] ({key.alg})")


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
def keys_audit(dir: KeysDir) -> None:
    """Verify the hash chain of the key audit log; exit 1 naming the first broken entry."""
    report = verify_audit(dir)
    if report.ok:
        console.print(f"audit log intact: {report.entries} entries")
        return
    err.print(f"[bold red]audit log broken[/] at entry {report.first_broken}: {report.problem}")
    raise typer.Exit(1)


# ------------------------------------------------------------------------------------------ token


@token_app.command("issue")
def token_issue(
    dir: KeysDir,
    sub: Annotated[str, typer.Option(help="Subject (sub).")],
    aud: Annotated[list[str], typer.Option(help="Audience (aud); repeat for several.")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds (at most the store's maximum).")] = 600,
    issuer: Annotated[str | None, typer.Option(envvar=_env("issuer"), help="Issuer; default: the store's.")] = None,
    client_id: Annotated[str | None, typer.Option(help="client_id claim.")] = None,
    scope: Annotated[str | None, typer.Option(help="scope claim.")] = None,
) -> None:
    """Sign an access token (typ at+jwt) with the store's current key and print it."""
    try:
        store = KeyStore.open(dir)
        if issuer is None and store.issuer is None:
            fail("no issuer: pass --issuer or create the store with one")
        token = store.issue_token(
            sub, aud if len(aud) > 1 else aud[0], ttl=ttl, issuer=issuer, client_id=client_id, scope=scope
        )
    except KeyStoreError as exc:
        fail(str(exc))
    sys.stdout.write(token + "\n")


# -------------------------------------------------------------------------------------- validator


@validator_app.command("serve")
def validator_serve(
    issuer: Annotated[str, typer.Option(envvar=_env("issuer"), help="The exact iss tokens must carry.")],
    audience: Annotated[str, typer.Option(envvar=_env("audience"), help="An audience aud must contain.")],
    jwks_file: Annotated[
        Path | None, typer.Option(envvar=_env("jwks_file"), help="JWKS file (re-read when it changes).")
    ] = None,
    jwks_url: Annotated[str | None, typer.Option(envvar=_env("jwks_url"), help="JWKS https:// URL.")] = None,
    host: Annotated[str, typer.Option(envvar=_env("host"))] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=_env("port"))] = 8080,
    algorithms: Annotated[
        str, typer.Option(envvar=_env("algorithms"), help="Allowed algorithms.")
    ] = "RS256,ES256,EdDSA",
    trusted_proxies: Annotated[
        str | None, typer.Option(envvar=_env("trusted_proxies"), help="CIDRs whose X-Forwarded-For is believed.")
    ] = None,
    admin_token_file: Annotated[
        Path | None, typer.Option(envvar=_env("admin_token_file"), help="File holding the admin bearer token.")
    ] = None,
    events_out: Annotated[
        Path | None, typer.Option(envvar=_env("events_out"), help="Also append usage events to this JSONL file.")
    ] = None,
    data_dir: DataDir = Path("data"),
    require_typ: Annotated[
        str | None, typer.Option(envvar=_env("require_typ"), help="'at+jwt' for strict RFC 9068 typing.")
    ] = None,
    leeway: Annotated[int, typer.Option(envvar=_env("leeway"), help="Clock skew allowed, seconds.")] = 30,
    kafka: Annotated[str | None, typer.Option(envvar=_env("kafka"), help="Kafka bootstrap HOST:PORT.")] = None,
) -> None:
    """Serve GET /v1/validate (forward-auth), introspection, JWKS, revocations, health and metrics."""
    import uvicorn
    from pydantic import ValidationError

    from pipeline.bus.memory import MemoryBus
    from pipeline.validation import ValidatorConfig
    from pipeline.validation.app import create_validator_app
    from pipeline.validation.jwks import JwksError
    from pipeline.validation.server import is_loopback, uvicorn_config
    from pipeline.validation.service import ValidatorService
    from pipeline.web import read_admin_token

    if kafka is not None:
        fail("--kafka: the Kafka bus is not built yet (issue 5); run without it to use the embedded bus")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ValidatorConfig(
            issuer=issuer,
            audience=audience,
            jwks_file=jwks_file,
            jwks_url=jwks_url,
            algorithms=algorithms,
            require_typ=require_typ,
            leeway_s=leeway,
        )
        admin_token = read_admin_token(admin_token_file)
        service = ValidatorService(
            config,
            data_dir=data_dir,
            bus=MemoryBus(),
            events_out=events_out,
            trusted_proxies=trusted_proxies,
            admin_token=admin_token,
        )
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()))
    except (JwksError, ValueError, OSError) as exc:
        fail(str(exc))
    if not is_loopback(host) and not trusted_proxies:
        err.print(
            f"[yellow]warning:[/] serving plain HTTP on {host}; put it behind a TLS-terminating proxy "
            "and name it with --trusted-proxies"
        )
    if admin_token is None:
        err.print("[yellow]note:[/] no --admin-token-file: the admin API (revocations, introspection) is closed")
    console.print(f"validator for [bold]{issuer}[/] / [bold]{audience}[/] on http://{host}:{port}")
    try:
        uvicorn.Server(uvicorn_config(create_validator_app(service), host, port)).run()
    finally:
        service.close()


# ------------------------------------------------------------------------------------------ revoke


@app.command("revoke")
def revoke(
    url: Annotated[str, typer.Option(envvar=_env("validator_url"), help="The validator's base URL.")],
    admin_token_file: Annotated[Path, typer.Option(envvar=_env("admin_token_file"), help="Admin token file.")],
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


# -------------------------------------------------------------------------------------------- demo


@app.command("demo")
def demo(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar=_env("demo_data_dir"), help="Where the demo keeps its state.")
    ] = Path("data/demo"),
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
