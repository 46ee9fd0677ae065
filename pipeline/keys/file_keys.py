"""The file backend's half of :class:`~pipeline.keys.store.KeyStore`: private keys as PEM files under ``private/``.

These are the private-key hooks a backend provides (:class:`~pipeline.keys.pkcs11.Pkcs11KeyStore` overrides
them to keep the keys in a token): make a key and keep its private half, sign with it, check it, remove it,
and the audit key — for an encrypted file store, derived from its passphrase.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from pipeline.errors import KeyStoreError
from pipeline.files import atomic_write, fsync_dir
from pipeline.keys._disk import locked, os_errors, read_private
from pipeline.keys.audit import AuditKey
from pipeline.keys.jwk import b64url, jwk_thumbprint, public_jwk
from pipeline.keys.metadata import PRIVATE_DIR, STORE_FILE
from pipeline.keys.private_keys import (
    ENCRYPTED_PEM,
    JWS_ALGORITHMS,
    PrivateKey,
    generate_key,
    key_matches_alg,
    pem,
)

__all__ = ["FileKeys"]

log = logging.getLogger(__name__)

_NEED_PASSPHRASE = (
    "the private keys in {root} are encrypted: set JWTWATCH_KEYS_PASSPHRASE or give the passphrase file "
    "(--passphrase-file / JWTWATCH_KEYS_PASSPHRASE_FILE)"
)


class FileKeys:
    """Private keys in files (mixed into :class:`~pipeline.keys.store.KeyStore`, which provides the rest)."""

    _root: Path
    _passphrase: bytes | None
    _private_cache: dict[str, PrivateKey]
    _audit_keys: dict[bytes, AuditKey]  # salt -> key derived from the passphrase (scrypt is slow)

    def _meta(self, *, force: bool = False) -> dict[str, Any]:
        raise NotImplementedError  # KeyStore's

    def _commit(
        self,
        meta: dict[str, Any],
        keys: list[dict[str, Any]],
        records: list[tuple[str, str, str, dict[str, Any]]],
        now: float,
        audit: tuple[AuditKey | None, dict[str, Any] | None] | None = None,
    ) -> None:
        raise NotImplementedError  # KeyStore's

    def _remove_private(self, kids: set[str]) -> None:
        # store.json no longer lists them; a leftover file after a crash here is harmless
        for kid in kids:
            self._private_cache.pop(kid, None)
            with contextlib.suppress(FileNotFoundError):
                (self._root / PRIVATE_DIR / f"{kid}.pem").unlink()
        if kids:
            fsync_dir(self._root / PRIVATE_DIR)

    def _preflight(self) -> None:
        """Check, before init writes anything, that keys can be made (Pkcs11KeyStore: module, token, PIN)."""

    def _init_backend(self) -> dict[str, Any]:
        """Prepare a new store's private-key storage; return what store.json records about it."""
        private = self._root / PRIVATE_DIR
        private.mkdir(mode=0o700)
        os.chmod(private, 0o700)  # mkdir's mode is filtered by the umask
        return {"encrypted": self._passphrase is not None}

    def _audit_key(self, meta: Mapping[str, Any], *, create: bool) -> tuple[AuditKey | None, dict[str, Any] | None]:
        """(the audit key, the ``audit_key`` record for store.json) of a store whose metadata is ``meta``.

        A file store has one when it is encrypted and its passphrase is at hand: the passphrase is the secret
        the directory does not hold. ``create``: make the record (a fresh salt) when store.json has none yet.
        """
        record = meta.get("audit_key")
        if not meta.get("encrypted") or self._passphrase is None:
            return None, record if isinstance(record, dict) else None
        if isinstance(record, dict) and record.get("kind") == "passphrase" and isinstance(record.get("salt"), str):
            try:
                salt = base64.urlsafe_b64decode(record["salt"] + "=" * (-len(record["salt"]) % 4))
            except ValueError:
                raise KeyStoreError(f"key store metadata {self._root / STORE_FILE} is corrupt: bad audit_key") from None
        elif create:
            salt = os.urandom(16)
            record = {"kind": "passphrase", "salt": b64url(salt)}
        else:
            return None, None
        key = self._audit_keys.get(salt)
        if key is None:
            key = self._audit_keys[salt] = AuditKey.from_passphrase(self._passphrase, salt)
        return key, dict(record)

    def _audit_key_required(self, meta: Mapping[str, Any]) -> bool:
        """Whether a key change must carry a MAC: an encrypted store's log is authenticated from then on."""
        return bool(meta.get("encrypted"))

    def _opened(self) -> None:
        if not self._meta().get("encrypted"):
            log.warning(
                "private keys in %s are stored unencrypted; set JWTWATCH_KEYS_PASSPHRASE (or a passphrase file) "
                "and run jwtwatch keys encrypt",
                self._root,
            )

    def _new_key(self, alg: str, rsa_bits: int) -> dict[str, str]:
        """Generate a key, keep its private half, return its public JWK (RFC 7638 members)."""
        encrypted = bool(self._meta().get("encrypted")) if (self._root / STORE_FILE).exists() else None
        if encrypted is None:  # init: the store is encrypted when a passphrase is given
            encrypted = self._passphrase is not None
        if encrypted and self._passphrase is None:
            raise KeyStoreError(_NEED_PASSPHRASE.format(root=self._root))
        key = generate_key(alg, rsa_bits)
        jwk = public_jwk(key)
        kid = jwk_thumbprint(jwk)
        path = self._root / PRIVATE_DIR / f"{kid}.pem"
        atomic_write(path, pem(key, self._passphrase if encrypted else None), 0o600)
        return jwk

    def _sign_bytes(self, kid: str, alg: str, data: bytes) -> bytes:
        """The JWS signature (RFC 7518 format: r||s for ECDSA) of ``data`` with key ``kid``."""
        return JWS_ALGORITHMS[alg].sign(data, self._private_key(kid, alg))

    def encrypt(self, *, now: float | None = None) -> int:
        """Re-write every private key of an unencrypted store encrypted with the store's passphrase.

        Returns how many keys were encrypted (0 when the store already was). Recorded in the audit log.
        """
        if self._passphrase is None:
            raise KeyStoreError("no passphrase: set JWTWATCH_KEYS_PASSPHRASE or give a passphrase file")
        t = time.time() if now is None else now
        with os_errors(f"cannot encrypt keys in {self._root}"), locked(self._root):
            meta = self._meta(force=True)
            if meta.get("encrypted"):
                return 0
            for k in meta["keys"]:
                key = self._private_key(k["kid"], k["alg"])
                atomic_write(self._root / PRIVATE_DIR / f"{k['kid']}.pem", pem(key, self._passphrase), 0o600)
            records: list[tuple[str, str, str, dict[str, Any]]] = [
                ("encrypt", k["kid"], k["alg"], {}) for k in meta["keys"]
            ]
            self._commit({**meta, "encrypted": True}, meta["keys"], records, t)
        return len(meta["keys"])

    def _check_private(self, kid: str, alg: str) -> str | None:
        """Why the private key of ``kid`` is unusable, or None.

        The file must be owner-only and encrypted exactly when the store is (anyone who can write private/
        can drop in an unencrypted key of their own, never one encrypted with the passphrase); when the key
        can be loaded (unencrypted, or the passphrase is at hand) it must also be the key ``kid`` names.
        """
        path = self._root / PRIVATE_DIR / f"{kid}.pem"
        try:
            mode = path.stat().st_mode & 0o777
            with path.open("rb") as f:
                start = f.read(len(ENCRYPTED_PEM))
        except FileNotFoundError:
            return f"private key of published key {kid} is missing ({path})"
        except OSError as e:
            return f"cannot read {path}: {e.strerror}"
        if mode & 0o077:
            return f"{path} is accessible by other users (mode {mode:o})"
        file_encrypted = start == ENCRYPTED_PEM
        store_encrypted = bool(self._meta().get("encrypted"))
        if file_encrypted != store_encrypted:
            if store_encrypted:
                return f"{path} is not encrypted, but this store's keys are (file replaced?)"
            return f"{path} is encrypted, but this store's keys are not (file replaced, or store.json edited?)"
        if file_encrypted and self._passphrase is None:
            return None  # the header is all that can be checked without the passphrase
        try:
            self._private_key(kid, alg)
        except KeyStoreError as e:
            return str(e)
        return None

    def _private_key(self, kid: str, alg: str) -> PrivateKey:
        cached = self._private_cache.get(kid)
        if cached is not None:
            return cached
        path = self._root / PRIVATE_DIR / f"{kid}.pem"
        data = read_private(path, f"cannot load private key {kid}")
        encrypted = data.startswith(ENCRYPTED_PEM)
        if encrypted and self._passphrase is None:
            raise KeyStoreError(_NEED_PASSPHRASE.format(root=self._root))
        if not encrypted and self._meta().get("encrypted"):
            # an attacker who can write private/ must not get an unencrypted key of their own used silently
            raise KeyStoreError(f"{path} is not encrypted, but this store's keys are (file replaced?)")
        try:
            key = serialization.load_pem_private_key(data, password=self._passphrase if encrypted else None)
        except ValueError as e:
            if encrypted:
                raise KeyStoreError(
                    f"wrong passphrase for the private keys in {self._root} (cannot decrypt {kid})"
                ) from e
            raise KeyStoreError(f"{path} is not a readable PEM private key") from e
        except TypeError as e:
            raise KeyStoreError(f"{path} is not a readable PEM private key") from e
        if not key_matches_alg(key, alg) or jwk_thumbprint(public_jwk(key)) != kid:
            raise KeyStoreError(f"{path} does not hold the {alg} key {kid} (file replaced or corrupt)")
        self._private_cache[kid] = key
        return key
