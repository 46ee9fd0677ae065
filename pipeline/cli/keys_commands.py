"""``jwtwatch keys``: the bundled issuer's key store — create, rotate, sign, encrypt, list and audit it."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.cli._options import KeyAlg, KeysDir, PassphraseFile, PinFile, env, passphrase, pin
from pipeline.cli._output import console, err, fail
from pipeline.errors import KeyStoreError
from pipeline.keys import KeyInfo, KeyStore, parse_duration, verify_audit, verify_store


def keys_init(
    dir: KeysDir,
    alg: KeyAlg = "ES256",
    issuer: Annotated[str | None, typer.Option(envvar=env("issuer"), help="Issuer (iss) of its tokens.")] = None,
    max_token_lifetime: Annotated[
        int, typer.Option(envvar=env("max_token_lifetime"), help="Longest token lifetime, seconds.")
    ] = 3600,
    passphrase_file: PassphraseFile = None,
    backend: Annotated[
        str,
        typer.Option(
            envvar=env("keys_backend"),
            help="Where the private keys live: file (under DIR/private) or pkcs11 (generated in and never leaving "
            "a PKCS#11 token / HSM; ES256 or RS256).",
        ),
    ] = "file",
    pkcs11_module: Annotated[
        Path | None,
        typer.Option(envvar=env("pkcs11_module"), help="With --backend pkcs11: the PKCS#11 library (absolute path)."),
    ] = None,
    token_label: Annotated[
        str | None,
        typer.Option(envvar=env("pkcs11_token_label"), help="With --backend pkcs11: the label of the token."),
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
            options["pin"] = pin(pin_file)
        store = KeyStore.init(
            dir,
            alg=alg,
            issuer=issuer,
            max_token_lifetime=max_token_lifetime,
            passphrase=passphrase(passphrase_file),
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


def keys_rotate(
    dir: KeysDir,
    alg: Annotated[str | None, typer.Option(envvar=env("alg"), help="Algorithm of the new key.")] = None,
    if_older_than: Annotated[
        str | None,
        typer.Option(
            "--if-older-than",
            envvar=env("rotate_if_older_than"),
            help="Rotate only when the current key is at least this old (90d, 12h, 1d12h, seconds), else only drop "
            "expired retired keys; idempotent, for cron.",
        ),
    ] = None,
    passphrase_file: PassphraseFile = None,
    root: Annotated[
        Path | None,
        typer.Option(
            envvar=env("jwks_root"), help="Root key dir (keys init-root): sign jwks.jwt afresh, rotated or not."
        ),
    ] = None,
    validity: Annotated[
        str, typer.Option(envvar=env("jwks_validity"), help="With --root: signed JWKS lifetime.")
    ] = "7d",
    pin_file: PinFile = None,
) -> None:
    """Make a new current key; the previous one stays published until its tokens have expired."""
    from pipeline.keys.signed_jwks import RootKey, publish_signed_jwks

    try:
        store = KeyStore.open(dir, passphrase=passphrase(passphrase_file), pin=pin(pin_file))
        root_key = RootKey.open(root, passphrase=passphrase(passphrase_file)) if root is not None else None
        key: KeyInfo | None
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


def keys_init_root(
    dir: KeysDir,
    issuer: Annotated[str, typer.Option(envvar=env("issuer"), help="The iss of the key sets it signs.")],
    alg: KeyAlg = "ES256",
    passphrase_file: PassphraseFile = None,
) -> None:
    """Create the long-lived root key that signs published key sets (keep it apart from the signing keys)."""
    from pipeline.keys.signed_jwks import ROOT_PUBLIC, RootKey

    try:
        root = RootKey.init(dir, issuer, alg, passphrase=passphrase(passphrase_file))
    except KeyStoreError as exc:
        fail(str(exc))
    console.print(f"root key [bold]{root.kid}[/] ({root.alg}) in {dir}; pin {dir / ROOT_PUBLIC} on validators")


def keys_sign_jwks(
    dir: KeysDir,
    root: Annotated[Path, typer.Option(envvar=env("jwks_root"), help="Root key directory (keys init-root).")],
    validity: Annotated[str, typer.Option(envvar=env("jwks_validity"), help="Lifetime of the signed set.")] = "7d",
    passphrase_file: PassphraseFile = None,
) -> None:
    """Sign the store's public keys with the root key into DIR/jwks.jwt (served at /.well-known/jwks.jwt)."""
    from pipeline.keys.signed_jwks import RootKey, publish_signed_jwks

    try:
        store = KeyStore.open(dir, passphrase=passphrase(passphrase_file))
        path = publish_signed_jwks(
            store, RootKey.open(root, passphrase=passphrase(passphrase_file)), validity_s=parse_duration(validity)
        )
    except KeyStoreError as exc:
        fail(str(exc))
    console.print(f"signed key set: {path}")


def keys_encrypt(dir: KeysDir, passphrase_file: PassphraseFile = None) -> None:
    """Encrypt the private keys of a store made without a passphrase (recorded in the audit log)."""
    try:
        count = KeyStore.open(dir, passphrase=passphrase(passphrase_file)).encrypt()
    except KeyStoreError as exc:
        fail(str(exc))
    console.print(f"encrypted {count} private key(s)" if count else "private keys were already encrypted")


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
        typer.Option(envvar=env("max_key_age"), help="With --verify: the oldest the current key may be (90d, 12h)."),
    ] = "90d",
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            envvar=env("expect_audit_head"),
            help="A head an earlier audit printed, recorded outside DIR: exit 1 unless the log still holds it "
            "(catches a rewritten or rolled-back directory); it authenticates the log up to that entry.",
        ),
    ] = None,
    passphrase_file: PassphraseFile = None,
    pin_file: PinFile = None,
) -> None:
    """Verify the key audit log: its hash chain, its MACs (with the passphrase or PIN) and a recorded head."""
    if verify:
        _verify_store(dir, max_key_age, expect_head, passphrase_file, pin_file)
    else:
        _verify_audit_log(dir, expect_head, passphrase_file, pin_file)


def _verify_store(
    dir: Path, max_key_age: str, expect_head: str | None, passphrase_file: Path | None, pin_file: Path | None
) -> None:
    """The key directory against its log and the rotation policy: exit 1 on any problem."""
    try:
        check = verify_store(
            dir,
            max_key_age=parse_duration(max_key_age),
            expect_head=expect_head,
            passphrase=passphrase(passphrase_file),
            pin=pin(pin_file),
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


def _verify_audit_log(dir: Path, expect_head: str | None, passphrase_file: Path | None, pin_file: Path | None) -> None:
    """The log's chain, and its MACs when the store opens: exit 1 if broken; warn when nothing authenticates it."""
    try:
        audit_key, why_no_key = None, ""
        try:
            audit_key = KeyStore.open(dir, passphrase=passphrase(passphrase_file), pin=pin(pin_file)).audit_key()
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
