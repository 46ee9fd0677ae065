"""The access-token verifier — pure: a token, the trusted keys and the time in; a Verdict out.

PyJWT parses the JWS and checks the signature. Everything PyJWT leaves to its caller is here (RFC 8725,
RFC 9068 §4, OWASP ASVS V9): the algorithm comes from configuration and from the key, never from the
token; ``jku``/``x5u``/``jwk``/``x5c`` headers are never looked at; unknown ``crit``, ``b64: false`` and
nested tokens are refused; ``typ`` must name an access token; claims must have the right JSON types
(PyJWT accepts ``"exp": "9999999999"``); a size cap stops work before any parsing.

Every rejection carries exactly one reason from :data:`pipeline.events.REASONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from jwt.exceptions import PyJWTError

from pipeline.keys.key_set import KeySet
from pipeline.validation.config import ValidatorConfig

if TYPE_CHECKING:
    from jwt.types import Options

# PyJWT parses; signature and claims are checked below (claims with our clock and strict types).
_PARSE_ONLY: Options = {
    "verify_signature": False,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_jti": False,
    "verify_sub": False,
    "require": [],
}
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti")
NUMERIC_DATE_CLAIMS = ("exp", "iat", "nbf")
STRING_CLAIMS = ("iss", "sub", "jti", "client_id", "scope")
#: The claims that say who is calling. Every surface hands them on — forward-auth as ``X-Auth-*`` header values,
#: the middleware and introspection as they are, revocations and usage events as keys — so each must be a value
#: that all of them carry unchanged: see :func:`carriable`.
IDENTITY_CLAIMS = ("sub", "jti", "client_id", "azp", "scope")
MAX_IDENTITY_CHARS = 1024
MAX_KID_LENGTH = 256
_NESTED_CTY = frozenset({"jwt", "application/jwt"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one token.

    ``claims`` is set only when ``ok``. ``unverified_claims`` are what a rejected token *says* about
    itself — for the usage event and investigation, never for an access decision.
    """

    ok: bool
    reason: str | None = None
    claims: Mapping[str, Any] | None = None
    unverified_claims: Mapping[str, Any] | None = None
    kid: str | None = None
    cached: bool = False

    @property
    def any_claims(self) -> Mapping[str, Any] | None:
        return self.claims if self.claims is not None else self.unverified_claims


