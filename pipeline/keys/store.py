"""The key store of jwtwatch's bundled token issuer: create, rotate, prune, retain, publish, sign.

A store is a directory (layout: :mod:`pipeline.keys.metadata`). Every key change is appended to the audit log
(:mod:`pipeline.keys.audit`) before store.json is replaced, under the store lock. Where the private keys live is
the backend's business: :class:`KeyStore` keeps them in files (:class:`~pipeline.keys.file_keys.FileKeys`),
:class:`~pipeline.keys.pkcs11.Pkcs11KeyStore` in a PKCS#11 token; the base finds a backend by the name
store.json records (:mod:`pipeline.keys.backends`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import KeyStoreError
from pipeline.files import atomic_write
from pipeline.keys._disk import LOCK_FILE, locked, os_errors, passphrase_from_env
from pipeline.keys.audit import AUDIT_FILE, AuditKey, append_audit, check_tail, rfc3339, split_lines
from pipeline.keys.backends import BACKEND_MODULES, backend_class, register_backend
from pipeline.keys.file_keys import FileKeys
from pipeline.keys.jwk import MIN_RSA_BITS, b64url, canonical_json, compact_json, jwk_thumbprint
from pipeline.keys.metadata import (
    DEFAULT_MAX_TOKEN_LIFETIME,
    JWKS_FILE,
    STORE_FILE,
    STORE_FORMAT,
    KeyInfo,
    backend_of,
    expired_keys,
    key_info,
    key_retention,
    load_meta,
    store_signature,
)
from pipeline.keys.private_keys import ALGORITHMS, DEFAULT_RSA_BITS, PrivateKey, check_alg

__all__ = ["KeyStore", "parse_duration"]

log = logging.getLogger(__name__)

# Headers the store decides itself: PyJWT lets a header "alg" override the signing algorithm, and
# b64=false would produce tokens every validator rejects.
_RESERVED_HEADERS = frozenset({"alg", "kid", "b64"})
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope"})

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(?:\d+[smhdw])+")
_DURATION_MAX_CHARS = 100


def parse_duration(text: str) -> int:
    """Seconds in ``90d``, ``12h``, ``1d12h``, ``30m``, ``45s``, ``2w`` or a bare number of seconds."""
    value = text.strip().lower()
    # ASCII digits only: str.isdigit() and \d also admit '²' or '٣', which int() refuses or reads oddly
    if not value.isascii() or not (value.isdigit() or _DURATION_RE.fullmatch(value)):
        raise KeyStoreError(f"not a duration: {text!r} (use e.g. 90d, 12h, 1d12h, 30m, 45s or seconds)")
    if len(value) > _DURATION_MAX_CHARS:
        # also keeps int() below its 4300-digit limit, which raises a bare ValueError
        raise KeyStoreError(f"duration too long: {len(value)} characters (at most {_DURATION_MAX_CHARS})")
    if value.isdigit():
        seconds = int(value)
    else:
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", value))
    if seconds <= 0:
        raise KeyStoreError(f"a duration must be positive, got {text!r}")
    return seconds


@register_backend
class KeyStore(FileKeys):
    """A key directory. Create one with :meth:`init`, load one with :meth:`open`.

    Reads go to disk (store.json is re-read when it changes) so that a long-lived process sees
    rotations made by another process, e.g. ``jwtwatch keys rotate`` next to a running server.
    """

    BACKEND = "file"
    ALGORITHMS: tuple[str, ...] = ALGORITHMS  # what this backend can generate and sign with

    def __init__(
        self, root: Path, *, passphrase: bytes | str | None = None, pin: bytes | str | None = None, **options: Any
    ) -> None:
        # pin: a file store has none (the CLI passes --pin-file / JWTWATCH_PKCS11_PIN_FILE to any store)
        if options:
            raise KeyStoreError(f"option(s) {', '.join(sorted(options))} apply to pkcs11 key stores only")
        self._root = Path(root)
        self._meta_cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self._private_cache: dict[str, PrivateKey] = {}
        self._audit_keys: dict[bytes, AuditKey] = {}  # salt -> key derived from the passphrase (scrypt is slow)
        if isinstance(passphrase, str):
            passphrase = passphrase.encode()
        self._passphrase: bytes | None = passphrase if passphrase is not None else passphrase_from_env()
        if self._passphrase is not None and not self._passphrase:
            raise KeyStoreError("the key store passphrase is empty")

    # ---- lifecycle

    @classmethod
    def init(
        cls,
        dir: Path,
        alg: str = "ES256",
        issuer: str | None = None,
        *,
        max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME,
        rsa_bits: int = DEFAULT_RSA_BITS,
        now: float | None = None,
        passphrase: bytes | str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> KeyStore:
        """Create a store with one current key in ``dir``, which must be missing or empty.

        Private keys are encrypted at rest with ``passphrase`` — by default the one in the environment
        (``JWTWATCH_KEYS_PASSPHRASE``, or the file named by ``JWTWATCH_KEYS_PASSPHRASE_FILE``). Without
        one they are written unencrypted, and every later use warns.

        ``backend="pkcs11"`` keeps the keys in a PKCS#11 token instead (``module=``, ``token_label=``, ``pin=``;
        see :class:`~pipeline.keys.pkcs11.Pkcs11KeyStore`).
        """
        if backend is not None and backend != cls.BACKEND:
            if cls is not KeyStore or not isinstance(backend, str):
                raise KeyStoreError(f"unknown key store backend {backend!r} ({' or '.join(BACKEND_MODULES)})")
            cls = backend_class(backend, KeyStore)
        root = Path(dir)
        alg = check_alg(alg, cls.ALGORITHMS)
        if isinstance(max_token_lifetime, bool) or not isinstance(max_token_lifetime, int):
            raise KeyStoreError("max_token_lifetime must be an integer number of seconds")
        if max_token_lifetime <= 0:
            raise KeyStoreError("max_token_lifetime must be positive")
        if not isinstance(rsa_bits, int) or rsa_bits < MIN_RSA_BITS:
            raise KeyStoreError(f"RSA keys must have at least {MIN_RSA_BITS} bits, got {rsa_bits!r}")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise KeyStoreError("issuer must be a non-empty string")
        t = time.time() if now is None else now
        # a bad module, token or PIN is refused before anything is written
        store = cls(root, passphrase=passphrase, **options)
        store._preflight()

        with os_errors(f"cannot create key store in {root}"):
            if root.exists() and not root.is_dir():
                raise KeyStoreError(f"{root} exists and is not a directory")
            if root.is_dir() and any(root.iterdir()):
                raise KeyStoreError(
                    f"{root} is not empty; refusing to initialise a key store over existing files "
                    "(use KeyStore.open for an existing store, or choose an empty directory)"
                )
            root.mkdir(parents=True, exist_ok=True)
            with locked(root):
                # re-check under the lock: a concurrent init may have won the race
                if any(p.name != LOCK_FILE for p in root.iterdir()):
                    raise KeyStoreError(f"{root} was initialised concurrently; refusing to overwrite it")
                backend_meta = store._init_backend()
                audit_key, audit_record = store._audit_key(backend_meta, create=True)
                jwk = store._new_key(alg, rsa_bits)
                kid = jwk_thumbprint(jwk)
                details = {"issuer": issuer, "max_token_lifetime": max_token_lifetime, **backend_meta}
                head = append_audit(root, [("init", kid, alg, details)], t, audit_key)
                meta = {
                    "format": STORE_FORMAT,
                    "issuer": issuer,
                    "max_token_lifetime": max_token_lifetime,
                    "rsa_bits": rsa_bits,
                    **backend_meta,
                    **({"audit_key": audit_record} if audit_record is not None else {}),
                    "keys": [{"kid": kid, "alg": alg, "created_at": t, "retired_at": None, "jwk": jwk}],
                    "audit_head": {"seq": head["seq"], "hash": head["hash"]},
                }
                atomic_write(root / STORE_FILE, canonical_json(meta), 0o644)
                store._publish_jwks()
        log.info("key store initialised in %s with %s key %s", root, alg, kid)
        return store

    @classmethod
    def open(cls, dir: Path, *, passphrase: bytes | str | None = None, **options: Any) -> KeyStore:
        """Load an existing store; KeyStoreError if it is missing or its metadata is corrupt.

        A store whose keys live in a PKCS#11 token opens as a :class:`~pipeline.keys.pkcs11.Pkcs11KeyStore`
        (``options``: ``pin=``, and ``module=`` / ``token_label=`` to override what store.json records).
        """
        loaded = load_meta(Path(dir))
        kind = backend_of(loaded[1], Path(dir) / STORE_FILE)
        if kind != cls.BACKEND:
            if cls is not KeyStore:
                raise KeyStoreError(f"{dir} is a {kind!r} key store, not a {cls.BACKEND!r} one")
            cls = backend_class(kind, KeyStore)
        store = cls(Path(dir), passphrase=passphrase, **options)
        store._meta_cache = loaded  # read once: _opened() validates the same store.json
        store._opened()
        return store

    def rotate(self, alg: str | None = None, *, now: float | None = None) -> KeyInfo:
        """Make a new current key; retire the old one; drop retired keys whose tokens have all expired."""
        t = time.time() if now is None else now
        with os_errors(f"cannot rotate keys in {self._root}"), locked(self._root):
            return self._rotate_locked(alg, t)

    def rotate_if_older_than(
        self, max_age: float, alg: str | None = None, *, now: float | None = None
    ) -> KeyInfo | None:
        """Rotate when the current key is at least ``max_age`` seconds old, else only prune; idempotent.

        Made for cron: run it as often as you like, it rotates once per ``max_age``. Decided under the
        store lock, so two runs at once rotate once. Returns the new key, or None when none was due.
        """
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0:
            raise KeyStoreError(f"max_age must be a positive number of seconds, got {max_age!r}")
        t = time.time() if now is None else now
        with os_errors(f"cannot rotate keys in {self._root}"), locked(self._root):
            meta = self._meta(force=True)
            current = next(k for k in meta["keys"] if k["retired_at"] is None)
            if t - current["created_at"] >= max_age:
                return self._rotate_locked(alg, t)
            self._prune_locked(t)
        return None

    def _rotate_locked(self, alg: str | None, t: float) -> KeyInfo:
        meta = self._meta(force=True)  # under the lock: another process may just have rotated
        old = next(k for k in meta["keys"] if k["retired_at"] is None)
        new_alg = check_alg(old["alg"] if alg is None else alg, self.ALGORITHMS)
        audit = self._audit_for_commit(meta)  # before a key is made: no orphan key file after a refusal
        jwk = self._new_key(new_alg, meta["rsa_bits"])
        kid = jwk_thumbprint(jwk)

        dropped = expired_keys(meta["keys"], key_retention(meta), t)
        records = [self._drop_record(k, key_retention(meta)) for k in dropped]
        records.append(("retire", old["kid"], old["alg"], {"replaced_by": kid}))
        records.append(("rotate", kid, new_alg, {"previous": old["kid"]}))
        gone = {k["kid"] for k in dropped}
        keys = [dict(k) for k in meta["keys"] if k["kid"] not in gone]
        for k in keys:
            if k["kid"] == old["kid"]:
                k["retired_at"] = t
        new = {"kid": kid, "alg": new_alg, "created_at": t, "retired_at": None, "jwk": jwk}
        self._commit(meta, [*keys, new], records, t, audit)
        self._remove_private(gone)
        log.info("rotated signing key in %s: %s (%s) replaces %s", self._root, kid, new_alg, old["kid"])
        return key_info(new)

    def prune(self, *, now: float | None = None) -> list[KeyInfo]:
        """Drop retired keys whose tokens can no longer be valid; return what was dropped."""
        t = time.time() if now is None else now
        with os_errors(f"cannot prune keys in {self._root}"), locked(self._root):
            return self._prune_locked(t)

    def _prune_locked(self, t: float) -> list[KeyInfo]:
        meta = self._meta(force=True)
        dropped = expired_keys(meta["keys"], key_retention(meta), t)
        if not dropped:
            return []
        gone = {k["kid"] for k in dropped}
        records = [self._drop_record(k, key_retention(meta)) for k in dropped]
        self._commit(meta, [k for k in meta["keys"] if k["kid"] not in gone], records, t)
        self._remove_private(gone)
        return [key_info(k) for k in dropped]

    # ---- reading

    @property
    def path(self) -> Path:
        return self._root

    @property
    def issuer(self) -> str | None:
        issuer: str | None = self._meta()["issuer"]
        return issuer

    @property
    def max_token_lifetime(self) -> int:
        lifetime: int = self._meta()["max_token_lifetime"]
        return lifetime

    @property
    def retention(self) -> int:
        """Seconds a retired key stays published: at least :attr:`max_token_lifetime`, more after :meth:`retain_for`."""
        return key_retention(self._meta())

    def retain_for(self, seconds: int, *, now: float | None = None) -> bool:
        """Keep retired keys published at least ``seconds`` after retirement; True when that raised the retention.

        For signatures that must verify longer than :attr:`max_token_lifetime` — a revocation on the feed is
        signed once and must verify until it expires. Retention only grows, and the change is in the audit log.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise KeyStoreError(f"retention must be a positive number of seconds, got {seconds!r}")
        t = time.time() if now is None else now
        with os_errors(f"cannot change the retention of {self._root}"), locked(self._root):
            meta = self._meta(force=True)
            previous = key_retention(meta)
            if seconds <= previous:
                return False
            current = next(k for k in meta["keys"] if k["retired_at"] is None)
            record = ("retain", current["kid"], current["alg"], {"retention": seconds, "previous": previous})
            self._commit({**meta, "retention": seconds}, meta["keys"], [record], t)
        log.info(
            "retired keys of %s now stay published %s s after retirement (was %s s)", self._root, seconds, previous
        )
        return True

    def keys(self) -> list[KeyInfo]:
        """Published keys, oldest first."""
        return [key_info(k) for k in self._meta()["keys"]]

    def current(self) -> KeyInfo:
        return next(k for k in self.keys() if k.status == "current")

    def public_jwks(self) -> dict[str, list[dict[str, str]]]:
        """RFC 7517 JWK Set of the published keys, current key first; public parameters only."""
        ordered = sorted(self._meta()["keys"], key=lambda k: (k["retired_at"] is not None, -k["created_at"]))
        return {"keys": [{**k["jwk"], "kid": k["kid"], "alg": k["alg"], "use": "sig"} for k in ordered]}

    def audit_key(self) -> AuditKey | None:
        """The key that authenticates this store's audit log, or None when there is none to be had here: an
        unencrypted store, or an encrypted one opened without its passphrase. KeyStoreError when store.json names
        an audit key that cannot be reached (a PKCS#11 token without the PIN, a key missing from the token)."""
        return self._audit_key(self._meta(), create=False)[0]

    def audit_entries(self) -> list[dict[str, Any]]:
        """Parsed audit log entries (not verified; use :func:`verify_audit` for that)."""
        with os_errors("cannot read the audit log"):
            data = (self._root / AUDIT_FILE).read_bytes()
        entries = []
        for n, line in enumerate(split_lines(data), start=1):
            try:
                entries.append(json.loads(line))
            except (ValueError, UnicodeDecodeError) as e:
                raise KeyStoreError(f"audit log line {n} is not valid JSON; run verify_audit") from e
        return entries

    # ---- signing

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        """Sign ``claims`` as a JWS with the current key; ``typ`` defaults to at+jwt, ``kid`` is set.

        Callers signing with an ``exp`` must keep it within :attr:`max_token_lifetime`: key retention
        assumes no token outlives its key's retirement by more than that.
        """
        extra = dict(headers or {})
        clash = sorted(_RESERVED_HEADERS & extra.keys())
        if clash:
            raise KeyStoreError(f"header(s) {', '.join(clash)} are set by the key store, not the caller")
        cur = self.current()
        header = {"alg": cur.alg, "typ": "at+jwt", **extra, "kid": cur.kid}
        signing_input = b64url(compact_json(header)) + "." + b64url(compact_json(dict(claims)))
        signature = self._sign_bytes(cur.kid, cur.alg, signing_input.encode("ascii"))
        return signing_input + "." + b64url(signature)

    def issue_token(
        self,
        sub: str,
        aud: str | list[str],
        *,
        ttl: int = 600,
        issuer: str | None = None,
        client_id: str | None = None,
        scope: str | None = None,
        extra: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> str:
        """Issue an RFC 9068 style access token."""
        limit = self.max_token_lifetime
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= limit:
            raise KeyStoreError(f"ttl must be a whole number of seconds in 1..{limit} (the store's limit), got {ttl!r}")
        iss = issuer if issuer is not None else self.issuer
        if not iss:
            raise KeyStoreError("no issuer: pass issuer= or initialise the store with one")
        if not isinstance(sub, str) or not sub:
            raise KeyStoreError("sub must be a non-empty string")
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not auds or not all(isinstance(a, str) and a for a in auds):
            raise KeyStoreError("aud must be a non-empty string or a non-empty list of them")
        clash = sorted(_RESERVED_CLAIMS & (extra or {}).keys())
        if clash:
            raise KeyStoreError(f"extra may not set registered claim(s) {', '.join(clash)}")
        iat = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            **(extra or {}),
            "iss": iss,
            "sub": sub,
            "aud": aud,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl,
            "jti": str(uuid.uuid4()),
        }
        if client_id is not None:
            claims["client_id"] = client_id
        if scope is not None:
            claims["scope"] = scope
        return self.sign(claims)

    # ---- internals

    def _meta(self, *, force: bool = False) -> dict[str, Any]:
        signature = store_signature(self._root)  # once: stat'ing store.json is all a current cache costs
        if force or self._meta_cache is None or self._meta_cache[0] != signature:
            self._meta_cache = load_meta(self._root, signature)
        return self._meta_cache[1]

    def _commit(
        self,
        meta: dict[str, Any],
        keys: list[dict[str, Any]],
        records: list[tuple[str, str, str, dict[str, Any]]],
        now: float,
        audit: tuple[AuditKey | None, dict[str, Any] | None] | None = None,
    ) -> None:
        audit_key, audit_record = self._audit_for_commit(meta) if audit is None else audit
        # audit first: a crash in between leaves an entry for a change that did not land, never a
        # change without an entry
        head = append_audit(self._root, records, now, audit_key)
        new_meta = {**meta, "keys": keys, "audit_head": {"seq": head["seq"], "hash": head["hash"]}}
        if audit_record is not None:
            new_meta["audit_key"] = audit_record
        atomic_write(self._root / STORE_FILE, canonical_json(new_meta), 0o644)
        self._meta_cache = None
        self._publish_jwks()

    def _audit_for_commit(self, meta: Mapping[str, Any]) -> tuple[AuditKey | None, dict[str, Any] | None]:
        """The audit key a key change must be recorded with, checked against the log's last MAC before anything
        changes (the caller holds the lock): a wrong passphrase or a forged tail stops the change here."""
        audit_key, audit_record = self._audit_key(meta, create=True)
        if audit_key is None and self._audit_key_required(meta):
            raise KeyStoreError(
                f"the keys in {self._root} are encrypted and its audit log is authenticated with the store's "
                "passphrase: no key change is recorded without it (set JWTWATCH_KEYS_PASSPHRASE or give the "
                "passphrase file)"
            )
        if audit_key is not None:
            try:
                data = (self._root / AUDIT_FILE).read_bytes()
            except FileNotFoundError:
                data = b""
            established = isinstance(meta.get("audit_key"), dict)
            check_tail(self._root, split_lines(data), audit_key, established=established)
        return audit_key, audit_record

    def _publish_jwks(self) -> None:
        """Keep ``jwks.json`` beside the store, so a validator can follow it with ``--jwks-file``."""
        atomic_write(self._root / JWKS_FILE, json.dumps(self.public_jwks(), indent=2).encode() + b"\n", 0o644)
        # a signed copy (jwks.jwt, see signed_jwks.py) that no longer lists these keys would be a lie: remove it
        # until it is signed again (jwtwatch keys sign-jwks, or keys rotate --root)
        signed = self._root / "jwks.jwt"
        if signed.exists() and _signed_keys(signed) != self.public_jwks()["keys"]:
            log.warning("%s no longer matches the key set and was removed: sign it again with the root key", signed)
            with contextlib.suppress(FileNotFoundError):
                signed.unlink()

    def _drop_record(self, k: Mapping[str, Any], lifetime: int) -> tuple[str, str, str, dict[str, Any]]:
        log.info(
            "dropping retired key %s (%s) from %s: retired at %s, its signatures valid at most %ss",
            k["kid"],
            k["alg"],
            self._root,
            rfc3339(k["retired_at"]),
            lifetime,
        )
        details = {"retired_at": k["retired_at"], "reason": "retention elapsed since retirement", "retention": lifetime}
        return ("drop", k["kid"], k["alg"], details)


def _signed_keys(path: Path) -> Any:
    """The ``keys`` claim of a signed JWKS file, unverified (only to tell whether it is stale)."""
    try:
        payload = path.read_text().strip().split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("keys")
    except (OSError, IndexError, ValueError, AttributeError):
        return None
