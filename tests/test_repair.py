"""Damaged stored values repaired from the other brokers (docs/reliability.md, "Repairing
damaged values"; ``_runtime/_repair.py``): the store's side (a transaction that meets damage
fails whole, rows from a peer replace only damaged or missing copies, the scrub finds them),
and real brokers in one program whose copy of a value was changed while stopped."""

from __future__ import annotations

import itertools
import logging
import re
import types
from pathlib import Path
from typing import Any

import apsw
import orjson
import pytest
import trio
from prometheus_client import generate_latest

from trio_broker._core._commands import AppendMessage, CreateQueue, ReadBatch, ReadNext, Seek
from trio_broker._core._raft_messages import Entry, HardState
from trio_broker._core._work_commands import ReadRecords
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol import FetchValues
from trio_broker._runtime._repair import (
    SCRUB_BYTES,
    Repair,
    decode_rows,
    encode_rows,
    serve_fetch_values,
)
from trio_broker._storage import DB_FILE, Store
from trio_broker._storage._integrity import StorageDamaged
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, create_queue, transfer_leadership

Q = "Q-AAAAABBBBB"
C = "C-READER1"


def _value(i: int) -> bytes:
    return f"value-{i:04d}-".encode() + b"x" * 40


def _store_with_values(path: Path, count: int = 12) -> None:
    store = Store(path)
    try:
        store.apply([CreateQueue(Q), *(AppendMessage(Q, _value(i)) for i in range(1, count + 1))])
    finally:
        store.close()


def _alter(path: Path, queue_id: str, seq: int) -> None:
    """Change one byte of a stored value, its checksum left as it was (as a flipped bit on
    the disk would)."""
    db = apsw.Connection(str(path / DB_FILE))
    try:
        (data,) = db.execute(
            "SELECT data FROM queue_data WHERE queue_number = (SELECT queue_number"
            " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
            (queue_id, seq),
        ).fetchone()
        changed = bytes([data[0] ^ 0x01]) + data[1:]
        db.execute(
            "UPDATE queue_data SET data = ? WHERE queue_number = (SELECT queue_number"
            " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
            (changed, queue_id, seq),
        )
    finally:
        db.close()


# -- the store --------------------------------------------------------------------------------


def test_a_transaction_that_meets_a_damaged_value_fails_whole_when_held(tmp_path):
    _store_with_values(tmp_path)
    _alter(tmp_path, Q, 7)
    store = Store(tmp_path)
    try:
        applied = store.get_meta("applied_index")
        store.hold_damage = True
        entries = [Entry(1, 1, ReadBatch(C, Q, 10))]
        with pytest.raises(StorageDamaged) as found:
            store.save(hard_state=HardState(1, None, 1), entries=entries, committed=entries)
        assert (found.value.queue_id, found.value.seq) == (Q, 7)
        # Nothing of it is kept: neither the entry, nor the term, nor the position, nor the
        # applied index.
        assert store.log_size() == 0 and store.raft_state().hard_state.term == 0
        assert store.positions() == {} and store.get_meta("applied_index") == applied
        # Not held (a broker alone): the read is refused, the rest of the transaction kept.
        store.hold_damage = False
        (result,) = store.save(hard_state=HardState(1, None, 1), entries=entries, committed=entries)
        assert result.code == "UNAVAILABLE" and "seq 7" in result.message
        assert store.log_size() == 1 and store.positions() == {}
    finally:
        store.close()


