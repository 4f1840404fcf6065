"""One dedicated thread owns the SQLite connection; trio tasks hand it work and wait.

A call cannot be abandoned halfway: if the waiting task is cancelled while its job runs, the
cancellation is delivered when the job has finished, so the caller never walks away from a
transaction whose outcome it does not know.

A job that fails in a way that may have lost writes (a failed fsync: :func:`._failed.lost_writes`),
or returns such a failure among its outcomes (a batch of several groups' saves), fails the
worker: every later job is refused with :class:`._failed.StorageFailed` without touching
SQLite, so nothing more is written, synced or trimmed through that storage
(docs/reliability.md, "A failed fsync stops the broker"). The check runs on the storage
thread as the job ends, before the next job starts. One job runs on a failed worker: the
abandon of its stores and shared log as their run ends (:func:`close_storage`), which closes
their connections without a write and releases their folders' locks.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import apsw
import outcome
import trio

from ._failed import StorageFailed, lost_writes, marker_dir, refuse_if_failed

T = TypeVar("T")

_STOP = object()
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for lack of space: SQLite's ``SQLITE_FULL``
    (``apsw.FullError``: the transaction rolled back, the connection is usable) or an
    ``OSError`` with ``ENOSPC`` or ``EDQUOT`` (a file written next to the database)."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    return isinstance(exc, apsw.FullError)


class _WritesNothing:
    """A job that runs even on a failed worker: one that writes nothing (an abandon)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def __call__(self) -> Any:
        return self.fn()


