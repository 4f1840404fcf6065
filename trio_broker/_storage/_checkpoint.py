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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import apsw

from ._failed import lost_writes

DEFAULT_PAGES = 1000
"""SQLite's default ``wal_autocheckpoint`` (used if the connection reports none)."""


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
            db.wal_checkpoint(None, apsw.SQLITE_CHECKPOINT_PASSIVE)
        except apsw.Error as exc:
            if lost_writes(exc):
                db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
                db.close()
                raise
    else:
        close_unwritten(db)
        return
    db.close()


__all__ = [
    "DEFAULT_PAGES",
    "checkpoint_hook",
    "checkpoint_on_commit",
    "close_checkpointed",
    "close_unwritten",
]
