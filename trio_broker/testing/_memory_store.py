"""An in-memory store, to run real brokers under a mock clock (with :mod:`._memory_network`).

:func:`open_memory_storage` plugs into :func:`~trio_broker._runtime.open_broker`'s ``storage=``
seam: the disk is a dict and every storage job runs inline in the trio thread, so no worker
thread can be mid-fsync when ``autojump_clock`` jumps (trio issue #456, STYLE.md "Traps").
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import trio

from .._core import Command, QueueState
from .._core._commands import (
    AppendBatch,
    AppendMessage,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    Result,
    RetentionPolicy,
    SingleResult,
    bad_request,
    check_producer,
)
from .._core._queues import client_lag
from .._core._raft_messages import Config, Entry, HardState, SnapshotMeta
from .._core._work_commands import (
    CreateNamedQueue,
    ExpireLeases,
    GroupNack,
    GroupRead,
    GroupSettings,
    Publish,
)
from .._core._work_rules import command_problem, name_problem, publish_decided
from .._protocol._entries import decode_payload, payload_bytes
from .._storage import DataDirInUse, Identity, _schema
from .._storage._file_checks import LogDamage
from .._storage._schema import MAX_SEQUENCE, past_last_sequence, too_many_queues
from .._storage._store import QueueRow, RaftState

T = TypeVar("T")


@attrs.frozen
class _LogRecord:
    term: int
    payload: bytes
    """As on disk: the payload's JSON, decoded again when the log is read back."""
    crc: int = attrs.field(default=attrs.Factory(lambda r: zlib.crc32(r.payload), takes_self=True))
    """The payload's checksum when written: a record that no longer matches it is damaged."""


class StorageCrashed(Exception):
    """A storage call from a broker incarnation that crashed (it must not write any more)."""


