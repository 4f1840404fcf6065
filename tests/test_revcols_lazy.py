"""A replica's lazy stand-ins for tuples (``_core/_append_columns.AppendColumns``, the commands
of a decoded ``APPEND_RUNS`` group; ``_core/_appended_run.AppendedRun``, the results of a run)
driven against the eager objects they replace: a SQLite store fed the decoded group, a SQLite
store fed the same appends as a tuple, and the memory store fed the decoded group, entry by
entry through ``save(committed=...)`` (the runtime's path), at the places a run leaves its
one-run path: several queues, a missing or deleted queue, stamps that go back, a run that
crosses ``MAX_SEQUENCE`` (applied command by command), a transaction that rolls back and is
applied again. Rows, results, views and the bytes written again must be alike."""

from __future__ import annotations

import copy
import itertools
import pickle
import random
from typing import Any

import orjson
import pytest
import trio

from trio_broker._core import _commands as cmd
from trio_broker._core._append_columns import AppendColumns
from trio_broker._core._appended_run import AppendedRun
from trio_broker._core._raft_messages import Entry
from trio_broker._core._work_commands import DeleteQueue
from trio_broker._protocol._entries import (
    decode_payload,
    encode_payload,
    entry_checksum,
    payload_bytes,
    payload_from_obj,
    stored_entry,
)
from trio_broker._runtime._applied import applied_group, applies_later
from trio_broker._runtime._save_place import apply_weight
from trio_broker._runtime._snapshots import held_size
from trio_broker._storage import Store
from trio_broker._storage._schema import MAX_SEQUENCE
from trio_broker.testing import MemoryStore, open_local_cluster

from .wire import RawConnection, create_queue

STAMP = 1_765_000_000_000
QUEUES = ["Q-1", "Q-2", "Q-3"]  # (Q-3 is deleted before the groups, or near the last number)

Runs = list[tuple[str, int, list[Any]]]


def _random_runs(rng: random.Random) -> Runs:
    """1 to 5 runs of 1 to 30 values (strings, numbers, objects and lists, some with commas),
    to one queue or several (one never created), stamps rising, alike or going back."""
    runs: Runs = []
    stamp = STAMP
    queue = rng.choice(QUEUES)
    for _ in range(rng.randrange(1, 6)):
        if rng.random() < 0.3:
            queue = rng.choice([*QUEUES, "Q-missing"])
        stamp += rng.choice([0, 1, 7, -50])
        kind = rng.randrange(4)
        values: list[Any] = []
        for _ in range(rng.randrange(1, 31)):
            n = rng.randrange(10**6)
            values.append([f"v{n}", f"a,{n}", n, {"k": n, "l": [n, "x,y"]}][kind])
        runs.append((queue, stamp, values))
    return runs


def _obj(runs: Runs) -> dict[str, Any]:
    return {"type": "APPEND_RUNS", "runs": [[q, s, vs] for q, s, vs in runs]}


def _lazy(runs: Runs) -> cmd.CommandGroup:
    """The group as a replica decodes it from the frame's bytes."""
    group = decode_payload(orjson.dumps(_obj(runs)))
    assert type(group.commands) is AppendColumns
    return group


def _eager(runs: Runs) -> cmd.CommandGroup:
    """The same appends as a tuple of AppendMessages (what the leader proposed)."""
    return cmd.CommandGroup(
        tuple(cmd.AppendMessage(q, orjson.dumps(v), None, None, s) for q, s, vs in runs for v in vs)
    )


