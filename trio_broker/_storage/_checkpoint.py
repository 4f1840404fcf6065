"""Our own automatic checkpoint: SQLite's, except that a failed fsync in it fails the commit.

SQLite's automatic checkpoint is its default WAL hook (installed by
``sqlite3_wal_autocheckpoint``): after a commit leaves the WAL at ``wal_autocheckpoint`` pages
or more, it runs a PASSIVE checkpoint and drops its result, so the commit succeeds even when
the checkpoint's fsync (of the WAL before its frames are copied, of the database file after)
failed. After a failed fsync the disk may have dropped those writes while the page cache still
shows them (docs/reliability.md, "A failed fsync stops the broker"); in WAL mode a dropped WAL
frame ends SQLite's recovery there, and every later frame, acknowledged commits included, is
discarded. So the broker must hear of it.

:func:`checkpoint_on_commit` replaces that hook with one that runs the same PASSIVE checkpoint
at the same threshold (from inside the hook, as SQLite's does, so at the committing
statement's ``synchronous`` level) and returns the checkpoint's extended error code when
:func:`._failed.lost_writes` says the disk may have dropped writes: SQLite then reports it as
the error of the statement that committed (an ``apsw.IOError`` with that extended code, the
commit itself done), and the storage worker fails on it like on any failed fsync. Any other
checkpoint error (``SQLITE_BUSY`` from another checkpointer, a full disk) is dropped as SQLite
drops it: the commit succeeded, and the next one past the threshold tries again.

:func:`close_checkpointed` does the same for the checkpoint SQLite runs as the last connection
closes, whose errors it drops too (it then keeps the WAL): our own PASSIVE checkpoint of
everything first, its lost-writes error raised; after one (or with ``checkpoint=False``, when
the caller already met one) the connection closes without SQLite's checkpoint
(``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE``, :func:`close_unwritten`), so nothing more is written
or synced and the WAL, the copy of what the database file may have dropped, stays for the
next open's recovery. A failed broker's store and shared log close that way too
(``Store.abandon``), and ``backup`` reads through a read-only connection with it set.

The hook runs after every commit: below the threshold it is one Python call and a compare
(``benchmarks/wal_hook_cost.py``). ``PRAGMA wal_autocheckpoint = N`` on the connection
afterwards puts SQLite's own hook back.

**The WAL is kept across a clean close** (:func:`keep_wal`, docs/reliability.md, "What a closed
data folder holds"). A commit whose fsync extends the WAL file costs the kernel about 100 µs of
CPU more than one that overwrites frames already written (the size's journal commit: 230 -> 129
µs per one-entry save, docs/performance-history.md, eleventh round), and SQLite deleted the WAL
at every clean close, so every start paid it until its first checkpoint let the WAL restart.
With ``SQLITE_FCNTL_PERSIST_WAL`` the closing connection keeps the file;
:func:`close_checkpointed` then, after its checkpoint copied every frame, commits one page so
that the WAL restarts (new salts: the previous frames no longer count), and the next start
writes its frames after that one, over the kept blocks, starting over from the WAL's first
frame at its own first checkpoint, as a running store does. What the kept file holds was all
checkpointed and synced: one valid frame (that page, a copy of the database file's own), then
frames of earlier generations that no longer count, as any restarted WAL holds.
``journal_size_limit`` (:data:`WAL_SIZE_LIMIT`) bounds it: the first commit after a restart
truncates a WAL that a large transaction grew beyond it, the closing one included.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Callable
from typing import Any

import apsw

from ._failed import lost_writes

DEFAULT_PAGES = 1000
"""SQLite's default ``wal_autocheckpoint`` (used if the connection reports none)."""

WAL_SIZE_LIMIT = 32 + 2 * DEFAULT_PAGES * (4096 + 24)
"""The WAL's size kept at a restart (``journal_size_limit``): twice what the checkpoint lets
it reach (about 8 MB; its header and 2,000 frames of 4 KiB pages), so a store's usual cycle
never truncates it, and one large transaction does not keep its size for good."""


