"""``jwtwatch token``: access tokens signed with a key store's current key (for demos and tests)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pipeline.cli._options import KeysDir, PassphraseFile, PinFile, env, passphrase, pin
from pipeline.cli._output import fail
from pipeline.errors import KeyStoreError
from pipeline.keys import KeyStore


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
            envvar=env("max_token_lifetime"),
            help="Refuse a --ttl above this, seconds: validators reject longer tokens (reason lifetime).",
        ),
    ] = 3600,
    issuer: Annotated[str | None, typer.Option(envvar=env("issuer"), help="Issuer; default: the store's.")] = None,
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
        store = KeyStore.open(dir, passphrase=passphrase(passphrase_file), pin=pin(pin_file))
        if issuer is None and store.issuer is None:
            fail("no issuer: pass --issuer or create the store with one")
        token = store.issue_token(
            sub, aud if len(aud) > 1 else aud[0], ttl=ttl, issuer=issuer, client_id=client_id, scope=scope
        )
    except KeyStoreError as exc:
        fail(str(exc))
    sys.stdout.write(token + "\n")