class Triplets:
    """Two SQLite stores (decoded group, eager tuple) and a memory store (decoded group), fed
    the same entries; ``Q-3`` deleted or ``near`` its last sequence number."""

    def __init__(self, tmp_path: Any, near: int | None) -> None:
        self.lazy = Store(tmp_path / "lazy")
        self.eager = Store(tmp_path / "eager")
        self.memory = MemoryStore("memory")
        self.index = 0
        self.apply_all(*(cmd.CreateQueue(q) for q in QUEUES))
        if near is None:
            self.apply_all(DeleteQueue("Q-3"))
        else:
            for store in (self.lazy, self.eager):
                store._db.execute(
                    "UPDATE queues SET length = ?1, deleted_through = ?1 WHERE queue_id = ?2",
                    (MAX_SEQUENCE - near, "Q-3"),
                )
            self.memory.state.deleted["Q-3"] = MAX_SEQUENCE - near

    def apply_all(self, *commands: Any) -> None:
        entries = []
        for command in commands:
            self.index += 1
            entries.append(Entry(1, self.index, command))
        got = [store.save(committed=entries) for store in (self.lazy, self.eager, self.memory)]
        assert got[0] == got[1] == got[2]

    def apply_group(self, runs: Runs) -> list[Any]:
        self.index += 1
        lazy, eager, for_memory = _lazy(runs), _eager(runs), _lazy(runs)
        (a,) = self.lazy.save(committed=[Entry(1, self.index, lazy)])
        (b,) = self.eager.save(committed=[Entry(1, self.index, eager)])
        (c,) = self.memory.save(committed=[Entry(1, self.index, for_memory)])
        return [(lazy, a), (eager, b), (for_memory, c)]

    def rows(self, store: Store) -> list[Any]:
        return [
            store._db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("queues", "queue_data")
        ]

    def close(self) -> None:
        self.lazy.close()
        self.eager.close()


@pytest.mark.parametrize("near", [None, 40])
def test_decoded_groups_apply_as_the_appends_they_stand_for(tmp_path, near):
    """Random groups, past a deleted queue or one that reaches ``MAX_SEQUENCE`` partway (the
    run then applied command by command, the appends past the bound refused): every result
    alike on the three stores, in both directions of ``==``, with its hash and repr; the
    views told alike; the rows alike."""
    rng = random.Random(11 if near is None else 12)
    stores = Triplets(tmp_path, near)
    try:
        refused = 0
        for _ in range(40):
            runs = _random_runs(rng)
            applied = stores.apply_group(runs)
            results = [result for _, result in applied]
            for one in results:
                for other in results:
                    assert one == other and one.results == other.results
                    assert hash(one) == hash(other) and repr(one) == repr(other)
            told: list[list[Any]] = [[], [], []]
            for (group, result), into in zip(applied, told, strict=True):
                applied_group(lambda c, r, into=into: into.append((c, r)))(
                    group.commands, result.results
                )
            assert told[0] == told[1] == told[2]
            refused += sum(type(r) is cmd.CommandRejected for r in results[1].results)
            assert stores.rows(stores.lazy) == stores.rows(stores.eager)
            for queue in QUEUES:
                assert stores.memory.messages(queue) == stores.lazy.messages(queue)
            assert stores.memory.queue_lengths() == stores.lazy.queue_lengths()
        assert refused  # (the missing, deleted or full queue was met)
    finally:
        stores.close()


def test_a_run_that_crosses_the_last_number_is_applied_one_by_one(tmp_path):
    """One queue's decoded run of 5 with 3 numbers left: the first 3 appended, the last 2
    refused, as the eager tuple's (the columns' fallback reads the appends themselves)."""
    stores = Triplets(tmp_path, near=3)
    try:
        applied = stores.apply_group([("Q-3", STAMP, ["a", "b"]), ("Q-3", STAMP + 1, [1, 2, 3])])
        results = [result.results for _, result in applied]
        assert results[0] == results[1] == results[2]
        assert [type(r) for r in results[0]] == [cmd.MessageAppended] * 3 + [
            cmd.CommandRejected
        ] * 2
        assert results[0][2] == cmd.MessageAppended(MAX_SEQUENCE)
        assert stores.rows(stores.lazy) == stores.rows(stores.eager)
    finally:
        stores.close()