def test_a_read_for_nobody_goes_past_a_damaged_value_when_its_effect_needs_no_bytes(tmp_path):
    """A broker behind the others may meet a value they have all deleted since: a read whose
    effect does not depend on the bytes, applied for nobody, goes past it. A READ or a
    READ_BATCH does not even read it (the scrub finds the damage, not the read); a work read
    goes over it and notes it, to be repaired in the background."""
    _store_with_values(tmp_path)
    _alter(tmp_path, Q, 7)
    db = apsw.Connection(str(tmp_path / DB_FILE))
    db.execute(
        "DELETE FROM queue_data WHERE queue_number = (SELECT queue_number"
        " FROM queues WHERE queue_id = ?) AND sequence_num = 11",
        (Q,),
    )
    db.close()
    store = Store(tmp_path)
    try:
        store.hold_damage = store.unchecked_reads = True
        # A batch bounded in bytes takes as many messages as fit: it needs the sizes.
        bounded = [Entry(1, 1, ReadBatch(C, Q, 10, max_bytes=1000))]
        with pytest.raises(StorageDamaged):
            store.save(entries=bounded, committed=bounded)
        assert store.positions() == {}
        values_read = _watch_value_reads(store)
        entries = [
            Entry(1, 1, ReadBatch(C, Q, 10)),
            Entry(1, 2, ReadNext("C-OTHER01", Q)),
            Entry(1, 3, ReadNext(C, Q)),  # (over the missing row)
        ]
        results = store.save(entries=entries, committed=entries)
        # The same effect as on an intact copy, and no value read at all.
        assert store.positions() == {(C, Q): 11, ("C-OTHER01", Q): 1}
        assert values_read == [] and store.unchecked_met == []
        assert results[0].messages == tuple((n, b"") for n in range(1, 11))  # (for nobody)
        assert (results[1].sequence_num, results[2].sequence_num) == (1, 11)
        # A work read for nobody reads the values: it goes over the damage and notes it.
        records = [Entry(1, 4, ReadRecords("C-RECORDS", Q, 10))]
        (delivered,) = store.save(entries=records, committed=records)
        assert values_read and store.unchecked_met == [(Q, 7)]
        assert [(d.sequence_num, d.data) for d in delivered.messages][6] == (7, b"")
        # Without ``unchecked_reads`` (someone waits for the answer): held, the value checked.
        store.unchecked_reads = False
        for commands in (
            [ReadBatch("C-THIRD01", Q, 10)],
            [Seek("C-FOURTH1", Q, 7), ReadNext("C-FOURTH1", Q)],
        ):
            again = [Entry(1, 5 + k, c) for k, c in enumerate(commands)]
            with pytest.raises(StorageDamaged) as found:
                store.save(entries=again, committed=again)
            assert (found.value.queue_id, found.value.seq) == (Q, 7)
        assert set(store.positions()) == {(C, Q), ("C-OTHER01", Q), ("C-RECORDS", Q)}
    finally:
        store.close()


def _watch_value_reads(store: Store) -> list[str]:
    """Every read of a stored value's bytes through the store's connection, from now on."""
    seen: list[str] = []

    def authorizer(op: int, a: str | None, b: str | None, *_: Any) -> int:
        if op == apsw.SQLITE_READ and a == "queue_data" and b == "data":
            seen.append(b)
        return apsw.SQLITE_OK

    store._db.authorizer = authorizer
    return seen


