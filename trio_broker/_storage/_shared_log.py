"""One fsync per loop turn for every group a broker hosts (docs/replication.md, "One shared
log per broker"; docs/performance.md, "One fsync per turn for every group").

Each group replica keeps its whole store in its own SQLite file, as before (its log, hard
state, queues, snapshots: nothing moves). What changes is who fsyncs. The part of a save that
must be durable before anything is acknowledged (new log entries, a truncation, the hard
state when the term or vote changes) is also written to the broker's **shared log**
(``groups/shared-log.sqlite3``, WAL, ``synchronous = FULL``): one transaction and one fsync for
every group of the turn. Each group's own transaction then commits at ``synchronous = NORMAL``
(no fsync). That is the shape of Pebble's WAL under CockroachDB's ranges and of TiKV's
raft-engine: one synced stream shared by every group, each group's own files written lazily
and made durable before the shared stream forgets them.

The rules that keep it safe:

- **Shared log first.** A group's transaction commits only after the shared log's commit (one
  fsync) returned, and a save returns (so its acknowledgements leave) only after both.
- **A save alone in its fsync writes no row** (:func:`own_save`: a batch of one, a save run in
  a driver's step): its group's transaction commits at ``FULL``, as a store of its own; the
  row would only add a second commit. It records the group's last row as the file's mark.
- **Redo at open.** Each group's file records, in the same transaction as what it persisted,
  the last shared-log sequence number it reflects (``shared_seq``). WAL mode keeps a prefix of
  a file's commits through a power loss, so whatever the cut took from the group's file is in
  the shared log after that number: :func:`attach` replays it (truncations, entries, hard
  state, in order) in one fsynced transaction before anything reads the file. The applied
  state is not in the shared log: it rolled back with the rest, ``applied_index`` with it, and
  the broker applies the committed entries again from its log, as after any restart.
- **Rows are keyed by the group file's incarnation** (a random id written when the file first
  meets a shared log), so a group retired and placed here again, in a new empty file, never
  replays the rows of its previous life.
- **Forget only what is durable elsewhere.** :meth:`SharedLog.trim` first commits each group's
  file at ``FULL`` (its WAL synced: every earlier commit of that file durable), then deletes
  the rows that commit covers. Anything else that drops log entries (a compaction, a snapshot
  install) already commits at ``FULL`` in the group's file. Closing a store (a clean stop, or
  a replica retired) syncs its file and deletes its rows: a group removes only its own.
- ``AUTOINCREMENT``: a committed sequence number is never reused, even once every row is
  deleted (a number whose transaction rolled back is handed out again: a row becomes its
  group's last only at its apply stage, after the shared commit returned).

:class:`TurnCommitter` collects the saves of every group woken in the same loop turn into one
job on the one storage thread the broker's groups share (bounded: :data:`MAX_BATCH_JOBS` jobs
and :data:`MAX_BATCH_ENTRIES` entries, first come first served; a later save waits for the
next job, which starts as soon as this one ends): the first save to arrive leads the batch, as
in raft-engine's write queue.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import attrs
import orjson
import outcome
import trio

from .._core._raft_messages import Entry, HardState
from .._protocol._entries import stored_entry
from ._checkpoint import checkpoint_on_commit, close_checkpointed, close_unwritten, keep_wal
from ._failed import (
    any_lost,
    failed_here,
    lost_writes,
    marker_dir,
    refuse_if_failed,
    suppress_unless_lost,
)
from ._files import fsync_path
from ._worker import StorageWorker, close_storage, open_on

_logger = logging.getLogger("trio_broker")

SHARED_LOG_FILE = "shared-log.sqlite3"
"""The shared log's file, in the folder that holds the groups' folders."""

TRIM_ROWS = 16384
"""Rows (one per group per durable save) the shared log holds before a trim: a trim costs one
fsync per group that has rows, so it runs rarely (at 64 busy groups, every 256 turns)."""

MAX_BATCH_JOBS = 256
"""Saves in one shared transaction, at most (a broker hosts at most 1,024 groups)."""

MAX_BATCH_ENTRIES = 8192
"""Entries (new and committed) in one shared transaction, at most; a save is never split."""

IN_PLACE_JOBS = 1
"""A batch whose every save its driver judged short runs on the event loop (when the storage
thread is idle) only up to this many saves: one, as for a broker of one group. A batch of
several groups holds the loop for all of them (64 groups, one append in flight on each: 1,488
appends/s with one, 669 with eight; benchmarks/groups_fsync.py)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shared_meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS shared_ops (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    incarnation   TEXT    NOT NULL,
    truncate_from INTEGER,
    hard_state    BLOB
);

