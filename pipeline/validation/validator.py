"""TokenValidator: the verifier wired to its keys, the verified-token cache and the revocation list."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from pipeline.validation.cache import VerifiedTokenCache
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.key_sources import KeySource, key_source_for
from pipeline.validation.one_time import ReplayCache, is_one_time
from pipeline.validation.verifier import TokenVerifier, Verdict, reject


class RevocationCheck(Protocol):
    def is_revoked(
        self, iss: str | None, jti: str | None, sub: str | None, iat: float | None, leeway_s: float = 0.0
    ) -> bool: ...


class TokenValidator:
    """``TokenValidator(ValidatorConfig(...)).validate(token) -> Verdict`` — never raises on any input."""

    def __init__(
        self,
        config: ValidatorConfig,
        *,
        revocations: RevocationCheck | None = None,
        key_source: KeySource | None = None,
        replay: ReplayCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.verifier = TokenVerifier(config)
        self.keys = key_source or key_source_for(config)
        self.revocations = revocations
        self.cache = VerifiedTokenCache(config.cache_size)
        self._clock = clock
        self._generation = self.keys.generation
        #: One-time tokens seen (only when the configuration marks some tokens one-time).
        self.replay = replay if replay is not None else (ReplayCache() if config.one_time else None)
        self._one_time = (
            frozenset(config.one_time_audiences),
            frozenset(config.one_time_scopes),
            config.one_time_marks,
        )

    def validate(self, token: object, now: float | None = None) -> Verdict:
        now = self._clock() if now is None else now
        keys = self.keys.current()  # may reload the key set (throttled), which bumps its generation
        if self.keys.generation != self._generation:
            # A key was added or removed: cached verifications may rest on a key no longer trusted.
            self.cache.clear()
            self._generation = self.keys.generation

        claims = self.cache.get(token, now) if isinstance(token, str) else None
        if claims is not None:
            reason = self.verifier.check_time(claims, now)
            if reason:
                return reject(reason, claims)
            return self._replay_checked(self._revocation_checked(Verdict(True, None, claims, cached=True)), now)

        verdict = self.verifier.verify(token, keys, now)
        if verdict.reason == "unknown_kid" and self.keys.refresh_for_unknown_kid():
            verdict = self.verifier.verify(token, self.keys.current(), now)
        if not verdict.ok:
            return verdict
        verdict = self._replay_checked(self._revocation_checked(verdict), now)
        if verdict.ok and verdict.claims is not None and isinstance(token, str):  # an ok verdict has claims
            self.cache.put(token, verdict.claims)
        return verdict

    def close(self) -> None:
        """Release the key source's connections (a JWKS URL keeps an HTTPS client)."""
        close = getattr(self.keys, "close", None)
        if close is not None:
            close()

    def _replay_checked(self, verdict: Verdict, now: float) -> Verdict:
        """A one-time token is accepted once: its first accepted use is recorded, any later one is ``replayed``.

        Last of all the checks, so that a token refused for any other reason is not used up by that attempt.
        """
        if not verdict.ok or self.replay is None:
            return verdict
        claims = verdict.claims
        assert claims is not None
        if not is_one_time(claims, *self._one_time):
            return verdict
        if self.replay.claim(claims["iss"], claims["jti"], claims["exp"] + self.config.leeway_s, now):
            return verdict
        return reject("replayed", claims, verdict.kid)

    def _revocation_checked(self, verdict: Verdict) -> Verdict:
        if self.revocations is None:
            return verdict
        claims = verdict.claims
        assert claims is not None
        if self.revocations.is_revoked(
            claims["iss"], claims["jti"], claims["sub"], claims["iat"], self.config.leeway_s
        ):
            return reject("revoked", claims, verdict.kid)
        return verdict
