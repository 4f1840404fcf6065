"""A write the disk may have dropped: the broker stops, and does not start again on that data
until an operator decides (docs/reliability.md, "A failed fsync stops the broker").

After ``fsync`` fails with an I/O error, Linux may mark the dirty pages it could not write as
clean: a later ``fsync`` of the same file succeeds without writing them, and every read still
sees them, from the page cache (PostgreSQL's "fsyncgate", 2018). Neither a retry nor a rebuild
from the same files can tell what the disk holds. So, as PostgreSQL (a PANIC since 2018), etcd
(fatal on a failed fsync) and TigerBeetle do, the broker never writes through that storage
again: the storage thread refuses every later job (:class:`StorageFailed`), so no save, no
acknowledgement, no vote and no trim of a shared log's rows follows; the driver logs one
``storage.failed`` CRITICAL line, writes :data:`FAILED_FILE` into the data folder and raises
:class:`StorageFailed` out of the broker. A process started again on that folder reads the
marker and refuses to start (:func:`refuse_if_failed`), naming what happened and the operator's
choices; ``python -m trio_broker data reset`` moves the marker aside with the database files.

What counts (:func:`lost_writes`): an ``apsw.IOError`` whose extended code is not one that
concerns a read or a lock only; an unspecified ``SQLITE_IOERR`` counts (we cannot tell); so
does an apsw error raised over one of those (its ``__context__``: apsw's ``with`` can report a
failed commit as an ``apsw.SQLError``).
``apsw.FullError`` (a full disk) does not: SQLite rolled the transaction back whole and the
connection is usable (docs/reliability.md, "Full disks"); nor does damage found on a read,
which the integrity checks turn into ``StorageDamaged``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import outcome

UNKNOWN_FILE = "this broker's storage"
"""The file a failure names until the driver that meets it names its store's."""

FAILED_FILE = "STORAGE-FAILED"
"""The marker a broker whose disk may have dropped writes leaves in its data folder."""

_NO_WRITE_LOST = frozenset(
    getattr(apsw, name)
    for name in (
        "SQLITE_IOERR_READ",
        "SQLITE_IOERR_SHORT_READ",
        "SQLITE_IOERR_DATA",
        "SQLITE_IOERR_CORRUPTFS",
        "SQLITE_IOERR_NOMEM",
        "SQLITE_IOERR_ACCESS",
        "SQLITE_IOERR_FSTAT",
        "SQLITE_IOERR_LOCK",
        "SQLITE_IOERR_RDLOCK",
        "SQLITE_IOERR_UNLOCK",
        "SQLITE_IOERR_CHECKRESERVEDLOCK",
        "SQLITE_IOERR_SHMLOCK",
        "SQLITE_IOERR_CLOSE",
        "SQLITE_IOERR_DIR_CLOSE",
        "SQLITE_IOERR_CONVPATH",
        "SQLITE_IOERR_GETTEMPPATH",
    )
    if hasattr(apsw, name)
)
"""I/O errors that concern a read, a lock or a handle only: no write was lost by them."""


class FsyncFailed(OSError):
    """An ``fsync`` the broker made itself (``_files.fsync_path``: a database file and its
    folder at each start, a new shared log) failed: the same page-cache rule as SQLite's own
    (``SQLITE_IOERR_FSYNC``), and the first fsync after a background writeback failed is the
    only one told of it (a later one succeeds over what the disk dropped)."""