class MemoryStore:
    """The synchronous ``Store`` of one broker, in memory, backed by a :class:`QueueState`.

    It implements exactly the methods the runtime calls, with the semantics of the SQLite
    store: every call that returns has made its change durable, :meth:`save` being the
    durability point of the consensus log (what a crash keeps). A ``MemoryStore`` outlives the
    brokers that open it, so a crashed broker restarts from it; like a data directory, only one
    broker may have it open at a time.

    Snapshots are not supported: :meth:`write_snapshot` and installing one through
    ``save(snapshot=...)`` raise :class:`NotImplementedError` (a snapshot is a SQLite file; the
    runtime writes and hashes it through worker threads, which the mock clock cannot have).
    Log compaction itself works, but the mock cluster keeps it off by default (a very large
    ``compact_threshold``) so that no replica ever needs a snapshot.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.meta: dict[str, Any] = {}
        self.log: dict[int, _LogRecord] = {}
        self.state = QueueState()
        self.saves = 0
        """Calls of :meth:`save` so far (durable transactions)."""
        self._holder: InlineWorker | None = None
        self._crashed = False
        """The broker that held this store crashed, and none opened it since: :meth:`save`
        refuses (the runtime's in-step paths call it directly, not through the worker)."""

    def __repr__(self) -> str:
        return f"<MemoryStore {self.name} log={len(self.log)} applied={self.applied_index}>"

    # -- who holds it ------------------------------------------------------------------------

    def _open(self, worker: InlineWorker) -> None:
        if self._holder is not None:
            raise DataDirInUse(f"memory store {self.name} is in use by another broker")
        self._holder = worker
        self._crashed = False

    def close(self) -> None:
        self._holder = None

    def abandon(self) -> None:
        """``Store.abandon`` (a failed store closed without a write): nothing here writes."""
        self.close()

    def crash(self) -> None:
        """The broker holding this store died: calls from it fail from now on, and the store
        is free for the next incarnation. What :meth:`save` returned from stays."""
        if self._holder is not None:
            self._holder._crashed = True
        self._holder = None
        self._crashed = True

    # -- identity and metadata ---------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)

    def identity(self) -> Identity | None:
        broker_id, cluster_id = self.meta.get("broker_id"), self.meta.get("cluster_id")
        if broker_id is None or cluster_id is None:
            return None
        return Identity(broker_id, cluster_id)

    def init_identity(self, broker_id: str, cluster_id: str) -> Identity:
        found = self.identity()
        if found is not None:
            return found
        self.meta.update(broker_id=broker_id, cluster_id=cluster_id, cluster_version=1)
        return Identity(broker_id, cluster_id)

    # -- queries -----------------------------------------------------------------------------

    def queue_id_for_name(self, name: str) -> str | None:
        return self.state.work.queue_id_for_name(name)

    def next_lease_deadline(self) -> int | None:
        return self.state.work.next_lease_deadline()

    def queue_lengths(self) -> dict[str, int]:
        state = self.state
        return {q: state.deleted[q] + len(m) for q, m in sorted(state.messages.items())}

    def messages(self, queue_id: str) -> list[bytes]:
        """The retained messages, oldest first."""
        return list(self.state.messages.get(queue_id, ()))

    def positions(self) -> dict[tuple[str, str], int]:
        return dict(self.state.positions)

    def queue_stats(self, limit: int) -> tuple[list[tuple[str, int]], list[tuple[str, str, int]]]:
        """The ``limit`` longest queues and largest client lags, ordered as ``Store`` does."""
        lengths = self.queue_lengths()
        deleted = self.state.deleted
        queues = sorted(lengths.items(), key=lambda item: (-item[1], item[0]))[:limit]
        lags = sorted(
            (
                (client_id, queue_id, client_lag(lengths[queue_id], position, deleted[queue_id]))
                for (client_id, queue_id), position in self.state.positions.items()
                if queue_id in lengths
            ),
            key=lambda row: (-row[2], row[0], row[1]),
        )[:limit]
        return queues, lags

    def list_queues(self, after: str | None, max_queues: int, max_clients: int) -> list[QueueRow]:
        """A page of queues after ``after`` (by id), ordered as ``Store`` does."""
        state = self.state
        page = sorted(q for q in state.messages if q > (after or ""))[:max_queues]
        return [
            QueueRow(
                queue_id,
                state.queue_length(queue_id) or 0,
                state.first_retained(queue_id),
                state.retention.get(queue_id, RetentionPolicy()),
                sorted(
                    (
                        (client_id, position)
                        for (client_id, q), position in state.positions.items()
                        if q == queue_id
                    ),
                    key=lambda row: (row[1], row[0]),
                )[:max_clients],
            )
            for queue_id in page
        ]

    def retention_policies(self) -> dict[str, RetentionPolicy]:
        return dict(sorted(self.state.retention.items()))

    def first_retained(self) -> dict[str, int]:
        return {q: self.state.first_retained(q) for q in self.state.messages}

    def broker_addresses(self) -> dict[str, tuple[str, int]]:
        return dict(self.state.brokers)

    def group_ids(self) -> tuple[str, ...]:
        return self.state.groups

    def cluster_map(self) -> Any:
        """A copy: the runtime must not see the state change under it."""
        return copy.deepcopy(self.state.cluster_map)

    @property
    def applied_index(self) -> int:
        return self.meta.get("applied_index", self.meta.get("snapshot_index", 0))

    @property
    def hard_state(self) -> HardState:
        return HardState(
            term=self.meta.get("raft_term", 0),
            voted_for=self.meta.get("raft_voted_for"),
            commit=self.meta.get("raft_commit", 0),
            recovering_until=self.meta.get("raft_recovering_until", 0),
            recovering_term=self.meta.get("raft_recovering_term", 0),
            unverified=bool(self.meta.get("raft_unverified", False)),
            vote_lost=bool(self.meta.get("raft_vote_lost", False)),
        )

    def hard_state_loss(self) -> str | None:
        """As :meth:`Store.hard_state_loss`: the term and vote no longer match the copy kept
        with them (lost with :meth:`lose_hard_state`)."""
        kept = self.meta.get("raft_term_vote_copy")
        now = (self.meta.get("raft_term", 0), self.meta.get("raft_voted_for"))
        if kept is not None and kept != now:
            return "the term and vote do not match their checksum"
        return None

    def lose_hard_state(self) -> None:
        """The disk lost the term and the vote (a fault for tests): the next start finds them
        missing, as :meth:`Store.hard_state_loss` finds them in the SQLite store."""
        self.meta.pop("raft_term", None)
        self.meta.pop("raft_voted_for", None)

    def note_boot(self, boot_id: str | None) -> bool:
        """As :meth:`Store.note_boot`. A test reboots the machine under this store with
        :meth:`reboot`."""
        if boot_id is not None and self.meta.get("boot_id") == boot_id:
            return False
        self.meta["boot_id"] = boot_id
        self.meta["raft_unverified"] = True
        return True

    def reboot(self) -> None:
        """The machine under this store rebooted (a fault for tests): its next start finds
        another boot id than the one recorded."""
        self.meta["boot_id"] = "a-boot-before"

    def trust_log(self, boot_id: str | None) -> bool:
        """As :meth:`Store.trust_log`."""
        was = bool(self.meta.pop("raft_unverified", False))
        self.meta["boot_id"] = boot_id
        return was

    # -- the replicated log ------------------------------------------------------------------

    def damage(self, index: int) -> None:
        """Flip one bit of stored entry ``index`` (a fault for tests): the next read of the
        log finds its checksum wrong and reports the damage, as the SQLite store does."""
        record = self.log[index]
        flipped = bytes([record.payload[0] ^ 0x01]) + record.payload[1:]
        self.log[index] = attrs.evolve(record, payload=flipped, crc=record.crc)

    def log_damage(self) -> LogDamage | None:
        """As :meth:`Store.log_damage`: where the log's first damaged entry is, and where the
        log ended (None when every entry matches its checksum)."""
        damage = self.raft_state().damage
        return None if damage is None else LogDamage(*damage)

    def raft_state(self) -> RaftState:
        snapshot_index = self.meta.get("snapshot_index", 0)
        entries: list[Entry] = []
        damage = None
        stored = [(i, r) for i, r in sorted(self.log.items()) if i > snapshot_index]
        for index, record in stored:
            if zlib.crc32(record.payload) != record.crc:
                # Never decoded: cut here, and report where the log had ended.
                damage = (index, stored[-1][0])
                break
            entries.append(Entry(record.term, index, decode_payload(record.payload)))
        return RaftState(
            hard_state=self.hard_state,
            snapshot_index=snapshot_index,
            snapshot_term=self.meta.get("snapshot_term", 0),
            snapshot_config=self.meta.get("snapshot_config"),
            entries=entries,
            applied=self.applied_index,
            damage=damage,
            hard_state_loss=self.hard_state_loss(),
        )

    def bootstrap(self, config: Config) -> None:
        self.meta["snapshot_config"] = config

    def save(
        self,
        *,
        hard_state: HardState | None = None,
        truncate_from: int | None = None,
        entries: Sequence[Entry] = (),
        snapshot: tuple[SnapshotMeta, str] | None = None,
        committed: Sequence[Entry] = (),
        before_commit: Callable[[list[Any]], None] | None = None,
    ) -> list[Any]:
        """Persist one Ready, then apply what it commits (as ``Store.save``, atomically;
        ``before_commit`` called with the results once they are all known). Refused once the
        broker holding the store crashed: a dead process writes nothing, and the runtime's
        in-step paths (``_runtime/_in_step.py``) call this directly, past the worker's check."""
        if self._crashed:
            raise StorageCrashed("save after the broker crashed")
        if snapshot is not None:
            raise NotImplementedError(
                "MemoryStore cannot install snapshots (DATA_SYNC): keep compaction off under "
                "the mock clock (a large compact_threshold), or use the SQLite store"
            )
        # Encode before changing anything, so a payload that cannot be stored changes nothing.
        records = {e.index: _LogRecord(e.term, payload_bytes(e)) for e in entries}
        if truncate_from is not None:
            for index in [i for i in self.log if i >= truncate_from]:
                del self.log[index]
        self.log.update(records)  # INSERT OR REPLACE, like the SQLite log
        if hard_state is not None:
            self.meta["raft_term"] = hard_state.term
            self.meta["raft_commit"] = hard_state.commit
            self.meta["raft_recovering_until"] = hard_state.recovering_until
            self.meta["raft_recovering_term"] = hard_state.recovering_term
            self.meta["raft_unverified"] = hard_state.unverified
            self.meta["raft_vote_lost"] = hard_state.vote_lost
            if hard_state.voted_for is None:
                self.meta.pop("raft_voted_for", None)
            else:
                self.meta["raft_voted_for"] = hard_state.voted_for
            self.meta["raft_term_vote_copy"] = (hard_state.term, hard_state.voted_for)
        results: list[Any] = []
        for entry in committed:
            payload = entry.payload
            results.append(
                apply_within_bounds(self.state, payload) if isinstance(payload, Command) else None
            )
        if committed:
            self.meta["applied_index"] = committed[-1].index
        if before_commit is not None:
            before_commit(results)
        self.saves += 1
        return results

    # -- repairing values (the runtime's _repair) ------------------------------------------------

    def intact_rows(self, queue_id: str, first: int, max_rows: int, max_bytes: int) -> list[Any]:
        """None: values kept here carry no checksum, so none is given to repair another copy
        (the SQLite store's rows do; the simulator models the repairs, ``sim/_disk.py``)."""
        return []

    def repair_rows(self, queue_id: str, rows: Sequence[Any]) -> list[int]:
        return []

    def damaged_values(
        self, after: tuple[str, int], limit: int, max_bytes: int | None = None
    ) -> tuple[list[Any], None]:
        return [], None

    def needs_repair(self, queue_id: str, seq: int) -> bool:
        return False

    def compact(self, meta: SnapshotMeta) -> None:
        if meta.index <= self.meta.get("snapshot_index", 0):
            return  # a later snapshot point is already there (as in Store.compact)
        for index in [i for i in self.log if i <= meta.index]:
            del self.log[index]
        self.meta.update(
            snapshot_index=meta.index, snapshot_term=meta.term, snapshot_config=meta.config
        )

    def log_size(self) -> int:
        return len(self.log)

    def write_snapshot(self, path: str) -> int:
        raise NotImplementedError(
            "MemoryStore cannot write snapshots: keep compaction off under the mock clock "
            "(a large compact_threshold), or use the SQLite store"
        )


# -- the storage's bounds (schema version 8) ----------------------------------------------------


def apply_within_bounds(state: QueueState, command: Command) -> Result:
    """``state.apply(command)`` refused, or a dead-letter move held back, exactly where the
    SQLite store's packed key (``_storage/_schema.py``, version 8) makes that store do so, so
    that this store stays the SQLite store's twin at the bounds too: an append, batch or
    PUBLISH that would take its queue past ``MAX_SEQUENCE`` is ``BAD_REQUEST`` (a producer's
    retry still answered as the duplicate it is, decided first as there), a CREATE_QUEUE or
    CREATE_NAMED_QUEUE with ``_schema.MAX_QUEUE_NUMBER`` queues alive is ``BAD_REQUEST`` (after
    the checks that come before it there), a group applies command by command (as the SQLite
    store's runs fall back to when they would cross the bound), and a message due for a
    dead-letter queue that holds ``MAX_SEQUENCE`` waits in its group (:func:`_dead_letters_wait`).

    The core (``QueueState``) does not model these bounds: they belong to the SQLite layout,
    and no history a test runs reaches them, except by setting a queue's length
    (``state.deleted``, as retention would have left it) or lowering
    ``_schema.MAX_QUEUE_NUMBER`` (read here when applied, as ``next_queue_number`` reads it),
    the seams ``tests/test_house11_bounds.py`` drives both stores through. The SQLite store
    gives queue numbers; here only their count is kept, which decides the refusal alike
    (every number given is within the bound, so all are taken exactly when that many queues
    live)."""
    if isinstance(command, CommandGroup):
        # (a group holds no group: each result is a SingleResult)
        results = [apply_within_bounds(state, c) for c in command.commands]
        return GroupApplied(tuple(cast("list[SingleResult]", results)))
    refused = _past_a_bound(state, command)
    if refused is not None:
        return refused
    if isinstance(command, GroupRead | GroupNack | ExpireLeases):
        with _dead_letters_wait(state):
            return state.apply(command)
    return state.apply(command)


def _past_a_bound(state: QueueState, command: Command) -> Result | None:
    """The ``BAD_REQUEST`` the SQLite store answers ``command`` with at a bound, decided
    after every check that store makes before it (None: apply it as the core does)."""
    if isinstance(command, CreateQueue | CreateNamedQueue):
        if isinstance(command, CreateNamedQueue) and (
            name_problem(command.name, "queue name") is not None or command.name in state.work.names
        ):
            return None
        policy = command.retention
        if (
            command.queue_id in state.messages
            or (isinstance(policy, RetentionPolicy) and policy.problem() is not None)
            or len(state.messages) < _schema.MAX_QUEUE_NUMBER
        ):
            return None
        return bad_request(too_many_queues())
    if isinstance(command, AppendMessage | AppendBatch):
        count = len(command.data) if isinstance(command, AppendBatch) else 1
        length = state.queue_length(command.queue_id)
        if length is None or length + count <= MAX_SEQUENCE:
            return None
        if command.producer_id is not None and command.producer_seq is not None:
            known = state.producers.get((command.producer_id, command.queue_id))
            batch = isinstance(command, AppendBatch)
            if check_producer(known, command.producer_seq, batch) is not None:
                return None  # (a duplicate, out of order or too old: as decided there)
        return bad_request(past_last_sequence(command.queue_id, length, count))
    if isinstance(command, Publish):
        length = state.queue_length(command.queue_id)
        count = len(command.records)
        if command_problem(command) is not None or length is None or length + count <= MAX_SEQUENCE:
            return None
        if command.producer_id is not None:
            entry = state.work.producers.get((command.producer_id, command.queue_id))
            epoch = None if entry is None else entry.epoch
            dedup = entry.state if entry is not None and epoch == command.producer_epoch else None
            if publish_decided(command, epoch, dedup) is not None:
                return None
        return bad_request(past_last_sequence(command.queue_id, length, count))
    return None


class _WaitWhenFull:
    """A group's settings while a command that may end its leases applies: its
    ``max_deliveries`` reads None (the message waits, as under its limit) whenever its
    dead-letter queue holds ``MAX_SEQUENCE`` at that moment. The core reads it once per lease
    it ends (``_work._end_lease``), so each move is decided on the queue's length then, as
    the SQLite store's ``_lease_sql._end_lease`` decides it: a command that moves several
    messages fills the queue and holds back the rest."""

    def __init__(self, settings: GroupSettings, state: QueueState) -> None:
        self._settings = settings
        self._state = state

    @property
    def max_deliveries(self) -> int | None:
        target = self._settings.dead_letter_queue
        if target is not None and (self._state.queue_length(target) or 0) >= MAX_SEQUENCE:
            return None
        return self._settings.max_deliveries

    def __getattr__(self, name: str) -> Any:
        return getattr(self._settings, name)


@contextlib.contextmanager
def _dead_letters_wait(state: QueueState) -> Iterator[None]:
    """Every group that moves messages to a dead-letter queue under :class:`_WaitWhenFull`
    while the block runs; its own settings back after (the results never hold them: GROUP_READ,
    GROUP_NACK and EXPIRE_LEASES answer with messages and counts)."""
    swapped = [
        (group, group.settings)
        for group in state.work.groups.values()
        if group.settings.dead_letter_queue is not None
        and group.settings.max_deliveries is not None
    ]
    for group, settings in swapped:
        group.settings = cast(GroupSettings, _WaitWhenFull(settings, state))
    try:
        yield
    finally:
        for group, settings in swapped:
            group.settings = settings


class InlineWorker:
    """The storage worker of the mock clock: runs each job at once, in the trio thread.

    Like :class:`~trio_broker._storage.StorageWorker`, a job is either not started (the caller
    was cancelled before it) or run to completion, and the caller yields to the scheduler in
    between, as it would while the thread works. No time passes: the disk is instant.
    """

    def __init__(self) -> None:
        self._crashed = False
        self._busy = 0
        """Jobs running (only while ``fn`` runs: the disk is instant)."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._crashed:
            # The broker that owns this worker has crashed and is being cancelled; a dead
            # process writes nothing.
            raise StorageCrashed(f"storage call {fn!r} after the broker crashed")
        self._busy += 1
        try:
            result = fn(*args)
        finally:
            self._busy -= 1
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    @property
    def idle(self) -> bool:
        """No job is running (as ``StorageWorker.idle``: a job run on the trio thread now is
        alone on the store), which lets the runtime's in-step paths run here as they do on
        real sockets. A job runs to completion inside :meth:`run` before its caller yields,
        so another task sees this False never; the job's own callbacks (``before_commit``)
        do."""
        return not self._busy


def open_memory_storage(
    store: MemoryStore,
) -> Callable[[Path], contextlib.AbstractAsyncContextManager[tuple[InlineWorker, MemoryStore]]]:
    """A ``storage=`` factory for ``open_broker`` that opens ``store`` (whatever data_dir the
    broker's configuration names) with an :class:`InlineWorker`."""

    @contextlib.asynccontextmanager
    async def storage(data_dir: Path) -> AsyncIterator[tuple[InlineWorker, MemoryStore]]:
        worker = InlineWorker()
        store._open(worker)
        try:
            yield worker, store
        finally:
            if store._holder is worker:
                store.close()

    return storage


__all__ = [
    "InlineWorker",
    "MemoryStore",
    "StorageCrashed",
    "apply_within_bounds",
    "open_memory_storage",
]