def test_a_rolled_back_apply_of_a_decoded_group_applies_again_alike(tmp_path):
    """The apply's transaction rolls back after its statements ran (its answers given first,
    as ``before_commit`` gives them), then the same entry, the same objects, is applied again:
    the columns are read again whole (no iterator spent the first time), and the results and
    rows are the eager group's."""
    rng = random.Random(3)
    lazy_store, eager_store = Store(tmp_path / "lazy"), Store(tmp_path / "eager")
    try:
        for store in (lazy_store, eager_store):
            store.save(committed=[Entry(1, 1, cmd.CreateQueue("Q-1"))])
        for index in range(2, 12):
            runs = [("Q-1", STAMP + index, [f"v{rng.randrange(99)}" for _ in range(20)])]
            runs.append(("Q-1", STAMP + index + 1, ["w", "x"]))
            entry = Entry(1, index, _lazy(runs))
            seen: list[Any] = []

            def fail(results: list[Any], seen: list[Any] = seen) -> None:
                seen.append(results[0])
                raise OSError("disk I/O error")

            with pytest.raises(OSError):
                lazy_store.save(committed=[entry], before_commit=fail)
            (again,) = lazy_store.save(committed=[entry])
            (eager,) = eager_store.save(committed=[Entry(1, index, _eager(runs))])
            assert seen[0] == again == eager
            assert type(again.results) is AppendedRun
            assert entry.payload.commands._made is None  # type: ignore[attr-defined]
        assert [lazy_store._db.execute("SELECT * FROM queue_data").fetchall()] == [
            eager_store._db.execute("SELECT * FROM queue_data").fetchall()
        ]
    finally:
        lazy_store.close()
        eager_store.close()


def test_a_decoded_group_is_sent_again_byte_for_byte_with_its_checksum():
    """A replica elected leader re-encodes its log's entries (their bytes were dropped once
    stored): in either form, the decoded group's bytes and checksum are the eager group's, and
    the APPEND_RUNS form is the bytes the replica received (values with commas, objects,
    several queues, stamps that go back)."""
    rng = random.Random(21)
    for index in range(1, 60):
        runs = _random_runs(rng)
        received = orjson.dumps(_obj(runs))
        lazy, eager = decode_payload(received), _eager(runs)
        for runs_form in (True, False):
            a, b = Entry(3, index, lazy), Entry(3, index, eager)
            assert payload_bytes(a, runs_form) == payload_bytes(b, runs_form)
            assert stored_entry(a) == stored_entry(b)
            assert decode_payload(payload_bytes(a, runs_form)) == eager
        merged = all((q1, s1) != (q2, s2) for (q1, s1, _), (q2, s2, _) in itertools.pairwise(runs))
        if merged:  # (the leader writes adjacent runs of one queue and stamp as one)
            assert encode_payload(decode_payload(received), True) == received
            assert entry_checksum(3, index, encode_payload(lazy, True)) == entry_checksum(
                3, index, received
            )


def test_the_stand_ins_behave_as_the_tuples_they_replace():
    """What the code base does with a group's commands or a run's results: compare them both
    ways, hash them, look in them, slice them, index from the end, iterate twice, test truth,
    copy, deep-copy and pickle them (the simulator deep-copies state; the memory store
    compares results), reverse them, count and find in them. Concatenation and ordering are
    refused (a tuple's are not): nothing in the package uses them on either."""
    runs: Runs = [("Q-1", STAMP, ["a", "b,c"]), ("Q-2", STAMP - 5, [{"k": 1}]), ("Q-1", 9, [1])]
    columns = _lazy(runs).commands
    plain = _eager(runs).commands
    run, results = (
        AppendedRun(7, 3),
        (
            cmd.MessageAppended(7),
            cmd.MessageAppended(8),
            cmd.MessageAppended(9),
        ),
    )
    for lazy, eager in ((columns, plain), (run, results)):
        assert lazy == eager and eager == lazy
        assert (lazy != eager, eager != lazy) == (False, False)
        assert hash(lazy) == hash(eager) and {eager: 1}[lazy] == 1 and lazy in {eager}
        assert repr(lazy) == repr(eager) and bool(lazy) and len(lazy) == len(eager)
        assert eager[-1] in lazy and lazy[-2] == eager[-2] and lazy[::-1] == eager[::-1]
        assert list(lazy) == list(lazy) == list(eager)
        assert list(reversed(lazy)) == list(reversed(eager))
        assert lazy.index(eager[1]) == 1 and lazy.count(eager[0]) == eager.count(eager[0])
        for again in (copy.copy(lazy), copy.deepcopy(lazy), pickle.loads(pickle.dumps(lazy))):
            assert type(again) is type(lazy) and again == eager and eager == again
        assert lazy != list(eager) and list(eager) != lazy  # (as a tuple and a list)
        with pytest.raises(TypeError):
            eager + lazy  # type: ignore[operator]
        with pytest.raises(TypeError):
            assert lazy < eager  # type: ignore[operator]
    assert run != AppendedRun(7, 2) and run != AppendedRun(8, 3) and run == AppendedRun(7, 3)
    state = {"group": _lazy(runs), "applied": cmd.GroupApplied(AppendedRun(1, 2))}
    copied = copy.deepcopy(state)
    assert copied == state and copied["group"] == _eager(runs)
    assert type(copied["group"].commands) is AppendColumns