CREATE INDEX IF NOT EXISTS shared_ops_by_group ON shared_ops (incarnation, seq);

CREATE TABLE IF NOT EXISTS shared_entries (
    seq       INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    term      INTEGER NOT NULL,
    checksum  INTEGER NOT NULL,
    payload   BLOB    NOT NULL,
    PRIMARY KEY (seq, log_index)
) STRICT, WITHOUT ROWID;
"""


def roll_back_open(db: Any) -> None:
    """After a failed COMMIT: roll back the transaction if SQLite left it open (it may, after
    ``SQLITE_BUSY`` or when apsw's own rollback fails too). Left open, every later ``with
    db:`` would be a savepoint inside it, never committed, and ``PRAGMA synchronous`` would be
    refused (a store left at ``NORMAL``)."""
    open_ = getattr(db, "getautocommit", None)  # (a test's stand-in for the log may lack it)
    if open_ is not None and not open_():
        db.execute("ROLLBACK")


class SharedLog:
    """The broker's shared log: synchronous, used on the storage thread only."""

    def __init__(self, path: Path | str, *, vfs: str | None = None) -> None:
        self.path = Path(path)
        self._db = apsw.Connection(str(self.path), vfs=vfs)
        try:
            db = self._db
            db.setbusytimeout(5000)
            (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode.lower() != "wal":
                raise RuntimeError(f"could not put the shared log in WAL mode (got {mode})")
            db.execute("PRAGMA synchronous = FULL")
            checkpoint_on_commit(db)  # (a failed fsync in a checkpoint fails its commit)
            keep_wal(db)  # (its blocks kept across a clean close, as a store's)
            with db:
                db.execute(_SCHEMA)
                row = db.execute("SELECT value FROM shared_meta WHERE key = 'log_id'").fetchone()
                if row is None:
                    row = (secrets.token_hex(8),)
                    db.execute("INSERT INTO shared_meta (key, value) VALUES ('log_id', ?)", row)
            self.log_id: str = row[0]
            fsync_path(self.path)
            fsync_path(self.path.parent)
            (self.rows,) = db.execute("SELECT count(*) FROM shared_ops").fetchone()
            self._kept = self.rows
            """Rows the last trim (or the open) left: a group's not open here, until it opens."""
        except BaseException as exc:
            close_unwritten(self._db)  # (no closing checkpoint: Store.__init__ says why)
            if lost_writes(exc):
                failed_here(exc, self.path, self.path.parent.parent)
            raise
        self.members: dict[str, Any] = {}
        """The open stores that write here, by incarnation (a trim syncs them)."""

    @property
    def transaction(self) -> apsw.Connection:
        """``with log.transaction:``: one durable transaction (nested: a savepoint)."""
        return self._db

    def write(
        self,
        incarnation: str,
        truncate_from: int | None,
        entries: Sequence[Entry],
        hard_state: dict[str, Any] | None,
    ) -> int:
        """Record one group's durable save (inside a transaction); returns its number."""
        db = self._db
        db.execute(
            "INSERT INTO shared_ops (incarnation, truncate_from, hard_state) VALUES (?, ?, ?)",
            (incarnation, truncate_from, None if hard_state is None else orjson.dumps(hard_state)),
        )
        seq = db.last_insert_rowid()
        if entries:
            db.executemany(
                "INSERT INTO shared_entries (seq, log_index, term, payload, checksum)"
                " VALUES (?, ?, ?, ?, ?)",
                [(seq, e.index, e.term, *stored_entry(e)) for e in entries],
            )
        self.rows += 1
        return seq

    def ops_after(self, incarnation: str, seq: int) -> list[tuple[int, Any, Any, list[Any]]]:
        """One group's saves after ``seq``, in order: (seq, truncate_from, hard state items,
        [(index, term, payload, checksum)])."""
        db = self._db
        return [
            (
                s,
                truncate_from,
                None if hard is None else orjson.loads(hard),
                db.execute(
                    "SELECT log_index, term, payload, checksum FROM shared_entries"
                    " WHERE seq = ? ORDER BY log_index",
                    (s,),
                ).fetchall(),
            )
            for s, truncate_from, hard in db.execute(
                "SELECT seq, truncate_from, hard_state FROM shared_ops"
                " WHERE incarnation = ? AND seq > ? ORDER BY seq",
                (incarnation, seq),
            ).fetchall()
        ]

    def forget(self, incarnation: str, through: int | None = None) -> None:
        """Delete one group's rows (those up to ``through``, or all), in their own
        transaction."""
        try:
            with self._db:
                self._forget(incarnation, through)
        except BaseException:
            roll_back_open(self._db)
            raise

    def _forget(self, incarnation: str, through: int | None) -> None:
        db = self._db
        top = 2**63 - 1 if through is None else through
        db.execute(
            "DELETE FROM shared_entries WHERE seq IN"
            " (SELECT seq FROM shared_ops WHERE incarnation = ? AND seq <= ?)",
            (incarnation, top),
        )
        db.execute("DELETE FROM shared_ops WHERE incarnation = ? AND seq <= ?", (incarnation, top))
        self.rows -= db.changes()

    def drop(self, seq: int) -> None:
        """Delete one row (inside a transaction)."""
        self._db.execute("DELETE FROM shared_entries WHERE seq = ?", (seq,))
        self._db.execute("DELETE FROM shared_ops WHERE seq = ?", (seq,))
        self.rows -= self._db.changes()

    def group_rows(self) -> dict[str, int]:
        """Rows held per incarnation (tests, statistics)."""
        return dict(
            self._db.execute(
                "SELECT incarnation, count(*) FROM shared_ops GROUP BY incarnation ORDER BY 1"
            )
        )

    def trim(self) -> None:
        """Make every open store's file durable and forget the rows it covers (rows of a
        group not open here stay until it opens and replays them)."""
        holding = self.group_rows()
        marks = [
            (inc, store.sync_shared())
            for inc, store in sorted(self.members.items())
            if inc in holding
        ]
        try:
            with self._db:
                for inc, mark in marks:
                    self._forget(inc, mark)
        except BaseException:
            roll_back_open(self._db)
            raise
        for inc, mark in marks:
            store = self.members[inc]
            store._abandoned = {seq for seq in store._abandoned if seq > mark}
        (self.rows,) = self._db.execute("SELECT count(*) FROM shared_ops").fetchone()
        self._kept = self.rows

    def trim_due(self) -> bool:
        """Whether TRIM_ROWS rows were added since the last trim (rows a trim cannot delete,
        of groups not open here, do not make every turn trim)."""
        return self.rows > self._kept + TRIM_ROWS

    def maybe_trim(self) -> None:
        """Trim if one is due."""
        if self.trim_due():
            self.trim()

    def close(self) -> None:
        """Close after our checkpoint; a failed fsync in it is reported as any other
        (``Store.close``): the mark in the broker's folder (this file's folder's parent),
        the error raised with its :class:`~._failed.StorageFailed` (``_failed.failed_here``)."""
        try:
            close_checkpointed(self._db)
        except BaseException as exc:
            if not lost_writes(exc):
                raise
            close_unwritten(self._db)
            failed_here(exc, self.path, self.path.parent.parent)
            raise

    def abandon(self) -> None:
        """Close writing nothing, after a failed write (``Store.abandon``)."""
        close_unwritten(self._db)


def attach(
    db: apsw.Connection, log: SharedLog, set_meta: Callable[[dict[str, Any]], None]
) -> tuple[str, int]:
    """A group's file meets the shared log (at open): take back what a power cut or crash took
    from it (every save of its incarnation after its ``shared_seq``, in one fsynced
    transaction), and return its incarnation and that number. A file opened for the first time
    with a shared log, or with another one than it last met, gets a new incarnation: no row
    anywhere concerns it."""

    def meta(key: str) -> Any:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    incarnation, mark = meta("shared_incarnation"), meta("shared_seq") or 0
    if incarnation is None or meta("shared_log_id") != log.log_id:
        incarnation, mark = secrets.token_hex(8), 0
        with db:
            set_meta(
                {"shared_incarnation": incarnation, "shared_log_id": log.log_id, "shared_seq": 0}
            )
        return incarnation, mark
    ops = log.ops_after(incarnation, mark)
    if ops:
        with db:
            for seq, truncate_from, hard, rows in ops:
                if truncate_from is not None:
                    db.execute("DELETE FROM raft_log WHERE log_index >= ?", (truncate_from,))
                if rows:
                    db.executemany(
                        "INSERT OR REPLACE INTO raft_log (log_index, term, payload, checksum)"
                        " VALUES (?, ?, ?, ?)",
                        rows,
                    )
                if hard is not None:
                    set_meta(hard)
                mark = seq
            set_meta({"shared_seq": mark})
        log.forget(incarnation, mark)
    return incarnation, mark


def attach_store(store: Any, shared: SharedLog | None, vfs: str | None) -> None:
    """At a store's open: with ``shared``, :func:`attach` it (and note it for trims); without,
    a group file that last ran with a shared log takes back what it lacks from it (if the
    file is there: ``python -m trio_broker data`` on a stopped broker) and then stands alone."""
    store._abandoned = set()  # (rows of failed saves whose delete failed: abandon_save)
    if shared is not None:
        store._incarnation, store._shared_last = attach(store._db, shared, store._set_meta)
        shared.members[store._incarnation] = store
        return
    alone = store.data_dir.parent / SHARED_LOG_FILE
    if store.get_meta("shared_incarnation") is None or not alone.exists():
        return
    log = SharedLog(alone, vfs=vfs)
    try:
        incarnation, mark = attach(store._db, log, store._set_meta)
        log.forget(incarnation, mark)
        with store._db:
            store._set_meta({"shared_incarnation": None, "shared_seq": None})
    finally:
        log.close()


def journal_save(
    store: Any,
    hard_state: HardState | None,
    truncate_from: int | None,
    entries: Sequence[Entry],
    snapshot: Any,
) -> None:
    """The journal stage of a store's save: its durable part as one shared-log row, inside
    the shared log's open transaction. A snapshot install is not journaled: it commits at
    ``FULL`` in the group's own file."""
    shared = store._shared
    store._pending_seq = None
    if snapshot is not None or not store._is_durable(hard_state, truncate_from, entries, None):
        return
    from ._store import _hard_state_items

    hard = None if hard_state is None else _hard_state_items(hard_state, None)
    for seq in store._abandoned:
        # A failed save's row whose delete failed: deleted with this row or not at all, so
        # that a redo never replays it before this one (entries the group never committed,
        # under a later row that does not truncate them: a log whose terms go down).
        shared.drop(seq)
    # (the group's last row only once the shared log's commit returned: its apply stage; a
    # commit that fails rolls the row back, and its number is handed out again)
    store._pending_seq = shared.write(store._incarnation, truncate_from, entries, hard)


def abandon_save(store: Any) -> None:
    """Delete the shared-log row of a save whose own transaction failed (inside the shared
    log's transaction)."""
    seq, store._pending_seq = store._pending_seq, None
    if seq is not None:
        # (kept until a trim or a mark covers it: this delete may fail, or its commit)
        store._abandoned.add(seq)
        store._shared.drop(seq)


def shared_stage(store: Any, stage: str | None, **save: Any) -> list[Any]:
    """A shared store's save at ``stage`` (``Store.save``): ``"journal"``, ``"abandon"``, or
    None: a save alone in its fsync (:func:`own_save`)."""
    if stage == "journal":
        journal_save(
            store, save["hard_state"], save["truncate_from"], save["entries"], save["snapshot"]
        )
        return []
    if stage == "abandon":
        abandon_save(store)
        return []
    return own_save(store, **save)


def own_save(store: Any, **save: Any) -> list[Any]:
    """A save alone in its fsync (a step's save, a batch of one): the group's own transaction
    only, at ``FULL`` when it makes anything durable (its file's WAL fsynced, as a store of
    its own), and no shared-log row. A row is worth its cost only when several groups' saves
    share its fsync: alone, it is a second commit (the entries' bytes written again, the
    shared log's pages, its fsync) before the group's own at ``NORMAL``, about 100 µs of CPU
    more than this one commit (docs/performance-history.md, "Several groups' saves of one receive
    (seventh round)"). Such a transaction also records the group's last row as the file's
    ``shared_seq``: every row of the group is older than it, so a restart replays none over
    it (the row of a save whose transaction failed and whose drop failed too included)."""
    return store.save(stage="own", **save)


def _weight(save: Callable[..., Any]) -> int:
    keywords = getattr(save, "keywords", {})
    return 1 + len(keywords.get("entries", ())) + len(keywords.get("committed", ()))


_FLUSH = object()


@attrs.define(eq=False)
class _Job:
    save: Callable[..., Any]
    short: bool
    task: Any
    weight: int


class TurnCommitter:
    """Collects the saves of every group woken in one loop turn into one storage job: one
    shared-log transaction (one fsync), then each group's own transaction (no fsync)."""

    def __init__(self, worker: StorageWorker, log: SharedLog) -> None:
        self._worker = worker
        self._log = log
        self._waiting: collections.deque[_Job] = collections.deque()
        self._leading = False
        self._trim_queued = False
        self.batches = 0
        self.saves = 0
        self.own = 0
        """Batches of one save, run alone in its fsync (:func:`own_save`: no shared-log row)."""
        self.saves_here = 0
        """Saves a driver ran on the event loop itself while this was idle (its in-step
        paths: :meth:`note_saved_here`), each alone in its fsync (:func:`own_save`)."""
        self.synced_here = False
        """A save run on the event loop fsynced its group's file in this loop turn (cleared at
        the next: :meth:`note_saved_here`): another group's durable save of the same turn
        then goes to its driver and the next batch, as ``IN_PLACE_JOBS`` keeps a batch of
        several groups off the loop."""

    @property
    def idle(self) -> bool:
        """No save waits for a batch or runs in one, and no trim is queued (the storage
        thread's idleness is the worker's). Then a save run on the event loop now, as
        :meth:`~._store.Store.save` with no stage runs it (alone in its fsync: its group's
        transaction at ``FULL``, no row, :func:`own_save`), is alone on the shared log and on
        every group's file, and every row written before it is older: what a batch of one
        short save does (``IN_PLACE_JOBS``), without the batch's checkpoint. A batch that
        starts later runs after it."""
        return not self._leading and not self._waiting and not self._trim_queued

    def note_saved_here(self, saves: int = 1, *, trim: bool = True, synced: bool = False) -> None:
        """A driver ran ``saves`` on the event loop while this was :attr:`idle`: count them;
        with ``synced`` (one fsynced its group's file), no other durable save runs on the loop
        before the next turn (:attr:`synced_here`); with ``trim`` (its step's last), queue a
        trim on the storage thread if one is due (as after a batch run in place)."""
        self.saves_here += saves
        if synced and not self.synced_here:
            self.synced_here = True
            trio.lowlevel.current_trio_token().run_sync_soon(self._next_turn)
        if trim:
            self._hand_trim()

    def _next_turn(self) -> None:
        self.synced_here = False

    async def save(self, save: Callable[..., list[Any]], *, short: bool = False) -> list[Any]:
        """Run ``save`` (a store's ``save`` with its arguments bound: called with
        ``stage="journal"`` then ``stage="apply"``) in this turn's batch; its result, or its
        exception. Never abandoned halfway: a cancellation waits for the batch."""
        await trio.lowlevel.checkpoint_if_cancelled()
        job = _Job(save, short, trio.lowlevel.current_task(), _weight(save))
        self._waiting.append(job)
        if self._leading:
            got = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
            if got is not _FLUSH:
                return got.unwrap()
        self._leading = True
        batch: list[_Job] = []
        results: list[outcome.Outcome] = []
        # No cancel point from here to the results: the turn's checkpoint is only a schedule
        # point, and the batch runs here or is handed to the thread and waited for without
        # one (:meth:`_run`), so no cancellation can leave the batch halfway, and no shielded
        # cancel scope is needed (its entry and exit cost the loop about 5 µs a save).
        try:
            # Every group woken in this turn runs up to its save before this one goes on.
            await trio.lowlevel.cancel_shielded_checkpoint()
            batch = self._take()
            try:
                results = await self._run(batch)
            except BaseException as exc:  # pragma: no cover - the storage thread is gone
                results = [outcome.Error(exc) for _ in batch]
        finally:
            for other, result in zip(batch[1:], results[1:], strict=True):
                trio.lowlevel.reschedule(other.task, outcome.Value(result))
            self._leading = False
            if self._waiting:
                self._leading = True
                trio.lowlevel.reschedule(self._waiting[0].task, outcome.Value(_FLUSH))
        return results[0].unwrap()

    def _take(self) -> list[_Job]:
        batch = [self._waiting.popleft()]
        weight = batch[0].weight
        while (
            self._waiting
            and len(batch) < MAX_BATCH_JOBS
            and weight + self._waiting[0].weight <= MAX_BATCH_ENTRIES
        ):
            job = self._waiting.popleft()
            batch.append(job)
            weight += job.weight
        return batch

    async def _run(self, batch: list[_Job]) -> list[outcome.Outcome]:
        """The batch's job, here or on the storage thread: never a cancel point (as
        ``StorageWorker.run_short`` and ``run`` without their cancellation checks)."""
        self.batches += 1
        self.saves += len(batch)
        worker = self._worker
        if len(batch) <= IN_PLACE_JOBS and all(job.short for job in batch):
            # Perhaps run on the event loop: never a trim there (one FULL commit per group
            # holding rows would hold every group's timers and heartbeats); it is handed to
            # the storage thread, and the saves that follow queue behind it.
            if worker.idle:  # (alone on the connections: StorageWorker.run_short)
                results = worker.run_here(functools.partial(self._commit, batch, trim=False))
            else:
                results = await self._hand(functools.partial(self._commit, batch, trim=False))
            self._hand_trim()
            return results
        return await self._hand(functools.partial(self._commit, batch))

    async def _hand(self, job: Callable[[], list[outcome.Outcome]]) -> list[outcome.Outcome]:
        """Run ``job`` on the storage thread, after the jobs queued before, and wait for it
        without a cancel point (``Abort.FAILED``: it is queued, its outcome is awaited)."""
        task = trio.lowlevel.current_task()
        self._worker.submit(job, functools.partial(trio.lowlevel.reschedule, task))
        return await trio.lowlevel.wait_task_rescheduled(  # type: ignore[no-any-return]
            lambda _: trio.lowlevel.Abort.FAILED
        )

    def _hand_trim(self) -> None:
        """Queue a due trim on the storage thread (one at a time), without waiting for it."""
        if self._trim_queued or not self._log.trim_due():
            return
        self._trim_queued = True
        self._worker.submit(self._trim, self._trimmed)

    def _trim(self) -> None:
        with suppress_unless_lost():  # (rows kept: a later turn trims again)
            self._log.maybe_trim()

    def _trimmed(self, result: outcome.Outcome) -> None:
        self._trim_queued = False
        if isinstance(result, outcome.Error):  # pragma: no cover - apsw errors are caught
            _logger.error(
                f"storage.shared_trim_failed error={result.error!r}",
                exc_info=result.error,
                extra={"event": "storage.shared_trim_failed", "fields": {}},
            )

    def _commit(self, batch: list[_Job], *, trim: bool = True) -> list[outcome.Outcome]:
        """Every save's durable part in one shared-log transaction (each in a savepoint: one
        that fails fails alone), then each group's own; a batch of one save, its group's
        transaction alone (:func:`own_save`); then, with ``trim`` (on the storage thread
        only), a trim if one is due."""
        log = self._log
        if len(batch) == 1:
            # Alone in its fsync: the group's own transaction, no shared-log row (own_save).
            self.own += 1
            results = [outcome.capture(batch[0].save, stage="own")]
            if trim and not any_lost(results):
                with suppress_unless_lost():
                    log.maybe_trim()
            return results
        failed: dict[int, outcome.Outcome] = {}
        try:
            with log.transaction:
                for i, job in enumerate(batch):
                    try:
                        with log.transaction:
                            job.save(stage="journal")
                    except Exception as exc:
                        failed[i] = outcome.Error(exc)
        except Exception as exc:  # the commit itself failed: nothing of it is durable
            roll_back_open(log.transaction)
            return [outcome.Error(exc) for _ in batch]  # (an Outcome is unwrapped once)
        results = [
            failed[i] if i in failed else outcome.capture(job.save, stage="apply")
            for i, job in enumerate(batch)
        ]
        if any_lost(results):  # (nothing more through this storage: _failed, _worker)
            return results
        abandoned = [
            job
            for i, (job, result) in enumerate(zip(batch, results, strict=True))
            if i not in failed and isinstance(result, outcome.Error)
        ]
        if abandoned:
            # A save whose own transaction failed drops its row: its driver saves again (the
            # same Ready) or restarts from the group's file, which lacks it; replayed later,
            # the row would put back entries the restarted core no longer counts on.
            try:
                with log.transaction:
                    for job in abandoned:
                        job.save(stage="abandon")
            except apsw.Error as exc:
                roll_back_open(log.transaction)
                if lost_writes(exc):  # (a failed fsync of the shared log: nothing more)
                    raise
        if trim:
            with suppress_unless_lost():  # (rows kept: the next turn trims again)
                log.maybe_trim()
        return results


@attrs.define
class SharedGroupStorage:
    """The default storage of a broker's extra groups (``_runtime._groups``): each group's
    store in its own folder, all of them on one storage thread and one shared log in the
    folders' parent, opened with the first group and closed with the last."""

    vfs: str | None = None
    _users: int = 0
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _worker: StorageWorker | None = None
    _log: SharedLog | None = None
    committer: TurnCommitter | None = None

    @contextlib.asynccontextmanager
    async def __call__(self, group_id: str, path: Path) -> AsyncIterator[tuple[Any, Any]]:
        from ._store import Store

        # A write failed in this broker's folder (its group folders' locks are released once
        # the mark is on disk): a group opened again in this process, on a fresh storage
        # thread once the failed one's last group left, would write there.
        refuse_if_failed(marker_dir(path))
        worker, log = await self._acquire(Path(path).parent)
        try:
            store = await open_on(worker, functools.partial(Store, path, vfs=self.vfs, shared=log))
            try:
                yield worker, store
            finally:
                await close_storage(worker, store)  # (failed: abandoned, nothing written)
        finally:
            with trio.CancelScope(shield=True):
                await self._release()

    async def _acquire(self, folder: Path) -> tuple[StorageWorker, SharedLog]:
        async with self._lock:
            if self._worker is None:
                worker = StorageWorker(name="trio-broker-shared-storage")
                try:
                    log = await open_on(
                        worker, functools.partial(SharedLog, folder / SHARED_LOG_FILE, vfs=self.vfs)
                    )
                except BaseException:
                    worker.stop()
                    with trio.CancelScope(shield=True):
                        await worker.wait_stopped()
                    raise
                self.committer = TurnCommitter(worker, log)
                worker.save_in_turn = self.committer.save
                worker.committer = self.committer
                self._worker, self._log = worker, log
            self._users += 1
            assert self._log is not None
            return self._worker, self._log

    async def _release(self) -> None:
        async with self._lock:
            self._users -= 1
            if self._users or self._worker is None:
                return
            worker, log = self._worker, self._log
            self._worker = self._log = self.committer = None
            try:
                if log is not None:
                    await close_storage(worker, log)
            finally:
                worker.stop()
                await worker.wait_stopped()


__all__ = [
    "SHARED_LOG_FILE",
    "SharedGroupStorage",
    "SharedLog",
    "TurnCommitter",
    "abandon_save",
    "attach",
    "attach_store",
    "journal_save",
    "own_save",
    "shared_stage",
]
