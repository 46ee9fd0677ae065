"""A key store's ``store.json``: its files' names, reading and checking it, and what it says about the keys.

Layout of a store directory::

    DIR/store.json          metadata: issuer, max token lifetime, published keys (public JWKs), audit head
    DIR/jwks.json           the public keys, rewritten on every change (validators follow it)
    DIR/private/<kid>.pem   PKCS#8 private keys, mode 0600, directory 0700 (file backend)
    DIR/audit.log           hash-chained JSON Lines, one entry per key change (:mod:`pipeline.keys.audit`)
    DIR/.lock               flock target that serialises init / rotate / prune

Public JWKs live in store.json so that publishing the JWKS never touches private key material.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import KeyStoreError
from pipeline.keys._disk import os_errors
from pipeline.keys.backends import BACKEND_MODULES
from pipeline.keys.jwk import MIN_RSA_BITS, jwk_thumbprint
from pipeline.keys.private_keys import ALGORITHMS

__all__ = [
    "DEFAULT_MAX_TOKEN_LIFETIME",
    "JWKS_FILE",
    "PRIVATE_DIR",
    "STORE_FILE",
    "STORE_FORMAT",
    "KeyInfo",
    "backend_of",
    "expired_keys",
    "key_info",
    "key_retention",
    "load_meta",
    "parse_meta",
    "read_head",
    "store_signature",
]

STORE_FORMAT = "jwtwatch-keystore/1"
DEFAULT_MAX_TOKEN_LIFETIME = 3600
STORE_FILE = "store.json"
JWKS_FILE = "jwks.json"  # public keys only, rewritten on every change
PRIVATE_DIR = "private"

# A kid is base64url(SHA-256) = 43 chars; checking the shape keeps a tampered store.json from
# steering a file path outside private/.
KID_RE = re.compile(r"[A-Za-z0-9_-]{43}")

Status = Literal["current", "retired"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    kid: str
    alg: str
    created_at: float
    retired_at: float | None
    status: Status


def parse_meta(raw: bytes, path: Path) -> dict[str, Any]:
    def corrupt(why: str) -> KeyStoreError:
        return KeyStoreError(f"key store metadata {path} is corrupt: {why}")

    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise corrupt(f"not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise corrupt(f"format is not {STORE_FORMAT!r}")
    lifetime = meta.get("max_token_lifetime")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
        raise corrupt("max_token_lifetime must be a positive integer")
    retention = meta.get("retention")
    if retention is not None and (isinstance(retention, bool) or not isinstance(retention, int) or retention <= 0):
        raise corrupt("retention must be a positive integer")
    if not isinstance(meta.get("rsa_bits"), int) or meta["rsa_bits"] < MIN_RSA_BITS:
        raise corrupt(f"rsa_bits must be an integer >= {MIN_RSA_BITS}")
    if meta.get("issuer") is not None and not isinstance(meta["issuer"], str):
        raise corrupt("issuer must be a string or null")
    keys = meta.get("keys")
    if not isinstance(keys, list) or not keys:
        raise corrupt("no keys")
    for k in keys:
        if not isinstance(k, dict) or not isinstance(k.get("kid"), str) or not KID_RE.fullmatch(k["kid"]):
            raise corrupt(f"bad key entry {k!r}")
        if k.get("alg") not in ALGORITHMS or not isinstance(k.get("jwk"), dict):
            raise corrupt(f"key {k['kid']}: bad alg or jwk")
        if not isinstance(k.get("created_at"), int | float):
            raise corrupt(f"key {k['kid']}: bad created_at")
        if k.get("retired_at") is not None and not isinstance(k["retired_at"], int | float):
            raise corrupt(f"key {k['kid']}: bad retired_at")
        try:
            thumb = jwk_thumbprint(k["jwk"])
        except KeyStoreError as e:
            raise corrupt(f"key {k['kid']}: {e}") from e
        if thumb != k["kid"]:
            raise corrupt(f"key {k['kid']}: public key does not match its kid")
    if sum(1 for k in keys if k.get("retired_at") is None) != 1:
        raise corrupt("there must be exactly one current key")
    head = meta.get("audit_head")
    if not (isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)):
        raise corrupt("bad audit_head")
    return meta


def store_signature(root: Path) -> tuple[int, int, int]:
    """(inode, mtime, size) of ``root``'s store.json — os.replace gives every committed change a new inode —
    or KeyStoreError when ``root`` is not a key store."""
    path = root / STORE_FILE
    if not root.is_dir():
        raise KeyStoreError(f"key store {root} does not exist (create one with KeyStore.init / jwtwatch keys init)")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyStoreError(f"{root} is not a jwtwatch key store (no {STORE_FILE})") from None
    except OSError as e:
        raise KeyStoreError(f"cannot read {path}: {e.strerror}") from e
    return st.st_ino, st.st_mtime_ns, st.st_size


def load_meta(root: Path, signature: tuple[int, int, int] | None = None) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """store.json of ``root``, parsed and checked, with the signature it was read at (``signature``: taken by
    the caller just before)."""
    if signature is None:
        signature = store_signature(root)
    path = root / STORE_FILE
    with os_errors(f"cannot read {path}"):
        raw = path.read_bytes()
    return signature, parse_meta(raw, path)


def backend_of(meta: dict[str, Any], path: Path) -> str:
    """``backend`` of a store (``file`` when store.json does not say)."""
    kind = meta.get("backend", "file")
    if not isinstance(kind, str) or kind not in BACKEND_MODULES:
        raise KeyStoreError(f"key store metadata {path} is corrupt: unknown backend {kind!r}")
    return kind


def read_head(root: Path) -> tuple[int, str] | None:
    """The audit head recorded in store.json, or None when it cannot be read (then only the chain counts)."""
    try:
        meta = parse_meta((root / STORE_FILE).read_bytes(), root / STORE_FILE)
    except (OSError, KeyStoreError):
        return None
    return meta["audit_head"]["seq"], meta["audit_head"]["hash"]


def expired_keys(keys: Sequence[Mapping[str, Any]], max_lifetime: int, now: float) -> list[dict[str, Any]]:
    """Retired keys whose signatures are all past use: retired_at + ``max_lifetime`` (see :func:`key_retention`)."""
    return [dict(k) for k in keys if k["retired_at"] is not None and now >= k["retired_at"] + max_lifetime]


def key_retention(meta: Mapping[str, Any]) -> int:
    """How long a retired key stays published: the longest token lifetime, or longer when something the store
    signed lives longer (``retention``, raised by :meth:`KeyStore.retain_for` — the revocation feed's SETs)."""
    lifetime: int = meta["max_token_lifetime"]
    retention: int = meta.get("retention") or 0
    return max(lifetime, retention)


def key_info(k: Mapping[str, Any]) -> KeyInfo:
    return KeyInfo(
        kid=k["kid"],
        alg=k["alg"],
        created_at=k["created_at"],
        retired_at=k["retired_at"],
        status="current" if k["retired_at"] is None else "retired",
    )
