"""Fault injection for the in-step paths on a shared store (``_runtime/_in_step.py`` with
``_storage/_shared_log.py``): random interleavings of several groups' saves as a broker runs
them (the committer's batches of a turn; a lone save with no stage, as ``_proposed``,
``_persist_after_frames`` and ``_apply_here`` run it when ``InStep._store_free``; a replica's
persist then its apply after the acknowledgement, two lone saves; a lone save whose group
transaction fails and drops its row; a trim between them), with a crash image at every sync
point: every image restarts with every acknowledged append of every group, exactly once, in
order. And, on a real cluster of brokers hosting several groups, no two users of one store's
connection or of the shared log ever overlap (the loop's in-step saves against the storage
thread's batches and trims)."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.long_runs import LONG
from tests.test_groups_in_step import lone_save
from tests.test_shared_log import imaged_broker
from tests.wire import RawConnection, create_queue
from trio_broker._ids import cluster_of_queue
from trio_broker._storage import _shared_log
from trio_broker._storage._checkpoint import checkpoint_on_commit
from trio_broker._storage._store import Store
from trio_broker.testing import open_local_cluster


def run_interleaved(tmp_path: Path, seed: int, steps: int) -> tuple[int, int]:
    """Three groups, one shared log; ``steps`` random steps of batches, lone saves and trims;
    a crash image checked at every sync point. Returns (images checked, lone saves)."""
    rng = random.Random(seed)
    checked = lones = 0
    with imaged_broker(
        tmp_path,
        f"in-step-faults-{seed}",
        vfs_seed=seed + 1,
        broker_seed=seed + 2,
        where=f"seed {seed}, ",
    ) as (broker, check):
        for g in broker.groups:
            checkpoint_on_commit(g.store._db, 20)
        for _ in range(steps):
            r = rng.random()
            if r < 0.35:
                broker.step()  # (every group's saves in the committer's batches)
            elif r < 0.45:
                assert broker.log is not None
                broker.log.trim()  # (the storage thread's, between two loop saves)
            else:
                g = rng.choice(broker.groups)
                start = broker.next_value
                broker.next_value += rng.randrange(1, 4)
                lone_save(
                    broker,
                    g,
                    range(start, broker.next_value),
                    split=rng.random() < 0.4,
                    fail=rng.random() < 0.2,
                )
                lones += 1
            checked += check()
    return checked, lones


def test_random_interleavings_of_lone_saves_and_batches_keep_every_acknowledged_append(
    tmp_path: Path,
) -> None:
    """Lone saves (no stage) between batches, split persists and applies, failed group
    transactions whose rows are dropped, and trims: every crash image restarts with every
    acknowledged append of every group (docs/replication.md, "One shared log per broker")."""
    checked, lones = run_interleaved(tmp_path, 11, 6)
    assert checked > 10 and lones >= 3, (checked, lones)


@LONG
@pytest.mark.parametrize("seed", range(20, 30))
def test_random_interleavings_of_lone_saves_and_batches_long(tmp_path: Path, seed: int) -> None:
    checked, lones = run_interleaved(tmp_path, seed, 30)
    assert checked > 30 and lones > 0, (checked, lones)


class _Overlap:
    """Notes every entry into a shared store's connection or the shared log, by thread: two
    threads inside at once is the race the in-step paths' ``_store_free`` rules out."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside: dict[tuple[int, int], int] = {}
        self.overlaps: list[str] = []
        self.loop_saves = 0
        self.calls: dict[str, int] = {}

    def wrap(self, owner: Any, name: str) -> None:
        real = getattr(owner, name)
        overlap = self

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            # One resource per broker: its shared log, with every store written through it.
            resource = id(getattr(self, "_shared", None) or self)
            me = (resource, threading.get_ident())
            with overlap.lock:
                others = [
                    k for k, n in overlap.inside.items() if n and k[0] == resource and k != me
                ]
                if others:
                    overlap.overlaps.append(name)
                overlap.inside[me] = overlap.inside.get(me, 0) + 1
                overlap.calls[name] = overlap.calls.get(name, 0) + 1
                if name == "save" and threading.current_thread() is threading.main_thread():
                    overlap.loop_saves += 1
            try:
                return real(self, *args, **kwargs)
            finally:
                with overlap.lock:
                    overlap.inside[me] -= 1

        setattr(owner, name, wrapped)


async def test_in_step_saves_never_overlap_the_storage_thread_on_a_shared_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several groups on each broker, concurrent appends on every group: no save run in a
    step on the loop (``Store.save``) ever overlaps a batch, a trim or any other job of the
    storage thread on the same broker's store (each save, trim and sync is alone)."""
    overlap = _Overlap()
    for name in ("save", "sync_shared", "queue_lengths", "raft_state"):
        overlap.wrap(Store, name)
    overlap.wrap(_shared_log.SharedLog, "trim")
    overlap.wrap(_shared_log.SharedLog, "write")
    monkeypatch.setattr(_shared_log, "TRIM_ROWS", 0)  # (a trim after every batch of rows)
    async with open_local_cluster(tmp_path, 2, groups=3, replication_factor=2) as cluster:
        from tests.spread import wait_voting_spread

        await wait_voting_spread(cluster, 3)
        brokers = list(cluster.brokers.values())
        queues: list[tuple[Any, str]] = []
        for broker in brokers:
            queue_id = await create_queue(broker.port)
            queues.append((broker, queue_id))
        acked: dict[str, int] = {}

        async def appender(port: int, queue_id: str, n: int) -> None:
            connection = await RawConnection.open(port)
            try:
                append = {"operation": "APPEND", "queue_name": queue_id, "data": "y" * 50}
                for _ in range(n):
                    if (await connection.call(append)).get("status") == "success":
                        acked[queue_id] = acked.get(queue_id, 0) + 1
            finally:
                await connection.aclose()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for broker, queue_id in queues:
                    for _ in range(2):
                        nursery.start_soon(appender, broker.port, queue_id, 25)
        groups = {cluster_of_queue(q) for _, q in queues}
        assert overlap.loop_saves > 0 and overlap.calls.get("trim", 0) > 0, overlap.calls
        assert not overlap.overlaps, overlap.overlaps[:5]
        # (an answer other than success is an election under load: not this test's concern)
        assert sum(acked.values()) > len(queues) * 25 and len(groups) > 1, (acked, groups)
