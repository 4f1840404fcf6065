"""Brokers hosting several groups (one storage thread and one shared log for all their data
groups: ``_storage/_shared_log.py``) take the in-step paths too (``_runtime/_in_step.py``):
a lone proposal persisted by the proposing task, a replica's REPLICATEs persisted by the task
that read them, the acknowledgement that commits applied in its own step. Only while the
shared log's committer is idle (no other group's save waits for a batch or runs in one, no
trim queued) and the storage thread too: the save then runs alone in its fsync (the group's
own transaction at ``FULL``, no shared-log row: ``_shared_log.own_save``).
Counts and outcomes, never timings."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

from tests.spread import wait_voting_spread
from tests.test_shared_log import QUEUE, Broker, Group, imaged_broker, number
from tests.wire import RawConnection, create_queue
from trio_broker._ids import cluster_of_queue
from trio_broker._runtime import _driver
from trio_broker._storage import _store
from trio_broker._storage._checkpoint import checkpoint_on_commit
from trio_broker._storage._shared_log import TurnCommitter
from trio_broker._storage._worker import StorageWorker
from trio_broker.testing import open_local_cluster
from trio_broker.testing._powerloss import PowerLossVFS

APPENDS = 30


def _counts(broker: Any, group_id: str) -> tuple[int, int, int, int]:
    replica = broker.host.groups[group_id]
    driver = replica.driver
    committer = replica._worker.committer
    return (
        driver.proposed_in_step,
        driver.persisted_in_step,
        driver.applied_in_step,
        committer.saves_here,
    )


def _leaders(cluster: Any) -> dict[str, Any]:
    """Each broker's groups: (leads it, term) of its replica (printed when an append fails)."""
    return {
        name: {g: (r.driver.node.is_leader, r.driver.node.term) for g, r in b.host.groups.items()}
        for name, b in sorted(cluster.brokers.items())
    }


async def _wait_preferred_leaders(cluster: Any, groups: int) -> dict[str, str]:
    """Until the leaderships are spread (``wait_voting_spread``) and every data group is led by
    its preferred leader: a spread with two groups' leaders the other way round than the map
    prefers is spread too, and the balancer's next round (one interval after the metadata
    group's election) hands each over, answering the appends sent meanwhile NOT_LEADER
    ("handing its leadership")."""
    names = {b.broker_id: n for n, b in cluster.brokers.items()}
    with trio.fail_after(60):  # (a balancer round and a transfer take a few seconds at most)
        while True:
            leaders = await wait_voting_spread(cluster, groups)
            maps = [  # (the metadata group's leader's: the balancer's)
                b.host.meta.map
                for b in cluster.brokers.values()
                if b.host.primary.driver.node.is_leader
            ]
            cmap = maps[0] if maps else None
            if cmap is not None and all(
                names.get(record.preferred_leader) == leaders.get(g)
                for g, record in cmap.groups.items()
            ):
                return leaders
            await trio.sleep(0.05)


