"""One client, one APPEND at a time (docs/performance.md, "One client, one append at a time"):
the Ready that applies what an acknowledgement committed runs in the step of that
acknowledgement (``RaftDriver._apply_here``), not in a second turn of the leader's driver; a
transaction that fails there (it rolled back whole) goes to the driver's own path, which
retries or repairs it, and is applied once. Counts and outcomes, never timings."""

from __future__ import annotations

import apsw
import pytest
import trio

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft as raft
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol import FrameDecoder, encode_frame
from trio_broker._protocol._consensus import encode_message
from trio_broker._runtime._peers import AFTER_FRAMES, read_peer_stream
from trio_broker._runtime._save_place import applies_only
from trio_broker._storage._integrity import StorageDamaged
from trio_broker.testing import open_local_cluster

APPENDS = 40


def _task_self(task: trio.lowlevel.Task) -> object:
    frame = getattr(task.coro, "cr_frame", None)
    return None if frame is None else frame.f_locals.get("self")


class _DriverSteps(trio.abc.Instrument):
    """The steps of ``driver``'s own tasks, less up to two per clock tick in the window: the
    clock's step and the loop's wake for what the tick made (heartbeats, a lease's check). The
    ticks' count grows with wall time, not with appends: on a loaded machine 40 appends took
    long enough for ticks to push the raw count past the bound with the mechanism working."""

    def __init__(self, driver: object) -> None:
        self.driver = driver
        self.raw = 0
        self.ticks = 0
        on_ticks = driver._on_ticks  # type: ignore[attr-defined]

        def counted(behind: int) -> None:
            self.ticks += 1
            on_ticks(behind)

        driver._on_ticks = counted  # type: ignore[attr-defined]

    @property
    def steps(self) -> int:
        return max(0, self.raw - 2 * self.ticks)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if _task_self(task) is self.driver:
            self.raw += 1


async def same_queue_lengths(cluster) -> dict[str, int]:
    """Once every broker of ``cluster`` holds the same queue lengths (each applied the same
    appends, once; at most 10 s): those lengths."""
    with trio.fail_after(10):
        while True:
            lengths = {n: b.driver._store.queue_lengths() for n, b in cluster.brokers.items()}
            if len({tuple(v.items()) for v in lengths.values()}) == 1:
                return lengths[next(iter(lengths))]
            await trio.sleep(0.01)


async def _appending(tmp_path, body) -> None:
    from tests.wire import RawConnection, create_queue

    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}

        async def call() -> dict:
            return await connection.call(append)

        for _ in range(5):  # (the links connected, the replicas caught up)
            assert (await call()).get("status") == "success"
        await body(c, leader, call)
        await connection.aclose()
        lengths = await same_queue_lengths(c)
        assert lengths[queue_id] == 5 + APPENDS


async def test_the_acknowledgement_that_commits_an_append_applies_it(tmp_path):
    """Before: the leader's driver stepped twice per append (the proposal; the
    acknowledgement that commits it, for the apply and the answer). Now once."""
    counted: list[tuple[int, int]] = []

    async def body(cluster, leader, call) -> None:
        steps = _DriverSteps(leader.driver)
        before = getattr(leader.driver, "applied_in_step", 0)
        trio.lowlevel.add_instrument(steps)
        try:
            for _ in range(APPENDS):
                assert (await call()).get("status") == "success"
        finally:
            trio.lowlevel.remove_instrument(steps)
        counted.append((steps.steps, getattr(leader.driver, "applied_in_step", 0) - before))

    await _appending(tmp_path, body)
    ((steps, applied_in_step),) = counted
    assert steps <= 1.5 * APPENDS, steps
    assert applied_in_step >= APPENDS / 2, applied_in_step


@pytest.mark.parametrize(
    "failure",
    [
        lambda: apsw.FullError("database or disk is full"),
        lambda: StorageDamaged("broker.db", "queue_data", None, "checksum", queue_id="Q", seq=1),
    ],
    ids=["disk full", "damaged value"],
)
async def test_a_failed_apply_in_a_step_goes_to_the_driver_and_is_applied_once(tmp_path, failure):
    """Every third apply in a step fails (rolled back whole, as SQLite's full disk and a
    damaged value do): the driver's own path runs the same Ready again; every APPEND is
    answered success and stored once on every broker."""
    failed: list[int] = []

    async def body(cluster, leader, call) -> None:
        store = leader.driver._store
        save = store.save
        calls = 0

        def failing_save(**kwargs):
            nonlocal calls
            in_step = "before_commit" in kwargs  # (_apply_here's call)
            if in_step:
                calls += 1
                if calls % 3 == 0:
                    failed.append(calls)
                    raise failure()
            return save(**kwargs)

        store.save = failing_save
        try:
            for _ in range(APPENDS):
                assert (await call()).get("status") == "success"
        finally:
            del store.save

    await _appending(tmp_path, body)
    assert len(failed) >= 3


def _ready(**fields) -> raft.Ready:
    entry = rm.Entry(1, 7, cmd.CreateQueue("Q-AAAAA00001"))
    base = {
        "hard_state": rm.HardState(1, None, 7),
        "truncate_from": None,
        "entries": (),
        "snapshot": None,
        "messages": (),
        "persisted_messages": (),
        "committed_entries": (entry,),
        "snapshots_to_send": (),
    }
    return raft.Ready(**(base | fields))


