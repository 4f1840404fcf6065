"""A failed commit that apsw reports as another error still stops the broker
(``_storage._failed.lost_writes``; docs/reliability.md, "A failed fsync stops the broker")."""

from __future__ import annotations

import itertools
from pathlib import Path

import apsw
import pytest

from trio_broker._storage._failed import lost_writes
from trio_broker.testing._powerloss import PowerLossVFS

_names = itertools.count()


@pytest.fixture
def db(tmp_path: Path):
    vfs = PowerLossVFS(f"lostchain{next(_names)}", drops=True)
    connection = apsw.Connection(str(tmp_path / "x.sqlite3"), vfs=vfs.name)
    for sql in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "CREATE TABLE t(x)"):
        connection.execute(sql).fetchall()
    yield connection, vfs
    vfs.sync_fails = None
    connection.close()
    vfs.unregister()


def test_a_failed_fsync_reported_as_transaction_control_counts(db) -> None:
    """apsw's ``with db:`` whose savepoint level is out of step with SQLite's (an earlier
    commit left the transaction open and a ROLLBACK ended it, as ``roll_back_open`` does)
    reports the next commit's failed fsync as an ``apsw.SQLError``, the ``apsw.IOError``
    only beneath it: the groups power-loss runner's seed 47, whose shared log then trimmed
    over dropped writes."""
    connection, vfs = db
    connection.__enter__()  # (a commit that failed and left the transaction open)
    connection.execute("INSERT INTO t VALUES (0)")
    connection.execute("ROLLBACK")
    vfs.sync_fails = lambda path: True
    with pytest.raises(apsw.Error) as caught, connection:
        connection.execute("INSERT INTO t VALUES (1)")
    assert type(caught.value) is apsw.SQLError  # (the form that hid it)
    assert isinstance(caught.value.__context__, apsw.IOError)
    assert lost_writes(caught.value)


def test_errors_over_a_read_error_or_none_do_not_count() -> None:
    """The chain is read, not guessed: an error over a read's I/O error, or over nothing, or
    over something that is not SQLite's, says nothing of lost writes."""
    read = apsw.IOError("disk I/O error")
    read.extendedresult = apsw.SQLITE_IOERR_READ
    over_read = apsw.SQLError("over a read")
    over_read.__context__ = read
    assert not lost_writes(over_read)
    assert not lost_writes(apsw.SQLError("alone"))
    over_other = apsw.SQLError("over a ValueError")
    over_other.__context__ = ValueError("not SQLite's")
    assert not lost_writes(over_other)
    looped = apsw.SQLError("a loop")
    looped.__context__ = looped
    assert not lost_writes(looped)  # (bounded)
    fsync = apsw.IOError("disk I/O error")
    fsync.extendedresult = apsw.SQLITE_IOERR_FSYNC
    deep = apsw.SQLError("outer")
    deep.__context__ = apsw.BusyError("middle")
    deep.__context__.__context__ = fsync
    assert lost_writes(deep)