def test_the_walks_of_a_decoded_group_count_what_the_eager_group_counts():
    """The apply lag's test, the apply's weight, the log's held bytes and ``data_size`` read
    the columns alone; each gives the eager group's figure at its bounds (100 appends, 32 KiB
    of values), and none makes the appends."""
    for count, size in ((100, 320), (101, 10), (100, 330), (1, 32 * 1024 - 2), (2, 20_000)):
        runs: Runs = [("Q-1", STAMP, ["x" * (size - 2)] * count)]
        lazy, eager = _lazy(runs), _eager(runs)
        entries = (Entry(1, 1, lazy),)
        assert applies_later(lazy) == applies_later(eager)
        assert apply_weight(entries) == apply_weight((Entry(1, 1, eager),))
        assert held_size(lazy) == held_size(eager)
        assert cmd.data_size(lazy) == cmd.data_size(eager)
        assert lazy.commands._made is None  # type: ignore[attr-defined]


def test_a_decoded_group_is_the_same_payload_whichever_decoder_made_it():
    """The COMMAND_GROUP form of the same appends decodes to a tuple; the APPEND_RUNS form to
    columns: equal groups, equal hashes (a dict of payloads keyed either way finds both)."""
    rng = random.Random(4)
    for _ in range(20):
        runs = _random_runs(rng)
        eager = _eager(runs)
        as_group = payload_from_obj(orjson.loads(encode_payload(eager, False)))
        as_runs = payload_from_obj(orjson.loads(encode_payload(eager, True)))
        assert type(as_group.commands) is tuple and type(as_runs.commands) is AppendColumns
        assert as_group == as_runs == eager and as_runs == as_group
        assert {as_group: 1}[as_runs] == 1


async def _appended_numbers(port: int, queue_id: str, count: int) -> list[int]:
    """``count`` APPENDs in one write (the leader groups them): their answers' numbers."""
    conn = await RawConnection.open(port)
    try:
        await conn.send(
            *(
                {"operation": "APPEND", "queue_name": queue_id, "data": f"v{i}"}
                for i in range(count)
            )
        )
        numbers = []
        for _ in range(count):
            answer = await conn.receive()
            assert answer is not None and answer["status"] == "success", answer
            numbers.append(answer["sequence_num"])
        return numbers
    finally:
        await conn.aclose()


