"""Key store backend whose private keys live in a PKCS#11 token (an HSM; SoftHSM2 in tests).

Everything but the private keys is the file store's: store.json (the public JWKs, whose RFC 7638
thumbprints are the kids), jwks.json, the hash-chained audit log, the store lock, rotation and
pruning. This class only replaces the private-key hooks of :class:`~pipeline.keys.store.KeyStore`:

* ``_new_key``: the key pair is generated inside the token (C_GenerateKeyPair) as session objects,
  then copied to token objects labelled and ID'd by the kid, with ``CKA_SENSITIVE=true``,
  ``CKA_EXTRACTABLE=false`` and ``CKA_MODIFIABLE=false``; the session objects are destroyed. The public
  key is read back from the token (``CKA_EC_POINT`` / ``CKA_MODULUS``) to build the JWK. The private
  key never leaves the token, in any form.
* ``_sign_bytes``: the token signs. ES256 uses CKM_ECDSA over the SHA-256 digest, whose output is the raw
  ``r || s`` (32 bytes each) that RFC 7518 §3.4 wants — no DER to convert. RS256 uses
  CKM_SHA256_RSA_PKCS. Every signature is checked against the published public key before it is used,
  so a swapped key object or a faulty token never yields a token that validators would reject.
* ``_check_private`` (``audit --verify``): each published key has exactly one private object in the
  token, sensitive, never extractable, generated in the token (``CKA_LOCAL``), matching its kid.
* ``_remove_private``: dropped keys are destroyed in the token (private and public object).
* ``_audit_key``: the HMAC key that authenticates the audit log is a generic secret generated in the
  token (sensitive, never extractable, ``CKA_LOCAL``) and ID'd by 16 random bytes that store.json records;
  the token computes every MAC (CKM_SHA256_HMAC), so without the PIN no entry can be forged.

store.json records ``backend: pkcs11`` and the module path and token label. The PIN is never stored or
taken on the command line: ``pin=``, else ``JWTWATCH_PKCS11_PIN``, else the mode-0600 file named by
``JWTWATCH_PKCS11_PIN_FILE``.

PKCS#11 logs in per application, not per session: one process keeps one logged-in session per
(module, token), shared by every store on that token and serialised by a lock. A store opened in the
same process with a different PIN is refused rather than riding on the earlier login.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipeline.errors import KeyStoreError
from pipeline.keys._disk import secret_from_env
from pipeline.keys.audit import AuditKey
from pipeline.keys.backends import register_backend
from pipeline.keys.jwk import jwk_thumbprint, public_key_jwk
from pipeline.keys.private_keys import JWS_ALGORITHMS
from pipeline.keys.store import KeyStore

__all__ = ["PIN_ENV", "PIN_FILE_ENV", "TOKEN_ALGORITHMS", "Pkcs11KeyStore", "pin_from_env"]

log = logging.getLogger(__name__)

PIN_ENV = "JWTWATCH_PKCS11_PIN"
PIN_FILE_ENV = "JWTWATCH_PKCS11_PIN_FILE"
TOKEN_ALGORITHMS = ("ES256", "RS256")
# DER of the named-curve OID 1.2.840.10045.3.1.7 (P-256), as CKA_EC_PARAMS holds it
P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
AUDIT_KEY_LABEL = "jwtwatch-audit"
_AUDIT_KEY_ID_RE = re.compile(r"[0-9a-f]{32}")
_NO_PIN = (
    "no PIN for the PKCS#11 token {label!r}: set JWTWATCH_PKCS11_PIN or give a PIN file "
    "(--pin-file / JWTWATCH_PKCS11_PIN_FILE)"
)


def pin_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The token PIN from ``JWTWATCH_PKCS11_PIN``, else the 0600 file named by ``JWTWATCH_PKCS11_PIN_FILE``."""
    return secret_from_env(PIN_ENV, PIN_FILE_ENV, "PIN", environ)


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as e:  # pragma: no cover - depends on the install
        raise KeyStoreError("PKCS#11 key stores need python-pkcs11: pip install 'jwtwatch[hsm]'") from e
    return pkcs11


# --------------------------------------------------------------------------- one session per token and process


@dataclass
class _Token:
    session: Any
    pin_digest: bytes
    lock: threading.RLock


_TOKENS: dict[tuple[str, str], _Token] = {}
_TOKENS_LOCK = threading.Lock()


