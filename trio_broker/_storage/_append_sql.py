"""The appends' apply in SQL: an APPEND or APPEND_BATCH alone (:func:`_append`, with its
producer's de-duplication), and a run of plain stamped appends to one queue applied as two
columns, the values' bytes and their stamps (:func:`_append_run`, :func:`run_stamps`), a run of
plain stamped APPEND_BATCHes to one queue applied together (:func:`_batch_run`), with the tests
that find such runs in a group (:func:`_one_run`, :func:`_plain_append`, :func:`_plain_batch`).

Used by :mod:`._queue_sql` (``_apply_one`` and ``_apply_group``), which it does not import:
the dependency goes one way. Why a run is applied this way, and what it gave:
docs/performance-history.md, "Columnar runs of appends"; ``tests/test_colrun.py`` checks that a run
stores exactly what applying each append alone stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw
import orjson

from .._core._appended_run import AppendedRun, appended_results
from .._core._commands import (
    AppendBatch,
    AppendMessage,
    BatchAppended,
    Command,
    CommandRejected,
    MessageAppended,
    ProducerState,
    Result,
    bad_request,
    check_producer,
    queue_not_found,
)
from .._core._queues import monotonic_stamp
from ._integrity import insert_plain, insert_stamped
from ._producers_sql import save_producer
from ._schema import MAX_SEQUENCE, past_last_sequence


def _append(db: apsw.Connection, command: AppendMessage | AppendBatch) -> Result:
    batch = isinstance(command, AppendBatch)
    data = command.data if batch else (command.data,)
    if command.producer_id is None or command.producer_seq is None:
        return _append_plain(db, command.queue_id, data, command.appended_ms, batch)
    row = db.execute(
        "SELECT last_appended_ms, length FROM queues WHERE queue_id = ?", (command.queue_id,)
    ).fetchone()
    if row is None:
        return queue_not_found(command.queue_id)
    stamp = monotonic_stamp(command.appended_ms, row[0])
    producer = None
    if command.producer_id is not None and command.producer_seq is not None:
        producer = (command.producer_id, command.queue_id)
        state = _producer_state(db, *producer)
        decided = check_producer(state, command.producer_seq, batch)
        if decided is not None:
            return decided
    if row[1] + len(data) > MAX_SEQUENCE:
        return bad_request(past_last_sequence(command.queue_id, row[1], len(data)))
    (length, number) = db.execute(
        "UPDATE queues SET length = length + ?1, last_appended_ms = ?2,"
        " undated_through = iif(?2 IS NULL, length + ?1, undated_through)"
        " WHERE queue_id = ?3 RETURNING length, queue_number",
        (len(data), stamp, command.queue_id),
    ).fetchone()
    first = length - len(data) + 1
    insert_plain(db, command.queue_id, first, data, stamp, number=number)
    if producer is not None:
        save_producer(db, "producers", producer, state, command.producer_seq, first, len(data))
    return BatchAppended(first, len(data)) if batch else MessageAppended(first)


_PLAIN_UPDATE = (
    "UPDATE queues SET length = length + ?1,"
    " last_appended_ms ="
    " iif(?2 IS NULL, last_appended_ms, max(coalesce(last_appended_ms, ?2), ?2)),"
    " undated_through = iif(?2 IS NULL AND last_appended_ms IS NULL, length + ?1, undated_through)"
    f" WHERE queue_id = ?3 AND length + ?1 <= {MAX_SEQUENCE}"
    " RETURNING length, queue_number, last_appended_ms"
)
"""An append without a producer's queue update, its stamp decided in the statement by
:func:`~.._core._queues.monotonic_stamp`'s rule (the proposed stamp, never before the queue's
last; none proposed: the last), where a ``SELECT`` of the last stamp came first: one statement
of two for a lone append (the right-hand sides read the row as it was, as the ``UPDATE`` of
:func:`_append` reads it). It changes no row when the append would take the queue past
``_schema.MAX_SEQUENCE`` (:func:`_refused` then tells why)."""


def _append_plain(
    db: apsw.Connection, queue_id: str, data: Sequence[bytes], proposed: int | None, batch: bool
) -> Result:
    """What :func:`_append` does for an APPEND or APPEND_BATCH without a producer's
    de-duplication: one ``UPDATE ... RETURNING`` and the rows' insert."""
    row = db.execute(_PLAIN_UPDATE, (len(data), proposed, queue_id)).fetchone()
    if row is None:
        return _refused(db, queue_id, len(data))
    length, number, stamp = row
    first = length - len(data) + 1
    insert_plain(db, queue_id, first, data, stamp, number=number)
    return BatchAppended(first, len(data)) if batch else MessageAppended(first)