def test_rows_from_a_peer_replace_only_damaged_or_missing_copies(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _store_with_values(good)
    _store_with_values(bad)
    _alter(bad, Q, 7)
    db = apsw.Connection(str(bad / DB_FILE))
    db.execute("DELETE FROM queue_data WHERE sequence_num = 9")
    db.close()
    peer, damaged = Store(good), Store(bad)
    try:
        # What the damaged broker would give another: never its damaged row, nor the missing.
        assert [r[0] for r in damaged.intact_rows(Q, 1, 100, 1 << 20)] == [
            1, 2, 3, 4, 5, 6, 8, 10, 11, 12
        ]  # fmt: skip
        assert damaged.damaged_values(("", 0), 100) == ([(Q, 7), (Q, 9)], None)
        assert [n for n in range(1, 14) if damaged.needs_repair(Q, n)] == [7, 9]
        rows = peer.intact_rows(Q, 5, 100, 1 << 20)
        assert [r[0] for r in rows] == list(range(5, 13))
        # A row changed on the way fails its own checksum, and is not written.
        seq, data, headers, stamp, crc = rows[2]
        assert seq == 7
        changed = [*rows[:2], (seq, b"?" + data[1:], headers, stamp, crc), *rows[3:]]
        assert damaged.repair_rows(Q, changed) == [9]
        assert damaged.repair_rows(Q, rows) == [7]
        assert damaged.messages(Q) == [_value(i) for i in range(1, 13)]
        assert damaged.damaged_values(("", 0), 100) == ([], None)
        assert not any(damaged.needs_repair(Q, n) for n in range(1, 14))
        # Rows this broker does not hold yet (beyond its queue's length) are not inserted.
        peer.apply([AppendMessage(Q, _value(13))])
        assert damaged.repair_rows(Q, peer.intact_rows(Q, 13, 10, 1 << 20)) == []
        assert len(damaged.messages(Q)) == 12
    finally:
        peer.close()
        damaged.close()


def test_the_scrub_finds_rows_missing_anywhere_a_bounded_step_at_a_time(tmp_path):
    """A lost write leaves a hole in what a queue retains: at its head, in the middle, at its
    tail, or the whole queue; the scrub finds each, as many a step as it checks rows at most,
    and nothing that retention deleted."""
    qa, qb, qc = "Q-AAAAA00001", "Q-BBBBB00002", "Q-CCCCC00003"
    store = Store(tmp_path)
    try:
        store.apply(
            [CreateQueue(q) for q in (qa, qb, qc)]
            + [AppendMessage(qa, _value(i)) for i in range(1, 13)]
            + [AppendMessage(qb, _value(i)) for i in range(1, 4)]
            + [AppendMessage(qc, _value(i)) for i in range(1, 6)]
        )
    finally:
        store.close()
    db = apsw.Connection(str(tmp_path / DB_FILE))
    for queue_id, seq in ((qa, 1), (qa, 6), (qa, 12), (qb, 1), (qb, 2), (qb, 3)):
        db.execute(
            "DELETE FROM queue_data WHERE queue_number = (SELECT queue_number"
            " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
            (queue_id, seq),
        )
    db.close()
    _alter(tmp_path, qc, 2)
    expected = [(qa, 1), (qa, 6), (qa, 12), (qb, 1), (qb, 2), (qb, 3), (qc, 2)]
    store = Store(tmp_path)
    try:
        assert store.damaged_values(("", 0), 100) == (expected, None)
        for limit in (1, 2, 3):
            after: tuple[str, int] | None = ("", 0)
            found, steps = [], 0
            while after is not None:
                step, after = store.damaged_values(after, limit)
                assert len(step) <= 2 * limit  # (rows checked, and as many holes at most)
                found += step
                steps += 1
            assert sorted(set(found)) == expected
            assert steps <= (20 + 6) // limit + 3
        # Retention deletes the head: a hole there is nothing to repair any more.
        db = apsw.Connection(str(tmp_path / DB_FILE))
        db.execute("UPDATE queues SET deleted_through = 1 WHERE queue_id = ?", (qa,))
        db.close()
        assert store.damaged_values(("", 0), 100) == (expected[1:], None)
        assert all(store.needs_repair(*place) for place in expected[1:])
    finally:
        store.close()


def test_an_answer_holds_at_most_its_byte_budget_but_always_one_row(tmp_path):
    _store_with_values(tmp_path)
    store = Store(tmp_path)
    try:
        size = len(_value(1))
        assert len(store.intact_rows(Q, 1, 100, 3 * size)) == 3
        assert len(store.intact_rows(Q, 1, 100, 1)) == 1
        assert len(store.intact_rows(Q, 1, 2, 1 << 20)) == 2
        rows = store.intact_rows(Q, 1, 100, 1 << 20)
        assert decode_rows(encode_rows(rows)) == rows
    finally:
        store.close()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        "[[1, 2, 3]]",
        '[[1, "%%%", null, null, 5]]',
        '[["1", "", null, null, 5]]',
        # Numbers SQLite cannot store, and booleans where numbers go: refused here, not by
        # an OverflowError in the repairing transaction.
        '[[9223372036854775808, "", null, null, 5]]',
        '[[1, "", null, 9223372036854775808, 5]]',
        '[[1, "", null, null, 18446744073709551615]]',
        '[[true, "", null, null, 5]]',
        '[[1, "", null, null, false]]',
    ],
)
def test_a_malformed_answer_repairs_nothing(text):
    assert decode_rows(text) is None


