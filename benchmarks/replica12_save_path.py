"""A replica's CPU per REPLICATE, from the frame to the acknowledgement:
``python -m benchmarks.replica12_save_path``.

The exact path a replica runs for each receive of its leader's stream when its store is free
(``_peers._read_frames``, then ``InStep._persist_after_frames``): each frame decoded
(``message_from_payload``), stepped into a real
:class:`~trio_broker._runtime._driver.RaftDriver` (``RaftDriver.step``: the core's step, the
reads' and the leadership's checks, the deferral to the end of the receive), then, once the
receive's frames are stepped, its Ready persisted in one transaction (the new entry written,
the entry it commits applied, at ``synchronous = FULL`` on a store in a temporary directory
as a broker runs it; ``--sync off``: without the fsync, SQLite's and our Python's part
alone), the acknowledgement encoded as the peer links encode it (handed to a link that
writes nothing), the bookkeeping (with a broker's histogram of the transactions), the views,
the core advanced. One REPLICATE per receive, of one group of ``--appends`` plain appends to
one queue in the ``APPEND_RUNS`` form (a stamp every ``--receive``): the bench's pipelined
shape is ``--appends 239 --receive 85``, its 100 connections x 1 ``--appends 47 --receive
20``; at ``--appends 1`` the path is nearly all fixed cost.

The collector's thresholds are the node's (``GC_THRESHOLDS``), and the in-memory log is
compacted as a broker's is (the storage's part of the compaction, a job of the storage
thread, is left out). Thread CPU (``time.thread_time``: the fsync's system time counted, its
wait not) per REPLICATE, split into decode, step and persist (of it ``Store.save`` as
``save`` and the rest, the Ready's own Python, as ``rest``), the median of ``--rounds``
rounds of ``--repeat`` frames after a warm-up. What it leaves out is the event loop's: the
socket's receive, trio's scheduling, the link's ``send``.
Run it on two trees (``PYTHONPATH=A``, ``PYTHONPATH=B``) alternately to compare them.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import tempfile
import time
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Histogram

from benchmarks.replica_cost import _frame, queue_store
from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core import _raft as raft
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._consensus import encode_message, message_from_payload
from trio_broker._runtime import BrokerConfig
from trio_broker._runtime._applied import APPLY_LAG, applies_later
from trio_broker._runtime._driver import RaftDriver
from trio_broker._runtime._metrics import _LATENCY_BUCKETS
from trio_broker._runtime._peers import AFTER_FRAMES, AfterFramesList

LEADER, REPLICA, OTHER = "B-AAAAA", "B-BBBBB", "B-CCCCC"


class _Worker:
    """The storage worker as ``InStep._store_free`` reads it: idle, no shared log."""

    idle = True
    save_in_turn = None


class _Links:
    """The group's peer links as the driver uses them: each message encoded as the links
    encode it, then dropped (the socket's ``send`` is the event loop's part)."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, message: Any) -> None:
        encode_message(message)
        self.sent += 1

    def send_at_once(self, messages: Any) -> bool:
        for m in messages:
            self.send(m)
        return True

    def ensure(self, peers: Any) -> None:
        pass

    def reads_append_runs(self, members: Any) -> bool:
        return True


class _Dropped:
    """The driver's nursery as its log's compaction uses it: the in-memory log is compacted
    as in a broker (what the collector walks stays as large), the storage's job, which runs
    on the storage thread, is dropped."""

    def start_soon(self, fn: Any, *args: Any) -> None:
        pass