def _refused(db: apsw.Connection, queue_id: str, count: int) -> CommandRejected:
    """Why an append's bounded ``UPDATE`` changed no row: no such queue, or ``count`` more
    messages would take it past ``_schema.MAX_SEQUENCE`` (the queue's length decides it,
    alike on every broker)."""
    row = db.execute("SELECT length FROM queues WHERE queue_id = ?", (queue_id,)).fetchone()
    if row is None:
        return queue_not_found(queue_id)
    return bad_request(past_last_sequence(queue_id, row[0], count))


_MISSING: Any = object()


def _last_appended(db: apsw.Connection, queue_id: str) -> Any:
    """The queue's last stamp (None before its first stamped append), or :data:`_MISSING`
    when there is no such queue: what a run of appends or of batches reads first."""
    row = db.execute(
        "SELECT last_appended_ms FROM queues WHERE queue_id = ?", (queue_id,)
    ).fetchone()
    return _MISSING if row is None else row[0]


_RUN_UPDATE = (
    "UPDATE queues SET length = length + ?1, last_appended_ms = ?2"
    f" WHERE queue_id = ?3 AND length + ?1 <= {MAX_SEQUENCE} RETURNING length, queue_number"
)
"""A run's queue update (:func:`_append_run`, :func:`_batch_run`): none when the run would
take the queue past ``_schema.MAX_SEQUENCE``, and the run's commands are then applied one by
one, each refused or not as alone."""


def _append_run(db: apsw.Connection, run: Sequence[AppendMessage]) -> Sequence[Result]:
    """Consecutive stamped appends to one queue without a producer id: the same results
    and rows as applying each with :meth:`_append` (``tests/test_colrun.py`` checks it over
    random groups), taken as two columns (the values' bytes and their stamps): one
    ``SELECT``, one ``UPDATE`` and a few multi-row ``INSERT``s for the run, no tuple per
    message, and no result object per message either: an :class:`AppendedRun`, whose
    ``MessageAppended``s are made only when read (a leader's answers; a replica's views do
    not: ``_runtime/_applied.applied_group``)."""
    return _append_columns(
        db, run[0].queue_id, [c.data for c in run], [c.appended_ms for c in run], run
    )


def _append_columns(
    db: apsw.Connection,
    queue_id: str,
    data: Sequence[bytes],
    proposed: list[int],
    run: Sequence[AppendMessage],
) -> Sequence[Result]:
    """:func:`_append_run` of the run's columns as they are: the values' bytes ``data`` and
    their stamps ``proposed`` (every one set), all to ``queue_id`` without a producer id;
    ``run`` (the appends themselves) is read only when the run would take the queue past the
    last sequence number (each applied alone). A replica's decoded group holds these columns
    already (``_core/_append_columns.AppendColumns``: no ``AppendMessage`` made)."""
    last = _last_appended(db, queue_id)
    if last is _MISSING:
        return [queue_not_found(queue_id)] * len(data)
    stamps = run_stamps(last, proposed)
    stamp = stamps[-1]
    # Every stamp is set, so undated_through does not move (as in _append).
    row = db.execute(_RUN_UPDATE, (len(data), stamp, queue_id)).fetchone()
    if row is None:  # (past the last sequence number: each alone, as without the run)
        return [_append(db, c) for c in run]
    (length, number) = row
    first = length - len(data) + 1
    if stamps[0] == stamp:  # (stamps never decrease: all alike, one receive's run)
        insert_plain(db, queue_id, first, data, stamp, number=number)
    else:
        insert_stamped(db, queue_id, first, data, stamps, number=number)
    return AppendedRun(first, len(data))