def test_only_a_short_apply_only_ready_runs_in_a_step():
    """What ``_apply_here`` may run itself: committed entries to apply and a commit index,
    nothing to write to the log, to send or to fsync."""
    entry = rm.Entry(1, 8, cmd.CreateQueue("Q-AAAAA00002"))
    beat = rm.Heartbeat(src="B-1", dst="B-2", term=1, cluster_version=1, commit=7)
    saved = (1, None)
    assert applies_only(_ready(), saved)
    assert applies_only(_ready(hard_state=None), saved)
    assert not applies_only(_ready(committed_entries=()), saved)
    assert not applies_only(_ready(entries=(entry,)), saved)
    assert not applies_only(_ready(truncate_from=8), saved)
    assert not applies_only(_ready(messages=(beat,)), saved)
    assert not applies_only(_ready(persisted_messages=(beat,)), saved)
    assert not applies_only(_ready(snapshots_to_send=("B-2",)), saved)
    assert not applies_only(_ready(hard_state=rm.HardState(2, None, 7)), saved)  # (fsyncs)
    assert not applies_only(_ready(hard_state=rm.HardState(1, "B-2", 7)), saved)  # (fsyncs)
    many = tuple(rm.Entry(1, i, cmd.CreateQueue(f"Q-AAAAA{i:05}")) for i in range(7, 7 + 9))
    assert not applies_only(_ready(committed_entries=many), saved)  # (more than SHORT_ENTRIES)


async def test_a_replica_persists_in_the_task_that_read_the_replicate(tmp_path):
    """Before: each REPLICATE woke the replica's driver for its Ready (one step per append).
    Now the task that read the receive persists it after its last frame, then acknowledges."""
    counted: list[tuple[int, int]] = []

    async def body(cluster, leader, call) -> None:
        replicas = [b.driver for b in cluster.brokers.values() if b is not leader]
        steps = [_DriverSteps(driver) for driver in replicas]
        before = sum(getattr(d, "persisted_in_step", 0) for d in replicas)
        for s in steps:
            trio.lowlevel.add_instrument(s)
        try:
            for _ in range(APPENDS):
                assert (await call()).get("status") == "success"
        finally:
            for s in steps:
                trio.lowlevel.remove_instrument(s)
        after = sum(getattr(d, "persisted_in_step", 0) for d in replicas)
        counted.append((sum(s.steps for s in steps), after - before))

    await _appending(tmp_path, body)
    ((steps, persisted),) = counted
    assert steps <= 0.5 * 2 * APPENDS, steps  # (before: about 1 per append on each replica)
    assert persisted >= APPENDS, persisted  # (of 2 x APPENDS REPLICATEs)


@pytest.mark.parametrize(
    "failure",
    [
        lambda: apsw.FullError("database or disk is full"),
        lambda: StorageDamaged("broker.db", "queue_data", None, "checksum", queue_id="Q", seq=1),
    ],
    ids=["disk full", "damaged value"],
)
async def test_a_failed_persist_by_the_reader_goes_to_the_driver_and_is_applied_once(
    tmp_path, failure
):
    """Every third transaction a replica's reader runs fails (rolled back whole): its driver
    runs the same Ready again; every APPEND is answered success and stored once everywhere."""
    failed: list[int] = []

    async def body(cluster, leader, call) -> None:
        patched = []
        for broker in cluster.brokers.values():
            if broker is leader:
                continue
            store = broker.driver._store
            save = store.save
            calls = 0

            def failing_save(save=save, **kwargs):
                nonlocal calls
                if kwargs.keys() == {"hard_state", "entries", "committed"}:  # (the reader's)
                    calls += 1
                    if calls % 3 == 0:
                        failed.append(calls)
                        raise failure()
                return save(**kwargs)

            store.save = failing_save
            patched.append(store)
        try:
            for _ in range(APPENDS):
                assert (await call()).get("status") == "success"
        finally:
            for store in patched:
                del store.save

    await _appending(tmp_path, body)
    assert len(failed) >= 3


async def test_what_a_step_left_for_after_the_frames_runs_once_or_is_handed_back():
    """``AFTER_FRAMES``: called with True after a receive's last frame, before the next
    receive; with False when the stream ends first (here a bad frame)."""
    calls: list[bool] = []

    lists = []

    def step(message) -> None:
        after = AFTER_FRAMES.get()
        assert after is not None and after.open
        lists.append(after)
        after.append(calls.append)

    beat = rm.Heartbeat(src="B-1", dst="B-2", term=1, cluster_version=1, commit=1)
    frame = encode_frame(encode_message(beat))
    sender, receiver = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        results: list[bool] = []

        async def read() -> None:
            results.append(
                await read_peer_stream(
                    receiver,
                    FrameDecoder(),
                    step,
                    peer="p",
                    sender="B-1",
                    self_id="B-2",
                    max_frame=1 << 20,
                )
            )

        nursery.start_soon(read)
        await sender.send_all(frame + frame)  # (one receive, two frames: one call)
        await trio.testing.wait_all_tasks_blocked()
        assert calls == [True, True]  # (each step asked once; both after the two frames)
        await sender.send_all(frame + encode_frame(b"not json"))
        await trio.testing.wait_all_tasks_blocked()
    assert results == [False]
    assert calls == [True, True, False]
    assert AFTER_FRAMES.get() is None  # (this task's context never had one)
    assert not lists[0].open  # (a task that inherited it must not add to it any more)