@pytest.mark.parametrize("first", [0, -1, True, 2**63, 2**64 - 1])
def test_a_fetch_values_request_out_of_range_is_refused(tmp_path, first):
    _store_with_values(tmp_path)
    store = Store(tmp_path)

    async def main():
        worker = types.SimpleNamespace(run=lambda fn, *a: _at_once(fn, *a))
        return await serve_fetch_values(store, worker, FetchValues(Q, first))

    try:
        answer = trio.run(main)
        assert isinstance(answer, BrokerError) and answer.code == ErrorCode.BAD_REQUEST
    finally:
        store.close()


async def _at_once(fn, *args):
    return fn(*args)


# -- real brokers ------------------------------------------------------------------------------


async def _no_scrub(self: Repair) -> None:
    """The scrub left out: the damage is first met by a READ the broker applies."""


async def _append(port: int, queue_id: str, count: int) -> dict[int, Any]:
    conn = await RawConnection.open(port)
    acked = {}
    try:
        for i in range(count):
            value = {"n": i, "text": f"value-{i:05d}"}
            answer = await conn.call({"operation": "APPEND", "queue_name": queue_id, "data": value})
            assert answer["status"] == "success", answer
            acked[answer["sequence_num"]] = value
    finally:
        await conn.aclose()
    return acked


async def _read_all(port: int, queue_id: str, client_id: str, length: int) -> dict[int, Any]:
    """Every message, one READ at a time: any error answer fails the test."""
    conn = await RawConnection.open(port)
    served = {}
    try:
        while len(served) < length:
            answer = await conn.call(
                {"operation": "READ", "queue_name": queue_id, "client_id": client_id}
            )
            assert answer["status"] == "success" and "sequence_num" in answer, answer
            served[answer["sequence_num"]] = answer["data"]
    finally:
        await conn.aclose()
    return served


async def _caught_up(cluster: Any, name: str) -> None:
    while True:
        leader = await cluster.wait_for_leader()
        broker = cluster.brokers.get(name)
        if broker is not None and broker.driver.applied_index >= leader.driver.applied_index:
            return
        await trio.sleep(0.02)


def _same(a: dict[int, Any], b: dict[int, Any]) -> bool:
    return orjson.dumps(a, option=orjson.OPT_NON_STR_KEYS) == orjson.dumps(
        b, option=orjson.OPT_NON_STR_KEYS
    )


def _alter_live(store: Store, queue_id: str, seq: int) -> None:
    """:func:`_alter` on a running broker, through its own connection (on its storage
    thread): damage that appears while it runs."""
    db = store._db
    (data,) = db.execute(
        "SELECT data FROM queue_data WHERE queue_number = (SELECT queue_number"
        " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
        (queue_id, seq),
    ).fetchone()
    db.execute(
        "UPDATE queue_data SET data = ? WHERE queue_number = (SELECT queue_number"
        " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
        (bytes([data[0] ^ 0x01]) + data[1:], queue_id, seq),
    )