def checkpoint_hook(pages: int) -> Callable[[Any, str, int], int]:
    """The WAL hook: a PASSIVE checkpoint of ``name`` once its WAL holds ``pages`` or more."""
    passive = apsw.SQLITE_CHECKPOINT_PASSIVE
    ok = apsw.SQLITE_OK

    def hook(db: Any, name: str, frames: int) -> int:
        if frames < pages:
            return ok
        try:
            db.wal_checkpoint(name, passive)
        except apsw.Error as exc:
            if lost_writes(exc):
                # (the committing statement fails with this code: apsw raises it as an
                # apsw.IOError carrying it, which the storage worker fails on)
                code: int = getattr(exc, "extendedresult", None) or apsw.SQLITE_IOERR
                return code
        return ok

    return hook


def checkpoint_on_commit(db: apsw.Connection, pages: int | None = None) -> None:
    """Replace ``db``'s automatic checkpoint with :func:`checkpoint_hook`, at ``pages`` (by
    default the connection's ``wal_autocheckpoint``, SQLite's 1,000 pages)."""
    if pages is None:
        row = db.execute("PRAGMA wal_autocheckpoint").fetchone()
        pages = int(row[0]) if row and row[0] > 0 else DEFAULT_PAGES
    db.set_wal_hook(checkpoint_hook(pages))


def keep_wal(db: apsw.Connection) -> None:
    """Keep ``db``'s WAL file when it closes (``SQLITE_FCNTL_PERSIST_WAL``), bounded by
    :data:`WAL_SIZE_LIMIT` (see the module docstring)."""
    on = ctypes.c_int(1)
    if not db.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(on)):
        raise RuntimeError("the SQLite VFS does not keep a WAL (SQLITE_FCNTL_PERSIST_WAL)")
    db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")


def _restart_wal(db: apsw.Connection, frames: int, copied: int) -> None:
    """After a closing checkpoint that copied every frame (``frames`` of the WAL, ``copied`` of
    them): one committed page (the schema's ``user_version``, written again as it is) restarts
    the WAL, so the kept file's earlier frames no longer count and the next start writes after
    that one frame, over the kept blocks; a WAL larger than :data:`WAL_SIZE_LIMIT` is truncated
    to it by that commit. Then no limit, or SQLite's own closing checkpoint would truncate the
    kept WAL to nothing. A checkpoint that left frames (another connection reading) or a
    transaction left open restarts nothing: the next start appends after the frames."""
    if frames > 0 and frames == copied and db.getautocommit():
        with db:
            db.pragma("user_version", int(db.pragma("user_version")))
    db.execute("PRAGMA journal_size_limit = -1")


def close_unwritten(db: apsw.Connection) -> None:
    """Close ``db`` writing nothing: no checkpoint (``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE``), so
    no page is copied from the WAL into the database file, nothing is synced, and the WAL and
    its ``-shm`` stay as they are (only a closing checkpoint that succeeds deletes them; the
    rollback of a transaction a failed commit left open writes nothing in WAL mode). For a
    connection whose disk failed a write (``_failed``); a closed one is left closed."""
    with contextlib.suppress(apsw.ConnectionClosedError):
        db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    db.close(True)  # (force: cursors left open are closed too, never an error raised)


def close_checkpointed(db: apsw.Connection, *, checkpoint: bool = True) -> None:
    """Close ``db``, after a checkpoint whose lost-writes error is raised (see above)."""
    if checkpoint:
        try:
            _restart_wal(db, *db.wal_checkpoint(None, apsw.SQLITE_CHECKPOINT_PASSIVE))
        except apsw.Error as exc:
            if lost_writes(exc):
                db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
                db.close()
                raise
            # Anything else (a full disk, a busy reader) loses nothing: every commit was
            # synced, and the next open replays what the checkpoint did not copy. Told, since
            # the folder is then left as the close did not mean to leave it.
            fields = {"file": db.filename, "error": f"{type(exc).__name__}: {exc}"}
            fields["action"] = "none; the next start replays the WAL"
            logging.getLogger("trio_broker").warning(
                "storage.close_checkpoint_incomplete "
                + " ".join(f'{k}="{v}"' for k, v in fields.items()),
                extra={"event": "storage.close_checkpoint_incomplete", "fields": fields},
            )
    else:
        close_unwritten(db)
        return
    db.close()


__all__ = [
    "DEFAULT_PAGES",
    "WAL_SIZE_LIMIT",
    "checkpoint_hook",
    "checkpoint_on_commit",
    "close_checkpointed",
    "close_unwritten",
    "keep_wal",
]
