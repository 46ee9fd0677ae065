"""JSON Web Keys — pure, no I/O: canonical JSON, RFC 7638 thumbprints, the public JWK of a key, and binding a
published JWK to the one algorithm it may verify.

The kid of every key the store makes is its RFC 7638 thumbprint, so a kid can never point at a different key
than the one it was minted for. :func:`bind_key` adds what PyJWT leaves to the caller when a JWK is *used*:

* each key is bound to exactly one algorithm — the JWK's ``alg``, else the one its type implies — so a
  token cannot pick how its own signature is checked;
* only public members are read: a JWK that leaks private parameters is still used as a public key only;
* symmetric (``oct``) keys are refused: a JWKS is public, an HMAC key in it is a shared secret with the world;
* RSA keys under 2048 bits are kept as *refused* entries (``weak``), so a token naming one is rejected as
  ``weak_key`` rather than as an unknown key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from pipeline.errors import KeyStoreError

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MIN_RSA_BITS",
    "BoundKey",
    "b64url",
    "bind_key",
    "canonical_json",
    "compact_json",
    "jwk_thumbprint",
    "public_jwk",
    "public_key_jwk",
]

MIN_RSA_BITS = 2048

# RFC 7638 §3.2: the thumbprint covers exactly these members, nothing optional. They are also the members that
# carry a public key (RFC 7518 §6); everything else (d, p, q, dp, dq, qi, oth, k) is private or optional.
THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_PUBLIC_MEMBERS = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}

# Asymmetric algorithms jwtwatch can verify. HMAC and "none" are never accepted (see ValidatorConfig).
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 (RFC 7638 §3 style)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def compact_json(obj: Any) -> bytes:
    """JSON without whitespace, keys in the order given (a JWS header or payload)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of a public or private JWK."""
    kty = jwk.get("kty")
    members = THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise KeyStoreError(f"cannot compute a thumbprint for key type {kty!r}")
    missing = [m for m in members if not isinstance(jwk.get(m), str)]
    if missing:
        raise KeyStoreError(f"{kty} JWK lacks required member(s) {', '.join(missing)}")
    return b64url(hashlib.sha256(canonical_json({m: jwk[m] for m in members})).digest())


def public_jwk(key: PrivateKeyTypes) -> dict[str, str]:
    """Public JWK with the RFC 7638 required members only (no key_ops, never private params); KeyStoreError for
    a key that is not RSA, EC or Ed25519."""
    return public_key_jwk(key.public_key())


def public_key_jwk(pub: object) -> dict[str, str]:
    """The RFC 7638 members of a public key's JWK (RSA, EC or Ed25519)."""
    if isinstance(pub, rsa.RSAPublicKey):
        full = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        full = ECAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        full = OKPAlgorithm.to_jwk(pub, as_dict=True)
    else:  # pragma: no cover - load path refuses other key types first
        raise KeyStoreError(f"unsupported key type {type(pub).__name__}")
    return {m: full[m] for m in THUMBPRINT_MEMBERS[full["kty"]]}


@dataclass(frozen=True, slots=True)
class BoundKey:
    """A verification key bound to one algorithm. ``refused`` explains why it may not be used, if so."""

    kid: str | None
    alg: str
    jwk: PyJWK | None
    public_jwk: dict[str, Any]
    refused: str | None = None
    weak: bool = False


def _algorithm_for(jwk: Mapping[str, Any]) -> str:
    alg = jwk.get("alg")
    if isinstance(alg, str) and alg:
        return alg
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        return "RS256"
    if kty == "EC":
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(str(crv), "")
    if kty == "OKP" and crv == "Ed25519":
        return "EdDSA"
    return ""


def bind_key(jwk: Mapping[str, Any]) -> BoundKey:
    """Turn one JWK into a :class:`BoundKey`; problems become ``refused`` rather than exceptions."""
    kid = jwk.get("kid")
    kid = kid if isinstance(kid, str) else None
    kty = jwk.get("kty")
    alg = _algorithm_for(jwk)
    members = _PUBLIC_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        return BoundKey(kid, alg, None, {}, refused=f"key type {kty!r} is not an asymmetric signing key")
    if jwk.get("use") not in (None, "sig"):
        return BoundKey(kid, alg, None, {}, refused=f"key use {jwk.get('use')!r} is not 'sig'")
    if alg not in ASYMMETRIC_ALGORITHMS:
        return BoundKey(kid, alg, None, {}, refused=f"algorithm {alg!r} is not an allowed signing algorithm")
    public = {name: jwk[name] for name in members if name in jwk}
    try:
        pyjwk = PyJWK(public, algorithm=alg)
    except (PyJWTError, TypeError, ValueError) as exc:
        return BoundKey(kid, alg, None, public, refused=f"unusable key: {exc}")
    if kty == "RSA":
        bits = pyjwk.key.key_size
        if bits < MIN_RSA_BITS:
            return BoundKey(kid, alg, None, public, refused=f"RSA key of {bits} bits (< {MIN_RSA_BITS})", weak=True)
        if not alg.startswith(("RS", "PS")):
            return BoundKey(kid, alg, None, public, refused=f"RSA key bound to {alg}")
    elif kty == "EC" and not alg.startswith("ES"):
        return BoundKey(kid, alg, None, public, refused=f"EC key bound to {alg}")
    elif kty == "OKP" and alg != "EdDSA":
        return BoundKey(kid, alg, None, public, refused=f"OKP key bound to {alg}")
    return BoundKey(kid, alg, pyjwk, public)