async def test_several_groups_take_the_in_step_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a broker hosting several groups saved every Ready through its driver's task
    and the committer's batch (a wake-up, a checkpoint, often a hand-off to the storage
    thread). Now sequential appends on one group of two go by the in-step paths on both
    brokers, and every broker holds exactly what was acknowledged.

    The leaderships settled first (``_wait_preferred_leaders``: else the balancer may hand
    the group over mid-run). Every fsync counts as quick, as in
    ``test_a_lone_proposal_is_replicated_and_persisted_by_the_proposing_task``: on a loaded
    machine a durable save measured at ``SLOW_FSYNC`` or more sends the next ones to the
    storage thread by design, and the counts would be a timing."""
    monkeypatch.setattr(_driver, "SLOW_FSYNC", float("inf"))
    async with open_local_cluster(tmp_path, 2, groups=2, replication_factor=2) as cluster:
        leaders = await _wait_preferred_leaders(cluster, 2)
        group_id, name = next(
            (g, n) for g, n in sorted(leaders.items()) if g != cluster.brokers[n].cluster_id
        )
        leader = cluster.brokers[name]
        other = next(b for n, b in cluster.brokers.items() if n != name)
        assert leader.host.groups[group_id]._worker.save_in_turn is not None  # (shared)
        queue_id = await create_queue(leader.port)
        assert cluster_of_queue(queue_id) == group_id
        connection = await RawConnection.open(leader.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
        for _ in range(5):  # (the links connected, the replica caught up)
            answer = await connection.call(append)
            assert answer.get("status") == "success", (answer, _leaders(cluster))
        led_before, other_before = _counts(leader, group_id), _counts(other, group_id)
        for _ in range(APPENDS):
            answer = await connection.call(append)
            assert answer.get("status") == "success", (answer, _leaders(cluster))
        await connection.aclose()
        led = [a - b for a, b in zip(_counts(leader, group_id), led_before, strict=True)]
        followed = [a - b for a, b in zip(_counts(other, group_id), other_before, strict=True)]
        # The leader: most proposals persisted by the proposing task, most commits applied by
        # the acknowledgement's step; the replica: most REPLICATEs persisted by their reader.
        assert led[0] >= APPENDS // 2, led
        assert led[2] >= APPENDS // 2, led
        assert followed[1] >= APPENDS // 2, followed
        assert led[3] >= led[2] and followed[3] >= followed[1]  # (each a save run here)

        def lengths(broker: Any) -> int:
            return broker.host.groups[group_id].driver._store.queue_lengths()[queue_id]

        with trio.fail_after(10):
            while True:  # (the replica applies what the leader committed)
                if {lengths(leader), lengths(other)} == {5 + APPENDS}:
                    break
                await trio.sleep(0.01)


async def test_the_committer_is_idle_only_with_no_batch_gathering_running_or_trim_queued(
    tmp_path: Path,
) -> None:
    """What lets a driver run a save in its step (``TurnCommitter.idle``): not while another
    group's save waits in the batch's checkpoint (the storage thread is idle then, yet the
    batch's rows must not be overtaken halfway), nor while it runs, nor with a trim queued."""
    vfs = PowerLossVFS("in-step-idle")
    broker = Broker(tmp_path, 2, vfs, random.Random(1))
    try:
        broker.start()
        worker = StorageWorker()
        assert broker.log is not None
        committer = TurnCommitter(worker, broker.log)
        seen: list[bool] = []
        try:
            assert committer.idle
            first = broker.groups[0]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(committer.save, first.propose([Broker._append(1)]))
                while not committer._waiting and not committer._leading:
                    await trio.lowlevel.checkpoint()  # (until the save reached the committer)
                seen.append(committer.idle)  # (gathering the turn's others, or running)
            seen.append(committer.idle)
            committer._log.rows = 10**9  # (a trim due)
            committer.note_saved_here()
            seen.append(committer.idle or worker.idle)
            await worker.run(lambda: None)  # (queued after the trim: it ended)
            seen.append(committer.idle)
            committer.note_saved_here(0)
            assert committer.saves_here == 1
        finally:
            worker.stop()
            await worker.wait_stopped()
        assert seen == [False, True, False, True]
    finally:
        broker.close()
        vfs.unregister()


def lone_save(
    broker: Broker, group: Group, numbers: range, *, split: bool = False, fail: bool = False
) -> None:
    """One group's append as an in-step path saves it (``_proposed``,
    ``_persist_after_frames``, ``_apply_here``): the entries' save with no stage (alone in
    its fsync: the group's transaction at ``FULL``, no shared-log row; the committer idle),
    then the apply; acknowledged after the apply returned. ``split``: as a replica's persist
    then apply-after-acknowledgement, two lone saves with the acknowledgement between
    (counted at the first). ``fail``: the group's transaction of the entries' save fails (it
    rolled back; the driver saves the same Ready again)."""
    i = broker.groups.index(group)
    save = group.propose([Broker._append(n) for n in numbers])
    if fail:
        store = group.store
        real = _store.stored_entry

        def broken(entry: Any) -> Any:  # (its entries' rows: inside the transaction)
            raise apsw.FullError("injected: the group's file is full")

        _store.stored_entry = broken
        try:
            with pytest.raises(apsw.FullError):
                save(stage=None)
        finally:
            _store.stored_entry = real
        assert store._pending_seq is None
    save(stage=None)
    if split:
        broker.acked[i].extend(numbers)  # (a replica's acknowledgement: durable here)
        group.apply()(stage=None)
        return
    group.apply()(stage=None)
    broker.acked[i].extend(numbers)


def test_lone_saves_between_batches_keep_every_acknowledged_append_at_every_sync_point(
    tmp_path: Path,
) -> None:
    """The in-step paths' save on a shared store (``Store.save`` with no stage: alone in its
    fsync, the group's transaction at FULL and no shared-log row) between the committer's
    batches of the groups (their rows in one shared-log transaction, then each group's
    transaction at NORMAL): a crash image at every sync point restarts with every
    acknowledged append of every group."""
    rng = random.Random(4)
    checked = lones = 0
    with imaged_broker(tmp_path, "in-step-images", vfs_seed=5, broker_seed=9) as (broker, check):
        for g in broker.groups:
            checkpoint_on_commit(g.store._db, 20)
        for i in range(6):
            if i % 2 == 0:
                broker.step()  # (every group's saves in the committer's batches)
            else:
                g = rng.choice(broker.groups)
                start = broker.next_value
                broker.next_value += rng.randrange(1, 4)
                lone_save(broker, g, range(start, broker.next_value))
                lones += 1
            checked += check()
        assert checked > 10 and lones >= 2
        assert all(
            [number(m) for m in g.store.messages(QUEUE)] == sorted(broker.acked[i])
            for i, g in enumerate(broker.groups)
        )


async def test_one_fsync_on_the_loop_per_turn_for_every_group(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Before: each group's in-step save fsynced the shared log on the loop whenever the
    committer was idle, so a receive carrying several groups' REPLICATEs ran one fsync per
    group in one step (the loop held for all of them: what ``IN_PLACE_JOBS`` = 1 rules out
    for a batch). Now the first durable save of a turn may run in a step; the other groups'
    durable saves of that turn go to their drivers, one batch, one fsync off the loop."""
    from trio_broker._storage import _shared_log

    counts = [0, 0, 0]  # (this step's fsyncs on the loop by a save with no stage, the most, all)
    watching = [False]
    real = _shared_log.shared_stage

    def shared_stage(store: Any, stage: str | None, **save: Any) -> list[Any]:
        durable = stage is None and store._is_durable(
            save["hard_state"], save["truncate_from"], save["entries"], save["snapshot"]
        )
        try:
            return real(store, stage, **save)
        finally:
            on_loop = threading.current_thread() is threading.main_thread()
            if watching[0] and durable and on_loop:
                counts[0] += 1
                counts[1] = max(counts[1], counts[0])
                counts[2] += 1

    class PerStep(trio.abc.Instrument):
        def before_task_step(self, task: Any) -> None:
            counts[0] = 0

    monkeypatch.setattr(_shared_log, "shared_stage", shared_stage)
    monkeypatch.setattr("trio_broker._storage._store.shared_stage", shared_stage)
    async with open_local_cluster(tmp_path, 2, groups=4, replication_factor=2) as cluster:
        await wait_voting_spread(cluster, 4)
        queues = [
            (broker.port, await create_queue(broker.port))
            for broker in cluster.brokers.values()
            for _ in range(3)
        ]

        async def appends(port: int, queue_id: str) -> None:
            connection = await RawConnection.open(port)
            append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 50}
            for _ in range(30):
                await connection.call(append)
            await connection.aclose()

        instrument = PerStep()
        trio.lowlevel.add_instrument(instrument)
        watching[0] = True
        try:
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for port, queue_id in queues:
                        nursery.start_soon(appends, port, queue_id)
        finally:
            watching[0] = False
            trio.lowlevel.remove_instrument(instrument)
    assert counts[1] == 1 and counts[2] > 10, counts
