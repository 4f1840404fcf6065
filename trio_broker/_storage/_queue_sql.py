"""The queue state machine in SQL: the twin of :class:`~.._core._queues.QueueState` (the
reference semantics), applied by :class:`~._store.Store` inside its transactions.

Functions over the connection, as ``_work_sql`` is for work queues. Messages go in and come
out through :mod:`._integrity`, which stores each value's checksum and checks it on the way
out; a read that meets damage answers ``UNAVAILABLE`` and changes nothing (a savepoint undoes
the command's own writes), and the rest of the transaction goes on.
"""

from __future__ import annotations

import apsw
import orjson

from .._core._append_columns import AppendColumns
from .._core._appended_run import AppendedRun
from .._core._commands import (
    GROUPS_FIXED_BY_MAP,
    RETENTION_DELETES_PER_APPLY,
    Ack,
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    BrokerAddressSet,
    Command,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    GroupsSet,
    MapCommand,
    QueueCreated,
    ReadBatch,
    ReadNext,
    Result,
    RetentionApplied,
    RetentionPolicy,
    RetentionSet,
    Seek,
    SetBrokerAddress,
    SetGroups,
    SetRetention,
    bad_request,
    groups_problem,
    queue_exists,
    queue_not_found,
)
from .._core._metadata import ClusterMap
from .._core._queues import (
    apply_map_command,
    position_result,
    read_next_run,
    read_range,
    read_result,
    retention_through,
)
from .._core._work_commands import ExpireLeases, GroupNack, GroupRead, ReadRecords
from .._protocol._entries import converter
from ._append_sql import (
    _append,
    _append_columns,
    _append_run,
    _batch_run,
    _one_run,
    _plain_append,
    _plain_batch,
)
from ._budget_reads import budgeted_read, checked_sizes
from ._integrity import (
    UNCHECKED,
    StorageDamaged,
    read_data,
    read_values,
    report_damage,
)
from ._schema import QUEUE_SPAN, next_queue_number, too_many_queues
from ._work_queries import lowest_unfinished
from ._work_sql import WORK_COMMANDS, apply_work, touch_position

_READS_VALUES = (ReadNext, ReadBatch, ReadRecords, GroupRead, GroupNack, ExpireLeases)
"""Commands that read stored values back (to answer, or to move them to a dead-letter queue):
the ones that may meet damage, each run inside a savepoint."""


def apply_command(
    db: apsw.Connection,
    command: Command,
    *,
    hold: bool = False,
    unchecked: list[tuple[str, int]] | None = None,
) -> Result:
    """The SQL twin of :meth:`QueueState.apply` (the reference semantics).

    A command that reads a damaged value changes nothing: it runs inside a savepoint (apsw's
    ``with db:`` inside a transaction), which the damage rolls back. With ``hold`` (a broker
    whose group has other members, which hold intact copies) the :class:`StorageDamaged` goes
    on up, and the whole transaction with it: the broker repairs the value from a peer and
    applies the command again (``_runtime/_repair.py``), so that its state never differs from
    theirs. Without (a broker alone: no copy to repair from, nobody to differ from) the command
    answers ``UNAVAILABLE`` and the rest of the transaction goes on.

    ``unchecked`` (a list; with ``hold``, when nobody waits for the results): a read whose
    effect does not depend on the values' bytes (:func:`unchecked_read`) is applied without
    them. A READ or a READ_BATCH reads no value at all: its position moves from the sequence
    numbers alone (:func:`read_range`, :func:`read_result`), its answer, which reaches nobody,
    holds empty bytes, and the periodic scrub finds damage in what it did not read
    (``_runtime/_repair.py``). A work read (``READ_RECORDS``, a group read) goes over a damaged
    or missing value, which reads as empty bytes and whose place is added to the list, to be
    repaired in the background. Either way a broker behind the others never waits for a value
    every other broker has deleted since, and a replica does not pay for reading values that
    only the leader's answers need. A byte-bounded ``READ_BATCH`` or ``READ_RECORDS`` (how far
    it moves depends on the values' sizes) reads and checks its values without building its
    answer (:mod:`._budget_reads`); a value damaged or missing there sends it to the checking
    path below, which holds the transaction for a repair. A byte-bounded group read sizes the
    messages it hands out for the first time the same way (``_budget_reads.checked_sizes``).
    """
    if type(command) is ReadNext:
        # The usual READ, its own path (docs/performance-history.md, "A single READ on the leader"):
        # no savepoint, as below.
        try:
            return _read_next(db, command, unchecked)
        except StorageDamaged as exc:
            if hold:
                raise
            return report_damage(exc)
    if (
        unchecked is not None
        and isinstance(command, ReadBatch | ReadRecords)
        and command.max_bytes < UNBOUNDED_BYTES
        and (done := _budgeted(db, command)) is not None
    ):
        # Nobody waits, and how far it moves depends on the values' sizes: read and checked,
        # no answer built (_budget_reads.py); anything but an intact range goes on below.
        return done
    if type(command) is ReadBatch:
        # No savepoint (two statements): this command writes nothing before its values are
        # read, so damage they raise leaves nothing of it to undo.
        try:
            return _apply_one(db, command, hold, unchecked)
        except StorageDamaged as exc:
            if hold:
                raise
            return report_damage(exc)
    if isinstance(command, _READS_VALUES):
        token = None
        if unchecked is not None and unchecked_read(command):
            token = UNCHECKED.set(unchecked)
        try:
            with db:
                return _apply_one(db, command, hold, unchecked)
        except StorageDamaged as exc:
            if hold:
                raise
            return report_damage(exc)
        finally:
            if token is not None:
                UNCHECKED.reset(token)
    return _apply_one(db, command, hold, unchecked)


