"""Durable queue storage in SQLite, through apsw. Synchronous: call it from one thread only.

Every acknowledged change is committed by :meth:`Store.apply` in one transaction with
``synchronous=FULL`` in WAL mode, so it is on disk (fsynced) before the call returns. Many
commands in one call share one transaction and one fsync: that is group commit. The queue
commands' SQL is in :mod:`._queue_sql` and :mod:`._work_sql`; checksums in :mod:`._integrity`.

Damage (docs/reliability.md, "Damaged data"). Every log entry and stored value carries a
CRC32C, checked when it is read back. Opening runs SQLite's ``quick_check`` and checks every
log entry: a file that cannot be read, or fails the check, raises :class:`StorageDamaged`;
damaged log entries do not stop the open but are kept for :meth:`Store.log_damage`, and
:meth:`Store.raft_state` never hands a damaged entry to the consensus core.
A value that fails its check is never served: the read answers ``UNAVAILABLE``.

Protocol-aware recovery (docs/reliability.md, "Damaged and shortened logs"):
:meth:`Store.log_damage` returns None for an intact log, else a :class:`LogDamage` with
``first_damaged`` (the first index whose entry is damaged or missing: the log is intact below
it) and ``last_index`` (the last index the log held, which is what this broker may have
acknowledged to a leader). :meth:`Store.raft_state` then returns the log before
``first_damaged`` with ``damage = (first_damaged, last_index)``; ``_runtime._recovery.make_node``
gives the core that log and ``acknowledged=last_index``, so it recovers (neither leads nor
votes for a log behind what it lost) until its peers have given the entries back, and its
first write truncates the damaged suffix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw
import attrs
import google_crc32c
import orjson

from .._core._commands import Command, Result, RetentionPolicy
from .._core._raft_messages import Config, Entry, HardState, SnapshotMeta
from .._protocol._entries import config_from_obj, config_to_obj, stored_entry
from ._checkpoint import checkpoint_on_commit, close_checkpointed, close_unwritten, keep_wal
from ._failed import failed_here, lost_writes, marker_dir, read_marker
from ._file_checks import LogDamage, check_incoming_values, check_log, check_on_open, read_log
from ._files import DB_FILE, DataDirInUse, DirLock, sync_new_files
from ._integrity import (
    DAMAGE_ERRORS,
    StorageDamaged,
    StoredRow,
    damage_from,
    damaged_values,
    intact_rows,
    needs_repair,
    read_values,
    repair_rows,
)
from ._queue_sql import apply_command, policy_from_row, stored_groups, stored_map
from ._schema import WORK_TABLES, upgrade_opened
from ._shared_log import SharedLog, attach_store, roll_back_open, shared_stage
from ._work_queries import next_lease_deadline, queue_id_for_name

_STATE_TABLES = ("queues", "queue_data", "client_positions", "brokers", "producers", *WORK_TABLES)

__all__ = ["DB_FILE", "DataDirInUse", "Identity", "LogDamage", "StorageDamaged", "Store"]


@attrs.frozen
class Identity:
    broker_id: str
    cluster_id: str


class Store:
    """A broker's database: identity, queues, messages and read positions."""

    def __init__(
        self, data_dir: Path | str, *, vfs: str | None = None, shared: SharedLog | None = None
    ) -> None:
        """Open (creating if need be) the database in ``data_dir``; ``vfs`` names an SQLite
        VFS to open it through (tests: :mod:`trio_broker.testing._powerloss`), the default
        one if None. With ``shared``, the broker's shared log (:mod:`._shared_log`) holds the
        durable part of every save and this file is synced lazily; a file that last ran with
        one and is opened alone takes back from it what it lacks first."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._written: HardState | None = None
        """The hard state the last committed :meth:`save` wrote, while nothing else wrote
        those keys since (None: unknown, read from the table): a save then writes only the
        fields that changed (usually the commit index alone, and not even that when the save
        applies up to it: :func:`_hard_state_items`)."""
        self.hold_damage = False
        """Whether :meth:`save` lets a damaged value that a command reads fail the whole
        transaction, for the broker to repair it from a peer and save again (set by
        ``_runtime/_repair.py`` while the group has other members)."""
        self.unchecked_reads = False
        """With :attr:`hold_damage`, whether nobody waits for the results of the next
        :meth:`save`: reads whose effect does not depend on the values' bytes are then applied
        over damage (``_queue_sql.apply_command``); :attr:`unchecked_met` lists where."""
        self.unchecked_met: list[tuple[str, int]] = []
        self._at_normal = False
        """A save's reset of ``synchronous`` from ``NORMAL`` to ``FULL`` failed: the next
        commit that must be durable sets ``FULL`` first (:meth:`_full_again`)."""
        self._lock = DirLock(self.data_dir)
        path = str(self.data_dir / DB_FILE)
        try:
            try:
                self._db = apsw.Connection(path, vfs=vfs)
                self._configure()
                check_on_open(self._db)
                upgrade_opened(self._db, path)
            except DAMAGE_ERRORS as exc:
                raise damage_from(exc, path, None, None) from None
            self._shared = shared
            self._pending_seq: int | None = None
            """The shared-log row of the save in progress (its journal stage wrote it)."""
            self._shared_last = 0
            self._incarnation = ""
            attach_store(self, shared, vfs)
            self._marked = self._shared_last
            """The ``shared_seq`` this file's last committed transaction holds (the mark
            :func:`~._shared_log.attach` found or wrote, then each save's): a save whose mark
            equals it does not write it again."""
            sync_new_files(self.data_dir)
            self._log_damage = check_log(self._db, self.get_meta("snapshot_index", 0))
        except BaseException as exc:
            # No closing checkpoint, whatever failed: SQLite's own would write and sync the
            # file (a damaged one too), drop a failed fsync's error and delete the WAL, whose
            # commits are durable already. A failed write is reported as in close().
            if hasattr(self, "_db"):
                close_unwritten(self._db)
            if lost_writes(exc):
                failed_here(exc, self.data_dir / DB_FILE, self.data_dir)
                if read_marker(marker_dir(self.data_dir)) is not None:
                    self._lock.release()
                raise
            self._lock.release()
            raise

    def _configure(self) -> None:
        db = self._db
        db.setbusytimeout(5000)
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            raise RuntimeError(f"could not put the database in WAL mode (got {mode})")
        # FULL: the WAL is fsynced at every commit, so a commit that returned survives a crash
        # or power loss. Nothing is acknowledged before its commit returns.
        db.execute("PRAGMA synchronous = FULL")
        # SQLite's automatic checkpoint drops its errors: ours fails the commit on a failed
        # fsync (docs/reliability.md, "A failed fsync stops the broker")
        checkpoint_on_commit(db)
        # The WAL's blocks kept across a clean close: a start writes over them instead of
        # growing the file, whose fsyncs cost more (_checkpoint, "The WAL is kept")
        keep_wal(db)
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA cache_size = -16000")

    def close(self) -> None:
        """Close the file; with a shared log, sync it first and delete this group's rows there
        (a clean stop, or a replica retired, leaves no row behind). The close-time checkpoint
        is ours: a failed fsync in it raises, and after one nothing more is written
        (:func:`._checkpoint.close_checkpointed`). Such a failure is a failed fsync like any
        other (no driver runs any more to report it): the mark written, the lock kept until
        it is on disk (:meth:`abandon`), the error raised with its :class:`StorageFailed`
        (:func:`._failed.failed_here`; the runtime raises that one)."""
        checkpoint = True
        try:
            try:
                if self._shared is not None:
                    self._shared.members.pop(self._incarnation, None)
                    self._shared.forget(self._incarnation, self.sync_shared())
            except BaseException as exc:
                checkpoint = not lost_writes(exc)
                raise
            finally:
                close_checkpointed(self._db, checkpoint=checkpoint)
        except BaseException as exc:
            if lost_writes(exc):
                failed_here(exc, self.data_dir / DB_FILE, self.data_dir)
                self.abandon()
                raise
            self._lock.release()
            raise
        self._lock.release()

    def abandon(self) -> None:
        """Close after a write failed that may have lost writes (:mod:`._failed`): no
        checkpoint, nothing written or synced, the WAL kept as the failure left it
        (:func:`._checkpoint.close_unwritten`). The folder's lock is released only once the
        mark that refuses the folder is on disk (a failed disk may refuse it too: then the
        process keeps the lock until it ends, so that nothing in it opens the folder again)."""
        close_unwritten(self._db)
        if read_marker(marker_dir(self.data_dir)) is not None:
            self._lock.release()

    def sync_shared(self) -> int:
        """Commit at ``FULL`` (the file's WAL synced: every earlier commit durable); returns
        the last shared-log row the file now durably reflects."""
        # Every row of this group up to its last is reflected here or was never committed here
        # (its save failed, and the delete of its row perhaps too): marked, none is replayed.
        mark = max(self.get_meta("shared_seq", 0), self._shared_last)
        self._full_again()
        try:
            with self._db:
                self._set_meta({"shared_synced": mark, "shared_seq": mark})
        except BaseException:
            roll_back_open(self._db)
            raise
        self._marked = mark  # (the file's mark now: a lone save's equal mark is not rewritten)
        return mark

    def _full_again(self) -> None:
        """Back to ``synchronous = FULL`` if a save's reset from ``NORMAL`` failed."""
        if self._at_normal:
            self._db.execute("PRAGMA synchronous = FULL")
            self._at_normal = False

    def _is_durable(
        self,
        hard_state: HardState | None,
        truncate_from: int | None,
        entries: Sequence[Entry],
        snapshot: Any,
    ) -> bool:
        written = self._written
        return bool(entries or truncate_from is not None or snapshot) or (
            hard_state is not None
            and (hard_state.term, hard_state.voted_for)
            != (self._durable_term_vote() if written is None else (written.term, written.voted_for))
        )

    # -- identity and metadata ------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def identity(self) -> Identity | None:
        broker_id = self.get_meta("broker_id")
        cluster_id = self.get_meta("cluster_id")
        if broker_id is None or cluster_id is None:
            return None
        return Identity(broker_id, cluster_id)

    def init_identity(self, broker_id: str, cluster_id: str) -> Identity:
        """Store the identity on first start; later starts must agree with it."""
        with self._db:
            found = self.identity()
            if found is not None:
                return found
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("broker_id", broker_id), ("cluster_id", cluster_id), ("cluster_version", 1)],
            )
        return Identity(broker_id, cluster_id)

    # -- the state machine ----------------------------------------------------------------------

    def apply(self, commands: Sequence[Command]) -> list[Result]:
        """Apply commands in order in one durable transaction; one result per command.

        A command that is refused (unknown queue, say) changes nothing and yields a
        :class:`CommandRejected`; the others in the batch are applied regardless.
        """
        with self._db:
            return [apply_command(self._db, c) for c in commands]

    # -- queries --------------------------------------------------------------------------------

    def queue_id_for_name(self, name: str) -> str | None:
        return queue_id_for_name(self._db, name)

    def next_lease_deadline(self) -> int | None:
        return next_lease_deadline(self._db)

    def queue_lengths(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT queue_id, length FROM queues ORDER BY queue_id"))

    def messages(self, queue_id: str) -> list[bytes]:
        """The values a queue holds, in order, each checked (:class:`StorageDamaged`)."""
        row = self._db.execute(
            "SELECT deleted_through, length FROM queues WHERE queue_id = ?", (queue_id,)
        ).fetchone()
        if row is None:
            return []
        return [data for _, data, _ in read_values(self._db, queue_id, row[0] + 1, row[1])]

    def queue_stats(self, limit: int) -> tuple[list[tuple[str, int]], list[tuple[str, str, int]]]:
        """The ``limit`` longest queues, and the ``limit`` largest client lags (messages of
        a queue a client has not read), for metrics."""
        queues = self._db.execute(
            "SELECT queue_id, length FROM queues ORDER BY length DESC, queue_id LIMIT ?",
            (limit,),
        ).fetchall()
        lags = self._db.execute(
            "SELECT p.client_id, p.queue_id,"
            " q.length - max(p.read_position, q.deleted_through) AS lag"
            " FROM client_positions AS p JOIN queues AS q USING (queue_id)"
            " ORDER BY lag DESC, p.client_id, p.queue_id LIMIT ?",
            (limit,),
        ).fetchall()
        return [tuple(r) for r in queues], [tuple(r) for r in lags]

    def list_queues(self, after: str | None, max_queues: int, max_clients: int) -> list[QueueRow]:
        """A page of queues after ``after`` (by id), each with the ``max_clients`` clients
        furthest behind."""
        page = self._db.execute(
            "SELECT queue_id, length, deleted_through, max_messages, max_age_ms,"
            " delete_acknowledged FROM queues WHERE queue_id > ? ORDER BY queue_id LIMIT ?",
            (after or "", max_queues),
        ).fetchall()
        return [
            QueueRow(
                queue_id,
                length,
                deleted + 1,
                policy_from_row(max_messages, max_age_ms, by_readers),
                self._db.execute(
                    "SELECT client_id, read_position FROM client_positions WHERE queue_id = ?"
                    " ORDER BY read_position, client_id LIMIT ?",
                    (queue_id, max_clients),
                ).fetchall(),
            )
            for queue_id, length, deleted, max_messages, max_age_ms, by_readers in page
        ]

    def retention_policies(self) -> dict[str, RetentionPolicy]:
        """The queues that have a retention policy, and their policies."""
        return {
            queue_id: policy_from_row(max_messages, max_age_ms, by_readers)
            for queue_id, max_messages, max_age_ms, by_readers in self._db.execute(
                "SELECT queue_id, max_messages, max_age_ms, delete_acknowledged FROM queues"
                " WHERE max_messages IS NOT NULL OR max_age_ms IS NOT NULL"
                " OR delete_acknowledged ORDER BY queue_id"
            )
        }

    def first_retained(self) -> dict[str, int]:
        """Each queue's first retained sequence number (its length + 1 when it holds none)."""
        return dict(self._db.execute("SELECT queue_id, deleted_through + 1 FROM queues"))

    def positions(self) -> dict[tuple[str, str], int]:
        return {
            (client_id, queue_id): position
            for client_id, queue_id, position in self._db.execute(
                "SELECT client_id, queue_id, read_position FROM client_positions"
            )
        }

    def broker_addresses(self) -> dict[str, tuple[str, int]]:
        return {
            broker_id: (host, port)
            for broker_id, host, port in self._db.execute(
                "SELECT broker_id, host, port FROM brokers"
            )
        }

    def group_ids(self) -> tuple[str, ...]:
        """The cluster's replication groups, once recorded (docs/replication.md)."""
        return stored_groups(self._db)

    def cluster_map(self) -> Any:
        """The metadata group's ``ClusterMap`` (unfounded before FOUND_CLUSTER)."""
        return stored_map(self._db)

    # -- the replicated log ---------------------------------------------------------------------

    def _set_meta(self, items: dict[str, Any]) -> None:
        """Upsert metadata; a None value removes the key."""
        if not _HARD_STATE_KEYS.isdisjoint(items):
            self._written = None  # (save() sets it again once its transaction commits)
        upserts = [(k, v) for k, v in items.items() if v is not None]
        if upserts:
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                upserts,
            )
        deletes = [(k,) for k, v in items.items() if v is None]
        if deletes:
            self._db.executemany("DELETE FROM meta WHERE key = ?", deletes)

    def _durable_term_vote(self) -> tuple[int, Any]:
        return (self.get_meta("raft_term", 0), self.get_meta("raft_voted_for"))

    def note_boot(self, boot_id: str | None) -> bool:
        """Record the machine's boot id (``_runtime._boot``) at a broker's start. When it is
        not the one recorded at the last start (or either is unknown), the machine rebooted
        since: a disk that lied about a sync may have lost synced writes, so the hard state
        is marked ``unverified`` in the same durable transaction (docs/reliability.md, "A
        reboot votes only once it knows"); the core clears it. Returns whether it did."""
        if boot_id is not None and self.get_meta("boot_id") == boot_id:
            return False
        with self._db:
            self._set_meta({"boot_id": boot_id, "raft_unverified": 1})
        return True

    def trust_log(self, boot_id: str | None) -> bool:
        """The operator's override (``python -m trio_broker data trust-log``): accept the log
        as it is, clearing ``unverified``, and record ``boot_id`` so that the next start on
        this boot does not mark it again. Returns whether it was marked."""
        was = bool(self.get_meta("raft_unverified", 0))
        with self._db:
            self._set_meta({"boot_id": boot_id, "raft_unverified": None})
        return was

    def log_damage(self) -> LogDamage | None:
        """What the check of the log at open found (see the module's docstring): None when
        every entry after the snapshot point matched its checksum and none was missing."""
        return self._log_damage

    def raft_state(self) -> RaftState:
        """Everything the consensus core is rebuilt from after a restart. A damaged entry (or
        metadata) raises :class:`StorageDamaged`: the core is never handed one."""
        get = self.get_meta
        config_json = get("snapshot_config")
        try:
            config = None if config_json is None else _config_from_json(config_json)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            raise damage_from(exc, self._db.filename, "meta", "snapshot_config") from None
        snapshot_index = get("snapshot_index", 0)
        applied = get("applied_index", snapshot_index)
        hard_state = HardState(
            term=get("raft_term", 0),
            voted_for=get("raft_voted_for"),
            # (a save that applies up to its commit index writes only the applied index: every
            # applied entry was committed, and durable in this log when it was applied)
            commit=max(get("raft_commit", 0), applied),
            recovering_until=get("raft_recovering_until", 0),
            recovering_term=get("raft_recovering_term", 0),
            unverified=bool(get("raft_unverified", 0)),
            vote_lost=bool(get("raft_vote_lost", 0)),
        )
        # Entries found damaged at open are not read: the core gets the log before them and
        # recovers (docs/reliability.md, "Damaged and shortened logs").
        damage = self._log_damage
        below = None if damage is None else damage.first_damaged
        entries = read_log(self._db, snapshot_index, below)
        return RaftState(
            hard_state=hard_state,
            snapshot_index=snapshot_index,
            snapshot_term=get("snapshot_term", 0),
            snapshot_config=config,
            entries=entries,
            applied=applied,
            damage=None if damage is None else (damage.first_damaged, damage.last_index),
            hard_state_loss=self.hard_state_loss(),
        )

    def hard_state_loss(self) -> str | None:
        """What is wrong with the stored term and vote, or None (docs/reliability.md, "A lost
        term or vote"): they fail the checksum written with them, or, in a store written
        before that checksum, the term is missing while the log holds entries, or is below the
        term of the log's last entry (a broker adopts a term before it stores an entry of it).
        Its consensus core then votes only once it learned a bound on the terms it voted in."""
        term, voted_for = self._durable_term_vote()
        stored = self.get_meta("raft_term_vote_crc")
        if stored is not None:
            if stored != term_vote_checksum(term, voted_for):
                return "the term and vote do not match their checksum"
            return None
        row = self._db.execute("SELECT MAX(term) FROM raft_log").fetchone()
        last_term = max(row[0] or 0, self.get_meta("snapshot_term", 0))
        if self.get_meta("raft_term") is None and last_term:
            return "the term and vote are missing while the log holds entries"
        if not isinstance(term, int) or term < last_term:
            return f"the term {term!r} is below that of the log's entries ({last_term})"
        return None

    def bootstrap(self, config: Config) -> None:
        """Record the first configuration of a brand-new cluster (before any entry)."""
        with self._db:
            self._set_meta({"snapshot_config": _config_to_json(config)})

    def save(
        self,
        *,
        hard_state: HardState | None = None,
        truncate_from: int | None = None,
        entries: Sequence[Entry] = (),
        snapshot: tuple[SnapshotMeta, str] | None = None,
        committed: Sequence[Entry] = (),
        stage: str | None = None,
        before_commit: Callable[[list[Result | None]], None] | None = None,
    ) -> list[Result | None]:
        """Persist one Ready in ONE durable transaction, then apply what it commits.

        With a shared log (:mod:`._shared_log`) a save has two stages: ``"journal"`` writes
        its durable part to the shared log (inside the transaction the caller commits for
        every group of the turn) and ``"apply"`` runs the transaction below at ``NORMAL``
        (a snapshot install at ``FULL``), recording the shared-log row it reflects; with
        ``stage`` None or ``"own"``, a save alone in its fsync: this transaction only, at
        ``FULL`` when it makes anything durable, no shared-log row; ``"abandon"`` deletes the
        row of a journal stage whose ``"apply"`` failed.

        Order inside the transaction: install ``snapshot`` (meta, path of the snapshot database
        file), truncate the log from ``truncate_from``, append ``entries``, store
        ``hard_state``, apply ``committed`` entries and record the applied index. Returns one
        result per committed entry (None for the core's own entries: no-ops, config changes).

        A transaction that only applies committed entries (and perhaps moves the commit index,
        which a restarted broker relearns from its leader) commits at ``synchronous = NORMAL``:
        its WAL frames are not fsynced at commit. Those entries are already durable in the log
        (on a majority), applying them is deterministic, and the applied index moves in the
        same transaction, so a power cut that loses it only means they are applied again, with
        the same results, on restart. The next fsynced commit makes it durable too, since the
        WAL is synced in order.

        NORMAL, never OFF: SQLite's automatic checkpoint runs inside the commit that crosses
        ``wal_autocheckpoint``, at that commit's level. At NORMAL it fsyncs the WAL before
        copying frames into the database file and fsyncs the database file before the WAL may
        be restarted; at OFF it does neither, and the next writer overwrites WAL frames whose
        only other copy was an unsynced database write: acknowledged entries lost at a power
        cut (``tests/test_power_loss.py`` cuts power at every sync point to show it).

        ``before_commit``, if given, is called with the results once the apply's statements
        ran, inside the transaction, before its metadata rows and its COMMIT: for a
        transaction that only applies entries already durable on a majority (never one that
        makes anything durable: a ``ValueError`` then), so that their answers leave without
        waiting for the COMMIT (docs/performance-history.md, "Answers before the apply's
        COMMIT"). It must not raise and must not touch this store; whatever it does stays done
        if the rest of the transaction then fails.
        """
        db = self._db
        written = self._written
        if self._shared is not None and stage not in ("apply", "own"):
            args = {"truncate_from": truncate_from, "entries": entries, "committed": committed}
            if before_commit is not None:
                # (a journal stage applies nothing; anything made durable is refused before
                # the shared log's row is written, as on a store of its own)
                if stage is not None or self._is_durable(
                    hard_state, truncate_from, entries, snapshot
                ):
                    raise ValueError("an answer before COMMIT only for an apply")
                args["before_commit"] = before_commit  # (to the apply stage's transaction)
            return shared_stage(self, stage, hard_state=hard_state, snapshot=snapshot, **args)
        durable = self._is_durable(hard_state, truncate_from, entries, snapshot)
        mark = None
        if self._shared is not None and stage == "own":
            # Alone in its fsync: durable in this file, no shared-log row (_shared_log.own_save)
            mark = self._shared_last if durable else None
        elif self._shared is not None:
            # The shared log made it durable: this file is synced lazily (a snapshot apart).
            # Its row committed (an apply stage runs only then), so it is the group's last,
            # even if this transaction fails: a later save alone marks it (own_save).
            if self._pending_seq is not None:
                self._shared_last = self._pending_seq
            durable = snapshot is not None
            mark = self._shared_last if durable else self._pending_seq
        if before_commit is not None and (durable or entries or truncate_from is not None):
            raise ValueError("an answer before COMMIT only for an apply")
        if durable and self._at_normal:
            self._full_again()
        if snapshot is not None:
            db.execute("ATTACH DATABASE ? AS incoming", (snapshot[1],))
        if not durable:
            self._at_normal = True
            db.execute("PRAGMA synchronous = NORMAL")
        try:
            with db:
                if snapshot is not None:
                    self._install_snapshot(*snapshot)
                if truncate_from is not None:
                    db.execute("DELETE FROM raft_log WHERE log_index >= ?", (truncate_from,))
                if entries:
                    db.executemany(
                        "INSERT OR REPLACE INTO raft_log (log_index, term, payload, checksum)"
                        " VALUES (?, ?, ?, ?)",
                        [(e.index, e.term, *stored_entry(e)) for e in entries],
                    )
                # (the commit index's row only when the applied index written below does not
                # already say it: raft_state() reads the larger of the two)
                applied = committed[-1].index if committed else 0
                if hard_state is not None and hard_state != written and before_commit is None:
                    self._set_meta(_hard_state_items(hard_state, written, applied))
                results: list[Result | None] = []
                met: list[tuple[str, int]] = []
                unchecked = met if self.hold_damage and self.unchecked_reads else None
                for entry in committed:
                    payload = entry.payload
                    if isinstance(payload, Command):
                        results.append(
                            apply_command(db, payload, hold=self.hold_damage, unchecked=unchecked)
                        )
                    else:
                        results.append(None)
                if before_commit is not None:
                    # The answers as soon as the apply's statements ran: the rows below (the
                    # commit and applied indexes, a mark) change nothing they say, and a
                    # failure in them rolls back as a failed COMMIT does.
                    before_commit(results)
                    if hard_state is not None and hard_state != written:
                        self._set_meta(_hard_state_items(hard_state, written, applied))
                if committed:
                    self._set_meta({"applied_index": committed[-1].index})
                if mark and mark != self._marked:
                    # (unchanged, not written again: the commit that wrote it is earlier in
                    # this file's WAL, so this one's fsync makes it durable too)
                    self._set_meta({"shared_seq": mark})
            self._pending_seq = None
            if mark:
                self._marked = mark
            if hard_state is not None:
                self._written = hard_state
            self.unchecked_met = met
            damage = self._log_damage
            if damage and truncate_from is not None and truncate_from <= damage.first_damaged:
                # The damaged rows are gone: the log is what has been written since (a driver
                # restart must not cut the entries a leader gave back).
                self._log_damage = None
            return results
        except BaseException:
            roll_back_open(db)  # (else SQLite refuses the PRAGMA below: left at NORMAL)
            raise
        finally:
            if not durable:
                db.execute("PRAGMA synchronous = FULL")
                self._at_normal = False
            if snapshot is not None:
                db.execute("DETACH DATABASE incoming")

    # -- repairing values from peers (_runtime/_repair.py) --------------------------------------

    def intact_rows(
        self, queue_id: str, first: int, max_rows: int, max_bytes: int
    ) -> list[StoredRow]:
        return intact_rows(self._db, queue_id, first, max_rows, max_bytes)

    def repair_rows(self, queue_id: str, rows: Sequence[StoredRow]) -> list[int]:
        return repair_rows(self._db, queue_id, rows)

    def damaged_values(
        self, after: tuple[str, int], limit: int, max_bytes: int | None = None
    ) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
        return damaged_values(self._db, after, limit, max_bytes)

    def needs_repair(self, queue_id: str, seq: int) -> bool:
        return needs_repair(self._db, queue_id, seq)

    def _install_snapshot(self, meta: SnapshotMeta, path: str) -> None:
        db = self._db
        check_incoming_values(db, path)
        for table in _STATE_TABLES:
            db.execute(f"DELETE FROM main.{table}")
            db.execute(f"INSERT INTO main.{table} SELECT * FROM incoming.{table}")
        db.execute("DELETE FROM raft_log")
        self._set_meta(
            {
                "snapshot_index": meta.index,
                "snapshot_term": meta.term,
                "snapshot_config": _config_to_json(meta.config),
                "applied_index": meta.index,
            }
        )

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop log entries up to ``meta.index`` (applied): the tables now stand in for them.

        A compaction that arrives after a later one (two compactions started together, or a
        snapshot from the leader installed meanwhile) does nothing: the snapshot point never
        moves back."""
        self._full_again()
        try:
            with self._db:
                if meta.index <= self.get_meta("snapshot_index", 0):
                    return
                self._db.execute("DELETE FROM raft_log WHERE log_index <= ?", (meta.index,))
                self._set_meta(
                    {
                        "snapshot_index": meta.index,
                        "snapshot_term": meta.term,
                        "snapshot_config": _config_to_json(meta.config),
                    }
                )
        except BaseException:
            roll_back_open(self._db)
            raise

    def log_size(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM raft_log").fetchone()
        return n

    def write_snapshot(self, path: str) -> int:
        """Write a consistent copy of the database to ``path``; returns its applied index.

        Runs on the storage thread between transactions, so the copy is exactly the state at
        the applied index it reports. Nothing durable depends on the file (SQLite happens to
        sync it; nothing here relies on that): it exists to be sent to a replica (which checks
        its SHA-256 and copies it into its own database in a fsynced transaction), it is known
        only in memory, and a restarted broker deletes every snapshot file it finds.
        """
        applied = self.get_meta("applied_index", self.get_meta("snapshot_index", 0))
        self._db.execute("VACUUM INTO ?", (path,))
        return applied


@attrs.frozen
class QueueRow:
    """One queue as LIST_QUEUES shows it."""

    queue_id: str
    length: int
    """Its last sequence number (0 before the first append), retained or not."""
    first_retained: int
    """The first message it still holds (``length + 1`` when it holds none)."""
    retention: RetentionPolicy
    clients: list[tuple[str, int]]
    """(client id, position) of the clients furthest behind."""

    @property
    def retained(self) -> int:
        return self.length - self.first_retained + 1


@attrs.frozen
class RaftState:
    hard_state: HardState
    snapshot_index: int
    snapshot_term: int
    snapshot_config: Config | None
    """None for a broker that has never been part of a cluster configuration."""
    entries: list[Entry]
    applied: int
    damage: tuple[int, int] | None = None
    """``(first_damaged, last_index)`` when entries failed their checksum on this read:
    ``entries`` then end before ``first_damaged``, and the broker recovers until
    ``last_index`` (``_runtime._recovery.make_node``)."""
    hard_state_loss: str | None = None
    """What :meth:`Store.hard_state_loss` found: the core is then built with the term of the
    log's last entry and its vote marked lost (``_runtime._recovery.make_node``)."""


