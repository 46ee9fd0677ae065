"""Files that must survive a crash, and files that hold secrets: the one way jwtwatch writes and reads each.

* :func:`atomic_path` / :func:`atomic_write` — a file is replaced whole or not at all, and durably: written to a
  sibling temporary file (its mode set before the first byte, so a secret is never readable by others even for a
  moment), fsynced, renamed over the target, and the directory fsynced (the rename lives in the directory; without
  that a power cut can forget it). Whoever commits bus offsets or tells a user "saved" after one of these returns
  may rely on the bytes being on disk.
* :func:`read_private_file` / :func:`read_secret_file` — a file holding a secret (a private key, a passphrase, a
  PIN, an admin token) is read only if it is a regular file readable by its owner alone. The file is opened first
  and the open file is checked, so the file checked is the file read. Symlinks are followed: Kubernetes mounts
  secrets as symlinks into a ``..data`` directory.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import InsecureFileError

#: A secret file larger than this is not a secret file (a PEM key is a few KiB).
MAX_SECRET_FILE = 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, mode: int = 0o600) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (a library writing the file itself);
    on a clean exit it is fsynced and renamed over ``path`` (see the module docstring). On an error it is removed
    and ``path`` is untouched. ``mode`` is set before anything is written."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # whoever wrote it may have closed it without an fsync
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Like :func:`atomic_path`, as an open binary file to write to."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, whole and durably (see the module docstring)."""
    with atomic_file(path, mode) as f:
        f.write(data)


def read_private_file(path: Path, what: str, *, max_bytes: int = MAX_SECRET_FILE) -> bytes:
    """The bytes of a file only its owner may read (a private key, a passphrase file).

    Raises :class:`InsecureFileError` if the file is readable or writable by others, is not a regular file, or is
    larger than ``max_bytes``; ``OSError`` (e.g. ``FileNotFoundError``) if it cannot be read."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # NONBLOCK: a FIFO cannot hang us
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InsecureFileError(f"the {what} file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise InsecureFileError(
                f"the {what} file {path} is accessible by other users (mode {mode:o}); chmod 600 it"
            )
        if info.st_size > max_bytes:
            raise InsecureFileError(f"the {what} file {path} is {info.st_size} bytes: not a {what} file")
        return f.read(max_bytes + 1)[:max_bytes]


def read_secret_file(path: Path, what: str) -> bytes:
    """A secret kept in a file (passphrase, PIN, token): owner-only, its first line, trailing newline stripped.

    Raises :class:`InsecureFileError` as :func:`read_private_file` does, ``ValueError`` if the first line is empty."""
    secret = read_private_file(path, what).split(b"\n", 1)[0].rstrip(b"\r")
    if not secret:
        raise ValueError(f"the {what} file {path} is empty")
    return secret


__all__ = [
    "MAX_SECRET_FILE",
    "atomic_file",
    "atomic_path",
    "atomic_write",
    "fsync_dir",
    "read_private_file",
    "read_secret_file",
]