def unchecked_read(command: Command) -> bool:
    """Whether a read's effect on the state is the same whatever its values' bytes: a single
    READ, or a batch that no byte budget bounds (never a move to a dead-letter queue)."""
    if isinstance(command, ReadNext):
        return True
    if isinstance(command, ReadBatch | ReadRecords | GroupRead):
        return command.max_bytes >= UNBOUNDED_BYTES
    return False


UNBOUNDED_BYTES = 1 << 62
"""The commands' default ``max_bytes``: no budget."""


def _budgeted(db: apsw.Connection, command: ReadBatch | ReadRecords) -> Result | None:
    """A byte-bounded read applied for nobody, by :func:`budgeted_read`, with the writes of
    the checking path (``_apply_one``'s, ``_work_sql._read_records``'): the position mark when
    idle forgetting has started, then the move. None (nothing written): apply it by the
    checking path."""
    client_id = command.client_id
    queue_id = command.queue_id
    row = db.execute(_POSITION, (client_id, queue_id)).fetchone()
    if row is None:
        return None
    length, deleted, position, sweeping = row
    found = budgeted_read(db, command, position, deleted, length)
    if found is None:
        return None
    result, moved_to = found
    if sweeping:
        touch_position(db, client_id, queue_id, sweeping=True)
    if moved_to is not None:
        _set_position(db, client_id, queue_id, moved_to)
    return result


