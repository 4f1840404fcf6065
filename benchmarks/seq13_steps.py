"""What each task step of one sequential append costs, per broker, in thread CPU.

    python -m benchmarks.seq13_steps [--appends N] [--lag N]

Three brokers in this process (127.0.0.1, a temporary directory), one client sending one
APPEND at a time. A trio instrument reads ``time.thread_time`` before and after every task
step and adds it to the step's broker and task (as ``benchmarks.sequential_cycles`` names
them); each task's steps are also split in two by their CPU (below and above the task's
median), which sets the leader's two acknowledgements apart: the first commits, applies and
answers, the second only moves a match index. What no step holds (trio's scheduler, its
epoll wait and ``process_events``) is printed as the process's rest. One thread runs all
three brokers, so no step is slowed by another broker's, but each still pays its own system
calls, fsyncs included. Why: the leader costs about 400 µs more than a replica per
sequential append, and a count of steps alone does not say which step holds it.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks.sequential_cycles import _owner_finder
from trio_broker.testing import open_local_cluster


class _Timer(trio.abc.Instrument):
    def __init__(self, owner_of: Any) -> None:
        self._owner_of = owner_of
        self._owners: dict[Any, tuple[str, str]] = {}
        self._started = 0.0
        self.cpu: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.current = "client"
        self.parts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def set_owner(self, owner_of: Any) -> None:
        self._owner_of = owner_of

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        key = self._owners.get(task)
        if key is None:
            name = task.name.rsplit(".", 2)[-2] + "." + task.name.rsplit(".", 1)[-1]
            key = self._owners[task] = (self._owner_of(task), name)
        self.current = key[0]
        self._started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.thread_time() - self._started
        key = self._owners.get(task)
        if key is None:
            name = task.name.rsplit(".", 2)[-2] + "." + task.name.rsplit(".", 1)[-1]
            key = self._owners[task] = (self._owner_of(task), name)
        self.cpu[key].append(took)


_PARTS = [
    ("trio_broker._storage._store", "Store", "save"),
    ("trio_broker._runtime._direct", "DirectSocket", "send_now"),
    ("trio_broker._runtime._peer_mux", "_Link", "write_now"),
    ("trio_broker._runtime._runs", "Runs", "lone_append"),
    ("trio_broker._runtime._driver", "RaftDriver", "step"),
    ("trio_broker._runtime._driver", "RaftDriver", "_send_at_once"),
    ("trio_broker._runtime._driver", "RaftDriver", "_encode_entries"),
    ("trio_broker._runtime._in_step", "InStep", "_advance_here"),
    ("trio_broker._runtime._in_step", "InStep", "_answer_applied"),
    ("trio_broker._runtime._in_step", "InStep", "_tell_applied"),
    ("trio_broker._runtime._in_step", "InStep", "_proposed"),
    ("trio_broker._runtime._in_step", "InStep", "_apply_here"),
    ("trio_broker._runtime._in_step", "InStep", "_persist_after_frames"),
    ("trio_broker._core._raft", "RaftNode", "step"),
    ("trio_broker._core._raft", "RaftNode", "ready"),
    ("trio_broker._runtime._proposing", "Proposing", "_flush_proposals"),
    ("trio_broker._runtime._proposing", "Proposing", "_settle_applied"),
    ("trio_broker._runtime._driver", "RaftDriver", "_saved"),
    ("trio_broker._runtime._driver", "RaftDriver", "_after_advance"),
    ("trio_broker._runtime._driver", "RaftDriver", "signal_changed"),
    ("trio_broker._runtime._group_members", "GroupMembers", "_leader_housekeeping"),
    ("trio_broker._runtime._leadership", "Leadership", "note_role"),
    ("trio_broker._runtime._snapshots", "Snapshots", "maybe_compact"),
    ("trio_broker._core._raft_ready", "ReadyHandOff", "advance"),
    ("trio_broker._core._raft_ready", "ReadyHandOff", "has_ready"),
    ("trio_broker._runtime._writer", "AnswerWriter", "_known"),
    ("trio_broker._runtime._outbox", "Outbox", "put"),
    ("trio_broker._runtime._peers", None, "message_from_payload"),
]


def _wrap_parts(timer: _Timer) -> None:
    """Wrap each of ``_PARTS`` to add its thread CPU (inclusive) to the running step's
    broker."""
    import importlib

    for module_name, cls_name, name in _PARTS:
        module = importlib.import_module(module_name)
        cls = module if cls_name is None else getattr(module, cls_name)
        original = getattr(cls, name)
        label = f"{cls_name or module_name.rsplit('.', 1)[-1]}.{name}"

        def wrapped(*args: Any, _f: Any = original, _label: str = label, **kw: Any) -> Any:
            started = time.thread_time()
            try:
                return _f(*args, **kw)
            finally:
                key = (timer.current, _label)
                timer.parts[key] += time.thread_time() - started
                timer.calls[key] += 1

        setattr(cls, name, wrapped)


async def _run(base: Path, appends: int, lag: int | None, parts: bool) -> None:
    from tests.wire import RawConnection, create_queue

    if lag is not None:
        from trio_broker._runtime import _recovery

        _recovery.APPLY_LAG = lag  # (what make_node gives every core it builds)
    timer = _Timer(None)
    if parts:
        _wrap_parts(timer)  # (before the brokers start: their tasks hold bound methods)
    async with open_local_cluster(base, 3) as cluster:
        leader = await cluster.wait_for_leader()
        queue_id = await create_queue(leader.port)
        await trio.sleep(0.5)
        connection = await RawConnection.open(leader.port)
        payload = "x" * 100
        for _ in range(50):  # warm up
            await connection.call({"operation": "APPEND", "queue_name": queue_id, "data": payload})
        brokers = dict(cluster.brokers)
        timer.set_owner(_owner_finder(brokers))
        trio.lowlevel.add_instrument(timer)
        cpu = timer._started = time.thread_time()  # (this step ends with the instrument in)
        for _ in range(appends):
            answer = await connection.call(
                {"operation": "APPEND", "queue_name": queue_id, "data": payload}
            )
            assert answer.get("status") == "success", answer
        cpu = time.thread_time() - cpu
        trio.lowlevel.remove_instrument(timer)
        stepped = 0.0
        for name, broker in sorted(brokers.items()):
            role = "leader" if broker is leader else "replica"
            rows = {t: v for (o, t), v in timer.cpu.items() if o == name}
            total = sum(sum(v) for v in rows.values())
            stepped += total
            print(f"{name} ({role}): {total / appends * 1e6:7.1f} µs per append in its steps")
            for task, values in sorted(rows.items(), key=lambda kv: -sum(kv[1])):
                if sum(values) / appends < 2e-6:
                    continue
                med = statistics.median(values)
                low = [v for v in values if v <= med]
                high = [v for v in values if v > med]
                print(
                    f"  {task:<34} {sum(values) / appends * 1e6:7.1f} µs,"
                    f" {len(values) / appends:5.2f} steps; steps p50 {med * 1e6:6.1f},"
                    " lower half mean"
                    f" {statistics.fmean(low) * 1e6:6.1f}, upper half mean"
                    f" {statistics.fmean(high) * 1e6 if high else 0:6.1f}"
                )
        for name in sorted(brokers):
            for (o, label), v in sorted(timer.parts.items(), key=lambda kv: -kv[1]):
                if o == name:
                    print(
                        f"  {name} {label:<32} {v / appends * 1e6:7.1f} µs,"
                        f" {timer.calls[o, label] / appends:5.2f} calls per append"
                    )
        client = {t: v for (o, t), v in timer.cpu.items() if o == "client"}
        client_cpu = sum(sum(v) for v in client.values())
        print(f"client steps {client_cpu / appends * 1e6:7.1f} µs per append")
        for task, values in sorted(client.items(), key=lambda kv: -sum(kv[1])):
            print(
                f"  {task:<34} {sum(values) / appends * 1e6:7.1f} µs,"
                f" {len(values) / appends:5.2f} steps"
            )
        print(
            "the rest (trio's scheduler and waits)"
            f" {(cpu - stepped - client_cpu) / appends * 1e6:7.1f} µs per append;"
            f" thread CPU in all {cpu / appends * 1e6:7.1f}"
        )
        await connection.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--lag", type=int, default=None, help="a replica's APPLY_LAG")
    parser.add_argument("--parts", action="store_true", help="CPU of named functions too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        trio.run(_run, Path(base), args.appends, args.lag, args.parts)


if __name__ == "__main__":
    main()
