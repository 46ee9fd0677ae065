"""The attack catalogue: hostile tokens, each with the reason the validator must reject it, and the controls that
must pass. tests/validation/test_validation_attacks.py runs every case in process and over HTTP;
scripts/gen_docs.py renders the catalogue into docs/security.md.

Tokens are signed for real (RSA, EC, Ed25519, an attacker's keys, a 1024-bit RSA key) or crafted raw.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.jwtkit import (
    AUDIENCE,
    DROP,
    ISSUER,
    Issuer,
    SigningKey,
    b64url,
    der_es256_token,
    hmac_token,
    raw_token,
    standard_claims,
    tamper_payload,
)
from tests.support.servers import RequestTrap


@dataclass
class World:
    """What a case builds its token from: our issuer, an attacker, a weak key, and a trap for fetched URLs."""

    issuer: Issuer
    attacker: Issuer
    weak: SigningKey
    trap: RequestTrap


Case = Callable[[World], str | bytes]


def _none(casing: str) -> Case:
    return lambda w: raw_token({"alg": casing, "typ": "at+jwt"}, standard_claims())


def _pem_secret(w: World) -> str:
    return hmac_token(w.issuer.keys["RS256"].public_pem(), standard_claims(), kid="rs256-1")


def _jwk_secret(w: World) -> str:
    return hmac_token(json.dumps(w.issuer.keys["RS256"].public_jwk()).encode(), standard_claims(), kid="rs256-1")


def _secret(secret: bytes) -> Case:
    return lambda w: hmac_token(secret, standard_claims())


def foreign_known_kid(w: World) -> str:
    return w.attacker.token("RS256", headers={"kid": "rs256-1"})


def _foreign_unknown_kid(w: World) -> str:
    return w.attacker.token("RS256", headers={"kid": "attacker-kid"})


def _header_injection(name: str, kid: str) -> Case:
    def build(w: World) -> str:
        key = w.attacker.keys["RS256"]
        value: object = f"{w.trap.url}/{name}.json"
        if name == "jwk":
            value = key.public_jwk()
        if name == "x5c":
            value = ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]
        return w.attacker.token("RS256", headers={"kid": kid, name: value}, key=key)

    return build


def _kid(kid: str) -> Case:
    return lambda w: w.attacker.token("RS256", headers={"kid": kid})


def _zero_es256(w: World) -> str:
    token = w.issuer.token("ES256")
    head, body, _ = token.split(".")
    return f"{head}.{body}.{b64url(bytes(64))}"


def _der_es256(w: World) -> str:
    return der_es256_token(w.issuer.keys["ES256"], standard_claims())


def _tampered(w: World) -> str:
    return tamper_payload(w.issuer.token("RS256"), sub="admin")


def _claims(**overrides: object) -> Case:
    """Claim overrides; a callable is evaluated when the token is built (times relative to then)."""
    return lambda w: w.issuer.token("RS256", **{k: v() if callable(v) else v for k, v in overrides.items()})


def _headers(**headers: object) -> Case:
    return lambda w: w.issuer.token("RS256", headers=headers)


def _now() -> int:
    return int(time.time())


def _nested(w: World) -> str:
    inner = w.issuer.token("RS256")
    return w.issuer.token("RS256", headers={"cty": "JWT"}, claims={**standard_claims(), "token": inner})


def _weak_key(w: World) -> str:
    return w.issuer.token("RS256", key=w.weak)


def _relabelled(w: World) -> str:
    # An ES256 signature presented under the RSA key's kid: the key, not the token, decides the algorithm.
    return w.issuer.token("ES256", headers={"kid": "rs256-1"})


def _b64_false(w: World) -> str:
    return raw_token({"alg": "RS256", "typ": "at+jwt", "kid": "rs256-1", "b64": False}, standard_claims(), b"x" * 256)


def _huge(w: World) -> str:
    return w.issuer.token("RS256", padding="A" * 64 * 1024)


ATTACKS: list[tuple[str, Case, str]] = [
    *[(f"alg-{c}", _none(c), "alg_not_allowed") for c in ("none", "None", "NONE", "nOnE")],
    ("hs256-keyed-with-rsa-pem", _pem_secret, "alg_not_allowed"),
    ("hs256-keyed-with-rsa-jwk-json", _jwk_secret, "alg_not_allowed"),
    *[(f"hs256-secret-{s.decode() or 'blank'}", _secret(s), "alg_not_allowed") for s in (b"", b"secret", b"password")],
    ("foreign-key-known-kid", foreign_known_kid, "bad_signature"),
    ("foreign-key-unknown-kid", _foreign_unknown_kid, "unknown_kid"),
    ("jku-injection", _header_injection("jku", "attacker-kid"), "unknown_kid"),
    ("x5u-injection", _header_injection("x5u", "attacker-kid"), "unknown_kid"),
    ("jwk-injection-known-kid", _header_injection("jwk", "rs256-1"), "bad_signature"),
    ("jwk-injection-own-kid", _header_injection("jwk", "rs256-1-attacker"), "unknown_kid"),
    ("x5c-injection", _header_injection("x5c", "rs256-1"), "bad_signature"),
    ("kid-path-traversal", _kid("../../../../../../dev/null"), "unknown_kid"),
    ("kid-sql-injection", _kid("' OR '1'='1' --"), "unknown_kid"),
    ("kid-command-injection", _kid("rs256-1|cat /etc/passwd"), "unknown_kid"),
    ("kid-huge", _kid("k" * 5000), "malformed"),
    (
        "kid-not-a-string",
        lambda w: raw_token({"alg": "RS256", "typ": "at+jwt", "kid": 7}, standard_claims(), b"s" * 256),
        "malformed",
    ),
    ("es256-all-zero-signature", _zero_es256, "bad_signature"),
    ("es256-der-signature", _der_es256, "bad_signature"),
    ("tampered-payload", _tampered, "bad_signature"),
    ("alg-relabelled-against-key", _relabelled, "alg_not_allowed"),
    ("expired", _claims(exp=lambda: _now() - 120), "expired"),
    ("nbf-in-future", _claims(nbf=lambda: _now() + 600), "not_yet_valid"),
    ("iat-in-future", _claims(iat=lambda: _now() + 600), "not_yet_valid"),
    ("wrong-issuer", _claims(iss="https://evil.test"), "issuer"),
    ("prefix-extended-issuer", _claims(iss=ISSUER + ".evil.test"), "issuer"),
    ("issuer-with-trailing-slash", _claims(iss=ISSUER + "/"), "issuer"),
    ("wrong-audience", _claims(aud="https://other.test"), "audience"),
    ("audience-list-without-ours", _claims(aud=["https://a.test", "https://b.test"]), "audience"),
    *[(f"missing-{c}", _claims(**{c: DROP}), "missing_claim") for c in ("iss", "sub", "aud", "exp", "iat", "jti")],
    *[(f"string-{c}", _claims(**{c: lambda: str(_now() + 60)}), "malformed") for c in ("exp", "iat", "nbf")],
    ("bool-exp", _claims(exp=True), "malformed"),
    ("unknown-crit", _headers(crit=["urn:example:ext"], **{"urn:example:ext": 1}), "malformed"),
    ("b64-false-in-crit", _headers(b64=False, crit=["b64"]), "malformed"),
    ("b64-false-alone", _b64_false, "malformed"),
    ("nested-cty-jwt", _nested, "type"),
    *[(f"typ-{t}", _headers(typ=t), "type") for t in ("secevent+jwt", "dpop+jwt", "logout+jwt", "id_token")],
    ("typ-missing", _headers(typ=None), "type"),  # PyJWT drops a None typ,
    ("rsa-1024-key-in-jwks", _weak_key, "weak_key"),
    ("token-64-kib", _huge, "too_large"),
    ("jwe-shaped", lambda w: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "malformed"),
    ("garbage", lambda w: "not a token at all", "malformed"),
    ("two-segments", lambda w: "eyJhbGciOiJSUzI1NiJ9.e30", "malformed"),
    ("bad-base64-header", lambda w: "!!!.e30.sig", "malformed"),
    ("header-not-object", lambda w: f"{b64url(b'[1,2]')}.e30.c2ln", "malformed"),
    ("empty", lambda w: "", "malformed"),
]

CONTROLS: list[tuple[str, Case]] = [
    *[
        (f"{alg}-{typ}", (lambda a, t: lambda w: w.issuer.token(a, headers={"typ": t}))(alg, typ))
        for alg in ("RS256", "ES256", "EdDSA")
        for typ in ("at+jwt", "JWT", "application/at+jwt")
    ],
    ("audience-list-with-ours", _claims(aud=["https://other.test", AUDIENCE])),
    ("expired-within-leeway", _claims(exp=lambda: _now() - 5)),
    ("no-nbf", _claims(nbf=DROP)),
]

# An empty credential is no token at all over HTTP: see test_request_without_token_over_http.
HTTP_ATTACKS = [a for a in ATTACKS if a[0] != "empty"]
