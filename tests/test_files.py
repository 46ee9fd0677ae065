"""pipeline.files: the one atomic, durable write and the one owner-only secret read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline import files
from pipeline.errors import InsecureFileError
from pipeline.files import atomic_file, atomic_path, atomic_write, read_private_file, read_secret_file


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_the_file_whole_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "store.json"
    target.write_bytes(b"old")
    atomic_write(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_the_mode_does_not_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        atomic_write(tmp_path / "key.pem", b"secret", 0o600)
        atomic_write(tmp_path / "model.json", b"{}", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "model.json").stat().st_mode) == 0o644


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "part.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half of it")
        raise RuntimeError("the disk filled up")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_atomic_path_serves_writers_that_want_a_file_name(tmp_path: Path) -> None:
    target = tmp_path / "world.mmdb"
    with atomic_path(target, 0o644) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".")  # a dot file: readers skip it until renamed
        tmp.write_bytes(b"written by a library")
        assert not target.exists()
    assert target.read_bytes() == b"written by a library"


def test_the_file_and_its_directory_are_fsynced_before_it_counts_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offsets are committed, and users told "saved", after these return: the bytes and the rename are on disk."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    atomic_write(tmp_path / "a", b"x")
    assert synced == ["file", "dir"]


def test_a_secret_file_is_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    path.write_bytes(b"correct horse\r\nsecond line\n")
    path.chmod(0o600)
    assert read_secret_file(path, "passphrase") == b"correct horse"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_secret_file_others_can_reach_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "pin"
    path.write_bytes(b"1234\n")
    path.chmod(mode)
    with pytest.raises(InsecureFileError, match=f"mode {mode:o}.*chmod 600"):
        read_secret_file(path, "PIN")


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\nsecond\n")
    path.chmod(0o600)
    with pytest.raises(ValueError, match="empty"):
        read_secret_file(path, "admin token")


def test_a_fifo_or_a_directory_is_not_a_secret_file_and_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(InsecureFileError, match="not a regular file"):
        read_private_file(fifo, "private key")
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises((InsecureFileError, IsADirectoryError)):
        read_private_file(directory, "private key")


def test_a_symlink_to_an_owner_only_file_is_followed_and_the_target_checked(tmp_path: Path) -> None:
    """Kubernetes mounts secrets as symlinks into ..data: those must work, and the mode checked is the target's."""
    target = tmp_path / "..data" / "passphrase"
    target.parent.mkdir()
    target.write_bytes(b"s3cret\n")
    target.chmod(0o600)
    link = tmp_path / "passphrase"
    link.symlink_to(target)
    assert read_secret_file(link, "passphrase") == b"s3cret"
    target.chmod(0o644)
    with pytest.raises(InsecureFileError):
        read_secret_file(link, "passphrase")


def test_a_huge_file_is_not_a_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"x" * (files.MAX_SECRET_FILE + 1))
    path.chmod(0o600)
    with pytest.raises(InsecureFileError, match="bytes"):
        read_private_file(path, "private key")