# How many symbolic links one module path may pass through (Linux's own limit is 40).
_MAX_SYMLINKS = 40


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check_module(module: str) -> str:
    """Loading a module runs its code: refuse one that anyone but root or this user could have replaced.

    The path is resolved one component at a time, as the kernel would, following every symbolic link, and
    every directory passed through and the module file itself must be owned by root or the current user and
    not writable by group or others. A link is as trustworthy as the directory holding it (its own mode bits
    mean nothing), so checking the directories that hold each link and each target covers the whole chain.
    A directory writable by others is accepted only with the sticky bit (``/tmp``): there only an entry's
    owner can rename or remove it, and that owner is checked at the next step. Returns the resolved path.
    """
    path = Path(module)
    if not path.is_absolute():
        raise KeyStoreError(f"the PKCS#11 module path must be absolute, got {module!r}")

    def refuse(why: str) -> KeyStoreError:
        return KeyStoreError(f"the PKCS#11 module {module}: {why}; refusing to load it")

    def check(where: Path, st: os.stat_result, is_dir: bool) -> None:
        what = "directory" if is_dir else "file"
        if not _trusted_owner(st.st_uid):
            raise refuse(f"{what} {where} is owned by uid {st.st_uid}, neither root nor this user")
        writable_by_others = st.st_mode & 0o022
        if writable_by_others and not (is_dir and st.st_mode & stat.S_ISVTX):
            mode = stat.S_IMODE(st.st_mode)
            raise refuse(f"{what} {where} is writable by other users (mode {mode:o})")

    pending = list(reversed(path.parts[1:]))  # a stack: the next component to resolve is last
    current = Path(path.anchor)
    links = 0
    try:
        check(current, current.stat(), is_dir=True)
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                current = current.parent  # current is already resolved, so its parent is the real one
                continue
            candidate = current / name
            st = candidate.lstat()
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise refuse(f"more than {_MAX_SYMLINKS} symbolic links")
                target = Path(os.readlink(candidate))
                if target.is_absolute():
                    current = Path(target.anchor)
                    check(current, current.stat(), is_dir=True)
                pending.extend(reversed([part for part in target.parts if part != target.anchor]))
                continue
            is_last = not pending
            if not is_last and not stat.S_ISDIR(st.st_mode):
                raise refuse(f"{candidate} is not a directory")
            if is_last and not stat.S_ISREG(st.st_mode):
                raise refuse(f"{candidate} is not a regular file")
            check(candidate, st, is_dir=not is_last)
            current = candidate
        if not stat.S_ISREG(current.stat().st_mode):  # a path ending in "." or ".."
            raise refuse(f"{current} is not a regular file")
    except OSError as e:
        raise KeyStoreError(f"cannot use the PKCS#11 module {module}: {e.strerror}") from e
    return str(current)


def _connect(module: str, label: str, pin: bytes) -> _Token:
    digest = hashlib.sha256(pin).digest()
    with _TOKENS_LOCK:
        token = _TOKENS.get((module, label))
        if token is not None:
            if not hmac.compare_digest(token.pin_digest, digest):
                raise KeyStoreError(
                    f"wrong PIN for the PKCS#11 token {label!r} (not the one this process logged in with)"
                )
            return token
        p = _pkcs11()
        _check_module(module)
        try:
            lib = p.lib(module)
        except p.PKCS11Error as e:
            raise KeyStoreError(f"cannot load the PKCS#11 module {module}: {e}") from e
        try:
            found = lib.get_token(token_label=label)
        except p.NoSuchToken:
            raise KeyStoreError(f"no PKCS#11 token labelled {label!r} in {module}") from None
        except p.MultipleTokensReturned:
            raise KeyStoreError(f"several PKCS#11 tokens are labelled {label!r} in {module}") from None
        except p.PKCS11Error as e:
            raise KeyStoreError(f"cannot list the tokens of {module}: {type(e).__name__}") from e
        try:
            text_pin = pin.decode()
        except UnicodeDecodeError:
            raise KeyStoreError("the PKCS#11 PIN is not valid UTF-8") from None
        try:
            session = found.open(user_pin=text_pin, rw=True)
        except (p.PinIncorrect, p.PinInvalid, p.PinLenRange):
            raise KeyStoreError(f"wrong PIN for the PKCS#11 token {label!r}") from None
        except p.PinLocked:
            raise KeyStoreError(f"the PIN of the PKCS#11 token {label!r} is locked (too many wrong PINs)") from None
        except p.UserAlreadyLoggedIn:
            raise KeyStoreError(
                f"another part of this process is already logged in to the PKCS#11 token {label!r}"
            ) from None
        except p.PKCS11Error as e:
            raise KeyStoreError(f"cannot log in to the PKCS#11 token {label!r}: {type(e).__name__}") from e
        token = _Token(session=session, pin_digest=digest, lock=threading.RLock())
        _TOKENS[(module, label)] = token
        return token


