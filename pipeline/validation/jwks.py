"""Parsing a JWK Set into keys the verifier may use — pure, no I/O.

PyJWT builds the key objects (``PyJWK``); this module adds what PyJWT leaves to the caller:

* each key is bound to exactly one algorithm — the JWK's ``alg``, else the one its type implies — so a
  token cannot pick how its own signature is checked;
* only public members are read: a JWKS that leaks private parameters is still used as public keys only;
* symmetric (``oct``) keys are refused: a JWKS is public, an HMAC key in it is a shared secret with the world;
* RSA keys under 2048 bits are kept as *refused* entries, so a token naming one is rejected as ``weak_key``
  rather than as an unknown key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from pipeline.errors import JwksError

MIN_RSA_BITS = 2048

# The members that carry a public key, per RFC 7518 §6; everything else (d, p, q, dp, dq, qi, oth, k) is dropped.
_PUBLIC_MEMBERS = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}

# Asymmetric algorithms jwtwatch can verify. HMAC and "none" are never accepted (see ValidatorConfig).
ASYMMETRIC_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class BoundKey:
    """A verification key bound to one algorithm. ``refused`` explains why it may not be used, if so."""

    kid: str | None
    alg: str
    jwk: PyJWK | None
    public_jwk: dict[str, Any]
    refused: str | None = None
    weak: bool = False


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys a validator trusts, by kid; keys without a kid are found by algorithm."""

    by_kid: Mapping[str, BoundKey] = field(default_factory=dict)
    without_kid: tuple[BoundKey, ...] = ()
    problems: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.without_kid)

    def usable(self) -> list[BoundKey]:
        return [k for k in (*self.by_kid.values(), *self.without_kid) if k.refused is None]

    def public_jwks(self) -> dict[str, Any]:
        """The usable keys as a JWK Set, for ``/.well-known/jwks.json``."""
        keys = []
        for key in self.usable():
            entry = dict(key.public_jwk)
            entry.update({"alg": key.alg, "use": "sig"})
            if key.kid is not None:
                entry["kid"] = key.kid
            keys.append(entry)
        return {"keys": keys}

    def find(self, kid: str | None, alg: str) -> BoundKey | None:
        if kid is not None:
            return self.by_kid.get(kid)
        # No kid: use the only key for this algorithm, never guess between several.
        candidates = [k for k in (*self.without_kid, *self.by_kid.values()) if k.alg == alg]
        return candidates[0] if len(candidates) == 1 else None


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


def parse_jwks(data: bytes | str | Mapping[str, Any], allowed_algorithms: Iterable[str] | None = None) -> KeySet:
    """Parse a JWK Set document. Keys for algorithms outside ``allowed_algorithms`` are refused."""
    if isinstance(data, bytes | str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise JwksError(f"JWKS is not valid JSON: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise JwksError('JWKS must be a JSON object with a "keys" list')
    allowed = set(allowed_algorithms) if allowed_algorithms is not None else None
    by_kid: dict[str, BoundKey] = {}
    without_kid: list[BoundKey] = []
    problems: list[str] = []
    for index, jwk in enumerate(data["keys"]):
        if not isinstance(jwk, Mapping):
            problems.append(f"key #{index}: not an object")
            continue
        key = bind_key(jwk)
        if key.refused is None and allowed is not None and key.alg not in allowed:
            key = BoundKey(key.kid, key.alg, None, key.public_jwk, refused=f"algorithm {key.alg} is not allowed here")
        # A weak key under a kid stays in the set, refused, so its tokens are rejected as weak_key.
        if key.refused is not None:
            problems.append(f"key {key.kid or '#' + str(index)}: {key.refused}")
        if key.kid is None:
            if key.refused is None:
                without_kid.append(key)
        elif key.kid in by_kid:
            # Two keys under one kid would make the kid ambiguous: keep neither usable.
            problems.append(f"key {key.kid}: duplicate kid")
            by_kid[key.kid] = BoundKey(key.kid, key.alg, None, {}, refused="duplicate kid")
        else:
            by_kid[key.kid] = key
    result = KeySet(by_kid, tuple(without_kid), tuple(problems))
    if not result.usable():
        raise JwksError("JWKS holds no usable key: " + ("; ".join(problems) or "it is empty"))
    return result
