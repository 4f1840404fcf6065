"""Durable queue storage in SQLite, through apsw. Synchronous: call it from one thread only.

Every acknowledged change is committed by :meth:`Store.apply` in one transaction with
``synchronous=FULL`` in WAL mode, so it is on disk (fsynced) before the call returns. Many
commands in one call share one transaction and one fsync: that is group commit.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apsw
import attrs
import orjson

from .._core._commands import (
    MAX_PRODUCERS,
    RETENTION_DELETES_PER_APPLY,
    Ack,
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    BatchAppended,
    BrokerAddressSet,
    Command,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    MessageAppended,
    ProducerState,
    QueueCreated,
    ReadBatch,
    ReadNext,
    Result,
    RetentionApplied,
    RetentionPolicy,
    RetentionSet,
    Seek,
    SetBrokerAddress,
    SetRetention,
    bad_request,
    check_producer,
    next_producer_state,
    queue_exists,
    queue_not_found,
)
from .._core._queues import (
    monotonic_stamp,
    position_result,
    read_range,
    read_result,
    retention_through,
)
from .._core._raft_messages import Config, Entry, HardState, SnapshotMeta
from .._protocol._entries import config_from_obj, config_to_obj, decode_payload, payload_bytes
from ._schema import WORK_TABLES, upgrade
from ._work_queries import next_lease_deadline, queue_id_for_name
from ._work_sql import WORK_COMMANDS, apply_work, touch_position

_STATE_TABLES = ("queues", "queue_data", "client_positions", "brokers", "producers", *WORK_TABLES)

DB_FILE = "broker.sqlite3"
LOCK_FILE = "LOCK"


class DataDirInUse(Exception):
    """Another process holds the data directory."""


@attrs.frozen
class Identity:
    broker_id: str
    cluster_id: str


class _DirLock:
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


class Store:
    """A broker's database: identity, queues, messages and read positions."""

    def __init__(self, data_dir: Path | str, *, vfs: str | None = None) -> None:
        """Open (creating if need be) the database in ``data_dir``; ``vfs`` names an SQLite
        VFS to open it through (tests: :mod:`trio_broker.testing._powerloss`), the default
        one if None."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _DirLock(self.data_dir)
        try:
            self._db = apsw.Connection(str(self.data_dir / DB_FILE), vfs=vfs)
            self._configure()
            upgrade(self._db)
            _sync_new_files(self.data_dir)
        except BaseException:
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
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA cache_size = -16000")

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._lock.release()

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
            return [self._apply_one(c) for c in commands]

    def _apply_one(self, command: Command) -> Result:
        """The SQL twin of :meth:`QueueState.apply` (the reference semantics)."""
        db = self._db
        if isinstance(command, CommandGroup):
            return self._apply_group(command.commands)
        if isinstance(command, CreateQueue):
            policy = command.retention or RetentionPolicy()
            if db.execute(
                "SELECT 1 FROM queues WHERE queue_id = ?", (command.queue_id,)
            ).fetchone():
                return queue_exists(command.queue_id)
            if (problem := policy.problem()) is not None:
                return bad_request(problem)
            db.execute("INSERT INTO queues (queue_id) VALUES (?)", (command.queue_id,))
            self._set_policy(command.queue_id, policy)
            return QueueCreated(command.queue_id)
        if isinstance(command, SetRetention):
            if (
                db.execute(
                    "SELECT 1 FROM queues WHERE queue_id = ?", (command.queue_id,)
                ).fetchone()
                is None
            ):
                return queue_not_found(command.queue_id)
            if (problem := command.policy.problem()) is not None:
                return bad_request(problem)
            self._set_policy(command.queue_id, command.policy)
            return RetentionSet(command.queue_id, command.policy)
        if isinstance(command, ApplyRetention):
            return self._apply_retention(command.now_ms)
        if isinstance(command, SetBrokerAddress):
            db.execute(
                "INSERT INTO brokers (broker_id, host, port) VALUES (?, ?, ?)"
                " ON CONFLICT (broker_id) DO UPDATE SET host = excluded.host,"
                " port = excluded.port",
                (command.broker_id, command.host, command.port),
            )
            return BrokerAddressSet(command.broker_id)
        if isinstance(command, AppendMessage | AppendBatch):
            return self._append(command)
        if isinstance(command, WORK_COMMANDS):
            return apply_work(db, command)
        if not isinstance(command, ReadNext | ReadBatch | Ack | Seek):
            raise TypeError(f"not a command: {command!r}")
        touch_position(db, command.client_id, command.queue_id)
        row = db.execute(
            "SELECT q.length, q.deleted_through, coalesce(p.read_position, 0) FROM queues AS q"
            " LEFT JOIN client_positions AS p ON p.queue_id = q.queue_id AND p.client_id = ?"
            " WHERE q.queue_id = ?",
            (command.client_id, command.queue_id),
        ).fetchone()
        if row is None:
            return queue_not_found(command.queue_id)
        length, deleted, position = row
        if isinstance(command, ReadNext | ReadBatch):
            start, end = read_range(position, deleted, length, command)
            read = tuple(
                db.execute(
                    "SELECT sequence_num, data FROM queue_data WHERE queue_id = ?"
                    " AND sequence_num >= ? AND sequence_num <= ? ORDER BY sequence_num",
                    (command.queue_id, start, end),
                )
            )
            result, moved_to = read_result(command, read)
        else:
            result, moved_to = position_result(command, position, length)
        if moved_to is not None:
            self._set_position(command.client_id, command.queue_id, moved_to)
        return result

    def _set_position(self, client_id: str, queue_id: str, position: int) -> None:
        self._db.execute(
            "INSERT INTO client_positions (client_id, queue_id, read_position)"
            " VALUES (?, ?, ?) ON CONFLICT (client_id, queue_id)"
            " DO UPDATE SET read_position = excluded.read_position",
            (client_id, queue_id, position),
        )

    def _append(self, command: AppendMessage | AppendBatch) -> Result:
        db = self._db
        batch = isinstance(command, AppendBatch)
        data = command.data if batch else (command.data,)
        row = db.execute(
            "SELECT last_appended_ms FROM queues WHERE queue_id = ?", (command.queue_id,)
        ).fetchone()
        if row is None:
            return queue_not_found(command.queue_id)
        stamp = monotonic_stamp(command.appended_ms, row[0])
        producer = None
        if command.producer_id is not None and command.producer_seq is not None:
            producer = (command.producer_id, command.queue_id)
            state = self._producer_state(*producer)
            decided = check_producer(state, command.producer_seq, batch)
            if decided is not None:
                return decided
        (length,) = db.execute(
            "UPDATE queues SET length = length + ?1, last_appended_ms = ?2,"
            " undated_through = iif(?2 IS NULL, length + ?1, undated_through)"
            " WHERE queue_id = ?3 RETURNING length",
            (len(data), stamp, command.queue_id),
        ).fetchone()
        first = length - len(data) + 1
        db.executemany(
            "INSERT INTO queue_data (queue_id, sequence_num, data, appended_ms)"
            " VALUES (?, ?, ?, ?)",
            [(command.queue_id, first + i, value, stamp) for i, value in enumerate(data)],
        )
        if producer is not None:
            (clock,) = db.execute("SELECT coalesce(max(last_used), 0) FROM producers").fetchone()
            new = next_producer_state(state, command.producer_seq, first, len(data), clock + 1)
            db.execute(
                "INSERT INTO producers (producer_id, queue_id, last_seq, recent, last_used)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (producer_id, queue_id) DO UPDATE SET"
                " last_seq = excluded.last_seq, recent = excluded.recent,"
                " last_used = excluded.last_used",
                (*producer, new.last_seq, orjson.dumps(new.recent).decode(), new.last_used),
            )
            db.execute(
                "DELETE FROM producers WHERE last_used <= (SELECT last_used FROM producers"
                " ORDER BY last_used DESC LIMIT 1 OFFSET ?)",
                (MAX_PRODUCERS,),
            )
        return BatchAppended(first, len(data)) if batch else MessageAppended(first)

    def _apply_group(self, commands: tuple[Command, ...]) -> GroupApplied:
        """A group's commands in order; a run of plain appends to one queue (the common case
        under pipelined load) costs three statements in all instead of three each."""
        results: list[Result] = []
        i = 0
        while i < len(commands):
            j = i + 1
            if _plain_append(commands[i]):
                queue_id = commands[i].queue_id
                while j < len(commands) and _plain_append(commands[j]):
                    if commands[j].queue_id != queue_id:
                        break
                    j += 1
            if j - i > 1:
                results += self._append_run(commands[i:j])
            else:
                results.append(self._apply_one(commands[i]))
            i = j
        return GroupApplied(tuple(results))

    def _append_run(self, run: tuple[AppendMessage, ...]) -> list[Result]:
        """Consecutive stamped appends to one queue without a producer id: the same results
        and rows as applying each with :meth:`_append` (the model-based test checks it)."""
        db = self._db
        queue_id = run[0].queue_id
        row = db.execute(
            "SELECT last_appended_ms FROM queues WHERE queue_id = ?", (queue_id,)
        ).fetchone()
        if row is None:
            return [queue_not_found(queue_id)] * len(run)
        stamps = []
        stamp = row[0]
        for command in run:
            stamp = monotonic_stamp(command.appended_ms, stamp)
            stamps.append(stamp)
        # Every stamp is set, so undated_through does not move (as in _append).
        (length,) = db.execute(
            "UPDATE queues SET length = length + ?, last_appended_ms = ? WHERE queue_id = ?"
            " RETURNING length",
            (len(run), stamp, queue_id),
        ).fetchone()
        first = length - len(run) + 1
        db.executemany(
            "INSERT INTO queue_data (queue_id, sequence_num, data, appended_ms)"
            " VALUES (?, ?, ?, ?)",
            [(queue_id, first + k, c.data, stamps[k]) for k, c in enumerate(run)],
        )
        return [MessageAppended(first + k) for k in range(len(run))]

    def _set_policy(self, queue_id: str, policy: RetentionPolicy) -> None:
        self._db.execute(
            "UPDATE queues SET max_messages = ?, max_age_ms = ?, delete_acknowledged = ?"
            " WHERE queue_id = ?",
            (policy.max_messages, policy.max_age_ms, int(policy.delete_acknowledged), queue_id),
        )

    def _apply_retention(self, now_ms: int) -> RetentionApplied:
        """The SQL twin of ``QueueState._apply_retention``: the same messages go."""
        db = self._db
        budget = RETENTION_DELETES_PER_APPLY
        trimmed = []
        queues = db.execute(
            "SELECT queue_id, length, deleted_through, undated_through, max_messages,"
            " max_age_ms, delete_acknowledged FROM queues WHERE max_messages IS NOT NULL"
            " OR max_age_ms IS NOT NULL OR delete_acknowledged ORDER BY queue_id"
        ).fetchall()
        for queue_id, length, deleted, undated, max_messages, max_age_ms, by_readers in queues:
            if budget <= 0:
                break
            policy = _policy(max_messages, max_age_ms, by_readers)
            too_old = slowest = None
            if max_age_ms is not None:
                # Stamps never decrease along a queue and the undated messages come first, so
                # the too old ones are a prefix of the dated ones; an undated message goes with
                # the first dated message after it that is too old.
                (too_old,) = db.execute(
                    "SELECT max(sequence_num) FROM (SELECT sequence_num, appended_ms"
                    " FROM queue_data WHERE queue_id = ? AND sequence_num > ?"
                    " ORDER BY sequence_num LIMIT ?) WHERE appended_ms < ?",
                    (queue_id, max(deleted, undated), budget, now_ms - max_age_ms),
                ).fetchone()
            if by_readers:
                (slowest,) = db.execute(
                    "SELECT min(read_position) FROM client_positions WHERE queue_id = ?",
                    (queue_id,),
                ).fetchone()
            through = retention_through(policy, deleted, length, too_old, slowest, budget)
            if through > deleted:
                db.execute(
                    "DELETE FROM queue_data WHERE queue_id = ? AND sequence_num <= ?",
                    (queue_id, through),
                )
                db.execute(
                    "UPDATE queues SET deleted_through = ? WHERE queue_id = ?", (through, queue_id)
                )
                budget -= through - deleted
                trimmed.append((queue_id, through + 1))
        return RetentionApplied(tuple(trimmed))

    def _producer_state(self, producer_id: str, queue_id: str) -> ProducerState | None:
        row = self._db.execute(
            "SELECT last_seq, recent, last_used FROM producers"
            " WHERE producer_id = ? AND queue_id = ?",
            (producer_id, queue_id),
        ).fetchone()
        if row is None:
            return None
        last_seq, recent, last_used = row
        return ProducerState(last_seq, tuple(tuple(r) for r in orjson.loads(recent)), last_used)

    # -- queries --------------------------------------------------------------------------------

    def queue_id_for_name(self, name: str) -> str | None:
        return queue_id_for_name(self._db, name)

    def next_lease_deadline(self) -> int | None:
        return next_lease_deadline(self._db)

    def queue_lengths(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT queue_id, length FROM queues ORDER BY queue_id"))

    def messages(self, queue_id: str) -> list[bytes]:
        return [
            row[0]
            for row in self._db.execute(
                "SELECT data FROM queue_data WHERE queue_id = ? ORDER BY sequence_num",
                (queue_id,),
            )
        ]

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
                _policy(max_messages, max_age_ms, by_readers),
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
            queue_id: _policy(max_messages, max_age_ms, by_readers)
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

    # -- the replicated log ---------------------------------------------------------------------

    def _set_meta(self, items: dict[str, Any]) -> None:
        """Upsert metadata; a None value removes the key."""
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(k, v) for k, v in items.items() if v is not None],
        )
        self._db.executemany(
            "DELETE FROM meta WHERE key = ?", [(k,) for k, v in items.items() if v is None]
        )

    def _durable_term_vote(self) -> tuple[int, Any]:
        return (self.get_meta("raft_term", 0), self.get_meta("raft_voted_for"))

    def raft_state(self) -> RaftState:
        """Everything the consensus core is rebuilt from after a restart."""
        get = self.get_meta
        config_json = get("snapshot_config")
        config = None if config_json is None else _config_from_json(config_json)
        hard_state = HardState(
            term=get("raft_term", 0),
            voted_for=get("raft_voted_for"),
            commit=get("raft_commit", 0),
            recovering_until=get("raft_recovering_until", 0),
            recovering_term=get("raft_recovering_term", 0),
        )
        snapshot_index = get("snapshot_index", 0)
        entries = [
            Entry(term, index, decode_payload(payload))
            for index, term, payload in self._db.execute(
                "SELECT log_index, term, payload FROM raft_log WHERE log_index > ?"
                " ORDER BY log_index",
                (snapshot_index,),
            )
        ]
        return RaftState(
            hard_state=hard_state,
            snapshot_index=snapshot_index,
            snapshot_term=get("snapshot_term", 0),
            snapshot_config=config,
            entries=entries,
            applied=get("applied_index", snapshot_index),
        )

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
    ) -> list[Result | None]:
        """Persist one Ready in ONE durable transaction, then apply what it commits.

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
        """
        db = self._db
        term_vote = None if hard_state is None else (hard_state.term, hard_state.voted_for)
        durable = bool(entries or truncate_from is not None or snapshot) or (
            term_vote is not None and term_vote != self._durable_term_vote()
        )
        if snapshot is not None:
            db.execute("ATTACH DATABASE ? AS incoming", (snapshot[1],))
        if not durable:
            db.execute("PRAGMA synchronous = NORMAL")
        try:
            with db:
                if snapshot is not None:
                    self._install_snapshot(snapshot[0])
                if truncate_from is not None:
                    db.execute("DELETE FROM raft_log WHERE log_index >= ?", (truncate_from,))
                if entries:
                    db.executemany(
                        "INSERT OR REPLACE INTO raft_log (log_index, term, payload)"
                        " VALUES (?, ?, ?)",
                        [(e.index, e.term, payload_bytes(e)) for e in entries],
                    )
                if hard_state is not None:
                    self._set_meta(
                        {
                            "raft_term": hard_state.term,
                            "raft_voted_for": hard_state.voted_for,
                            "raft_commit": hard_state.commit,
                            "raft_recovering_until": hard_state.recovering_until,
                            "raft_recovering_term": hard_state.recovering_term,
                        }
                    )
                results: list[Result | None] = []
                for entry in committed:
                    payload = entry.payload
                    if isinstance(payload, Command):
                        results.append(self._apply_one(payload))
                    else:
                        results.append(None)
                if committed:
                    self._set_meta({"applied_index": committed[-1].index})
                return results
        finally:
            if not durable:
                db.execute("PRAGMA synchronous = FULL")
            if snapshot is not None:
                db.execute("DETACH DATABASE incoming")

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        db = self._db
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


def _policy(max_messages: int | None, max_age_ms: int | None, by_readers: int) -> RetentionPolicy:
    return RetentionPolicy(max_messages, max_age_ms, bool(by_readers))


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
    ``last_index`` (``_runtime._driver.make_node``)."""


def _config_to_json(config: Config) -> str:
    return orjson.dumps(config_to_obj(config)).decode()


def _config_from_json(text: str) -> Config:
    return config_from_obj(orjson.loads(text))


def _sync_new_files(data_dir: Path) -> None:
    """Make the database file and the directory entries of the data folder durable.

    SQLite syncs the directory when it creates the WAL, but never for the main database
    file; after a power cut that lost a new database file's entry while its WAL survived,
    SQLite would open an empty database and delete that WAL. Once per start, so cheap."""
    for path in (data_dir / DB_FILE, data_dir):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _plain_append(command: Command) -> bool:
    return (
        isinstance(command, AppendMessage)
        and command.producer_id is None
        and command.appended_ms is not None
    )