def _forget(module: str, label: str, token: _Token) -> None:
    """Drop a session that failed, so that the next use logs in afresh."""
    with _TOKENS_LOCK:
        if _TOKENS.get((module, label)) is token:
            del _TOKENS[(module, label)]
    with contextlib.suppress(Exception):  # the session is already broken; nothing more to do
        token.session.close()


# --------------------------------------------------------------------------- public keys read from the token


def _ec_point(raw: bytes) -> bytes:
    """The uncompressed point from CKA_EC_POINT: DER OCTET STRING per the standard, bare on some tokens."""
    if len(raw) == 67 and raw[:2] == b"\x04\x41":
        return raw[2:]
    if len(raw) == 65 and raw[0] == 4:
        return raw
    raise KeyStoreError("the token returned an EC point that is not an uncompressed P-256 point")


def _public_key(pub: Any, alg: str) -> Any:
    """A cryptography public key from a token's public-key object."""
    from pkcs11 import Attribute, KeyType

    if alg == "ES256":
        if pub.key_type != KeyType.EC or pub[Attribute.EC_PARAMS] != P256_PARAMS:
            raise KeyStoreError("the token's public key is not a P-256 key")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _ec_point(pub[Attribute.EC_POINT]))
        except ValueError as exc:
            raise KeyStoreError("the token returned an invalid P-256 point") from exc
    if pub.key_type != KeyType.RSA:
        raise KeyStoreError("the token's public key is not an RSA key")
    n = int.from_bytes(pub[Attribute.MODULUS], "big")
    e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


# --------------------------------------------------------------------------- the store