_HARD_STATE_FIELDS = {
    "raft_term": "term",
    "raft_voted_for": "voted_for",
    "raft_commit": "commit",
    "raft_recovering_until": "recovering_until",
    "raft_recovering_term": "recovering_term",
    "raft_unverified": "unverified",
    "raft_vote_lost": "vote_lost",
}
_HARD_STATE_KEYS = frozenset(_HARD_STATE_FIELDS)


def _hard_state_items(
    hard_state: HardState, written: HardState | None, applied: int = 0
) -> dict[str, Any]:
    """The meta rows that store ``hard_state``: all of them, or only those that differ from
    ``written`` (what the table is known to hold, the commit index as :meth:`Store.raft_state`
    reads it). Not the commit index when the transaction applies up to it (``applied``): its
    ``applied_index`` row says it, one row less in the transaction (the replica's fsynced
    one in the sequential workload)."""
    items = {
        key: getattr(hard_state, field)
        for key, field in _HARD_STATE_FIELDS.items()
        if written is None or getattr(hard_state, field) != getattr(written, field)
    }
    if applied and hard_state.commit <= applied:
        items.pop("raft_commit", None)
    if "raft_term" in items or "raft_voted_for" in items:
        items["raft_term_vote_crc"] = term_vote_checksum(hard_state.term, hard_state.voted_for)
    return items


def term_vote_checksum(term: Any, voted_for: Any) -> int:
    """The CRC32C of a stored term and vote (``Store.hard_state_loss``)."""
    return google_crc32c.value(orjson.dumps([term, voted_for]))


def _config_to_json(config: Config) -> str:
    return orjson.dumps(config_to_obj(config)).decode()


def _config_from_json(text: str) -> Config:
    return config_from_obj(orjson.loads(text))