async def test_damage_on_a_running_replica_is_scrubbed_and_a_leaders_read_repairs_it(
    tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.INFO, logger="trio_broker")
    with trio.fail_after(60):
        # A short period, so that the periodic scrub's pass comes round within the test.
        async with open_local_cluster(tmp_path, scrub_period=0.5) as cluster:
            leader = await cluster.wait_for_leader()
            queue_id = await create_queue(leader.port)
            acked = await _append(leader.port, queue_id, 40)
            name = next(n for n, b in cluster.brokers.items() if b is not leader)
            await _caught_up(cluster, name)
            damaged = cluster.brokers[name]
            store = damaged.driver._store
            # As a running replica: the value changes on its disk while it serves.
            await damaged.driver._worker.run(_alter_live, store, queue_id, 17)
            # The READs reach it through the log; nobody waits for their answers there, so it
            # applies them from the sequence numbers alone (the position moves as everywhere),
            # never reading a value: the damage is not found there.
            served = await _read_all(leader.port, queue_id, "C-READER1", len(acked))
            assert _same(served, acked)
            await _caught_up(cluster, name)
            ours = await damaged.driver._worker.run(store.positions)
            theirs = await leader.driver._worker.run(leader.driver._store.positions)
            assert ours == theirs  # the position moved here too: its state is the others'
            # The periodic scrub finds it, and it is repaired from a peer, without any READ.
            while True:
                if damaged.driver.repair.statistics().repaired:
                    break
                await trio.sleep(0.02)
            stats = damaged.driver.repair.statistics()
            assert (stats.damaged, stats.repaired, stats.waiting) == (1, 1, 0)
            metrics = generate_latest(damaged.metrics.registry).decode()
            assert re.search(r"^trio_broker_values_damaged_total\{.*\} 1\.0$", metrics, re.M)
            assert re.search(r"^trio_broker_values_repaired_total\{.*\} 1\.0$", metrics, re.M)
            assert re.search(r"^trio_broker_values_awaiting_repair\{.*\} 0\.0$", metrics, re.M)
            messages = await damaged.driver._worker.run(store.messages, queue_id)
            assert [orjson.loads(m) for m in messages] == list(acked.values())

            # As the leader: damaged again while stopped, its scrub left out, then given the
            # leadership. The READ of seq 30 waits for its answer: the transaction is held,
            # the value repaired from a peer, and the READ answered with it.
            await cluster.stop(name)
            _alter(tmp_path / name, queue_id, 30)
            monkeypatch.setattr(Repair, "scrub", _no_scrub)
            damaged = await cluster.start(name)
            await _caught_up(cluster, name)
            await transfer_leadership(cluster, damaged)
            served = await _read_all(damaged.port, queue_id, "C-READER2", len(acked))
            assert _same(served, acked)
            assert damaged.driver.repair.statistics().repaired == 1
            messages = await damaged.driver._worker.run(damaged.driver._store.messages, queue_id)
            assert [orjson.loads(m) for m in messages] == list(acked.values())

    events = [getattr(r, "event", None) for r in caplog.records]
    damaged_lines = [r for r in caplog.records if getattr(r, "event", None) == "storage.damaged"]
    assert [(r.levelno, r.fields["seq"]) for r in damaged_lines] == [
        (logging.ERROR, 17),
        (logging.ERROR, 30),
    ]
    assert "periodic scrub" in damaged_lines[0].fields["found"]
    assert "held until repaired" in damaged_lines[1].fields["action"]
    assert events.count("storage.repaired") == 2
    assert "driver.crashed" not in events


def test_a_value_reads_go_past_again_is_repaired_by_one_background_task(tmp_path):
    """A broker behind replays many reads over the same damaged value: one background repair
    at a time per value, not one per transaction (each would dial every member each round)."""
    started: list[list[tuple[str, int]]] = []
    config = types.SimpleNamespace(voters={"B-AAAAA", "B-BBBBB"}, learners=set())
    host = types.SimpleNamespace(
        broker_id="B-AAAAA",
        cluster_id="G-AAAAA",
        node=types.SimpleNamespace(config=config),
        start_soon=lambda fn, places: started.append(places),
    )
    store = types.SimpleNamespace(data_dir=tmp_path, unchecked_met=[])
    repair = Repair(host, store, types.SimpleNamespace())

    async def attempt():
        store.unchecked_met = [(Q, 7)]
        return "applied"

    async def main():
        for _ in range(5):
            assert await repair.saving(attempt, unwaited=lambda: True) == "applied"

    trio.run(main)
    assert started == [[(Q, 7)]]
    assert repair.statistics().waiting == 1


