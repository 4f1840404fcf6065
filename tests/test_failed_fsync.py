"""A failed fsync stops the broker (docs/reliability.md, "A failed fsync stops the broker").

After ``fsync`` fails with ``EIO``, Linux may mark the pages it could not write clean: a later
fsync succeeds over writes the disk never took, and reads still see them (PostgreSQL's
"fsyncgate"). These tests run a real broker whose store sits on a
:class:`~trio_broker.testing._powerloss.PowerLossVFS` in that model (``drops=True``) and fail
one fsync: the broker stops with :class:`StorageFailed` and one ``storage.failed`` line,
writes and syncs nothing more, answers nothing it did not make durable, and leaves a mark
that makes the next start refuse until ``data reset`` moves it aside.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

from trio_broker import StorageFailed
from trio_broker._cli._main import main as cli_main
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._storage import Store
from trio_broker._storage._failed import FAILED_FILE, lost_writes, read_marker
from trio_broker._storage._worker import StorageWorker, open_storage_worker
from trio_broker.testing._powerloss import PowerLossVFS
from trio_broker.testing._powerloss_cluster import number

QUEUE = "q"
"""The queue of tests/test_shared_log.py's groups."""


def test_what_counts_as_writes_the_disk_may_have_dropped() -> None:
    """A failed fsync, a failed write, an I/O error SQLite did not tell apart: yes. A full
    disk (handled: docs/reliability.md, "Full disks"), a read or a lock: no."""

    def io(code: int) -> apsw.IOError:
        error = apsw.IOError("disk I/O error")
        error.extendedresult = code
        return error

    assert lost_writes(io(apsw.SQLITE_IOERR_FSYNC))
    assert lost_writes(io(apsw.SQLITE_IOERR_DIR_FSYNC))
    assert lost_writes(io(apsw.SQLITE_IOERR_WRITE))
    assert lost_writes(io(apsw.SQLITE_IOERR_TRUNCATE))
    assert lost_writes(apsw.IOError("disk I/O error"))  # (no extended code: we cannot tell)
    assert not lost_writes(apsw.FullError("database or disk is full"))
    assert not lost_writes(io(apsw.SQLITE_IOERR_READ))
    assert not lost_writes(io(apsw.SQLITE_IOERR_SHORT_READ))
    assert not lost_writes(io(apsw.SQLITE_IOERR_LOCK))
    assert not lost_writes(apsw.CorruptError("database disk image is malformed"))


def _config(data_dir: Path) -> BrokerConfig:
    return BrokerConfig(data_dir=data_dir, port=0, heartbeat_interval=0.05, failure_timeout=0.5)


class Disk:
    """The broker's store on a PowerLossVFS in the fsyncgate model; ``fail_next`` fails the
    next fsync (and only that one)."""

    def __init__(self, name: str) -> None:
        self.vfs = PowerLossVFS(name, drops=True)
        self.vfs.sync_fails = self._fails
        self.vfs.on_sync = self._on_sync
        self.armed = False
        self.failed_at: int | None = None
        self.syncs_after = 0
        self.store: Store | None = None
        self.worker: StorageWorker | None = None

    def _on_sync(self) -> None:
        if self.failed_at is not None:
            self.syncs_after += 1

    def _fails(self, path: str) -> bool:
        if self.armed:
            self.armed = False
            self.failed_at = self.vfs.syncs
            return True
        return False

    @contextlib.asynccontextmanager
    async def storage(self, data_dir: Path) -> AsyncIterator[tuple[Any, Any]]:
        """``open_broker``'s storage seam, as ``open_sqlite_storage`` with this VFS."""
        async with open_storage_worker() as worker:
            store = await worker.run(functools.partial(Store, data_dir, vfs=self.vfs.name))
            self.store, self.worker = store, worker
            try:
                yield worker, store
            finally:
                with trio.CancelScope(shield=True):
                    if worker.failed is None:
                        await worker.run(store.close)

    def die(self) -> None:
        """The process ends: the failed broker's store, left open, goes without a write."""
        assert self.store is not None
        self.vfs.cut()
        self.store.close()
        self.vfs.power_on()
        self.vfs.unregister()


async def _append(port: int, queue_id: str, data: str) -> dict[str, Any]:
    from tests.wire import RawConnection

    connection = await RawConnection.open(port)
    try:
        return await connection.call({"operation": "APPEND", "queue_name": queue_id, "data": data})
    finally:
        await connection.aclose()


