"""Full disks (issue 14, item 3): a broker out of space stays up, refuses writes with
``UNAVAILABLE`` and ``"reason": "disk_full"``, keeps serving what it can, and resumes by itself.

Brokers run under the mock clock on :class:`FillableStore`, a memory store whose ``save``
raises ``apsw.FullError`` on demand before changing anything (what SQLite's rollback of a
failed transaction leaves), and on a free-space seam that reports what the test says. The
process test on a real, small tmpfs is ``tests/test_disk_full_process.py``; the first test here
checks on such a tmpfs that SQLite does roll back a transaction that fails for lack of space.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import apsw
import orjson
import pytest
import trio

from trio_broker._core._commands import AppendMessage, CreateQueue, ReadNext
from trio_broker._core._raft_messages import Entry, HardState
from trio_broker._core._work_commands import Publish
from trio_broker._runtime._disk_space import MIB, DiskSpace, DiskState, reserve_bytes
from trio_broker.testing._memory_store import MemoryStore
from trio_broker.testing._mock_cluster import MockCluster

PLENTY = 10_000 * MIB
TOTAL = 20_000 * MIB


class FillableStore(MemoryStore):
    """A memory store whose transactions fail for lack of space while ``fails`` says so."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.fails: Callable[[dict[str, Any]], bool] | None = None
        self.failed_saves = 0
        self.compaction_fails = False
        self.failed_compactions = 0

    def save(self, **kwargs: Any) -> list[Any]:
        if self.fails is not None and self.fails(kwargs):
            self.failed_saves += 1
            raise apsw.FullError("database or disk is full")
        return super().save(**kwargs)

    def compact(self, meta: Any) -> None:
        if self.compaction_fails:
            self.failed_compactions += 1
            raise apsw.FullError("database or disk is full")
        super().compact(meta)


class Space:
    """The free space each broker's data directory reports (by the directory's name)."""

    def __init__(self) -> None:
        self.free: dict[str, int] = {}

    def __call__(self, path: Path) -> tuple[int, int]:
        return self.free.get(Path(path).name, PLENTY), TOTAL


@contextlib.asynccontextmanager
async def open_fillable_cluster(
    size: int, base: Path, space: Space, **overrides: Any
) -> AsyncIterator[tuple[MockCluster, dict[str, FillableStore]]]:
    with trio.fail_after(600):  # virtual seconds: a refusal that never comes fails, not hangs
        async with open_fillable_cluster_unbounded(size, base, space, **overrides) as opened:
            yield opened


@contextlib.asynccontextmanager
async def open_fillable_cluster_unbounded(
    size: int, base: Path, space: Space, **overrides: Any
) -> AsyncIterator[tuple[MockCluster, dict[str, FillableStore]]]:
    async with trio.open_nursery() as nursery:
        cluster = MockCluster(nursery, base, disk_space=space, **overrides)
        stores = {f"b{i}": FillableStore(f"b{i}") for i in range(1, size + 1)}
        cluster.stores.update(stores)
        for name in stores:
            await cluster.start(name)
        await cluster.wait_for_voters(size)
        try:
            yield cluster, stores
        finally:
            nursery.cancel_scope.cancel()


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


async def create_queue(cluster: MockCluster, name: str) -> str:
    answer = await cluster.call(name, {"operation": "CREATE_QUEUE"})
    assert answer["status"] == "success", answer
    return answer["queue_id"]


async def append(cluster: MockCluster, name: str, queue_id: str, value: Any) -> dict[str, Any]:
    return await cluster.call(name, {"operation": "APPEND", "queue_name": queue_id, "data": value})


async def read(cluster: MockCluster, name: str, queue_id: str, client: str) -> dict[str, Any]:
    request = {"operation": "READ", "queue_name": queue_id, "client_id": client}
    return await cluster.call(name, request)


def assert_disk_full(answer: dict[str, Any], *, unknown: bool) -> None:
    assert answer["status"] == "error", answer
    assert answer["code"] == "UNAVAILABLE" and answer["reason"] == "disk_full", answer
    assert ("outcome" in answer) == unknown, answer
    assert "disk space" in answer["message"] or "disk (full)" in answer["message"], answer


