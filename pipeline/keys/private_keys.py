"""The key pairs the store signs with: the algorithms it offers, making a key, checking one, its PEM form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from pipeline.errors import KeyStoreError
from pipeline.keys.jwk import MIN_RSA_BITS

__all__ = [
    "ALGORITHMS",
    "DEFAULT_RSA_BITS",
    "ENCRYPTED_PEM",
    "JWS_ALGORITHMS",
    "PrivateKey",
    "check_alg",
    "generate_key",
    "key_matches_alg",
    "pem",
]

ALGORITHMS = ("RS256", "ES256", "EdDSA")
DEFAULT_RSA_BITS = 3072
#: How a PKCS#8 PEM encrypted with a passphrase begins.
ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"

#: PyJWT's signers, used to sign a JWS signing input the store builds itself.
JWS_ALGORITHMS = {alg: get_default_algorithms()[alg] for alg in ("RS256", "ES256", "EdDSA")}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def check_alg(alg: object, allowed: Sequence[str] = ALGORITHMS) -> str:
    if alg not in allowed:
        raise KeyStoreError(f"unsupported algorithm {alg!r}; choose one of {', '.join(allowed)}")
    return str(alg)


def generate_key(alg: str, rsa_bits: int) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def key_matches_alg(key: object, alg: str) -> TypeGuard[PrivateKey]:
    if alg == "RS256":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    return isinstance(key, ed25519.Ed25519PrivateKey)


def pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted with ``passphrase`` when one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=encryption,
    )