def replica_driver(directory: str, store: Any) -> RaftDriver:
    """A follower of a 3-voter group (term 1, its log holding the queue's creation, applied),
    on ``store``, waiting for work as a replica's driver does between REPLICATEs."""
    (create,) = store.raft_state().entries
    node = raft.RaftNode(
        REPLICA,
        hard_state=rm.HardState(1, None, 1),
        snapshot=rm.SnapshotMeta(0, 0, rm.Config(voters=frozenset({LEADER, REPLICA, OTHER}))),
        entries=[create],
        applied=1,
        rng=random.Random(1),
        apply_lag=APPLY_LAG,
        apply_later=applies_later,
    )
    driver = RaftDriver(
        REPLICA,
        "G-AAAAA",
        ("127.0.0.1", 1),
        BrokerConfig(data_dir=directory),
        network=None,  # type: ignore[arg-type]
        store=store,
        worker=_Worker(),  # type: ignore[arg-type]
        node=node,
        addresses={},
        on_applied=lambda payload, result: None,
        on_snapshot=lambda queues, retained: None,
    )
    driver.peers = _Links()  # type: ignore[assignment]
    driver.on_transaction = Histogram(  # (as Broker sets it: its metrics' histogram)
        "trio_broker_storage_transaction_seconds",
        "SQLite transactions of the consensus driver",
        ["durable"],
        buckets=_LATENCY_BUCKETS,
        registry=CollectorRegistry(),
    )
    driver._nursery = _Dropped()  # type: ignore[assignment]
    driver._parked = True
    driver._linked_version = node.cluster_version
    return driver


def run(appends: int, receive: int, rounds: int, repeat: int, sync: str) -> dict[str, float]:
    """Medians, µs of thread CPU per REPLICATE, by part."""
    gc.set_threshold(*GC_THRESHOLDS)  # (as the node command sets them)
    cpu = time.thread_time
    parts: dict[str, list[float]] = {
        k: [] for k in ("decode", "step", "persist", "save", "rest", "all")
    }
    with tempfile.TemporaryDirectory() as d, queue_store(d) as store:
        if sync != "full":
            store._db.execute("PRAGMA synchronous = OFF")
        driver = replica_driver(d, store)
        save = store.save
        in_save = [0.0]

        def timed_save(*args: Any, **kwargs: Any) -> Any:
            started = cpu()
            try:
                return save(*args, **kwargs)
            finally:
                in_save[0] += cpu() - started

        store.save = timed_save  # type: ignore[method-assign]
        after = AfterFramesList()
        AFTER_FRAMES.set(after)
        index = 2
        for round_ in range(rounds + 10):
            frames = []
            for _ in range(repeat):
                frames.append(_frame(index, appends, receive, 0, True)[0])
                index += 1
            spent = dict.fromkeys(parts, 0.0)
            in_save[0] = 0.0
            for frame in frames:
                # (a save that stalled, a preemption here, does not move this path's to the
                # storage thread: SLOW_FSYNC's rule is the broker's, not this measure's)
                driver._fsync_fast = True
                t0 = cpu()
                _group, message = message_from_payload(frame)
                t1 = cpu()
                driver.step(message)
                t2 = cpu()
                while after:
                    after.pop(0)(True)
                t3 = cpu()
                spent["decode"] += t1 - t0
                spent["step"] += t2 - t1
                spent["persist"] += t3 - t2
                spent["all"] += t3 - t0
            spent["save"] = in_save[0]
            spent["rest"] = spent["persist"] - in_save[0]
            if driver.persisted_in_step != (round_ + 1) * repeat:
                raise SystemExit(
                    "a Ready left the stepping task's path (not this benchmark's):"
                    f" round {round_}, failed {driver._failed!r}, taken {driver._taken!r}"[:2000]
                )
            if round_ >= 10:
                for part, value in spent.items():
                    parts[part].append(value / repeat)
        AFTER_FRAMES.set(None)
    return {part: statistics.median(values) * 1e6 for part, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=47)
    parser.add_argument("--receive", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sync", choices=("full", "off"), default="off")
    args = parser.parse_args()
    figures = trio.run(
        _in_trio,  # (inside trio: the driver's events and clock)
        args.appends,
        args.receive,
        args.rounds,
        args.repeat,
        args.sync,
    )
    print(
        f"a replica's REPLICATE of {args.appends} appends (a stamp every {args.receive}),"
        f" synchronous {args.sync}: µs of thread CPU per REPLICATE, median of {args.rounds}"
    )
    for part, value in figures.items():
        print(f"  {part:<8} {value:8.1f}")


async def _in_trio(*args: Any) -> dict[str, float]:
    return run(*args)


if __name__ == "__main__":
    main()