def _repair_room(tmp_path: Path, store: Any, started: list, period: float | None) -> Repair:
    config = types.SimpleNamespace(voters={"B-AAAAA", "B-BBBBB"}, learners=set())
    host = types.SimpleNamespace(
        broker_id="B-AAAAA",
        cluster_id="G-AAAAA",
        node=types.SimpleNamespace(config=config),
        start_soon=lambda fn, places: started.append(places),
        config=types.SimpleNamespace(scrub_period=period),
    )
    return Repair(host, store, types.SimpleNamespace(run=_at_once))


async def test_the_periodic_scrub_checks_a_few_hundred_values_a_job_over_its_period(
    tmp_path, autojump_clock
):
    """After the start-up pass (at once), pass after pass spread over the period, a bounded
    job at a time; a value damaged meanwhile is found and repaired in the background once."""
    rows, period = 1000, 100.0
    calls: list[tuple[float, int, int | None]] = []

    def damaged_values(after, limit, max_bytes=None):
        calls.append((trio.current_time(), limit, max_bytes))
        first = after[1] + 1
        if first > rows:
            return [], None
        last = min(first + limit - 1, rows)
        # Damaged once the broker runs (after the start-up pass).
        found = [(Q, 333)] if trio.current_time() > 0 and first <= 333 <= last else []
        return found, (Q, last)

    store = types.SimpleNamespace(data_dir=tmp_path, damaged_values=damaged_values)
    started: list = []
    repair = _repair_room(tmp_path, store, started, period)
    with trio.move_on_after(3.5 * period) as cancelled:  # (every wait cancellable)
        await repair.scrub()
    assert cancelled.cancelled_caught
    at_start = [c for c in calls if c[0] == 0]
    periodic = [c for c in calls if c[0] > 0]
    assert [c[1:] for c in at_start] == [(500, SCRUB_BYTES)] * 3
    assert {c[1:] for c in periodic} == {(200, 1 << 20)}
    # Six jobs a pass (five of 200 values, then the end), a pass per period at most.
    assert 18 <= len(periodic) <= 22
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(periodic)]
    assert min(gaps) >= period / 8 and max(gaps) <= period / 5
    assert started == [[(Q, 333)]]  # one background repair, however many passes find it
    stats = repair.statistics()
    assert (stats.damaged, stats.waiting) == (1, 1)


async def test_without_a_period_only_the_start_up_pass_runs(tmp_path, autojump_clock):
    calls = []

    def damaged_values(after, limit, max_bytes=None):
        calls.append(trio.current_time())
        return [], None

    store = types.SimpleNamespace(data_dir=tmp_path, damaged_values=damaged_values)
    await _repair_room(tmp_path, store, [], None).scrub()
    assert calls == [0]


async def test_the_results_of_reads_applied_for_nobody_never_reach_a_request(tmp_path):
    """A request found waiting on entries applied for nobody (their READs read no value) is
    answered "outcome unknown" (``on_hold``), never with their results."""
    store = types.SimpleNamespace(data_dir=tmp_path, unchecked_met=[])
    repair = _repair_room(tmp_path, store, [], None)
    waiting: list[str] = []
    held: list[int] = []

    async def attempt():
        seen.append(store.unchecked_reads)
        return ["applied"]

    seen: list[bool] = []
    # Nobody waits before nor after: applied for nobody, nobody answered.
    await repair.saving(attempt, lambda: held.append(1), unwaited=lambda: not waiting)
    assert (seen, held) == ([True], [])

    async def a_request_arrives():
        seen.append(store.unchecked_reads)
        waiting.append("token")
        return ["applied"]

    await repair.saving(a_request_arrives, lambda: held.append(1), unwaited=lambda: not waiting)
    assert (seen, held) == ([True, True], [1])
    # Someone waits from the start: the values are read and checked.
    await repair.saving(attempt, lambda: held.append(1), unwaited=lambda: not waiting)
    assert (seen, held) == ([True, True, False], [1])
