"""A signed JWK Set: the key store's public keys as a JWS signed by a long-lived root key — made and checked.

In the manner of OpenID Federation's ``signed_jwks_uri``: a JWT with header ``typ: jwk-set+jwt`` and claims
``iss``, ``sub`` (both the issuer), ``iat``, ``exp`` and ``keys`` (the JWK Set's keys). A validator that pins
the root's public key accepts a key set only when its signature, issuer and freshness check out — so whoever
can change what a web server publishes still cannot slip in a signing key.

The root key is kept apart from the signing keys (its own directory, made by ``jwtwatch keys init-root``):
``ROOT/root.pem`` (PKCS#8, 0600, encrypted with the key store passphrase when one is set) and
``ROOT/root.jwk.json``, the public JWK to pin on validators. Signing happens where the root key is —
``jwtwatch keys sign-jwks`` or ``jwtwatch keys rotate --root`` — and writes ``jwks.jwt`` beside the store's
``jwks.json``; a validator with ``--keys-dir`` only serves that file, it never holds the root key.

How a validator trusts these sets over time — refusing a rollback to an older one, following a key directory's
``jwks.jwt`` — is :mod:`pipeline.validation.signed_jwks`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from pipeline.errors import JwksError, KeyStoreError
from pipeline.files import atomic_write, read_private_file
from pipeline.keys._disk import os_errors, passphrase_from_env
from pipeline.keys.jwk import bind_key, canonical_json, jwk_thumbprint, public_jwk
from pipeline.keys.private_keys import check_alg, generate_key, pem
from pipeline.keys.store import KeyStore

__all__ = [
    "DEFAULT_VALIDITY_S",
    "ROOT_PUBLIC",
    "SIGNED_JWKS_FILE",
    "SIGNED_JWKS_TYP",
    "RootKey",
    "SignedKeySet",
    "publish_signed_jwks",
    "sign_jwks",
    "verify_signed_jwks",
    "verify_signed_key_set",
]

SIGNED_JWKS_TYP = "jwk-set+jwt"
SIGNED_JWKS_FILE = "jwks.jwt"
ROOT_PRIVATE = "root.pem"
ROOT_PUBLIC = "root.jwk.json"
ROOT_META = "root.json"
DEFAULT_VALIDITY_S = 7 * 86400


class RootKey:
    """The long-lived key that signs published key sets. Create with :meth:`init`, load with :meth:`open`."""

    def __init__(self, path: Path, issuer: str, public_jwk: dict[str, str], private: Any) -> None:
        self.path = path
        self.issuer = issuer
        self.public_jwk = public_jwk
        self._private = private

    @property
    def kid(self) -> str:
        return self.public_jwk["kid"]

    @property
    def alg(self) -> str:
        return self.public_jwk["alg"]

    @classmethod
    def init(cls, dir: Path, issuer: str, alg: str = "ES256", *, passphrase: bytes | str | None = None) -> RootKey:
        root = Path(dir)
        alg = check_alg(alg)
        if not isinstance(issuer, str) or not issuer:
            raise KeyStoreError("the root key needs an issuer (the iss of the key sets it signs)")
        secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
        secret = secret if secret is not None else passphrase_from_env()
        with os_errors(f"cannot create a root key in {root}"):
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise KeyStoreError(f"{root} exists and is not an empty directory")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(root, 0o700)
            key = generate_key(alg, 3072)
            jwk = public_jwk(key)
            public = {**jwk, "kid": jwk_thumbprint(jwk), "alg": alg, "use": "sig"}
            atomic_write(root / ROOT_PRIVATE, pem(key, secret), 0o600)
            atomic_write(root / ROOT_PUBLIC, json.dumps(public, indent=2).encode() + b"\n", 0o644)
            meta = {"format": "jwtwatch-root/1", "issuer": issuer, "jwk": public, "encrypted": secret is not None}
            atomic_write(root / ROOT_META, json.dumps(meta, indent=2).encode() + b"\n", 0o644)
        return cls(root, issuer, public, key)

    @classmethod
    def open(cls, dir: Path, *, passphrase: bytes | str | None = None) -> RootKey:
        root = Path(dir)
        secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
        secret = secret if secret is not None else passphrase_from_env()
        with os_errors(f"cannot open the root key in {root}"):
            meta = json.loads((root / ROOT_META).read_bytes())
            path = root / ROOT_PRIVATE
            data = read_private_file(path, "root key")  # InsecureFileError is an OSError: a KeyStoreError here
        encrypted = data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        if encrypted and secret is None:
            raise KeyStoreError(f"the root key in {root} is encrypted: set JWTWATCH_KEYS_PASSPHRASE")
        try:
            key = serialization.load_pem_private_key(data, password=secret if encrypted else None)
        except ValueError as e:
            raise KeyStoreError(f"wrong passphrase for the root key in {root}" if encrypted else str(e)) from e
        public = meta["jwk"]
        if jwk_thumbprint(public_jwk(key)) != public["kid"]:
            raise KeyStoreError(f"{path} does not hold the root key {public['kid']} (file replaced?)")
        return cls(root, meta["issuer"], public, key)

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._private, algorithm=self.alg, headers={"typ": SIGNED_JWKS_TYP, "kid": self.kid})


def sign_jwks(
    root: RootKey,
    jwks: dict[str, Any],
    *,
    validity_s: int = DEFAULT_VALIDITY_S,
    now: float | None = None,
    after_iat: float | None = None,
) -> str:
    """The JWK Set ``jwks`` as a ``jwk-set+jwt`` signed by ``root``, valid for ``validity_s`` seconds.

    Validators refuse a set that is not newer than the one they hold (:class:`SignedJwksHighWater`), so ``iat``
    has millisecond resolution (RFC 7519 allows a fractional NumericDate) and, given ``after_iat`` (the previous
    set's), is strictly later than it: with whole seconds, a rotation re-signed within the second, or a clock
    stepped back, would leave them on the old keys.
    """
    iat = round(time.time() if now is None else now, 3)
    if after_iat is not None:
        iat = max(iat, round(after_iat + 0.001, 3))
    claims = {"iss": root.issuer, "sub": root.issuer, "iat": iat, "exp": iat + validity_s, "keys": jwks["keys"]}
    return root.sign(claims)


def publish_signed_jwks(
    store: KeyStore, root: RootKey, *, validity_s: int = DEFAULT_VALIDITY_S, now: float | None = None
) -> Path:
    """Write ``jwks.jwt`` beside the store's ``jwks.json``: the same keys, signed by the root, issued after the
    set it replaces (see :func:`sign_jwks`)."""
    path = store.path / SIGNED_JWKS_FILE
    t = time.time() if now is None else now
    token = sign_jwks(root, store.public_jwks(), validity_s=validity_s, now=t, after_iat=_previous_iat(path, t))
    with os_errors(f"cannot write {path}"):
        atomic_write(path, token.encode() + b"\n", 0o644)
    return path


#: How far ahead of the clock a previous set's iat may be and still push the next one later: a clock stepped back
#: by a minute is followed; a file claiming a far-future iat (a broken clock, or someone who can write the
#: directory) is ignored rather than dragging every later set into the future, where validators refuse it.
_PREVIOUS_IAT_AHEAD_S = 300


def _previous_iat(path: Path, now: float) -> float | None:
    """The ``iat`` of the ``jwks.jwt`` being replaced, when it is plausible (its signature is not checked here)."""
    try:
        iat = jwt.decode(path.read_bytes().strip(), options={"verify_signature": False}).get("iat")
    except (OSError, ValueError, jwt.PyJWTError):
        return None
    if (
        isinstance(iat, bool)
        or not isinstance(iat, int | float)
        or not now - 366 * 86400 < iat < now + _PREVIOUS_IAT_AHEAD_S
    ):
        return None
    return float(iat)


@dataclass(frozen=True, slots=True)
class SignedKeySet:
    """A verified signed JWK Set: its keys, when it was issued and until when, and a digest of all its claims."""

    jwks: dict[str, Any]
    iat: float
    exp: float
    digest: str


def verify_signed_jwks(
    token: str | bytes,
    root_jwk: dict[str, Any],
    *,
    issuer: str,
    max_age_s: float = DEFAULT_VALIDITY_S,
    leeway_s: float = 30.0,
    now: float | None = None,
) -> tuple[dict[str, Any], float]:
    """Check a signed JWK Set against the pinned root key; return (the JWK Set, its exp).

    The rules are :func:`verify_signed_key_set`'s.
    """
    signed = verify_signed_key_set(token, root_jwk, issuer=issuer, max_age_s=max_age_s, leeway_s=leeway_s, now=now)
    return signed.jwks, signed.exp


def verify_signed_key_set(
    token: str | bytes,
    root_jwk: dict[str, Any],
    *,
    issuer: str,
    max_age_s: float = DEFAULT_VALIDITY_S,
    leeway_s: float = 30.0,
    now: float | None = None,
) -> SignedKeySet:
    """Check a signed JWK Set against the pinned root key.

    Refused (JwksError): a signature that is not the root's, an algorithm other than the root key's, a ``typ``
    other than ``jwk-set+jwt``, an ``iss`` other than ``issuer``, no ``iat``/``exp``, ``exp`` passed,
    ``iat`` in the future, or ``iat`` older than ``max_age_s`` (a replayed old set, even if not expired).
    """
    t = time.time() if now is None else now
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    text = text.strip()
    root = bind_key(root_jwk)
    if root.refused is not None or root.jwk is None:
        raise JwksError(f"the pinned root key is unusable: {root.refused}")
    try:
        header = jwt.get_unverified_header(text)
    except jwt.PyJWTError as e:
        raise JwksError(f"signed JWKS is not a JWS: {e}") from None
    if header.get("typ") != SIGNED_JWKS_TYP:
        raise JwksError(f"signed JWKS has typ {header.get('typ')!r}, not {SIGNED_JWKS_TYP!r}")
    if header.get("alg") != root.alg:
        raise JwksError(f"signed JWKS uses alg {header.get('alg')!r}; the root key is {root.alg}")
    if set(header) - {"alg", "typ", "kid"}:
        raise JwksError(f"signed JWKS has unexpected header(s) {sorted(set(header) - {'alg', 'typ', 'kid'})}")
    try:
        claims = jwt.decode(
            text,
            root.jwk.key,
            algorithms=[root.alg],
            issuer=issuer,
            leeway=leeway_s,
            options={"require": ["iss", "iat", "exp"], "verify_aud": False},
        )
    except jwt.InvalidSignatureError:
        raise JwksError("signed JWKS: the signature is not the pinned root key's") from None
    except jwt.ExpiredSignatureError:
        raise JwksError("signed JWKS has expired") from None
    except jwt.InvalidIssuerError:
        raise JwksError(f"signed JWKS is not from issuer {issuer!r}") from None
    except jwt.ImmatureSignatureError:
        raise JwksError("signed JWKS is issued in the future") from None
    except jwt.PyJWTError as e:
        raise JwksError(f"signed JWKS refused: {e}") from None
    iat, exp = claims["iat"], claims["exp"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (iat, exp)):
        raise JwksError("signed JWKS: iat and exp must be numbers")
    if iat > t + leeway_s:
        raise JwksError("signed JWKS is issued in the future")
    if t - iat > max_age_s:
        raise JwksError(f"signed JWKS was issued {int(t - iat)} s ago, more than the {int(max_age_s)} s allowed")
    keys = claims.get("keys")
    if not isinstance(keys, list):
        raise JwksError('signed JWKS has no "keys" list')
    if any(isinstance(k, dict) and k.get("kid") == root.kid for k in keys):
        raise JwksError("signed JWKS lists the root key itself as a signing key")
    try:
        # of the claims, not of the JWS: a set signed again unchanged (ECDSA signatures differ each time) is the same
        digest = hashlib.sha256(canonical_json(claims)).hexdigest()
    except ValueError:  # NaN or Infinity somewhere in the claims: not a set anyone meant to sign
        raise JwksError("signed JWKS: claims are not plain JSON") from None
    return SignedKeySet({"keys": keys}, float(iat), float(exp), digest)
