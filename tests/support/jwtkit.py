"""Real keys and real signed JWTs for tests — including the malformed and malicious ones.

Well-formed tokens are signed by PyJWT. Hostile shapes that PyJWT refuses to produce (``alg: none``,
HMAC keyed with a public key, DER signatures) are assembled here by hand on purpose: they are the attacks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test"
AUDIENCE = "https://api.test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: object) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @property
    def public(self) -> Any:
        return self.private.public_key()

    def public_jwk(self) -> dict[str, Any]:
        if self.alg.startswith("RS"):
            jwk = RSAAlgorithm.to_jwk(self.public, as_dict=True)
        elif self.alg.startswith("ES"):
            jwk = ECAlgorithm.to_jwk(self.public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(self.public, as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk

    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_key(alg: str, kid: str | None = None, bits: int = 2048) -> SigningKey:
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    return SigningKey(kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg, private)


def standard_claims(now: float | None = None, ttl: int = 600, **overrides: Any) -> dict[str, Any]:
    now = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": AUDIENCE,
        "exp": now + ttl,
        "iat": now,
        "nbf": now,
        "jti": str(uuid.uuid4()),
        "client_id": "web-app",
        "scope": "read write",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not _DROP}


_DROP = object()
DROP = _DROP  # pass as a claim value to leave the claim out


@dataclass
class Issuer:
    """An issuer with one key per algorithm, its JWKS, and a token factory."""

    keys: dict[str, SigningKey] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Issuer:
        return cls({alg: new_key(alg, kid=f"{alg.lower()}-1") for alg in ("RS256", "ES256", "EdDSA")})

    def jwks(self, *extra: dict[str, Any]) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys.values()] + list(extra)}

    def token(
        self,
        alg: str = "RS256",
        *,
        claims: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        key: SigningKey | None = None,
        now: float | None = None,
        **claim_overrides: Any,
    ) -> str:
        key = key or self.keys[alg]
        payload = claims if claims is not None else standard_claims(now, **claim_overrides)
        head: dict[str, Any] = {"typ": "at+jwt", "kid": key.kid}
        head.update(headers or {})
        head = {k: v for k, v in head.items() if v is not _DROP}
        return jwt.encode(payload, key.private, algorithm=alg, headers=head)


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64json(header)}.{b64json(payload)}.{b64url(signature)}"


def hmac_token(secret: bytes, payload: dict[str, Any], kid: str | None = None, alg: str = "HS256") -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if kid:
        header["kid"] = kid
    signing_input = f"{b64json(header)}.{b64json(payload)}".encode()
    return signing_input.decode() + "." + b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())


def der_es256_token(key: SigningKey, payload: dict[str, Any]) -> str:
    """An ES256 token whose signature is DER-encoded (as OpenSSL emits) instead of JOSE's raw r||s."""
    header = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}
    signing_input = f"{b64json(header)}.{b64json(payload)}".encode()
    der = key.private.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    return signing_input.decode() + "." + b64url(der)


def tamper_payload(token: str, **changes: Any) -> str:
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    return f"{head}.{b64json(payload)}.{sig}"