def _batch_run(db: apsw.Connection, run: Sequence[AppendBatch]) -> list[Result]:
    """Consecutive stamped APPEND_BATCHes to one queue without a producer id (what a leader
    groups under batch appends: about 19 in each entry of the bench's): the same results and
    rows as applying each with :func:`_append` (``tests/test_batch_runs.py``), with one
    ``SELECT`` and one ``UPDATE`` for the run instead of two per batch, and the values of
    batches of one stamp inserted together (statements of 64 rows across the batches' bounds:
    a batch of 100 alone takes three)."""
    queue_id = run[0].queue_id
    last = _last_appended(db, queue_id)
    if last is _MISSING:
        return [queue_not_found(queue_id)] * len(run)
    stamps = run_stamps(last, [c.appended_ms for c in run])  # type: ignore[misc]
    counts = [len(c.data) for c in run]
    total = sum(counts)
    # Every stamp is set, so undated_through does not move (as in _append).
    row = db.execute(_RUN_UPDATE, (total, stamps[-1], queue_id)).fetchone()
    if row is None:  # (past the last sequence number: each alone, as without the run)
        return [_append(db, c) for c in run]
    (length, number) = row
    results: list[Result] = []
    at = length - total + 1  # (the next batch's first sequence number)
    start, start_at = 0, at  # (the first batch of the current stamp, and its first number)
    for i, count in enumerate(counts):
        results.append(BatchAppended(at, count))
        at += count
        if i + 1 == len(run) or stamps[i + 1] != stamps[i]:
            if i == start:
                data: Sequence[bytes] = run[i].data
            else:
                # (each batch's values added by one `+=`: a C loop, where a comprehension took a
                # Python step per value: 12.2 -> 2.9 µs per 1,000 values)
                joined: list[bytes] = []
                for c in run[start : i + 1]:
                    joined += c.data
                data = joined
            insert_plain(db, queue_id, start_at, data, stamps[i], number=number)
            start, start_at = i + 1, at
    return results


_appended_run = appended_results
"""The results of a run, made at once (``tests/test_append_results.py``, ``benchmarks``)."""


def run_stamps(last: int | None, proposed: list[int]) -> list[int]:
    """The stamps a run of stamped appends gets, one :func:`monotonic_stamp` after another
    from the queue's ``last``: the proposed ones themselves when none is before the one
    before it (the leader's clock, the usual case: one sort in C, which finds an ordered list
    ordered in one pass and costs less than a pass of ``map(le, ...)``: 28 -> 11 ns per stamp),
    else each by the rule. Stamps are integers (the decoder's ``strict_int``, the leader's
    clock): a total order, so the list is its sorted copy exactly when none goes back."""
    if (last is None or proposed[0] >= last) and proposed == sorted(proposed):
        return proposed
    stamps = []
    stamp = last
    for one in proposed:
        stamp = monotonic_stamp(one, stamp)
        stamps.append(stamp)
    return stamps


def _producer_state(db: apsw.Connection, producer_id: str, queue_id: str) -> ProducerState | None:
    row = db.execute(
        "SELECT last_seq, recent, last_used FROM producers WHERE producer_id = ? AND queue_id = ?",
        (producer_id, queue_id),
    ).fetchone()
    if row is None:
        return None
    last_seq, recent, last_used = row
    return ProducerState(last_seq, tuple(tuple(r) for r in orjson.loads(recent)), last_used)


def _one_run(commands: Sequence[Command]) -> bool:
    """Whether a whole group is one run for :func:`_append_run` (what a leader groups under
    pipelined appends to one queue): every command an :class:`AppendMessage` to one queue,
    stamped, without a producer id (:func:`_plain_append`'s rule), tested in one loop without
    a call per command (0.09 -> 0.04 us per append; passes of ``map`` in C cost more on this
    Python, whose comprehensions read slots faster than ``attrgetter``)."""
    if len(commands) < 2 or type(commands[0]) is not AppendMessage:
        return False
    queue_id = commands[0].queue_id
    for c in commands:
        if (
            type(c) is not AppendMessage
            or c.producer_id is not None
            or c.appended_ms is None
            or c.queue_id != queue_id
        ):
            return False
    return True


def _plain_append(command: Command) -> bool:
    return (
        isinstance(command, AppendMessage)
        and command.producer_id is None
        and command.appended_ms is not None
    )


def _plain_batch(command: Command) -> bool:
    """An APPEND_BATCH :func:`_batch_run` takes: stamped, without a producer id."""
    return (
        type(command) is AppendBatch
        and command.producer_id is None
        and command.appended_ms is not None
    )