def _apply_one(
    db: apsw.Connection,
    command: Command,
    hold: bool = False,
    unchecked: list[tuple[str, int]] | None = None,
) -> Result:
    if isinstance(command, CommandGroup):
        return _apply_group(db, command.commands, hold, unchecked)
    if isinstance(command, CreateQueue):
        policy = command.retention or RetentionPolicy()
        if db.execute("SELECT 1 FROM queues WHERE queue_id = ?", (command.queue_id,)).fetchone():
            return queue_exists(command.queue_id)
        if (problem := policy.problem()) is not None:
            return bad_request(problem)
        number = next_queue_number(db)
        if number is None:
            return bad_request(too_many_queues())
        db.execute(
            "INSERT INTO queues (queue_id, queue_number) VALUES (?, ?)", (command.queue_id, number)
        )
        _set_policy(db, command.queue_id, policy)
        return QueueCreated(command.queue_id)
    if isinstance(command, SetRetention):
        if (
            db.execute("SELECT 1 FROM queues WHERE queue_id = ?", (command.queue_id,)).fetchone()
            is None
        ):
            return queue_not_found(command.queue_id)
        if (problem := command.policy.problem()) is not None:
            return bad_request(problem)
        _set_policy(db, command.queue_id, command.policy)
        return RetentionSet(command.queue_id, command.policy)
    if isinstance(command, ApplyRetention):
        return _apply_retention(db, command.now_ms)
    if isinstance(command, SetBrokerAddress):
        db.execute(
            "INSERT INTO brokers (broker_id, host, port) VALUES (?, ?, ?)"
            " ON CONFLICT (broker_id) DO UPDATE SET host = excluded.host,"
            " port = excluded.port",
            (command.broker_id, command.host, command.port),
        )
        return BrokerAddressSet(command.broker_id)
    if isinstance(command, SetGroups):
        if stored_map(db).settings is not None:
            return bad_request(GROUPS_FIXED_BY_MAP)
        if (problem := groups_problem(command.group_ids, stored_groups(db))) is not None:
            return bad_request(problem)
        # In `work_meta`: replicated state that snapshots copy (schema version 5), so a
        # replica installing one learns the groups too; no schema change needed.
        db.execute(
            "INSERT INTO work_meta (key, value) VALUES ('groups', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (orjson.dumps(list(command.group_ids)).decode(),),
        )
        return GroupsSet(command.group_ids)
    if isinstance(command, MapCommand):
        return _apply_map(db, command)
    if isinstance(command, AppendMessage | AppendBatch):
        return _append(db, command)
    if isinstance(command, WORK_COMMANDS):
        return apply_work(db, command, None if unchecked is None else checked_sizes)
    if not isinstance(command, ReadNext | ReadBatch | Ack | Seek):
        raise TypeError(f"not a command: {command!r}")
    row = db.execute(_POSITION, (command.client_id, command.queue_id)).fetchone()
    if row is None:
        return queue_not_found(command.queue_id)
    length, deleted, position, sweeping = row
    if isinstance(command, ReadNext | ReadBatch):
        start, end = read_range(position, deleted, length, command)
        if unchecked is not None and unchecked_read(command):
            # Nobody waits for this answer (a replica; a leader applying entries nobody
            # waits for): its effect does not depend on the values' bytes, so none is read
            # (nor checked: the scrub checks every stored value, _runtime/_repair.py). The
            # answer, which reaches nobody, holds empty bytes; the position moves as everywhere.
            read = tuple((seq, b"") for seq in range(start, end + 1))
        else:
            read = tuple(
                (seq, data) for seq, data, _ in read_values(db, command.queue_id, start, end)
            )
        result, moved_to = read_result(command, read)
    else:
        result, moved_to = position_result(command, position, length)
    # Written only now, after the values are read (see apply_command).
    if sweeping:
        touch_position(db, command.client_id, command.queue_id, sweeping=True)
    if moved_to is not None:
        _set_position(db, command.client_id, command.queue_id, moved_to)
    return result


def _read_next(
    db: apsw.Connection, command: ReadNext, unchecked: list[tuple[str, int]] | None
) -> Result:
    """A single READ, as :func:`_apply_one` applies it (the same statements, results and
    writes), without the type tests of every other command first and with its one value
    sought by its key (:func:`read_data`): two statements where nobody waits for the answer,
    three where someone does."""
    client_id = command.client_id
    queue_id = command.queue_id
    row = db.execute(_POSITION, (client_id, queue_id)).fetchone()
    if row is None:
        return queue_not_found(queue_id)
    length, deleted, position, sweeping = row
    start, end = read_range(position, deleted, length, command)
    if start > end:
        read: tuple[tuple[int, bytes], ...] = ()
    elif unchecked is not None:
        read = ((start, b""),)  # (nobody waits: no value read, as in _apply_one)
    else:
        read = ((start, read_data(db, queue_id, start)),)
    result, moved_to = read_result(command, read)
    # Written only now, after the value is read (see apply_command).
    if sweeping:
        touch_position(db, client_id, queue_id, sweeping=True)
    if moved_to is not None:
        _set_position(db, client_id, queue_id, moved_to)
    return result


def _same_reader(first: ReadNext, command: Command) -> bool:
    return (
        type(command) is ReadNext
        and command.client_id == first.client_id
        and command.queue_id == first.queue_id
    )


