"""A replica's apply of committed entries in the task that read the REPLICATEs, or in the
driver's own task (``InStep._persist_after_frames``, ``RaftDriver._handle_ready``): a heavy
apply never holds the event loop (``SHORT_WEIGHT``), the acknowledgement of new entries leaves
before a long apply even where a link cannot write at once (TLS, a busy link), reads for
nobody are applied without their values, and an apply ahead that fails is applied once.
Counts and outcomes, never timings."""

from __future__ import annotations

import threading

import apsw
import pytest
import trio

from tests.positions import agreed_positions, fill
from trio_broker._core import _commands as cmd
from trio_broker._core import _raft as raft
from trio_broker._runtime import _disk_space, _driver, _peer_mux
from trio_broker._runtime import _save_place as place
from trio_broker._runtime._save_place import APPLY_AHEAD, apply_weight
from trio_broker._storage import _queue_sql
from trio_broker._storage._integrity import StorageDamaged
from trio_broker.testing import open_local_cluster

READ_SIZE = 300  # (above APPLY_AHEAD: each READ of a full batch is a long apply)
READS = 4


def test_a_heavy_read_entry_is_not_short_enough_for_the_loop():
    """One entry of 64 READs of 1,000 messages: 64 commands (``short``), but 64,000 values
    read and checked (about 0.2 s): neither applied on the loop's thread nor in a step."""
    reads = tuple(cmd.ReadBatch(f"C{i}", "q", 1000, max_bytes=1 << 20) for i in range(64))
    entry = raft.Entry(index=1, term=1, payload=cmd.CommandGroup(reads))
    assert place.short((entry,))
    assert apply_weight((entry,)) > place.SHORT_WEIGHT
    assert not place.light((entry,))
    applying = raft.Ready(None, None, (), None, (), (), (entry,), ())
    assert not place.runs_in_place(applying, False, fsync_fast=True)
    assert not place.applies_only(applying, (0, None))
    one = raft.Entry(index=1, term=1, payload=reads[0])
    assert place.runs_in_place(attrs_evolve(applying, (one,)), False, fsync_fast=True)


def attrs_evolve(rd: raft.Ready, committed: tuple) -> raft.Ready:
    import attrs

    return attrs.evolve(rd, committed_entries=committed)


async def _reading(tmp_path, path: str, watch, rounds: int = 100, until=None, seconds: float = 90):
    """Queue 2,000 values, then READs of READ_SIZE until a replica applied ahead (``path``:
    ``reader``, the task that read the REPLICATEs persists, or ``driver``, its path refused)
    and ``until(replicas)`` holds, if given (at most ``rounds`` rounds, ``seconds``);
    ``watch(broker, events)`` patches each replica. Every READ answered, every broker at the
    same positions at the end. Returns the events and the replicas.

    On the reader's path the READs go on until that path applied ahead at least once: under
    load (a busy storage thread, an fsync slower than SLOW_FSYNC on a loaded machine) it
    refuses and the driver's task applies ahead instead, and a run could end with none.
    SLOW_FSYNC is raised there: a quick disk is what lets that path persist, and a loaded
    machine's wall clock is not the disk's speed (test_driver.py tests that rule)."""
    with pytest.MonkeyPatch.context() as patch:
        if path == "reader":
            patch.setattr(_driver, "SLOW_FSYNC", 10.0)
        return await _reading_in(tmp_path, path, watch, rounds, until, seconds)


async def _reading_in(tmp_path, path: str, watch, rounds: int, until, seconds: float):
    from tests.wire import RawConnection, create_queue

    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        await fill(connection, queue_id)
        events: dict[str, list[tuple]] = {}
        replicas = [b for b in c.brokers.values() if b is not leader]
        for broker in replicas:
            watch(broker, events.setdefault(broker.broker_id, []))
            if path == "driver":
                broker.driver._may_persist = lambda: False
        reads = [
            {"operation": "READ", "queue_name": queue_id, "client_id": f"C{i}"}
            | {"max_messages": READ_SIZE}
            for i in range(READS)
        ]
        with trio.fail_after(seconds):
            for _ in range(rounds):  # (bounded: until a replica applied ahead)
                await connection.send(*reads)
                for _ in reads:
                    answer = await connection.receive()
                    assert answer is not None and answer.get("status") == "success", answer
                if (
                    sum(b.driver.applied_ahead for b in replicas) >= 2
                    and (path != "reader" or sum(b.driver.ahead_in_step for b in replicas) >= 1)
                    and (until is None or until(replicas))
                ):
                    break
        await connection.aclose()
        assert len(await agreed_positions(c)) == READS
        return events, replicas