@register_backend
class Pkcs11KeyStore(KeyStore):
    """A key store whose signing keys are generated in, used in and destroyed in a PKCS#11 token.

    ``module``: path of the PKCS#11 library (e.g. ``/usr/lib/softhsm/libsofthsm2.so``); ``token_label``:
    the token's label. Both are recorded in store.json at init; given again they override it (the module
    may live elsewhere on another machine). ``pin``: see the module docstring.
    """

    BACKEND = "pkcs11"
    ALGORITHMS = TOKEN_ALGORITHMS

    def __init__(
        self,
        root: Path,
        *,
        passphrase: bytes | str | None = None,
        module: str | Path | None = None,
        token_label: str | None = None,
        pin: bytes | str | None = None,
    ) -> None:
        # no passphrase: the token protects the keys (a passphrase given for a root key is simply not ours)
        self._root = Path(root)
        self._meta_cache = None
        self._private_cache = {}
        self._passphrase = None
        self._module = str(Path(module).absolute()) if module is not None else None
        self._label = token_label
        if isinstance(pin, str):
            pin = pin.encode()
        if pin is not None and not pin:
            raise KeyStoreError("the PKCS#11 PIN is empty")
        self._pin = pin
        self._checked: dict[str, Any] = {}  # kid -> private key object, its attributes checked

    # ---- configuration

    def _where(self) -> tuple[str, str]:
        module, label = self._module, self._label
        if (module is None or label is None) and (self._root / "store.json").exists():
            recorded = self._meta().get("pkcs11", {})
            module = module if module is not None else recorded.get("module")
            label = label if label is not None else recorded.get("token_label")
        if not module or not label:
            raise KeyStoreError("a pkcs11 key store needs the PKCS#11 module path and the token label")
        return module, label

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The logged-in session, held exclusively; a PKCS#11 failure becomes a KeyStoreError."""
        p = _pkcs11()
        module, label = self._where()
        pin = self._pin if self._pin is not None else pin_from_env()
        if pin is None:
            raise KeyStoreError(_NO_PIN.format(label=label))
        token = _connect(module, label, pin)
        with token.lock:
            try:
                yield token.session
            except p.PKCS11Error as e:
                if isinstance(e, p.SessionHandleInvalid | p.SessionClosed | p.DeviceRemoved | p.TokenNotPresent):
                    _forget(module, label, token)
                self._checked.clear()
                raise KeyStoreError(f"PKCS#11 token {label!r}: {type(e).__name__} {e}".rstrip()) from e

    # ---- KeyStore hooks

    def _preflight(self) -> None:
        with self._session():
            pass

    def _init_backend(self) -> dict[str, Any]:
        module, label = self._where()
        return {"backend": "pkcs11", "pkcs11": {"module": module, "token_label": label}}

    def _opened(self) -> None:
        recorded = self._meta().get("pkcs11")
        if not (
            isinstance(recorded, dict)
            and isinstance(recorded.get("module"), str)
            and isinstance(recorded.get("token_label"), str)
        ):
            raise KeyStoreError(f"key store metadata {self._root / 'store.json'} is corrupt: bad pkcs11 section")

    def _audit_key(self, meta: Mapping[str, Any], *, create: bool) -> tuple[AuditKey | None, dict[str, Any] | None]:
        """The token's HMAC key for the audit log; ``create`` makes one for a store that has none yet."""
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

        record = meta.get("audit_key")
        if (
            isinstance(record, dict)
            and record.get("kind") == "pkcs11"
            and isinstance(record.get("id"), str)
            and _AUDIT_KEY_ID_RE.fullmatch(record["id"])
        ):
            key_id, fresh = bytes.fromhex(record["id"]), False
        elif create:
            # a store from before audit keys, or a record someone broke: a new key cannot vouch for MACs made
            # with another one, so _check_tail still refuses to append after entries it cannot verify
            key_id, fresh = os.urandom(16), True
            record = {"kind": "pkcs11", "id": key_id.hex()}
        else:
            return None, None
        label = self._where()[1]
        with self._session() as s:
            found = list(s.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: key_id}))
            if not found and fresh:
                s.generate_key(
                    KeyType.GENERIC_SECRET,
                    256,
                    id=key_id,
                    label=AUDIT_KEY_LABEL,
                    store=True,
                    mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                    template={
                        Attribute.PRIVATE: True,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.MODIFIABLE: False,
                        Attribute.SIGN: True,
                        Attribute.VERIFY: True,
                        Attribute.ENCRYPT: False,
                        Attribute.DECRYPT: False,
                        Attribute.WRAP: False,
                        Attribute.UNWRAP: False,
                        Attribute.DERIVE: False,
                    },
                )
                log.info("generated the audit key of %s in PKCS#11 token %r", self._root, label)
            elif len(found) != 1:
                what = "missing from" if not found else "present more than once in"
                raise KeyStoreError(f"the audit key of {self._root} is {what} the PKCS#11 token {label!r}")
            else:
                key = found[0]
                flags = {
                    "sensitive": key[Attribute.SENSITIVE],
                    "never extractable": key[Attribute.NEVER_EXTRACTABLE] and not key[Attribute.EXTRACTABLE],
                    "generated in the token": key[Attribute.LOCAL],
                }
                lacking = [name for name, ok in flags.items() if not ok]
                if lacking:
                    raise KeyStoreError(f"the token's audit key is not {', '.join(lacking)}: refusing to use it")

        def token_hmac(data: bytes) -> bytes:
            with self._session() as session:
                secret = session.get_key(object_class=ObjectClass.SECRET_KEY, id=key_id)
                return bytes(secret.sign(data, mechanism=Mechanism.SHA256_HMAC))

        return AuditKey(token_hmac, f"the audit key in the PKCS#11 token {label!r}"), dict(record)

    def _audit_key_required(self, meta: Mapping[str, Any]) -> bool:
        return True  # every key change reaches the token anyway

    def encrypt(self, *, now: float | None = None) -> int:
        raise KeyStoreError(f"the keys of {self._root} are in a PKCS#11 token, which protects them: nothing to encrypt")

    def _prune_locked(self, t: float) -> list[Any]:
        # reach the token before anything is committed, so a dropped key is also destroyed
        with self._session():
            pass
        return super()._prune_locked(t)

    def _new_key(self, alg: str, rsa_bits: int) -> dict[str, str]:
        from pkcs11 import Attribute, KeyType, ObjectClass

        private_template = {
            Attribute.TOKEN: False,  # a session object until it carries its kid, then copied to the token
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template = {Attribute.TOKEN: False, Attribute.VERIFY: True, Attribute.ENCRYPT: False}
        with self._session() as s:
            if alg == "ES256":
                params = s.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: P256_PARAMS}, local=True)
                pub, priv = params.generate_keypair(
                    store=False, public_template=public_template, private_template=private_template
                )
            else:
                pub, priv = s.generate_keypair(
                    KeyType.RSA,
                    rsa_bits,
                    store=False,
                    public_template={**public_template, Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
                    private_template=private_template,
                )
            try:
                jwk = public_key_jwk(_public_key(pub, alg))
                kid = jwk_thumbprint(jwk)
                named = {
                    Attribute.TOKEN: True,
                    Attribute.LABEL: kid,
                    Attribute.ID: kid.encode(),
                    Attribute.MODIFIABLE: False,
                }
                token_pub = pub.copy(named)
                try:
                    priv.copy(named)
                except BaseException:
                    token_pub.destroy()
                    raise
            finally:
                priv.destroy()
                pub.destroy()
            # the copy must still be the generated key: sensitive, never extractable, made in the token
            problem = self._key_problem(s, kid, alg, ObjectClass)
            if problem:
                raise KeyStoreError(problem)
        log.info("generated %s key %s in PKCS#11 token %r", alg, kid, self._where()[1])
        return jwk

    def _key_problem(self, s: Any, kid: str, alg: str, object_class: Any) -> str | None:
        """Why the token's key ``kid`` must not be used, or None (then it is remembered for signing)."""
        from pkcs11 import Attribute, KeyType

        label = self._where()[1]
        privs = list(s.get_objects({Attribute.CLASS: object_class.PRIVATE_KEY, Attribute.ID: kid.encode()}))
        pubs = list(s.get_objects({Attribute.CLASS: object_class.PUBLIC_KEY, Attribute.ID: kid.encode()}))
        if not privs:
            return f"private key of published key {kid} is missing from the PKCS#11 token {label!r}"
        if len(privs) > 1 or len(pubs) > 1:
            return f"the PKCS#11 token {label!r} holds several keys with the ID of {kid} (one was planted?)"
        if not pubs:
            return f"public key object of {kid} is missing from the PKCS#11 token {label!r}"
        priv = privs[0]
        want = KeyType.EC if alg == "ES256" else KeyType.RSA
        if priv.key_type != want:
            return f"the token's private key {kid} is not a {alg} key"
        flags = {
            "sensitive": priv[Attribute.SENSITIVE],
            "always sensitive": priv[Attribute.ALWAYS_SENSITIVE],
            "not extractable": not priv[Attribute.EXTRACTABLE],
            "never extractable": priv[Attribute.NEVER_EXTRACTABLE],
            "generated in the token": priv[Attribute.LOCAL],
            "a token object": priv[Attribute.TOKEN],
        }
        lacking = [name for name, ok in flags.items() if not ok]
        if lacking:
            return f"the token's private key {kid} is not {', '.join(lacking)}: refusing to use it"
        try:
            thumb = jwk_thumbprint(public_key_jwk(_public_key(pubs[0], alg)))
        except KeyStoreError as e:
            return f"public key object of {kid} in the token: {e}"
        if thumb != kid:
            return f"the token's public key object labelled {kid} holds a different key (thumbprint {thumb})"
        self._checked[kid] = priv
        return None

    def _private_object(self, s: Any, kid: str, alg: str) -> Any:
        from pkcs11 import ObjectClass

        priv = self._checked.get(kid)
        if priv is None:
            problem = self._key_problem(s, kid, alg, ObjectClass)
            if problem:
                raise KeyStoreError(problem)
            priv = self._checked[kid]
        return priv

    def _sign_bytes(self, kid: str, alg: str, data: bytes) -> bytes:
        from pkcs11 import Mechanism

        jwk = next(k["jwk"] for k in self._meta()["keys"] if k["kid"] == kid)
        with self._session() as s:
            priv = self._private_object(s, kid, alg)
            if alg == "ES256":
                # CKM_ECDSA over the digest: the raw r || s of RFC 7518 §3.4 (tokens without CKM_ECDSA_SHA256 too)
                signature: bytes = priv.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            else:
                signature = priv.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
        if alg == "ES256" and len(signature) != 64:
            raise KeyStoreError(f"the token returned a {len(signature)}-byte ECDSA signature, not r || s of 64 bytes")
        algorithm = JWS_ALGORITHMS[alg]
        if not algorithm.verify(data, algorithm.from_jwk({**jwk, "kid": kid}), signature):
            self._checked.pop(kid, None)
            raise KeyStoreError(f"the token's signature with {kid} does not verify with the published key; not used")
        return signature

    def _check_private(self, kid: str, alg: str) -> str | None:
        from pkcs11 import ObjectClass

        self._checked.pop(kid, None)
        try:
            with self._session() as s:
                return self._key_problem(s, kid, alg, ObjectClass)
        except KeyStoreError as e:
            return str(e)

    def _remove_private(self, kids: set[str]) -> None:
        from pkcs11 import Attribute

        if not kids:
            return
        with self._session() as s:
            for kid in sorted(kids):
                self._checked.pop(kid, None)
                for obj in list(s.get_objects({Attribute.ID: kid.encode()})):
                    obj.destroy()
                log.info("destroyed key %s in PKCS#11 token %r", kid, self._where()[1])