def _read_run(
    db: apsw.Connection,
    run: tuple[ReadNext, ...],
    hold: bool,
    unchecked: list[tuple[str, int]] | None,
) -> list[Result]:
    """Single READs of one client on one queue, one after another in a group: what applying
    each with :func:`_read_next` gives (results, position, writes), in three statements for the
    run (the position ``SELECT``, the values ``SELECT`` of all it may read, the upsert) instead
    of three per READ; two where nobody waits (no value read). Nothing is written before the
    values are read, so a damaged or missing one sends the run to :func:`apply_command` one
    READ at a time, which answers (or raises) for each exactly as before."""
    client_id = run[0].client_id
    queue_id = run[0].queue_id
    row = db.execute(_POSITION, (client_id, queue_id)).fetchone()
    if row is None:
        return [queue_not_found(queue_id) for _ in run]
    length, deleted, position, sweeping = row
    first, last = read_range(position, deleted, length, run[0])
    last = min(length, first + len(run) - 1)
    if first > last:
        data: list[bytes] = []
    elif unchecked is not None:
        data = [b""] * (last - first + 1)  # (nobody waits: no value read, as in _read_next)
    else:
        try:
            data = [value for _, value, _ in read_values(db, queue_id, first, last)]
        except StorageDamaged:
            return [apply_command(db, command, hold=hold, unchecked=unchecked) for command in run]
    results, moved_to = read_next_run(first, data, len(run))
    # Written only now, after the values are read (see apply_command); touching a position
    # marks it, so once for the run is what once per READ wrote.
    if sweeping:
        touch_position(db, client_id, queue_id, sweeping=True)
    if moved_to is not None:
        _set_position(db, client_id, queue_id, moved_to)
    return results


_POSITION = (
    "SELECT length, deleted_through, coalesce((SELECT read_position FROM client_positions"
    " WHERE client_id = ?1 AND queue_id = ?2), 0),"
    " EXISTS (SELECT 1 FROM work_meta WHERE key = 'sweep_ms') FROM queues WHERE queue_id = ?2"
)
"""A READ's, ACK's or SEEK's one query before it writes: the queue, the client's position,
and whether idle forgetting has started (``touch_position``'s check, answered here). As
subqueries rather than a ``LEFT JOIN``: the same rows, in 1.7 µs instead of 6.9 (thread time,
best of 7 x 2,000, here)."""


def stored_groups(db: apsw.Connection) -> tuple[str, ...]:
    """The cluster's replication groups as :class:`SetGroups` recorded them (none: ``()``)."""
    row = db.execute("SELECT value FROM work_meta WHERE key = 'groups'").fetchone()
    return () if row is None else tuple(orjson.loads(row[0]))


def stored_map(db: apsw.Connection) -> ClusterMap:
    """The metadata group's :class:`ClusterMap` (an empty, unfounded one before
    ``FOUND_CLUSTER``). Kept whole, as the converter's JSON, in ``work_meta``: replicated
    state that snapshots copy, as the stage-1 list is; metadata commands are rare (a founding,
    a join, a group's membership change), so each reads and writes the whole map."""
    row = db.execute("SELECT value FROM work_meta WHERE key = 'cluster_map'").fetchone()
    if row is None:
        return ClusterMap()
    return converter.structure(orjson.loads(row[0]), ClusterMap)


def _apply_map(db: apsw.Connection, command: MapCommand) -> Result:
    """The SQL twin of :func:`~.._core._queues.apply_map_command`: the stored map, changed
    and written back only when the command is accepted (a refusal changes nothing)."""
    cmap = stored_map(db)
    version = cmap.version
    result = apply_map_command(cmap, stored_groups(db), command)
    if cmap.version != version:
        db.execute(
            "INSERT INTO work_meta (key, value) VALUES ('cluster_map', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (orjson.dumps(converter.unstructure(cmap)).decode(),),
        )
    return result  # type: ignore[return-value]


def _set_position(db: apsw.Connection, client_id: str, queue_id: str, position: int) -> None:
    db.execute(
        "INSERT INTO client_positions (client_id, queue_id, read_position)"
        " VALUES (?, ?, ?) ON CONFLICT (client_id, queue_id)"
        " DO UPDATE SET read_position = excluded.read_position",
        (client_id, queue_id, position),
    )