@pytest.mark.parametrize("path", ["reader", "driver"])
async def test_a_heavy_apply_runs_on_the_storage_thread(tmp_path, monkeypatch, path):
    """Before: an apply that reads thousands of values (a Ready of READ_BATCHes, 64 commands
    and 64,000 values) ran on the event loop's thread, or in the task that read the
    REPLICATEs, when it had few commands: the loop held for as long (no heartbeat answers).
    Now an apply heavier than SHORT_WEIGHT runs on the storage thread; the reader's path
    persists and acknowledges, then hands the driver only the apply. (SHORT_WEIGHT lowered
    under the READs' weight, so that the test's small READs are heavy.)"""
    monkeypatch.setattr(place, "SHORT_WEIGHT", 2 * READ_SIZE)
    loop_thread = threading.current_thread()

    def watch(broker, seen):
        store = broker.driver._store

        def saving(save=store.save, **kwargs):
            weight = apply_weight(tuple(kwargs.get("committed", ())))
            if weight > place.SHORT_WEIGHT:
                seen.append((weight, threading.current_thread() is loop_thread))
            return save(**kwargs)

        store.save = saving

    events, replicas = await _reading(tmp_path, path, watch)
    heavy = [event for seen in events.values() for event in seen]
    assert heavy  # (the READs were applied: every one heavy)
    assert not [event for event in heavy if event[1]], heavy  # none on the loop's thread
    if path == "reader":
        assert sum(b.driver.ahead_in_step for b in replicas) >= 1
        assert sum(b.driver.persisted_in_step for b in replicas) >= 1


@pytest.mark.parametrize("path", ["reader", "driver"])
async def test_the_acknowledgement_leaves_before_the_apply_on_a_link_that_cannot_write_at_once(
    tmp_path, path
):
    """Before: where a link could not write at once (TLS, a write in progress), the
    acknowledgement was queued for the link's task and the long apply ran at once on the
    loop's thread: the acknowledgement left after the apply anyway. Now the links write
    first: the driver lets them send, and the reader's path hands the apply to the driver,
    which does. Each replica's links here never write at once; the acknowledgement's bytes
    (the link's encoding of a batch) come between the persisting transaction and the
    apply."""
    encode = _peer_mux._Link._encode
    by_mux: dict[int, list[tuple]] = {}

    def encoding(self, batch):
        seen = by_mux.get(id(self.mux))
        if seen is not None:
            acks = any(isinstance(m, raft.ReplicateResponse) for _, m in batch)
            seen.append(("wrote", acks))
        return encode(self, batch)

    def watch(broker, seen):
        driver, store = broker.driver, broker.driver._store
        by_mux[id(driver.peer_mux)] = seen

        def saving(save=store.save, **kwargs):
            entries, committed = kwargs.get("entries", ()), kwargs.get("committed", ())
            seen.append(("save", bool(entries), apply_weight(committed), driver.applied_ahead))
            return save(**kwargs)

        def sending(messages, peers=driver.peers):
            for m in messages:
                peers.send(m)
            return False  # (as a TLS link: the link's task writes)

        store.save = saving
        driver._send_at_once = sending

    _peer_mux._Link._encode = encoding
    try:
        events, replicas = await _reading(tmp_path, path, watch)
    finally:
        _peer_mux._Link._encode = encode
    if path == "reader":
        assert sum(b.driver.ahead_in_step for b in replicas) >= 1
    checked = 0
    for seen in events.values():
        for i, event in enumerate(seen):
            if event[0] != "save" or event[1] or event[2] <= APPLY_AHEAD:
                continue
            last = max(j for j in range(i) if seen[j][0] == "save")
            if event[3] > seen[last][3]:  # (an apply ahead: counted after the persist)
                assert seen[last][:3] == ("save", True, 0), seen[last : i + 1]
                assert ("wrote", True) in seen[last + 1 : i], seen[last : i + 1]
                checked += 1
    assert checked >= 1