async def _fail_one_fsync(data_dir: Path, disk: Disk) -> tuple[list[Any], int]:
    """A lone broker on ``disk``: five acknowledged appends, then one whose fsync fails.
    Returns what the appends after the failure got, and the acknowledged count."""
    from tests.wire import create_queue

    after: list[Any] = []
    acked = 0
    with pytest.raises(BaseException) as caught:
        async with open_broker(_config(data_dir), storage=disk.storage) as broker:
            queue_id = await create_queue(broker.port)
            for n in range(5):
                assert (await _append(broker.port, queue_id, f"v{n}"))["status"] == "success"
                acked += 1
            disk.armed = True
            with trio.fail_after(10):
                for n in range(5, 10):  # (the first fails the broker; the rest find it gone)
                    try:
                        after.append(await _append(broker.port, queue_id, f"v{n}"))
                    except Exception as exc:
                        after.append(exc)
                await trio.sleep_forever()  # (until the broker's failure ends this block)
    failure = caught.value
    while isinstance(failure, BaseExceptionGroup):
        failure = next(e for e in failure.exceptions if not isinstance(e, trio.Cancelled))
    assert isinstance(failure, StorageFailed), repr(caught.value)
    assert failure.code == "SQLITE_IOERR_FSYNC"
    return after, acked


async def test_a_failed_fsync_stops_the_broker_and_nothing_more_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """(a) The broker's run raises StorageFailed with one storage.failed CRITICAL line naming
    the file and the error; (b) no append after the failure is answered success, and the
    store is never written or synced again (before: the driver rebuilt its core from the
    same page cache and went on saving, acknowledging and syncing)."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    disk = Disk("failed-fsync-stops")
    data_dir = tmp_path / "b1"
    try:
        after, acked = await _fail_one_fsync(data_dir, disk)
        assert acked == 5
        assert disk.failed_at is not None
        assert disk.syncs_after == 0  # (no save, no checkpoint, no close: nothing synced)
        assert disk.vfs.unsynced_bytes() == 0  # (nothing written since the failed sync)
        for answer in after:  # (the broker may stop before it answers any: none is success)
            assert not (isinstance(answer, dict) and answer.get("status") == "success"), after
        lines = [r for r in caplog.records if getattr(r, "event", None) == "storage.failed"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert lines[0].levelno == logging.CRITICAL
        fields = lines[0].fields  # type: ignore[attr-defined]
        assert fields["file"] == str(data_dir / "broker.sqlite3")
        assert fields["code"] == "SQLITE_IOERR_FSYNC"
        assert fields["marker"] == str(data_dir / FAILED_FILE)
        restarted = [r for r in caplog.records if getattr(r, "event", None) == "driver.restarted"]
        assert not restarted
    finally:
        disk.die()


async def test_the_next_start_refuses_until_data_reset_moves_the_mark_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(c) After the failure the data folder holds the mark: a start in the same process
    refuses it (open_broker raises StorageFailed before opening anything), as does ``data
    check``; ``data reset`` moves it aside with the database files, and then a start goes on
    (an empty broker, to rejoin with --seed)."""
    disk = Disk("failed-fsync-restart")
    data_dir = tmp_path / "b1"
    try:
        await _fail_one_fsync(data_dir, disk)
    finally:
        disk.die()
    marker = read_marker(data_dir)
    assert marker is not None and marker.code == "SQLITE_IOERR_FSYNC"
    with pytest.raises(StorageFailed, match="SQLITE_IOERR_FSYNC"):
        async with open_broker(_config(data_dir)):
            pytest.fail("started on a folder whose disk failed a fsync")
    assert cli_main(["data", "check", "--data-dir", str(data_dir)]) == 1
    assert "data reset" in capsys.readouterr().err
    assert cli_main(["data", "reset", "--data-dir", str(data_dir)]) == 0
    assert FAILED_FILE in capsys.readouterr().out
    assert not (data_dir / FAILED_FILE).exists()
    assert list(data_dir.glob(f"damaged-*/{FAILED_FILE}"))
    async with open_broker(_config(data_dir)) as broker:
        assert broker.broker_id