def _apply_group(
    db: apsw.Connection,
    commands: tuple[Command, ...],
    hold: bool,
    unchecked: list[tuple[str, int]] | None,
) -> GroupApplied:
    """A group's commands in order; a run of plain appends to one queue (the common case
    under pipelined load) costs three statements in all instead of three each, and so does a
    run of single READs of one client on one queue (one receive's pipelined READs); a run of
    plain APPEND_BATCHes to one queue reads and updates the queue once (:func:`_batch_run`)."""
    if type(commands) is AppendColumns and len(commands) > 1:
        # (a replica's decoded group: plain stamped appends, by construction, as columns)
        queue_id = commands.one_queue()
        if queue_id is not None:
            run = _append_columns(
                db, queue_id, commands.datas, list(commands.stamp_column()), commands
            )
            return GroupApplied(run if type(run) is AppendedRun else tuple(run))  # type: ignore[arg-type]
    if _one_run(commands):
        run = _append_run(db, commands)  # type: ignore[arg-type]
        return GroupApplied(run if type(run) is AppendedRun else tuple(run))  # type: ignore[arg-type]
    results: list[Result] = []
    count = len(commands)
    i = 0
    while i < count:
        command = commands[i]
        j = i + 1
        if _plain_append(command):
            queue_id = command.queue_id
            while j < count and _plain_append(commands[j]) and commands[j].queue_id == queue_id:
                j += 1
            if j - i > 1:
                results += _append_run(db, commands[i:j])
                i = j
                continue
        elif _plain_batch(command):
            queue_id = command.queue_id
            while j < count and _plain_batch(commands[j]) and commands[j].queue_id == queue_id:
                j += 1
            if j - i > 1:
                results += _batch_run(db, commands[i:j])  # type: ignore[arg-type]
                i = j
                continue
        elif type(command) is ReadNext:
            while j < count and _same_reader(command, commands[j]):
                j += 1
            if j - i > 1:
                results += _read_run(db, commands[i:j], hold, unchecked)  # type: ignore[arg-type]
                i = j
                continue
        results.append(apply_command(db, command, hold=hold, unchecked=unchecked))
        i = j
    return GroupApplied(tuple(results))


def _set_policy(db: apsw.Connection, queue_id: str, policy: RetentionPolicy) -> None:
    db.execute(
        "UPDATE queues SET max_messages = ?, max_age_ms = ?, delete_acknowledged = ?"
        " WHERE queue_id = ?",
        (policy.max_messages, policy.max_age_ms, int(policy.delete_acknowledged), queue_id),
    )


def _apply_retention(db: apsw.Connection, now_ms: int) -> RetentionApplied:
    """The SQL twin of ``QueueState._apply_retention``: the same messages go."""
    budget = RETENTION_DELETES_PER_APPLY
    trimmed = []
    queues = db.execute(
        "SELECT queue_id, length, deleted_through, undated_through, max_messages,"
        " max_age_ms, delete_acknowledged, queue_number FROM queues WHERE max_messages IS NOT"
        " NULL OR max_age_ms IS NOT NULL OR delete_acknowledged ORDER BY queue_id"
    ).fetchall()
    for queue_id, length, deleted, undated, max_messages, max_age_ms, by_readers, number in queues:
        if budget <= 0:
            break
        policy = policy_from_row(max_messages, max_age_ms, by_readers)
        too_old = slowest = None
        if max_age_ms is not None:
            # Stamps never decrease along a queue and the undated messages come first, so
            # the too old ones are a prefix of the dated ones; an undated message goes with
            # the first dated message after it that is too old.
            (too_old,) = db.execute(
                "SELECT max(key) - ?1 FROM (SELECT key, appended_ms FROM queue_data"
                " WHERE key > ?1 + ?2 AND key < ?1 + ?5 ORDER BY key LIMIT ?3)"
                " WHERE appended_ms < ?4",
                (
                    number * QUEUE_SPAN,
                    max(deleted, undated),
                    budget,
                    now_ms - max_age_ms,
                    QUEUE_SPAN,
                ),
            ).fetchone()
        if by_readers:
            (slowest,) = db.execute(
                "SELECT min(read_position) FROM client_positions WHERE queue_id = ?",
                (queue_id,),
            ).fetchone()
        unfinished = lowest_unfinished(db, queue_id, deleted)
        through = retention_through(policy, deleted, length, too_old, slowest, budget, unfinished)
        if through > deleted:
            db.execute(
                "DELETE FROM queue_data WHERE key > ?1 AND key <= ?1 + ?2",
                (number * QUEUE_SPAN, through),
            )
            db.execute(
                "UPDATE queues SET deleted_through = ? WHERE queue_id = ?", (through, queue_id)
            )
            budget -= through - deleted
            trimmed.append((queue_id, through + 1))
    return RetentionApplied(tuple(trimmed))


def policy_from_row(
    max_messages: int | None, max_age_ms: int | None, by_readers: int
) -> RetentionPolicy:
    return RetentionPolicy(max_messages, max_age_ms, bool(by_readers))