def values(store: MemoryStore, queue_id: str) -> list[Any]:
    return [orjson.loads(v) for v in store.messages(queue_id)]


# -- SQLite itself, on a real full filesystem ---------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size_mb: int):
    """A tmpfs of ``size_mb`` MiB mounted at ``where``; skips unless root and mount works."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """A file in ``directory`` that takes all its filesystem's free space but ``leave`` bytes."""
    pad = directory / f"pad-{len(list(directory.glob('pad-*')))}"
    fd = os.open(pad, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(100):  # a broker writing meanwhile can take some of it first
            st = os.statvfs(directory)
            room = st.f_bavail * st.f_frsize - leave
            if room <= 0:
                break
            try:
                os.posix_fallocate(fd, os.fstat(fd).st_size, room)
                break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        if leave == 0:
            with contextlib.suppress(OSError):
                for _ in range(1 << 16):  # the last partial blocks, if any
                    os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return pad


def test_sqlite_rolls_back_a_transaction_that_fails_for_lack_of_space(tmp_path):
    """What the driver relies on: a Store.save that raises FullError changed nothing (log,
    term, applied commands, applied index), the connection stays usable, and the same save
    succeeds once space is freed."""
    from trio_broker._storage import Store

    with small_tmpfs(tmp_path / "disk", 4) as disk:
        store = Store(disk / "data")
        try:
            create = Entry(1, 1, CreateQueue("Q-AAAAA00001"))
            store.save(hard_state=HardState(1, "B-AAAAA", 0), entries=[create])
            store.save(hard_state=HardState(1, "B-AAAAA", 1), committed=[create])
            before = store.raft_state()
            pad = fill(disk, leave=100_000)  # room for some pages of the 400 KB below
            big = [
                Entry(2, i, AppendMessage("Q-AAAAA00001", b'"' + b"v" * 2000 + b'"', None, None, 1))
                for i in range(2, 202)
            ]
            save = dict(hard_state=HardState(2, "B-BBBBB", 201), entries=big, committed=big)
            with pytest.raises(apsw.FullError):
                store.save(**save)
            after = store.raft_state()
            assert (after.hard_state, after.applied) == (before.hard_state, before.applied)
            assert [e.index for e in after.entries] == [1]
            assert store.queue_lengths() == {"Q-AAAAA00001": 0}
            pad.unlink()
            store.save(**save)
            done = store.raft_state()
            assert (done.hard_state.term, done.applied) == (2, 201)
            assert store.queue_lengths() == {"Q-AAAAA00001": 200}
            assert store._db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            store.close()


# -- the state and its refusals ----------------------------------------------------------------


def test_what_counts_as_a_full_disk():
    from trio_broker._runtime._disk_space import is_disk_full

    assert is_disk_full(apsw.FullError("database or disk is full"))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(apsw.IOError("disk I/O error"))
    assert not is_disk_full(ValueError("full"))


def test_the_default_reserve_is_64_mib_or_5_percent_of_a_small_disk():
    assert reserve_bytes(None, 100 * 1024 * MIB) == 64 * MIB
    assert reserve_bytes(None, 100 * MIB) == 5 * MIB
    assert reserve_bytes(0, 100 * MIB) == 0
    assert reserve_bytes(2.5, 100 * MIB) == int(2.5 * MIB)


async def test_the_reserve_refuses_only_writes_that_add_data_and_clears_with_a_margin(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="trio_broker")
    free = [100 * MIB]
    disk = DiskSpace("B-AAAAA", tmp_path, 64, measure=lambda _: (free[0], TOTAL))
    disk.measure()
    disk._update()
    append = AppendMessage("Q-AAAAA00001", b"1", None, None, 1)
    assert disk.state is DiskState.OK and disk.refusal(append) is None
    free[0] = 10 * MIB
    disk.measure()
    disk._update()
    assert disk.state is DiskState.LOW
    for command in (append, CreateQueue("Q-AAAAA00002"), Publish("Q-AAAAA00001", ())):
        refusal = disk.refusal(command)
        assert refusal is not None and refusal.code == "UNAVAILABLE", command
        assert refusal.details["reason"] == "disk_full"
        assert refusal.details["free_bytes"] == 10 * MIB
        assert refusal.details["min_free_bytes"] == 64 * MIB
        assert "outcome" not in refusal.details  # refused: nothing applied
    assert disk.refusal(ReadNext("C-AAAAA", "Q-AAAAA00001")) is None
    free[0] = 65 * MIB  # above the reserve, not by an eighth of it: still out of space
    disk.measure()
    disk._update()
    assert disk.state is DiskState.LOW
    free[0] = 73 * MIB
    disk.measure()
    disk._update()
    assert disk.state is DiskState.OK
    assert len(events(caplog, "disk.full")) == 1
    assert len(events(caplog, "disk.space_recovered")) == 1


# -- a single broker ------------------------------------------------------------------------------


async def test_a_single_broker_whose_writes_fail_stays_up_and_resumes_by_itself(
    tmp_path, autojump_clock, caplog
):
    """The issue's case: a write fails with FullError. The broker does not crash or exit; the
    request in flight is answered "outcome unknown", later writes (and reads, which write a
    position) are refused, what needs no write is served; once space is freed the failed
    transaction is retried and everything resumes. Nothing acknowledged is lost, and the
    request of unknown outcome is applied at most once."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    space = Space()
    async with open_fillable_cluster(1, tmp_path, space) as (cluster, stores):
        store, broker = stores["b1"], cluster.brokers["b1"]
        queue_id = await create_queue(cluster, "b1")
        assert await append(cluster, "b1", queue_id, 1) == {"status": "success", "sequence_num": 1}

        space.free["b1"] = 0
        store.fails = lambda _: True
        assert_disk_full(await append(cluster, "b1", queue_id, 2), unknown=True)
        assert_disk_full(await append(cluster, "b1", queue_id, 3), unknown=False)
        assert_disk_full(await read(cluster, "b1", queue_id, "C-RDR01"), unknown=False)
        assert_disk_full(await cluster.call("b1", {"operation": "CREATE_QUEUE"}), unknown=False)
        topology = await cluster.call("b1", {"operation": "CLUSTER_QUERY"})
        assert topology["status"] == "success" and topology["self_role"] == "leader"
        listed = await cluster.call("b1", {"operation": "LIST_QUEUES"})
        assert listed["status"] == "success", listed
        stats = broker.statistics()
        assert stats.disk_state == "full" and stats.disk_write_failures >= 1

        await trio.sleep(60)  # a minute on a full disk: no crash, bounded retries
        assert cluster.brokers.get("b1") is broker and broker.is_leader
        assert 2 <= store.failed_saves <= 60 / 10 + 3, store.failed_saves
        assert not [r for r in caplog.records if "driver.crashed" in r.getMessage()]
        assert values(store, queue_id) == [1]

        store.fails = None
        space.free["b1"] = PLENTY
        await cluster.wait_until(lambda: broker.statistics().disk_state == "ok")
        assert await append(cluster, "b1", queue_id, 4) == {"status": "success", "sequence_num": 3}
        assert values(store, queue_id) == [1, 2, 4]
        got = [await read(cluster, "b1", queue_id, "C-RDR01") for _ in range(4)]
        assert [a.get("data") for a in got] == [1, 2, 4, None]
        assert got[-1]["message"] == "no_messages"
    assert [r.fields["state"] for r in events(caplog, "disk.full")] == ["full"]
    assert len(events(caplog, "disk.space_recovered")) == 1


async def test_an_apply_that_fails_is_retried_not_skipped(tmp_path, autojump_clock):
    """An apply-only transaction (entries already in the log) that fails rolls back its
    commands and the applied index; the core has moved ``applied`` already, so the driver
    retries that same transaction: the entry is applied exactly once, never skipped."""
    space = Space()
    async with open_fillable_cluster(1, tmp_path, space) as (cluster, stores):
        store, broker = stores["b1"], cluster.brokers["b1"]
        queue_id = await create_queue(cluster, "b1")
        applied = broker.applied_index
        store.fails = lambda save: bool(save.get("committed")) and not save.get("entries")
        assert_disk_full(await append(cluster, "b1", queue_id, "x"), unknown=True)
        assert broker.applied_index == applied == store.applied_index
        assert store.raft_state().entries[-1].index == applied + 1  # in the log, not applied
        assert values(store, queue_id) == []
        store.fails = None
        await cluster.wait_until(lambda: broker.applied_index == applied + 1)
        assert store.applied_index == applied + 1
        assert values(store, queue_id) == ["x"]
        assert await append(cluster, "b1", queue_id, "y") == {
            "status": "success",
            "sequence_num": 2,
        }


async def test_the_reserve_refuses_appends_and_serves_reads(tmp_path, autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_broker")
    space = Space()
    async with open_fillable_cluster(1, tmp_path, space, min_free_mb=64) as (cluster, stores):
        store, broker = stores["b1"], cluster.brokers["b1"]
        queue_id = await create_queue(cluster, "b1")
        for value in ("a", "b"):
            assert (await append(cluster, "b1", queue_id, value))["status"] == "success"
        space.free["b1"] = 10 * MIB
        await trio.sleep(1.5)  # the next measure
        assert broker.statistics().disk_state == "low"
        assert_disk_full(await append(cluster, "b1", queue_id, "c"), unknown=False)
        assert_disk_full(await cluster.call("b1", {"operation": "CREATE_QUEUE"}), unknown=False)
        assert (await read(cluster, "b1", queue_id, "C-RDR01"))["data"] == "a"
        seek = {"operation": "SEEK", "queue_name": queue_id, "client_id": "C-RDR01", "to": "start"}
        assert (await cluster.call("b1", seek))["status"] == "success"
        assert values(store, queue_id) == ["a", "b"]

        space.free["b1"] = PLENTY
        await trio.sleep(1.5)
        assert broker.statistics().disk_state == "ok"
        assert (await append(cluster, "b1", queue_id, "c"))["sequence_num"] == 3
        assert values(store, queue_id) == ["a", "b", "c"]
    assert [r.fields["state"] for r in events(caplog, "disk.full")] == ["low"]
    assert len(events(caplog, "disk.space_recovered")) == 1


# -- a replica ------------------------------------------------------------------------------------


async def test_a_replica_whose_writes_fail_keeps_its_place_and_catches_up(tmp_path, autojump_clock):
    """The replica neither exits nor acknowledges what it could not persist; the leader
    commits with the other replica meanwhile, still counts the full one as an active member,
    and once space is freed the replica catches up and holds every acknowledged value."""
    space = Space()
    async with open_fillable_cluster(3, tmp_path, space) as (cluster, stores):
        leader = await cluster.wait_for_leader()
        lead = cluster.name_of(leader)
        full = next(n for n in ("b2", "b3") if n != lead)
        replica, store = cluster.brokers[full], stores[full]
        queue_id = await create_queue(cluster, lead)
        await cluster.stabilize()
        hard_state = store.raft_state().hard_state
        log_before = len(store.log)

        store.fails = lambda _: True
        space.free[full] = 0
        acked = []
        for i in range(30):
            answer = await append(cluster, lead, queue_id, i)
            assert answer["status"] == "success", answer
            acked.append(i)
        await trio.sleep(10)
        assert cluster.brokers.get(full) is replica
        assert replica.statistics().disk_state == "full"
        assert store.raft_state().hard_state == hard_state  # its vote and term, kept
        assert len(store.log) == log_before and store.failed_saves >= 1
        # It did not even take them in: REPLICATEs it cannot persist are not stepped (only
        # those of the transaction that failed are held, to be retried).
        persisted_last = store.raft_state().entries[-1].index
        assert leader.node.log.last_index >= persisted_last + 30
        assert replica.node.log.last_index <= persisted_last + 2
        # Nothing it could not persist was acknowledged: the leader has its old match index.
        match = leader.node.progress[replica.broker_id].match
        assert match <= store.raft_state().entries[-1].index
        assert leader.node.member_statuses()[replica.broker_id].status == "active"
        assert leader.broker_id == (await cluster.wait_for_leader()).broker_id

        store.fails = None
        space.free[full] = PLENTY
        await cluster.stabilize()
        assert replica.statistics().disk_state == "ok"
        assert values(store, queue_id) == acked
        assert store.raft_state().hard_state.term == replica.node.term


async def test_a_leader_whose_writes_fail_hands_its_leadership_over(tmp_path, autojump_clock):
    """A leader that cannot write keeps the cluster from taking writes: it hands over to a
    replica that can, stays up itself, and catches up once space is freed."""
    space = Space()
    async with open_fillable_cluster(3, tmp_path, space) as (cluster, stores):
        leader = await cluster.wait_for_leader()
        lead = cluster.name_of(leader)
        queue_id = await create_queue(cluster, lead)
        acked = [0]
        assert (await append(cluster, lead, queue_id, 0))["status"] == "success"
        stores[lead].fails = lambda _: True
        assert_disk_full(await append(cluster, lead, queue_id, "lost?"), unknown=True)
        new = await cluster.wait_for_leader(among=[n for n in stores if n != lead])
        assert new.broker_id != leader.broker_id
        assert cluster.brokers.get(lead) is leader and not leader.is_leader
        for i in range(1, 20):
            answer = await append(cluster, cluster.name_of(new), queue_id, i)
            assert answer["status"] == "success", answer
            acked.append(i)
        stores[lead].fails = None
        await cluster.stabilize()
        for name, store in stores.items():
            held = values(store, queue_id)
            assert [v for v in held if v != "lost?"] == acked, name
            assert held.count("lost?") <= 1


async def test_a_vote_that_cannot_be_persisted_is_not_given(tmp_path, autojump_clock):
    """With the leader gone, the remaining replica needs the full one's vote. That vote (and
    the term it adopts) is never sent while it cannot be written, so no leader is elected;
    once space is freed the vote is persisted, then sent, and storage and the core agree."""
    space = Space()
    async with open_fillable_cluster(3, tmp_path, space) as (cluster, stores):
        leader = await cluster.wait_for_leader()
        lead = cluster.name_of(leader)
        full, other = [n for n in ("b1", "b2", "b3") if n != lead]
        queue_id = await create_queue(cluster, lead)
        await cluster.stabilize()
        term = stores[full].raft_state().hard_state.term
        stores[full].fails = lambda _: True
        await cluster.crash(lead)
        await trio.sleep(15)
        assert not cluster.leaders()
        assert cluster.brokers[full].statistics().disk_state == "full"
        assert stores[full].raft_state().hard_state.term == term

        stores[full].fails = None
        new = await cluster.wait_for_leader(among=[full, other])
        assert cluster.name_of(new) in (full, other)
        await cluster.stabilize(among=[full, other])
        for name in (full, other):
            persisted = stores[name].raft_state().hard_state
            node = cluster.brokers[name].node
            assert (persisted.term, persisted.voted_for) == (node.term, node.voted_for), name
        answer = await append(cluster, cluster.name_of(new), queue_id, "after")
        assert answer["status"] == "success", answer


async def test_a_compaction_that_fails_is_retried_and_the_broker_stays_up(tmp_path, autojump_clock):
    """Compaction runs in a task of its own: failing there for lack of space used to end the
    driver, and the broker. It is retried (the broker is ``full`` meanwhile) until it works."""
    space = Space()
    async with open_fillable_cluster(1, tmp_path, space, compact_threshold=4, compact_keep=1) as (
        cluster,
        stores,
    ):
        store, broker = stores["b1"], cluster.brokers["b1"]
        queue_id = await create_queue(cluster, "b1")
        store.compaction_fails = True
        acked = []
        for i in range(12):
            answer = await append(cluster, "b1", queue_id, i)
            if answer["status"] == "success":
                acked.append(i)
            else:
                assert_disk_full(answer, unknown=False)
        assert store.failed_compactions >= 1
        await trio.sleep(30)
        assert cluster.brokers.get("b1") is broker and broker.is_leader
        assert broker.statistics().disk_state == "full"
        assert store.get_meta("snapshot_index", 0) == 0
        store.compaction_fails = False
        await cluster.wait_until(lambda: broker.statistics().disk_state == "ok")
        assert store.get_meta("snapshot_index", 0) > 0
        assert (await append(cluster, "b1", queue_id, "last"))["status"] == "success"
        assert values(store, queue_id) == [*acked, "last"]