def test_a_node_on_a_marked_folder_exits_1_with_a_report_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m trio_broker node`` on a folder a failed fsync marked (run in this process,
    its process-wide settings left alone): exit status 1, the report (file, error, the
    operator's choices), no traceback, nothing opened."""
    from trio_broker._cli import _node
    from trio_broker._storage._failed import write_marker

    for name in ("configure_logging", "_raise_fd_limit", "_tune_interpreter"):
        monkeypatch.setattr(_node, name, lambda *args: None)
    data_dir = tmp_path / "b1"
    data_dir.mkdir()
    failure = StorageFailed(
        str(data_dir / "broker.sqlite3"), "disk I/O error", "SQLITE_IOERR_FSYNC"
    )
    assert write_marker(data_dir, failure) == data_dir / FAILED_FILE
    assert cli_main(["node", "--data-dir", str(data_dir), "--port", "0"]) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert "SQLITE_IOERR_FSYNC" in stderr and f"data reset --data-dir {data_dir}" in stderr
    assert str(data_dir / "broker.sqlite3") in stderr
    assert not (data_dir / "broker.sqlite3").exists()  # (refused before opening anything)


async def _trim_after_a_failed_sync(root: Path, *, old: bool) -> list[int]:
    """Two groups on a shared log in the fsyncgate model; a trim's sync of G0's file fails
    (dropping that file's writes since its last sync: entries and applies committed at
    NORMAL, whose only durable copy is the shared log's rows); a later turn trims again; the
    power goes. ``old``: the trims as before (an error kept for the next trim, as
    ``TurnCommitter._trim`` did), else through the storage thread as now. Returns the
    acknowledged appends the restarted groups lack."""
    import random

    from tests.test_shared_log import Broker as SharedBroker
    from trio_broker._storage._shared_log import TRIM_ROWS, TurnCommitter

    os.makedirs(root)
    vfs = PowerLossVFS(f"failed-trim-sync-{old}", drops=True)
    broker = SharedBroker(root, 2, vfs, random.Random(5))
    try:
        broker.start()
        for _ in range(12):
            broker.step()
        acked = [list(a) for a in broker.acked]
        assert all(acked)
        log = broker.log
        assert log is not None
        rows = log.group_rows()
        failing = [True]
        vfs.sync_fails = lambda path: (
            Path(path).parent.name == "G0" and bool(failing) and (failing.pop())
        )
        if old:
            for _ in range(2):
                with contextlib.suppress(apsw.Error):
                    log.trim()
            assert not failing and vfs.dropped_bytes
        else:
            worker = StorageWorker()
            committer = TurnCommitter(worker, log)
            try:
                log.rows = log._kept + TRIM_ROWS + 1  # (a trim is due)
                committer._hand_trim()
                with pytest.raises(StorageFailed):  # (queued after the trim, which failed it)
                    await worker.run(lambda: None)
                assert worker.failed is not None and worker.failed.code == "SQLITE_IOERR_FSYNC"
                assert not failing and vfs.dropped_bytes
                committer._hand_trim()  # (the next turn's trim: refused)
                with pytest.raises(StorageFailed):
                    await worker.run(lambda: None)
                ns = broker._appends(broker.groups)[1][1]
                with pytest.raises(StorageFailed):  # (and any save)
                    await committer.save(broker.groups[1].propose([broker._append(n) for n in ns]))
                assert log.group_rows() == rows
            finally:
                worker.stop()
                await worker.wait_stopped()
        vfs.cut()
        broker.close()
        vfs.power_on()
        vfs.sync_fails = None
        broker.start()
        held = {
            i: {number(d) for d in g.store.messages(QUEUE)} for i, g in enumerate(broker.groups)
        }
        return sorted(n for i, ns in enumerate(acked) for n in ns if n not in held[i])
    finally:
        broker.close()
        vfs.unregister()


async def test_after_a_failed_fsync_in_a_trim_no_trim_forgets_the_shared_logs_rows(
    tmp_path: Path,
) -> None:
    """(b) on a shared log: after a trim's failed sync the storage thread refuses every later
    job, so no trim deletes the rows that were the only durable copy of G0's dropped writes,
    and no save runs; after a power cut every acknowledged append is there. The old trims
    (the error kept for the next trim, whose sync succeeded over the dropped writes and
    deleted the rows) lose acknowledged appends in the same model."""
    assert await _trim_after_a_failed_sync(tmp_path / "new", old=False) == []
    assert await _trim_after_a_failed_sync(tmp_path / "old", old=True) != []


async def test_a_failed_fsync_on_a_group_of_a_shared_log_stops_its_whole_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two brokers, three groups each on their broker's shared log: a save of one of b2's
    groups fails with ``SQLITE_IOERR_FSYNC``. b2 stops (``StorageFailed`` out of its run, one
    ``storage.failed`` line naming the group's file and the shared log, the mark in b2's own
    folder, not the group's), and from then on no save, trim, sync or close runs on any store
    of b2's shared storage."""
    from tests.wire import RawConnection
    from trio_broker._storage import _shared_log
    from trio_broker.testing import open_local_cluster

    caplog.set_level(logging.INFO, logger="trio_broker")
    b2 = tmp_path / "b2"
    armed = [False]
    failed_at: list[int] = []
    after: list[str] = []
    calls = [0]

    def watch(cls: Any, name: str) -> None:
        real = getattr(cls, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            where = Path(getattr(self, "data_dir", None) or self.path)
            if b2 in where.parents:
                calls[0] += 1
                if failed_at:
                    after.append(name)
                elif armed[0] and name == "save":
                    failed_at.append(calls[0])
                    error = apsw.IOError("disk I/O error")
                    error.extendedresult = apsw.SQLITE_IOERR_FSYNC
                    raise error
            return real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    for name in ("save", "sync_shared", "close", "compact"):
        watch(Store, name)
    watch(_shared_log.SharedLog, "trim")
    watch(_shared_log.SharedLog, "close")
    with pytest.raises(BaseException) as caught:
        async with open_local_cluster(tmp_path, 2, groups=3, replication_factor=2) as cluster:
            from tests.spread import wait_voting_spread

            await wait_voting_spread(cluster, 3)
            broker = cluster.brokers["b1"]
            queues = [await _create_queue_settled(broker.port) for _ in range(3)]
            connection = await RawConnection.open(broker.port)
            armed[0] = True
            with trio.fail_after(20):
                while True:  # (until b2's failure ends the cluster)
                    for queue_id in queues:
                        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x"}
                        await connection.call(append)
    failures = []
    pending = [caught.value]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif isinstance(exc, StorageFailed):
            failures.append(exc)
    assert failures, repr(caught.value)
    assert failed_at and after == [], after
    lines = [r for r in caplog.records if getattr(r, "event", None) == "storage.failed"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["file"].startswith(str(b2 / "groups" / "G-"))
    assert fields["shared_log"] == str(b2 / "groups" / "shared-log.sqlite3")
    assert fields["marker"] == str(b2 / FAILED_FILE)
    assert (b2 / FAILED_FILE).exists() and not (tmp_path / "b1" / FAILED_FILE).exists()
    # The operator's reset moves the groups' folder aside too: the broker rejoins under a new
    # id, which the groups' files do not hold.
    assert cli_main(["data", "reset", "--data-dir", str(b2)]) == 0
    (aside,) = b2.glob("damaged-*")
    assert (aside / FAILED_FILE).exists() and (aside / "groups" / "shared-log.sqlite3").exists()
    assert not (b2 / "groups").exists() and not (b2 / FAILED_FILE).exists()


async def _create_queue_settled(port: int) -> str:
    """CREATE_QUEUE, asked again while the metadata's leader hands its leadership over (the
    spread the cluster keeps may still be moving one when ``wait_voting_spread`` returns)."""
    from tests.wire import call

    with trio.fail_after(10):
        while True:
            answer = await call(port, {"operation": "CREATE_QUEUE"})
            if answer.get("code") != "NOT_LEADER":
                assert answer["status"] == "success", answer
                return str(answer["queue_id"])
            await trio.sleep(0.05)


def test_a_write_that_fails_while_a_node_starts_is_marked_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fsync before any driver runs (the store's open here): the ``node`` command
    marks the folder, reports it (status 1, no traceback) as a failure while it runs."""
    from trio_broker._cli import _node
    from trio_broker._storage import _store

    for name in ("configure_logging", "_raise_fd_limit", "_tune_interpreter"):
        monkeypatch.setattr(_node, name, lambda *args: None)

    def failing_sync(data_dir: Path) -> None:
        error = apsw.IOError("disk I/O error")
        error.extendedresult = apsw.SQLITE_IOERR_FSYNC
        raise error

    monkeypatch.setattr(_store, "sync_new_files", failing_sync)
    data_dir = tmp_path / "b1"
    assert cli_main(["node", "--data-dir", str(data_dir), "--port", "0"]) == 1
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "SQLITE_IOERR_FSYNC" in stderr, stderr
    marker = read_marker(data_dir)
    assert marker is not None and marker.code == "SQLITE_IOERR_FSYNC"
