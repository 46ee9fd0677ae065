"""Keys of jwtwatch's bundled token issuer: the key store, its audit log, and signed key sets.

* :class:`KeyStore` — a key directory: ``init``, ``open``, ``rotate``, ``prune``, ``sign``, ``issue_token``
  (:mod:`pipeline.keys.store`); its private keys in files (:mod:`pipeline.keys.file_keys`) or in a PKCS#11
  token (:mod:`pipeline.keys.pkcs11`, a backend found by name: :mod:`pipeline.keys.backends`);
* :func:`verify_audit` — the hash-chained, MAC'd audit log of every key change (:mod:`pipeline.keys.audit`);
  :func:`verify_store` — the CI gate over a whole store (:mod:`pipeline.keys.verify`);
* :mod:`pipeline.keys.signed_jwks` — the store's public keys signed by a root key (:class:`RootKey`);
* :mod:`pipeline.keys.jwk` — canonical JSON, RFC 7638 thumbprints, binding a JWK to one algorithm;
* :mod:`pipeline.keys.key_set` — a JWK Set parsed into the keys a verifier may use (validators, the feed).

Nothing here imports the validator, the revocation feed, the nodes or the CLI: they import this.
"""

from __future__ import annotations

from pipeline.errors import KeyStoreError
from pipeline.keys._disk import read_secret_file
from pipeline.keys.audit import AuditKey, AuditReport, verify_audit
from pipeline.keys.jwk import jwk_thumbprint
from pipeline.keys.metadata import KeyInfo
from pipeline.keys.private_keys import ALGORITHMS
from pipeline.keys.signed_jwks import RootKey
from pipeline.keys.store import KeyStore, parse_duration
from pipeline.keys.verify import StoreCheck, verify_store

__all__ = [
    "ALGORITHMS",
    "AuditKey",
    "AuditReport",
    "KeyInfo",
    "KeyStore",
    "KeyStoreError",
    "RootKey",
    "StoreCheck",
    "jwk_thumbprint",
    "parse_duration",
    "read_secret_file",
    "verify_audit",
    "verify_store",
]