def lost_writes(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk may have dropped writes already made (an fsync, a write,
    a truncation that failed, or an I/O error SQLite did not tell apart), itself or through
    the SQLite errors it was raised over.

    apsw's ``with db:`` can turn a failed commit into an ``apsw.SQLError`` ("You have done
    transaction control ... which gives error disk I/O error"), with the commit's
    ``apsw.IOError`` only as its ``__context__``: when its rollback after the failed
    ``RELEASE`` finds the transaction gone (its savepoint level out of step with SQLite's
    after an earlier commit left the transaction open and ``roll_back_open`` ended it). Read
    alone, that error hid a failed fsync, and a shared log's trim kept going over what the
    disk had dropped (the groups power-loss runner's seed 47)."""
    for _ in range(_CHAIN_LIMIT):
        if isinstance(exc, StorageFailed | FsyncFailed):
            return True
        if isinstance(exc, apsw.IOError):
            return getattr(exc, "extendedresult", apsw.SQLITE_IOERR) not in _NO_WRITE_LOST
        if not isinstance(exc, apsw.Error):
            return False
        below = exc.__cause__ or exc.__context__
        if below is None:
            return False
        exc = below
    return False


_CHAIN_LIMIT = 8
"""How many errors deep :func:`lost_writes` reads (an apsw error raised while handling
another, itself raised over the commit's): a bound, for a chain that loops."""


def any_lost(results: Sequence[Any]) -> bool:
    """Whether one of a batch's outcomes failed in a way that may have lost writes: then the
    batch's job writes nothing more (no trim: it would sync the file and forget the rows that
    were the only durable copy)."""
    return any(isinstance(r, outcome.Error) and lost_writes(r.error) for r in results)


@contextlib.contextmanager
def suppress_unless_lost() -> Iterator[None]:
    """Suppress an ``apsw.Error`` (a trim tried again later), unless it may have lost writes:
    a trim tried again after a failed fsync would succeed over what the disk dropped."""
    try:
        yield
    except apsw.Error as exc:
        if lost_writes(exc):
            raise


def error_code(exc: BaseException) -> str:
    """SQLite's name for ``exc``'s extended code (``SQLITE_IOERR_FSYNC``), or its type."""
    code = getattr(exc, "extendedresult", None)
    if code is None:
        if isinstance(exc, FsyncFailed) and exc.errno in errno.errorcode:
            return f"fsync {errno.errorcode[exc.errno]}"
        return type(exc).__name__
    name = apsw.mapping_extended_result_codes.get(code) or apsw.mapping_result_codes.get(code)
    return str(name or code)


class StorageFailed(Exception):
    """A write to this broker's storage failed in a way that may have lost earlier writes
    (a failed fsync): the broker stopped, and will not start on this data folder again until
    an operator replaces or resets it. Raised out of the broker, and by every later use of the
    failed storage."""

    def __init__(self, file: str, error: str, code: str, *, at: str | None = None) -> None:
        self.file = file
        """The database file (or data folder) the failed write went to, as far as known."""
        self.error = error
        self.code = code
        self.at = at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.reported = False
        """Logged (``storage.failed``) and marked in the data folder already."""
        super().__init__(
            f"storage failed: a write to {file} failed ({code}: {error}) at {self.at}; the "
            f"disk may have dropped writes already acknowledged, so this broker stopped "
            f"(docs/reliability.md, 'A failed fsync stops the broker')"
        )

    @classmethod
    def from_error(cls, exc: BaseException, file: str = "") -> StorageFailed:
        if isinstance(exc, StorageFailed):
            return exc
        marked = getattr(exc, "storage_failed", None)  # (:func:`failed_here` reported it)
        if isinstance(marked, StorageFailed):
            return marked
        return cls(file or UNKNOWN_FILE, str(exc), error_code(exc))

    def again(self) -> StorageFailed:
        """A fresh exception of the same failure (for each refused job)."""
        again = StorageFailed(self.file, self.error, self.code, at=self.at)
        again.reported = self.reported
        return again

    def report(self, data_dir: str) -> str:
        """What the ``node`` command prints when a broker stops, or refuses to start, on it."""
        return (
            f"error: a write to this broker's disk failed, and the disk may have dropped "
            f"writes it had already acknowledged; it will not run on this data.\n"
            f"  file:  {self.file}\n"
            f"  error: {self.code}: {self.error}\n"
            f"  when:  {self.at}\n"
            f"  mark:  {Path(data_dir) / FAILED_FILE}\n"
            f"What to do (docs/reliability.md, 'A failed fsync stops the broker'):\n"
            f"  - check or replace the disk; then rejoin empty: "
            f"python -m trio_broker data reset --data-dir {data_dir}\n"
            f"    (moves the files and this mark into {data_dir}/damaged-<time>/, deletes "
            f"nothing), start with --seed HOST:PORT of a running member, and remove the old "
            f"broker id: python -m trio_broker client --seed HOST:PORT remove-member OLD_ID\n"
            f"  - or restore this broker's data from a backup taken before the failure\n"
            f"  - a broker alone in its cluster has no other copy: deleting the mark starts it on "
            f"what its disk kept, which may lack acknowledged writes"
        )


def write_marker(data_dir: Path | str, failure: StorageFailed) -> Path | None:
    """Leave :data:`FAILED_FILE` in ``data_dir`` (synced, with its folder); None when it
    could not be written (the disk may refuse it too)."""
    path = Path(data_dir) / FAILED_FILE
    body = (
        f"file={failure.file}\ncode={failure.code}\nerror={failure.error}\nat={failure.at}\n"
        f"# A write failed in a way that may have lost acknowledged writes; the broker will "
        f"not start here until the data is reset (docs/reliability.md).\n"
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        return None
    return path


def read_marker(data_dir: Path | str) -> StorageFailed | None:
    """The failure :data:`FAILED_FILE` in ``data_dir`` records, or None without one."""
    path = Path(data_dir) / FAILED_FILE
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    fields: dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            fields[key] = value
    return StorageFailed(
        fields.get("file", str(data_dir)),
        fields.get("error", "(no detail recorded)"),
        fields.get("code", "unknown"),
        at=fields.get("at", "unknown"),
    )


def failed_here(exc: BaseException, file: Path | str, data_dir: Path | str) -> None:
    """Report the failure a store's or shared log's own open or close met (the open's sync of
    its new files, the closing checkpoint's fsync in a clean stop: no driver runs to report
    it) as the driver reports one (``_runtime._failed_storage``): the mark written and synced
    into ``data_dir``'s broker folder (:func:`marker_dir`), one ``storage.failed`` CRITICAL
    line. The caller releases its folder's lock only if the mark is on disk (:func:`read_marker`)
    and raises ``exc`` as it was (callers of a store catch ``apsw.Error``); the failure rides
    on it, and :meth:`StorageFailed.from_error` (the storage thread's check, the runtime's
    seams: ``_worker.close_storage``) turns it into this one, reported already."""
    if isinstance(exc, StorageFailed) or hasattr(exc, "storage_failed"):
        return
    failure = StorageFailed.from_error(exc, str(file))
    failure.reported = True
    with contextlib.suppress(AttributeError, TypeError):
        exc.storage_failed = failure  # type: ignore[attr-defined]
    marker = write_marker(marker_dir(data_dir), failure)
    fields = {"file": failure.file, "code": failure.code, "error": failure.error}
    fields["marker"] = str(marker) if marker is not None else "not written"
    fields["action"] = "stopping; replace the disk, then data reset and rejoin"
    text = "storage.failed " + " ".join(f'{k}="{v}"' for k, v in fields.items())
    logging.getLogger("trio_broker").critical(
        text, extra={"event": "storage.failed", "fields": fields}
    )


def refuse_if_failed(data_dir: Path | str) -> None:
    """Raise the :class:`StorageFailed` the marker in ``data_dir`` records, if there is one."""
    failure = read_marker(data_dir)
    if failure is not None:
        raise failure


_GROUP_FOLDER = re.compile(r"G-[A-Z0-9]{5}")
"""A group's store's folder name (its id: ``_runtime._groups.group_dir``)."""


def marker_dir(data_dir: Path | str) -> Path:
    """Where a store in ``data_dir`` leaves its marker: the broker's data folder (a group's
    store lives in ``data_dir/groups/G-XXXXX``: two levels up), which every start checks and
    ``data reset`` clears."""
    path = Path(data_dir)
    if path.parent.name == "groups" and _GROUP_FOLDER.fullmatch(path.name):
        # (a group's folder, not a broker's own data folder that sits in a folder named so:
        # its next start looks for the mark in that folder, not two levels up)
        return path.parent.parent
    return path


__all__ = [
    "FAILED_FILE",
    "UNKNOWN_FILE",
    "FsyncFailed",
    "StorageFailed",
    "any_lost",
    "failed_here",
    "lost_writes",
    "marker_dir",
    "read_marker",
    "refuse_if_failed",
    "suppress_unless_lost",
    "write_marker",
]