class StorageWorker:
    save_in_turn: Callable[..., Any] | None = None
    """Set when several groups share this worker and a shared log
    (:class:`~._shared_log.TurnCommitter`): the driver hands its saves there, to be persisted
    with the other groups' of the same loop turn."""

    committer: Any = None
    """With ``save_in_turn``, its :class:`~._shared_log.TurnCommitter`: whether a save may run
    on the event loop now, alone on the shared log (``idle``), for the driver's in-step paths."""

    failed: StorageFailed | None = None
    """Set once a job failed in a way that may have lost writes: every later job raises it."""

    def __init__(self, name: str = "trio-broker-storage") -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._watchers: list[Callable[[], None]] = []
        self._busy = 0
        """Jobs handed to the thread and not yet delivered back (read and written on the trio
        thread only: zero means the thread is waiting for work and touches no SQLite)."""
        self.ran_here = 0
        self.ran_there = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, deliver = job
            if self.failed is not None and type(fn) is not _WritesNothing:
                result: outcome.Outcome[Any] = outcome.Error(self.failed.again())
            else:
                result = outcome.capture(fn, *args)
                if self._check(result):
                    self._token.run_sync_soon(self._tell_failed)
            try:
                self._token.run_sync_soon(deliver, result)
            except trio.RunFinishedError:  # pragma: no cover - the trio run ended under us
                return

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the storage thread and return its result."""
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome) -> None:
            self._busy -= 1
            trio.lowlevel.reschedule(task, result)

        self._busy += 1
        self.ran_there += 1
        self._jobs.put((fn, args, deliver))
        # Abort.FAILED: the job is already queued or running; we wait for its outcome.
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    def submit(self, fn: Callable[[], Any], done: Callable[[outcome.Outcome], None]) -> None:
        """Queue ``fn()`` on the storage thread without waiting for it (from the trio thread);
        ``done(outcome)`` is called on the trio thread when it ends, and must not raise. It
        counts as busy until then, so :meth:`run_short` never runs beside it, and the jobs
        queued after it run after it."""

        def deliver(result: outcome.Outcome) -> None:
            self._busy -= 1
            done(result)

        self._busy += 1
        self.ran_there += 1
        self._jobs.put((fn, (), deliver))

    async def run_short(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short job (a bounded transaction; the caller decides whether one that
        fsyncs may hold the loop): here, on the trio thread, when the storage thread is idle,
        else on it, after the jobs queued before.

        A hand-over to the thread and back costs two cross-thread wake-ups (tens of µs of CPU
        each on small VMs), more than a short job; run here, the job is done before this task
        next yields, so its results (an applied entry's answer, a replica's acknowledgement)
        leave in the same loop turn.
        When the thread is idle no job is running there, and none can start before this one
        returns (only this thread queues them), so the connection is never used by two threads.
        """
        if self._busy:
            return await self.run(fn, *args)
        await trio.lowlevel.checkpoint_if_cancelled()
        return self.run_here(fn, *args)

    def run_here(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` here, on the trio thread, now: only while :attr:`idle` (no job
        with the storage thread). No cancel point; the failure check of every job as on the
        thread (a failed fsync, or a batch's outcome holding one, fails the worker)."""
        if self.failed is not None:
            raise self.failed.again()
        self.ran_here += 1
        try:
            value = fn(*args)
        except BaseException as exc:
            if self._check(outcome.Error(exc)):
                self._tell_failed()
            raise
        if type(value) is list and value and self._check(outcome.Value(value)):
            self._tell_failed()
        return value

    def _check(self, result: outcome.Outcome[Any]) -> bool:
        """Fail the worker if ``result`` (or an outcome it holds: a batch's) may have lost
        writes; True when it just failed."""
        if self.failed is not None:
            return False
        if isinstance(result, outcome.Error):
            errors = [result.error]
        else:
            assert isinstance(result, outcome.Value)
            value = result.value
            if type(value) is not list or not value or not isinstance(value[0], outcome.Outcome):
                return False
            errors = [r.error for r in value if isinstance(r, outcome.Error)]
        for error in errors:
            if lost_writes(error):
                self.failed = StorageFailed.from_error(error)
                return True
        return False

    def fail(self, failure: StorageFailed) -> None:
        """Refuse every later job (the driver found the failure in a save's outcome)."""
        if self.failed is None:
            self.failed = failure
            self._tell_failed()

    def watch_failure(self, watcher: Callable[[], None]) -> None:
        """Call ``watcher()`` on the trio thread once this worker fails (at once if it has)."""
        self._watchers.append(watcher)
        if self.failed is not None:
            watcher()

    def unwatch_failure(self, watcher: Callable[[], None]) -> None:
        """Forget ``watcher`` (its driver's run ended)."""
        with contextlib.suppress(ValueError):
            self._watchers.remove(watcher)

    def _tell_failed(self) -> None:
        for watcher in list(self._watchers):
            watcher()

    @property
    def idle(self) -> bool:
        """No job is with the storage thread (read on the trio thread): a job run here now
        is alone on the connection (:meth:`run_short`)."""
        return not self._busy and self.failed is None

    def stop(self) -> None:
        self._jobs.put(_STOP)

    async def wait_stopped(self) -> None:
        await trio.to_thread.run_sync(self._thread.join)


async def close_storage(worker: StorageWorker, storage: Any) -> None:
    """Close ``storage`` (a store, a shared log) on ``worker``'s thread, shielded: its
    ``close()`` (the closing checkpoint syncs) while the worker is sound; once the worker
    failed, or the close met the failure, its ``abandon()`` instead: the connection closed with
    no checkpoint and nothing written, the folder's lock released once its mark is on disk
    (docs/reliability.md, "A failed fsync stops the broker"). Left open, the connection would
    close when the process ends, or when the store is collected, and SQLite's close would then
    checkpoint: write and sync the file after the failure, and delete the WAL.

    A failed worker's close raises nothing (the driver raised the failure already); a close
    that failed raises its error after the abandon: the :class:`StorageFailed` the close
    reported (its mark written: ``_failed.failed_here``), as any failed fsync's."""
    with trio.CancelScope(shield=True):
        if worker.failed is None:
            try:
                await worker.run(storage.close)
                return
            except BaseException as exc:
                if worker.failed is None:
                    raise
                await worker.run(_WritesNothing(storage.abandon))
                raise_reported(exc)
                raise
        await worker.run(_WritesNothing(storage.abandon))


def raise_reported(exc: BaseException) -> None:
    """Raise the :class:`StorageFailed` a store's or shared log's open or close reported on
    ``exc`` (``_failed.failed_here``: marked, logged), if it did; else return."""
    failure = getattr(exc, "storage_failed", None)
    if isinstance(failure, StorageFailed) and failure is not exc:
        raise failure.again() from exc


async def open_on(worker: StorageWorker, opener: Callable[[], Any]) -> Any:
    """``opener()`` (a store's, a shared log's open) on ``worker``'s thread; a failed write in
    it raises the :class:`StorageFailed` it reported (:func:`raise_reported`)."""
    try:
        return await worker.run(opener)
    except BaseException as exc:
        raise_reported(exc)
        raise


def note_failure(worker: Any, exc: BaseException) -> None:
    """Fail ``worker`` at once if ``exc`` (raised by a transaction run on the event loop, not
    through the worker) may have lost writes: before anything else is queued on it."""
    fail = getattr(worker, "fail", None)
    if fail is not None and lost_writes(exc):
        fail(StorageFailed.from_error(exc))


@contextlib.asynccontextmanager
async def open_storage_worker() -> AsyncIterator[StorageWorker]:
    worker = StorageWorker()
    try:
        yield worker
    finally:
        worker.stop()
        with trio.CancelScope(shield=True):
            await worker.wait_stopped()


@contextlib.asynccontextmanager
async def open_sqlite_storage(
    data_dir: Any, *, vfs: str | None = None
) -> AsyncIterator[tuple[StorageWorker, Any]]:
    """The storage thread and the broker's SQLite store on it (through SQLite's VFS ``vfs``:
    tests); closed on the way out, or, failed, abandoned (:func:`close_storage`): the data
    folder's lock is then released as the broker's run ends, not when the process does, and
    the folder's mark refuses it to every later open."""
    from ._store import Store

    refuse_if_failed(marker_dir(data_dir))  # (marked: its lock may be free, it is not)
    async with open_storage_worker() as worker:
        store = await open_on(worker, functools.partial(Store, data_dir, vfs=vfs))
        try:
            yield worker, store
        finally:
            await close_storage(worker, store)
