"""ValidatorConfig: everything that decides whether a token is accepted, checked when it is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.keys.jwk import ASYMMETRIC_ALGORITHMS

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
# RFC 9068 §2.1 names at+jwt; plain "JWT" is what most issuers still send (design.md, "Validation rules").
DEFAULT_TYPES = ("at+jwt", "application/at+jwt", "jwt")


class ValidatorConfig(BaseModel):
    """How a :class:`~pipeline.validation.TokenValidator` decides.

    Exactly one key source: ``jwks_file``, ``jwks_url`` (HTTPS only) or ``jwks`` (a JWK Set given inline).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1, description="the exact `iss` tokens must carry")
    audience: str = Field(min_length=1, description="an audience that `aud` must contain")
    jwks_file: Path | None = Field(None, description="JWKS file; re-read when it changes")
    jwks_url: str | None = Field(None, description="JWKS https:// URL, fetched without following redirects")
    jwks: dict[str, Any] | None = Field(None, description="a JWK Set given inline (library use and tests)")
    jwks_ca_file: Path | None = Field(None, description="CA bundle for the JWKS URL (default: system CAs)")
    algorithms: tuple[str, ...] = Field(
        DEFAULT_ALGORITHMS, description="allowed algorithms (asymmetric only); a comma-separated string is accepted"
    )
    leeway_s: int = Field(30, ge=0, le=300, description="clock skew allowed on exp, nbf and iat")
    max_token_lifetime_s: int = Field(
        3600, ge=1, le=31 * 24 * 3600, description="tokens whose exp - iat exceeds this are rejected (`lifetime`)"
    )
    max_token_bytes: int = Field(8192, ge=256, le=65536, description="longer tokens are refused before parsing")
    require_typ: Literal["at+jwt"] | None = Field(None, description="'at+jwt' for strict RFC 9068 typing")
    jwks_refetch_cooldown_s: float = Field(60.0, ge=0, description="at most one refetch per this on unknown kid")
    jwks_refresh_s: float = Field(300.0, gt=0, description="how long fetched keys are used before a refresh")
    jwks_timeout_s: float = Field(
        5.0, gt=0, description="total deadline of one JWKS URL fetch (connect, TLS, headers and body together)"
    )
    jwks_max_stale_s: float | None = Field(
        None,
        gt=0,
        description="/readyz is 503 once JWKS URL refreshes have failed this long past their schedule "
        "(the last good keys stay in use); default: never for staleness alone — every validator of an issuer "
        "would go unready at once during its outage — only for a fetch hung past its deadline",
    )
    cache_size: int = Field(100_000, ge=0, description="verified tokens remembered; 0 disables the cache")
    one_time_audiences: tuple[str, ...] = Field(
        (), description="tokens for any of these audiences are one-time: accepted once, then `replayed`"
    )
    one_time_scopes: tuple[str, ...] = Field((), description="tokens carrying any of these scopes are one-time")
    one_time_claims: tuple[str, ...] = Field(
        (),
        description="`name` (the claim is true) or `name=value` (equals, or a list holding it) marks a one-time token",
    )

    @field_validator("one_time_audiences", "one_time_scopes", "one_time_claims", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("one_time_claims")
    @classmethod
    def _claim_marks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for mark in value:
            name = mark.split("=", 1)[0]
            if not name or name in ("iss", "sub", "aud", "exp", "iat", "nbf", "jti"):
                raise ValueError(f"{mark!r}: name a claim of its own (not a registered one), as name or name=value")
        return value

    @field_validator("algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("algorithms")
    @classmethod
    def _only_asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one algorithm is needed")
        for alg in value:
            if alg not in ASYMMETRIC_ALGORITHMS:
                # HS* would make the public JWKS a shared secret; "none" is never a signature.
                raise ValueError(f"{alg!r} is not allowed: choose from {sorted(ASYMMETRIC_ALGORITHMS)}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _https_only(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme != "https" or not parts.hostname:
                raise ValueError("jwks_url must be an https:// URL")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> ValidatorConfig:
        sources = [s for s in (self.jwks_file, self.jwks_url, self.jwks) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of jwks_file, jwks_url or jwks")
        return self

    @property
    def one_time(self) -> bool:
        """Whether any token can be one-time under this configuration."""
        return bool(self.one_time_audiences or self.one_time_scopes or self.one_time_claims)

    @property
    def one_time_marks(self) -> tuple[tuple[str, str | None], ...]:
        return tuple((m.split("=", 1)[0], m.split("=", 1)[1] if "=" in m else None) for m in self.one_time_claims)

    @property
    def allowed_types(self) -> frozenset[str]:
        if self.require_typ == "at+jwt":
            return frozenset({"at+jwt", "application/at+jwt"})
        return frozenset(DEFAULT_TYPES)