def reject(reason: str, unverified: Mapping[str, Any] | None = None, kid: str | None = None) -> Verdict:
    return Verdict(False, reason, None, unverified, kid)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def carriable(value: object) -> bool:
    r"""Whether an identity claim can be handed on exactly as signed: 1 to ``MAX_IDENTITY_CHARS`` printable ASCII
    characters (0x20-0x7E), neither starting nor ending with a space.

    That is what an HTTP header value carries unchanged (RFC 9110 §5.5: a recipient strips the spaces around
    a value, and control characters are not allowed in it). Anything else would reach the API altered:
    ``"admin\u200b"``, ``"admin\n"`` and ``"ad\tmin"`` all as ``admin``, a too-long value cut to a prefix another
    subject shares, an empty one as no subject at all. So a signed token carrying one is refused (``malformed``,
    as for a claim of the wrong JSON type), never rewritten.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_IDENTITY_CHARS
        and value.isascii()
        and value.isprintable()  # for ASCII: exactly 0x20-0x7E
        and value[0] != " "
        and value[-1] != " "
    )


def well_formed_text(claims: Mapping[str, Any]) -> bool:
    """Whether every string of the claims is Unicode that can be written out again (no lone surrogate), within
    the nesting any JSON writer accepts.

    JSON text may escape a lone surrogate (``"\\ud800"``) that no UTF-8 can carry; RFC 7493 (I-JSON) forbids it.
    A token whose claims hold one cannot be handed on whole — introspection's answer, a log line, an archived event
    would each fail or alter it — so it is refused (``malformed``) on every surface alike, even when signed.
    """
    try:
        orjson.dumps(claims)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, nesting past 254, a key that is not a string
        return False
    return True


def _media_type(value: str) -> str:
    """RFC 7515 §4.1.9: compare case-insensitively, the ``application/`` prefix being optional."""
    value = value.lower()
    return value[len("application/") :] if value.startswith("application/") else value


class TokenVerifier:
    """Checks signature and claims. Holds only configuration; keys and time are passed to each call."""

    def __init__(self, config: ValidatorConfig) -> None:
        self.config = config
        self._algorithms = frozenset(config.algorithms)
        self._types = frozenset(_media_type(t) for t in config.allowed_types)
        self._jwt = jwt.PyJWT()

    # ----------------------------------------------------------------------------------------- steps

    def verify(self, token: object, keys: KeySet, now: float) -> Verdict:
        """Signature and every claim rule except revocation (which needs the store) — never raises."""
        try:
            return self._verify(token, keys, now)
        except Exception:  # a verifier must never turn hostile input into a 500
            return reject("malformed")

    def _verify(self, token: object, keys: KeySet, now: float) -> Verdict:
        if isinstance(token, bytes | bytearray | memoryview):
            if len(token) > self.config.max_token_bytes:
                return reject("too_large")
            try:
                token = bytes(token).decode("ascii")
            except UnicodeDecodeError:
                return reject("malformed")
        if not isinstance(token, str):
            return reject("malformed")
        if len(token) > self.config.max_token_bytes:
            return reject("too_large")
        # A JWS in compact form has exactly three parts; a JWE has five and is not for us.
        if token.count(".") != 2 or not token.isascii():
            return reject("malformed")

        # One parse, by PyJWT (header, payload and signature); nothing in it is trusted yet.
        try:
            decoded = self._jwt.decode_complete(token, options=_PARSE_ONLY)
        except (PyJWTError, ValueError, TypeError, RecursionError):
            return reject("malformed")
        header, unverified = decoded["header"], decoded["payload"]
        if not isinstance(unverified, dict):
            return reject("malformed")

        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH):
            return reject("malformed", unverified)
        reason = self._check_header(header)
        if reason:
            return reject(reason, unverified, kid)

        alg = header["alg"]
        key = keys.find(kid, alg)
        if key is None:
            return reject("unknown_kid", unverified, kid)
        if key.refused is not None or key.jwk is None:
            return reject("weak_key" if key.weak else "unknown_kid", unverified, kid)
        if key.alg != alg:
            # The key decides the algorithm (RFC 8725 §3.1): a token may not re-label it.
            return reject("alg_not_allowed", unverified, kid)
        # PyJWT's algorithm checks the signature over the exact bytes received, with the key's own
        # algorithm; the key object was prepared (and its size checked) when the JWKS was loaded.
        signing_input = token[: token.rindex(".")].encode("ascii")
        try:
            valid = key.jwk.Algorithm.verify(signing_input, key.jwk.key, decoded["signature"])
        except (PyJWTError, ValueError, TypeError):
            valid = False
        if not valid:
            return reject("bad_signature", unverified, kid)

        claims = unverified
        reason = self.check_claims(claims, now)
        if reason:
            return reject(reason, claims, kid)
        return Verdict(True, None, claims, None, kid)

    def _check_header(self, header: Mapping[str, Any]) -> str | None:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            return "alg_not_allowed"  # covers none/None/NONE and HS256 against an RSA key
        if "crit" in header:
            # We implement no JWS extension, so any critical one must be refused (RFC 7515 §4.1.11).
            return "malformed"
        if "b64" in header and header["b64"] is not True:
            return "malformed"
        cty = header.get("cty")
        if cty is not None and (not isinstance(cty, str) or _media_type(cty) in _NESTED_CTY):
            return "type"
        typ = header.get("typ")
        if not isinstance(typ, str) or _media_type(typ) not in self._types:
            return "type"
        return None

    def check_claims(self, claims: Mapping[str, Any], now: float) -> str | None:
        """Claim types, presence, issuer, audience and time — the reason, or None when all hold."""
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                return "missing_claim"
        for name in NUMERIC_DATE_CLAIMS:
            if name in claims and not _is_number(claims[name]):
                return "malformed"
        for name in STRING_CLAIMS:
            if name in claims and not isinstance(claims[name], str):
                return "malformed"
        for name in IDENTITY_CLAIMS:
            if name in claims and not carriable(claims[name]):
                return "malformed"
        if not well_formed_text(claims):
            return "malformed"
        if claims["iss"] != self.config.issuer:
            return "issuer"
        aud = claims["aud"]
        if isinstance(aud, str):
            audiences = [aud]
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            audiences = aud
        else:
            return "malformed"
        if self.config.audience not in audiences:
            return "audience"
        if claims["exp"] - claims["iat"] > self.config.max_token_lifetime_s:
            # A long-lived bearer token is a long-lived theft: refused however it was signed. It also bounds
            # how long a subject revocation and a one-time token's replay entry must be kept.
            return "lifetime"
        return self.check_time(claims, now)

    def check_time(self, claims: Mapping[str, Any], now: float) -> str | None:
        """The time rules alone: run again on every use of a cached verification."""
        leeway = self.config.leeway_s
        if now >= claims["exp"] + leeway:
            return "expired"
        if "nbf" in claims and claims["nbf"] > now + leeway:
            return "not_yet_valid"
        if claims["iat"] > now + leeway:
            return "not_yet_valid"
        return None
