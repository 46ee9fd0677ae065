"""The keys a validator trusts beside ``--jwks-file``/``--jwks-url``: a key store (``--keys-dir``) and a signed JWKS
URL, both possibly vouched for by a pinned root key."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import JwksError, KeyStoreError, NodeError
from pipeline.keys import KeyStore, parse_duration
from pipeline.keys.metadata import JWKS_FILE
from pipeline.validation.key_sources import FileKeySource, KeySource, SignedJwksUrlSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustedKeys:
    """The extra key sources, and what the validator's config names as its own source: the config needs one, so a
    store alone becomes its ``jwks.json`` (``jwks_file``), a signed URL alone its first verified set (``jwks``)."""

    sources: list[KeySource] = field(default_factory=list)
    jwks_file: Path | None = None
    jwks: dict[str, Any] | None = None

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()


@dataclass(frozen=True)
class KeyTrust:
    """``--keys-dir``, ``--signed-jwks-url``, ``--jwks-root-key``, ``--signed-jwks-issuer``,
    ``--signed-jwks-max-age`` and ``--jwks-ca-file``, as given."""

    keys_dir: Path | None = None
    signed_jwks_url: str | None = None
    root_key: Path | None = None
    signed_issuer: str | None = None
    max_age: str = "7d"
    ca_file: Path | None = None

    def open(self, jwks_file: Path | None, jwks_url: str | None, algorithms: str, state_dir: Path) -> TrustedKeys:
        """The sources, opened now (a signed URL is fetched and verified once). ``state_dir`` (the data dir) keeps
        the newest signed set's iat, so that an older one is refused after a restart."""
        algs = tuple(a.strip() for a in algorithms.split(",") if a.strip())
        sources: list[KeySource] = []
        if self.keys_dir is not None:
            store_source = self._store_source(algs, state_dir, alone=jwks_file is None and jwks_url is None)
            if store_source is None:
                jwks_file = self.keys_dir / JWKS_FILE  # the store's keys are the config's own source
            else:
                sources.append(store_source)
        if self.signed_jwks_url is not None:
            sources.append(self._signed_url_source(self.signed_jwks_url, algs, state_dir))
        if jwks_file is None and jwks_url is None and sources:
            return TrustedKeys(sources, None, sources[0].current().public_jwks())
        return TrustedKeys(sources, jwks_file, None)

    def _store_source(self, algs: tuple[str, ...], state_dir: Path, *, alone: bool) -> KeySource | None:
        """The key store's source: its root-signed ``jwks.jwt`` under a pinned root, else its ``jwks.json`` — None
        when that file is to be the config's own source (``alone``: no other JWKS was given)."""
        keys_dir = self.keys_dir
        assert keys_dir is not None
        try:
            KeyStore.open(keys_dir)
        except KeyStoreError as exc:
            raise NodeError(f"--keys-dir: {exc}") from exc
        if self.root_key is None:
            log.warning(
                "--keys-dir without --jwks-root-key: %s is trusted as it stands, so whoever can write %s can add a "
                "signing key; pin a root key (jwtwatch keys init-root) to trust only what it signed",
                keys_dir / JWKS_FILE,
                keys_dir,
            )
        else:
            # the root vouches for the store's keys: only its signed jwks.jwt counts, never jwks.json, which anyone
            # who can write the directory can rewrite (issue 14, MEDIUM 5)
            from pipeline.keys.signed_jwks import SIGNED_JWKS_FILE
            from pipeline.validation.signed_jwks import SignedJwksFileSource

            if self.signed_issuer is None:
                raise NodeError(
                    "--keys-dir with --jwks-root-key needs --signed-jwks-issuer (the iss of the signed key set)"
                )
            try:
                return SignedJwksFileSource(
                    keys_dir / SIGNED_JWKS_FILE,
                    algs,
                    root_jwk=json.loads(self.root_key.read_bytes()),
                    issuer=self.signed_issuer,
                    max_age_s=parse_duration(self.max_age),
                    state_dir=state_dir,
                )
            except (OSError, ValueError, JwksError, KeyStoreError) as exc:
                raise NodeError(f"--keys-dir: {exc}") from exc
        if alone:
            return None
        try:
            return FileKeySource(keys_dir / JWKS_FILE, algs)
        except JwksError as exc:
            raise NodeError(f"--keys-dir: {exc}") from exc

    def _signed_url_source(self, url: str, algs: tuple[str, ...], state_dir: Path) -> KeySource:
        if self.root_key is None or self.signed_issuer is None:
            raise NodeError(
                "--signed-jwks-url needs --jwks-root-key (the pinned root public key) and --signed-jwks-issuer"
            )
        try:
            source = SignedJwksUrlSource(
                url,
                algs,
                root_jwk=json.loads(self.root_key.read_bytes()),
                issuer=self.signed_issuer,
                max_age_s=parse_duration(self.max_age),
                ca_file=self.ca_file,
                state_dir=state_dir,
            )
        except (OSError, ValueError, JwksError, KeyStoreError) as exc:
            raise NodeError(f"--signed-jwks-url: {exc}") from exc
        if not source.has_keys:
            raise NodeError(f"--signed-jwks-url: no verified key set from {url}: {source.last_error}")
        return source