@pytest.mark.parametrize(
    "failure",
    [
        lambda: apsw.FullError("database or disk is full"),
        lambda: StorageDamaged(
            "broker.db", "queue_data", None, "checksum", queue_id="Q-NONE", seq=1
        ),
    ],
    ids=["disk full", "damaged value"],
)
@pytest.mark.parametrize("path", ["reader", "driver"])
async def test_a_failed_apply_after_the_acknowledgement_is_applied_once(
    tmp_path, monkeypatch, path, failure
):
    """The apply ahead (its own transaction, after the acknowledgement left) fails, rolled
    back whole: the driver applies it again (retries, repairs); every READ is answered
    success and every broker ends at the same positions, each READ applied once."""
    failed: list[int] = []
    # (a full disk is retried once space grew, or after RETRY_ANYWAY_SECONDS: at the next poll)
    monkeypatch.setattr(_disk_space, "RETRY_ANYWAY_SECONDS", 0.0)

    def watch(broker, seen):
        driver, store = broker.driver, broker.driver._store
        driver.disk.interval = 0.05
        marker = [driver.ahead_in_step]

        def saving(save=store.save, **kwargs):
            committed = tuple(kwargs.get("committed", ()))
            # An apply ahead: its own transaction, after the acknowledgement. The reader's
            # path runs it as ``save(committed=...)``, or hands it to the driver's task (too
            # heavy for that path, or the acknowledgement not written at once: frequent under
            # load), which runs it as a Ready holding only the apply, right after that path
            # counted it (``ahead_in_step``).
            only_apply = not kwargs.get("entries") and all(
                kwargs.get(k) is None for k in ("hard_state", "truncate_from", "snapshot")
            )
            handed = only_apply and driver.ahead_in_step > marker[0]
            if (kwargs.keys() == {"committed"} or handed) and apply_weight(committed) > APPLY_AHEAD:
                marker[0] = driver.ahead_in_step
                seen.append("ahead")
                if len(failed) < 2 and len(seen) % 2:
                    failed.append(1)
                    raise failure()
            return save(**kwargs)

        store.save = saving

    def happened(replicas) -> bool:
        # The step checked: an apply ahead failed (on the reader's path, besides, one ran in
        # that task's step: _reading). Under load an apply ahead may not come at once: the
        # READs go on (bounded) until one failed.
        return bool(failed)

    _, replicas = await _reading(tmp_path, path, watch, until=happened)
    assert failed
    if path == "reader":
        assert sum(b.driver.ahead_in_step for b in replicas) >= 1


async def test_a_replica_persisting_in_step_applies_reads_for_nobody_without_their_values(
    tmp_path, monkeypatch
):
    """Before: the task that read the REPLICATEs applied their READs reading and checking
    every value, though nobody waits for a replica's answers (the driver's path does not
    read them). Now neither path does; a damaged value a checked read meets there is still
    noted and repaired from a peer, never served."""
    from tests.wire import RawConnection, create_queue

    reads: dict[str, int] = {}
    read_data = _queue_sql.read_data

    def counting(db, queue_id, seq):
        reads[db.filename] = reads.get(db.filename, 0) + 1
        return read_data(db, queue_id, seq)

    monkeypatch.setattr(_queue_sql, "read_data", counting)
    async with open_local_cluster(tmp_path, 3, scrub_period=None) as c:  # (no scrub)
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        answer = await connection.call(
            {"operation": "APPEND_BATCH", "queue_name": queue_id, "values": ["x"] * 60}
        )
        assert answer.get("status") == "success", answer
        replicas = [b for b in c.brokers.values() if b is not leader]
        with trio.fail_after(10):
            target = leader.driver.applied_index
            while any(b.driver.applied_index < target for b in replicas):  # noqa: ASYNC110
                await trio.sleep(0.01)
        before = sum(b.driver.persisted_in_step for b in replicas)
        for _ in range(20):
            answer = await connection.call(
                {"operation": "READ", "queue_name": queue_id, "client_id": "C"}
            )
            assert answer.get("status") == "success", answer
        assert sum(b.driver.persisted_in_step for b in replicas) > before
        assert reads.get(leader.driver._store._db.filename, 0) >= 20  # (the leader's answers)
        for broker in replicas:
            assert reads.get(broker.driver._store._db.filename, 0) == 0
        # A damaged value on a replica, read there by a batched READ (bounded in bytes: its
        # values checked): the transaction fails, the driver's path notes it and repairs it
        # from a peer, never served.
        damaged = replicas[0]
        store = damaged.driver._store

        def alter() -> None:
            db = store._db
            (data,) = db.execute(
                "SELECT data FROM queue_data WHERE queue_number = (SELECT queue_number"
                " FROM queues WHERE queue_id = ?) AND sequence_num = 25",
                (queue_id,),
            ).fetchone()
            db.execute(
                "UPDATE queue_data SET data = ? WHERE queue_number = (SELECT queue_number"
                " FROM queues WHERE queue_id = ?) AND sequence_num = 25",
                (bytes([data[0] ^ 0x01]) + data[1:], queue_id),
            )

        await damaged.driver._worker.run(alter)
        answer = await connection.call(
            {"operation": "READ", "queue_name": queue_id, "client_id": "C"} | {"max_messages": 10}
        )
        assert answer.get("status") == "success", answer
        with trio.fail_after(10):
            while not damaged.driver.repair.statistics().repaired:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert damaged.driver.repair.statistics().damaged == 1
        await connection.aclose()