async def test_a_replica_elected_leader_sends_its_decoded_groups_as_they_came(tmp_path):
    """A replica held the leader's groups as decoded columns (their bytes dropped once
    stored); the leader stops, the replica leads and catches up a member that was down while
    they were written: it sends them again from its columns, and the member stores the bytes
    the others stored (APPEND_RUNS, same checksums) and applies every append. The leader's
    answers to each pipelined write, read from the run's ``AppendedRun``, are its numbers in
    order."""

    async def rows(broker: Any, sql: str) -> list[Any]:
        db = broker.driver._store._db
        return await broker.driver._worker.run(lambda: db.execute(sql).fetchall())

    log_sql = "SELECT log_index, term, payload, checksum FROM raft_log ORDER BY log_index"
    async with open_local_cluster(tmp_path, 3) as cluster:
        with trio.fail_after(60):
            leader = await cluster.wait_for_leader()
            while not leader.driver._append_runs():
                await leader.driver.wait_changed()
            queue_id = await create_queue(leader.port)
            names = [n for n, b in cluster.brokers.items() if b is not leader]
            victim, replica_name = names
            replica = cluster.brokers[replica_name]
            await cluster.stop(victim)
            for n in range(3):  # (each answer its number, in order, read from an AppendedRun)
                numbers = await _appended_numbers(leader.port, queue_id, 64)
                assert numbers == list(range(64 * n + 1, 64 * n + 65))
            last = leader.node.log.last_index
            while replica.applied_index < last:
                await replica.driver.wait_changed()
            held = [e for e in replica.node.log.entries if isinstance(e.payload, cmd.CommandGroup)]
            assert all(e.encoded is None for e in held)  # (dropped once stored)
            columns = [
                e.payload.commands for e in held if type(e.payload.commands) is AppendColumns
            ]
            assert columns and all(c._made is None for c in columns)  # (the replica made none)
            await cluster.stop(next(n for n, b in cluster.brokers.items() if b is leader))
            back = await cluster.start(victim)
            while not replica.node.is_leader:
                await replica.driver.wait_changed()
            while back.applied_index < last:
                await back.driver.wait_changed()
            sent = await rows(back, log_sql)
            kept = await rows(replica, log_sql)
            data_sql = "SELECT * FROM queue_data ORDER BY key"
            assert await rows(back, data_sql) == await rows(replica, data_sql)
    # (sent again from entries whose bytes were dropped: in the form the new leader's links
    # choose, ``_peer_mux``; what they decode to, and their checksums, are what was kept)
    upto = {row[0]: row for row in kept if row[0] <= last}
    compared = 0
    for index, term, payload, checksum in sent:
        if index in upto:
            compared += 1
            assert term == upto[index][1] and checksum == entry_checksum(term, index, payload)
            assert decode_payload(bytes(payload)) == decode_payload(bytes(upto[index][2]))
    assert compared == len(upto)
    assert sum(bytes(row[2]).startswith(b'{"type":"APPEND_RUNS"') for row in kept) >= 3


def test_groups_that_waited_unapplied_apply_together_as_the_eager_ones(tmp_path):
    """A replica's apply lag: small decoded groups wait (``applies_later``), then four are
    applied in one transaction, beside a lone append: the results and rows are the eager
    groups', each group's results an ``AppendedRun`` of consecutive numbers."""
    lazy_store, eager_store = Store(tmp_path / "lazy"), Store(tmp_path / "eager")
    try:
        for store in (lazy_store, eager_store):
            store.save(committed=[Entry(1, 1, cmd.CreateQueue("Q-1"))])
        all_runs: list[Runs] = [
            [("Q-1", STAMP + n, [f"v{n}-{k}" for k in range(3 + n)])] for n in range(4)
        ]
        lone = cmd.AppendMessage("Q-1", b'"lone"', None, None, STAMP + 9)
        lazy = [Entry(1, 2 + n, _lazy(runs)) for n, runs in enumerate(all_runs)]
        eager = [Entry(1, 2 + n, _eager(runs)) for n, runs in enumerate(all_runs)]
        assert all(applies_later(e.payload) for e in lazy)
        got = lazy_store.save(committed=[*lazy, Entry(1, 6, lone)])
        want = eager_store.save(committed=[*eager, Entry(1, 6, lone)])
        assert got == want and want == got
        assert [type(r.results) for r in got[:4]] == [AppendedRun] * 4
        assert [(r.results.first, r.results.size) for r in got[:4]] == [
            (1, 3),
            (4, 4),
            (8, 5),
            (13, 6),
        ]
        assert got[4] == cmd.MessageAppended(19)
        sql = "SELECT * FROM queue_data ORDER BY key"
        assert lazy_store._db.execute(sql).fetchall() == eager_store._db.execute(sql).fetchall()
    finally:
        lazy_store.close()
        eager_store.close()
