"""More paths of "a failed fsync stops the broker" (docs/reliability.md): an fsync the broker
makes itself (not SQLite's), the storage thread's failure check of a batch's outcomes and what
the worker refuses after it, and a backup of a folder marked failed.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import apsw
import outcome
import pytest
import trio
import trio.testing

from trio_broker._cli._main import main as cli_main
from trio_broker._runtime import BrokerConfig
from trio_broker._storage import Store, _files
from trio_broker._storage._failed import (
    FAILED_FILE,
    StorageFailed,
    lost_writes,
    read_marker,
    write_marker,
)
from trio_broker._storage._worker import StorageWorker


class _FailingFsync:
    """``os`` as ``_files`` sees it, whose ``fsync`` of the database file fails with ``EIO``
    (the first fsync after a background writeback failed: the only one told of it)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        if os.path.samefile(f"/proc/self/fd/{fd}", self.target):
            self.failed += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


def test_a_failed_fsync_of_the_brokers_own_counts_as_lost_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fsync_path`` (the store's open syncs its database file and folder; a new shared log
    too) failing with ``EIO`` is a lost write, as SQLite's ``SQLITE_IOERR_FSYNC`` is; a file
    that cannot be opened is not. As a plain ``OSError`` it was taken for a passing error: the
    next start's fsync succeeds over what the disk dropped."""
    path = tmp_path / "file"
    path.write_bytes(b"x")
    failing = _FailingFsync(path)
    monkeypatch.setattr(_files, "os", failing)
    with pytest.raises(OSError) as caught:
        _files.fsync_path(path)
    assert failing.failed == 1 and caught.value.errno == errno.EIO
    assert lost_writes(caught.value)
    with pytest.raises(OSError) as missing:
        _files.fsync_path(tmp_path / "missing")
    assert not lost_writes(missing.value)


def test_a_node_whose_start_fsync_fails_marks_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``node`` command whose store's open fails to fsync the database file (``EIO``):
    status 1, the report, and the mark, so the next start (whose fsync would succeed) refuses."""
    from trio_broker._cli import _node

    for name in ("configure_logging", "_raise_fd_limit", "_tune_interpreter"):
        monkeypatch.setattr(_node, name, lambda *args: None)
    data_dir = tmp_path / "b1"
    data_dir.mkdir()
    store = Store(data_dir)  # (the database exists: its fsync at the next open fails)
    store.close()
    failing = _FailingFsync(data_dir / "broker.sqlite3")
    monkeypatch.setattr(_files, "os", failing)
    assert cli_main(["node", "--data-dir", str(data_dir), "--port", "0"]) == 1
    stderr = capsys.readouterr().err
    assert failing.failed == 1
    assert "Traceback" not in stderr and "fsync EIO" in stderr, stderr
    marker = read_marker(data_dir)
    assert marker is not None and marker.code == "fsync EIO", marker


async def test_a_batch_whose_outcome_holds_a_failed_fsync_fails_the_worker() -> None:
    """A job on the storage thread that returns a batch's outcomes, one of them a failed
    fsync, fails the worker as it ends: watchers told once (on the trio thread), never idle
    again (no save runs on the event loop: ``run_short`` hands it over), and every later job
    refused without running, a ``submit``'s too. A full disk in a batch does not."""
    worker = StorageWorker(name="failed-fsync-paths")
    told: list[int] = []
    worker.watch_failure(lambda: told.append(threading.get_ident()))
    ran: list[str] = []

    def io_error() -> apsw.IOError:
        error = apsw.IOError("disk I/O error")
        error.extendedresult = apsw.SQLITE_IOERR_FSYNC
        return error

    try:
        full = [outcome.Value(1), outcome.Error(apsw.FullError("database or disk is full"))]
        assert await worker.run(lambda: full) == full
        assert worker.failed is None and worker.idle
        batch = [outcome.Value(1), outcome.Error(io_error())]
        assert await worker.run(lambda: batch) == batch
        assert worker.failed is not None and worker.failed.code == "SQLITE_IOERR_FSYNC"
        await trio.testing.wait_all_tasks_blocked()
        assert told == [threading.get_ident()]
        assert not worker.idle
        with pytest.raises(StorageFailed):
            await worker.run_short(ran.append, "short")
        with pytest.raises(StorageFailed):
            worker.run_here(ran.append, "here")
        refused: list[Any] = []
        delivered = trio.Event()

        def done(result: Any) -> None:
            refused.append(result)
            delivered.set()

        worker.submit(lambda: ran.append("submitted"), done)
        await delivered.wait()
        assert isinstance(refused[0], outcome.Error)
        assert isinstance(refused[0].error, StorageFailed)
        assert ran == [] and len(told) == 1
    finally:
        worker.stop()
        await worker.wait_stopped()


def test_a_backup_of_a_folder_marked_failed_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup copies what the files appear to hold; on a folder whose disk failed a write
    (``STORAGE-FAILED``) that proves nothing, and a restore of it would start a cluster on
    it with no mark left (the report's advice is a backup taken *before* the failure). The
    ``backup`` command refuses it (status 1, the report) and writes no file."""
    data_dir = tmp_path / "b1"
    data_dir.mkdir()
    store = Store(data_dir)
    store.init_identity("B-AAAAA", "C-AAAAA")
    store.close()
    failure = StorageFailed(str(data_dir / "broker.sqlite3"), "disk I/O error", "SQLITE_IOERR")
    assert write_marker(data_dir, failure) is not None
    output = tmp_path / "backup.sqlite3"
    assert cli_main(["backup", str(output), "--data-dir", str(data_dir)]) == 1
    stderr = capsys.readouterr().err
    assert "SQLITE_IOERR" in stderr and FAILED_FILE in stderr and "Traceback" not in stderr
    assert not output.exists()
    os.unlink(data_dir / FAILED_FILE)  # (the operator's choice: the backup is taken then)
    assert cli_main(["backup", str(output), "--data-dir", str(data_dir)]) == 0
    assert output.exists()


async def test_a_brokers_data_folder_inside_a_folder_named_groups_keeps_its_mark(
    tmp_path: Path,
) -> None:
    """The mark of a group's store goes to its broker's folder (``groups/G-XXXXX``, two levels
    up); a broker whose own data folder sits in a folder that happens to be named ``groups``
    keeps its mark in its own folder, where its next start looks: the mark two levels up
    let that start trust the folder whose fsync failed."""
    from tests.test_failed_fsync import Disk, _fail_one_fsync
    from trio_broker._runtime import open_broker
    from trio_broker._storage._failed import marker_dir

    assert marker_dir(tmp_path / "b1" / "groups" / "G-ABCDE") == tmp_path / "b1"
    data_dir = tmp_path / "groups" / "b1"
    data_dir.mkdir(parents=True)
    disk = Disk("rev9-groups-parent")
    try:
        await _fail_one_fsync(data_dir, disk)
    finally:
        disk.die()
    assert read_marker(data_dir) is not None
    assert not (tmp_path / FAILED_FILE).exists()
    with pytest.raises(StorageFailed):
        async with open_broker(BrokerConfig(data_dir=data_dir, port=0)):
            pytest.fail("started on a folder whose disk failed a fsync")
