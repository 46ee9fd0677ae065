"""Real credentials for simulated traffic: what each simulated request presents to the validator.

The simulator says *who* used *which* token and what the validator should make of it; this module makes
the token that earns that verdict for real:

* a legitimate use (and an ``expired``, ``not_yet_valid`` or ``revoked`` one) presents a token signed by
  the issuer's key store, with the simulated ``jti``, ``sub``, ``client_id``, ``iat`` and ``exp`` — one
  token string per ``jti``, reused as a real client reuses its token (a stolen token is the same string
  in the attacker's hands). Whether it is expired, not yet valid or revoked is for the validator to find;
* forged-token probing presents what a forger can make: ``bad_signature`` — signed by a key that is not
  the issuer's, under the issuer's ``kid``; ``unknown_kid`` — under a ``kid`` nobody published;
  ``alg_not_allowed`` — HS256, a symmetric algorithm the validator does not accept; ``malformed`` —
  a truncated token;
* a buggy single-page app's ``malformed`` is the literal ``undefined`` it sends as a bearer token.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.keys import KeyStore

FORGED_REASONS = frozenset({"bad_signature", "unknown_kid", "alg_not_allowed"})
_CLAIMS = ("iss", "sub", "aud", "iat", "exp", "jti", "client_id")


class TokenMinter:
    def __init__(self, issuer_keys: KeyStore) -> None:
        self.keys = issuer_keys
        self.issuer_kid = issuer_keys.current().kid
        # The forger's own material: an EC key nobody trusts, and a random HMAC secret.
        self._forger = ec.generate_private_key(ec.SECP256R1())
        self._forger_kid = "forged-" + secrets.token_hex(4)
        self._hmac = secrets.token_bytes(32)
        self._issued: dict[tuple[Any, ...], str] = {}
        self.signed = 0

    def token_for(self, row: Mapping[str, Any]) -> str:
        """The bearer token one simulated request presents (``row``: a simulated token-usage/1 event)."""
        reason = row["reason"]
        claims = {name: row[name] for name in _CLAIMS if row.get(name) is not None}
        if reason == "malformed":
            return "undefined" if row.get("incident_id") is None else "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9"
        if reason in FORGED_REASONS:
            self.signed += 1
            return self._forge(reason, claims)
        key = (row.get("jti"), row.get("sub"), row.get("iat"))
        token = self._issued.get(key)
        if token is None:
            # KeyStore.sign sets typ at+jwt and the current kid: a token as the issuer would mint it.
            token = self._issued[key] = self.keys.sign(claims)
            self.signed += 1
        return token

    def _forge(self, reason: str, claims: dict[str, Any]) -> str:
        if reason == "alg_not_allowed":
            return jwt.encode(claims, self._hmac, algorithm="HS256", headers={"typ": "at+jwt", "kid": self.issuer_kid})
        kid = self.issuer_kid if reason == "bad_signature" else self._forger_kid
        return jwt.encode(claims, self._forger, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid})
