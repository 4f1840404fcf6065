"""What one sequential append costs in cycles, on the leader and on each replica.

    python -m benchmarks.sequential_cycles [--appends N]

Starts a three-broker cluster in this process (127.0.0.1, a temporary directory), sends one
APPEND at a time on one connection, and counts per append, for each broker: the driver's
Readies handled, its storage jobs (handed to the storage thread, or run in place), its
transactions (and how many of them fsync), the consensus messages it sends (by type) and
steps. Each hand-off to the storage thread is two cross-thread wake-ups. For the process as a
whole it counts trio's waits for I/O (``epoll_wait``) and task steps. Counts, not timings:
the machine's noise does not change them.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path
from typing import Any

import trio

from trio_broker.testing import open_local_cluster


class _Instrument(trio.abc.Instrument):
    def __init__(self) -> None:
        self.io_waits = 0
        self.steps = 0

    def before_io_wait(self, timeout: float) -> None:
        self.io_waits += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


def _count(driver: Any, counts: collections.Counter[str]) -> None:
    """Wrap the driver's Ready handling, its sends and steps, to count them."""
    handle, step, durable = driver._handle_ready, driver.step, driver._durable

    async def handle_ready(rd: Any) -> None:
        counts["readies"] += 1
        return await handle(rd)

    def counted_step(message: Any) -> None:
        counts[f"stepped {type(message).__name__}"] += 1
        return step(message)

    def counted_durable(rd: Any) -> bool:
        result = durable(rd)
        counts["fsynced transactions"] += result
        return result

    driver._handle_ready = handle_ready
    driver.step = counted_step
    driver._durable = counted_durable
    send = driver.peers.send

    def counted_send(message: Any) -> None:
        counts[f"sent {type(message).__name__}"] += 1
        return send(message)

    driver.peers.send = counted_send


def _snapshot(broker: Any) -> dict[str, int]:
    driver = broker.driver
    return {
        "transactions": driver.transactions,
        "storage jobs on the thread": broker._worker.ran_there,
        "storage jobs in place": broker._worker.ran_here,
    }


async def _run(base: Path, appends: int) -> None:
    from tests.wire import RawConnection, create_queue

    async with open_local_cluster(base, 3) as cluster:
        leader = await cluster.wait_for_leader()
        queue_id = await create_queue(leader.port)
        await trio.sleep(0.5)
        connection = await RawConnection.open(leader.port)
        payload = "x" * 100
        for _ in range(20):  # warm up
            await connection.call({"operation": "APPEND", "queue_name": queue_id, "data": payload})
        brokers = dict(cluster.brokers)
        counts = {name: collections.Counter[str]() for name in brokers}
        for name, broker in brokers.items():
            _count(broker.driver, counts[name])
        before = {name: _snapshot(b) for name, b in brokers.items()}
        instrument = _Instrument()
        trio.lowlevel.add_instrument(instrument)
        for _ in range(appends):
            answer = await connection.call(
                {"operation": "APPEND", "queue_name": queue_id, "data": payload}
            )
            assert answer.get("status") == "success", answer
        trio.lowlevel.remove_instrument(instrument)
        after = {name: _snapshot(b) for name, b in brokers.items()}
        for name, broker in brokers.items():
            role = "leader" if broker is leader else "replica"
            print(f"{name} ({role}), per append:")
            rows = dict(counts[name])
            for key in before[name]:
                rows[key] = after[name][key] - before[name][key]
            for key in sorted(rows):
                print(f"  {key:<34} {rows[key] / appends:6.2f}")
        print("the process (three brokers and the client), per append:")
        print(f"  {'epoll waits':<34} {instrument.io_waits / appends:6.2f}")
        print(f"  {'trio task steps':<34} {instrument.steps / appends:6.2f}")
        await connection.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        trio.run(_run, Path(base), args.appends)


if __name__ == "__main__":
    main()
