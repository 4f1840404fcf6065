"""The data directory's files: the lock that keeps one broker per directory, syncing new files,
and moving damaged files aside (``python -m trio_broker data reset``)."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ._failed import FAILED_FILE, FsyncFailed

DB_FILE = "broker.sqlite3"
LOCK_FILE = "LOCK"
GROUPS_FOLDER = "groups"
"""The replicas of the broker's extra groups and their shared log (``_runtime._groups``): a
reset moves them aside too, since a broker that rejoins empty does so under a new id, which
their files do not hold."""
DB_FILES = (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", DB_FILE + "-journal")
"""The database and the files SQLite keeps beside it: what a reset moves aside together."""


class DataDirInUse(Exception):
    """Another process holds the data directory."""


class DirLock:
    """An exclusive advisory lock on the data directory, held for the store's lifetime."""

    def __init__(self, directory: Path) -> None:
        path = directory / LOCK_FILE
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise DataDirInUse(
                    f"data directory {directory} is in use by another broker (pid {holder})"
                ) from None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def sync_new_files(data_dir: Path) -> None:
    """Make the database file and the directory entries of the data folder durable.

    SQLite syncs the directory when it creates the WAL, but never for the main database
    file; after a power cut that lost a new database file's entry while its WAL survived,
    SQLite would open an empty database and delete that WAL. Once per start, so cheap."""
    for path in (data_dir / DB_FILE, data_dir):
        fsync_path(path)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.fsync(fd)
        except OSError as exc:  # (a failed fsync, not a file that cannot be opened)
            raise FsyncFailed(exc.errno, f"fsync of {path} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


def move_aside(data_dir: Path | str) -> tuple[Path, list[str]]:
    """Move a stopped broker's database files (with its groups' folder and the mark of a failed
    write, ``_failed``) into a new folder ``damaged-<UTC time>`` inside ``data_dir``; returns
    that folder and the names moved. Nothing is deleted: the operator keeps the files to
    examine, or to hand to someone who can. Holds the directory lock while it works, so a
    running broker's files are never moved (:class:`DataDirInUse`)."""
    directory = Path(data_dir)
    if not (directory / DB_FILE).exists():
        raise FileNotFoundError(f"no broker database in {directory} ({DB_FILE} is missing)")
    lock = DirLock(directory)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = directory / f"damaged-{stamp}"
        n = 1
        while target.exists():
            n += 1
            target = directory / f"damaged-{stamp}-{n}"
        target.mkdir()
        moved = []
        for name in (*DB_FILES, FAILED_FILE, GROUPS_FOLDER):
            if (directory / name).exists():
                os.rename(directory / name, target / name)
                moved.append(name)
        fsync_path(target)
        fsync_path(directory)
        return target, moved
    finally:
        lock.release()
