"""The key store on disk: its lock, disk errors as :class:`KeyStoreError`, and the secrets kept in files.

Files are written and secrets read only through :mod:`pipeline.files` (``atomic_write``, ``read_private_file``,
``read_secret_file``); this module gives their errors the key store's type and message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipeline import files
from pipeline.errors import InsecureFileError, KeyStoreError

__all__ = [
    "LOCK_FILE",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "locked",
    "os_errors",
    "passphrase_from_env",
    "read_private",
    "read_secret_file",
    "secret_from_env",
]

LOCK_FILE = ".lock"
PASSPHRASE_ENV = "JWTWATCH_KEYS_PASSPHRASE"
PASSPHRASE_FILE_ENV = "JWTWATCH_KEYS_PASSPHRASE_FILE"


@contextlib.contextmanager
def os_errors(action: str) -> Iterator[None]:
    """Turn OSError into KeyStoreError so callers never see a bare traceback for disk problems."""
    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise KeyStoreError(f"{action}: {e.strerror or e}{where}") from e


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """The store lock: an exclusive ``flock`` on ``ROOT/.lock`` that serialises init, rotate, prune and the rest."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def passphrase_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key store passphrase from ``JWTWATCH_KEYS_PASSPHRASE``, else the file ``JWTWATCH_KEYS_PASSPHRASE_FILE``."""
    return secret_from_env(PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, "passphrase", environ)


def secret_from_env(value_env: str, file_env: str, what: str, environ: Mapping[str, str] | None = None) -> bytes | None:
    """A secret from the variable ``value_env``, else from the file the variable ``file_env`` names."""
    env = os.environ if environ is None else environ
    value = env.get(value_env)
    if value:
        return value.encode()
    file = env.get(file_env)
    return read_secret_file(Path(file), what) if file else None


def read_secret_file(path: Path, what: str) -> bytes:
    """A secret kept in a file (passphrase, PIN): owner-only, first line, trailing newline stripped
    (:func:`pipeline.files.read_secret_file`, its errors as :class:`KeyStoreError`)."""
    try:
        return files.read_secret_file(path, what)
    except InsecureFileError as e:
        raise KeyStoreError(str(e)) from e
    except OSError as e:
        raise KeyStoreError(f"cannot read the {what} file: {e.strerror or e} ({path})") from e
    except ValueError as e:
        raise KeyStoreError(str(e)) from e


def read_private(path: Path, action: str) -> bytes:
    """A private key file's bytes, refused unless owner-only (:func:`pipeline.files.read_private_file`)."""
    try:
        return files.read_private_file(path, "private key")
    except InsecureFileError as e:
        raise KeyStoreError(str(e)) from e
    except OSError as e:
        raise KeyStoreError(f"{action}: {e.strerror or e} ({path})") from e
