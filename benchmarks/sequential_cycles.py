"""What one sequential append costs in cycles, on the leader and on each replica.

    python -m benchmarks.sequential_cycles [--appends N]

Starts a three-broker cluster in this process (127.0.0.1, a temporary directory), sends one
APPEND at a time on one connection, and counts per append, for each broker: the driver's
Readies handled by its task, those applied in the step of the message that committed them,
its storage jobs (handed to the storage thread, or run in place), its transactions (and how
many of them fsync), the consensus messages it sends (by type) and steps. Each hand-off to
the storage thread is two cross-thread wake-ups. For the process as a whole it counts trio's
waits for I/O (``epoll_wait``) and task steps, and for each broker its task steps by task
(the task's function: the driver, a peer link's writer, a connection's reader...), and the
wall time per append (the clock's ticks, heartbeats and their answers per append follow
it). Counts, not timings: the machine's noise does not change them.

    python -m benchmarks.sequential_cycles --processes [--appends N] [--base-port P]

Three broker processes instead (``python -m trio_broker cluster``), the same client: per
append and per broker, the CPU from /proc (user and system), the voluntary context switches of
its event loop's thread and of its other threads (each cross-thread wake-up is one), and, in a
second run of as many appends under ``strace -c -f``, its system calls by name (``fdatasync``:
its fsyncs; ``futex``: its cross-thread wake-ups; ``epoll_wait``: its waits for I/O). strace
slows every call: its run gives counts, the first run the CPU.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from trio_broker._runtime._save_place import saving_durably
from trio_broker.testing import open_local_cluster


class _Instrument(trio.abc.Instrument):
    """Counts trio's waits for I/O and its task steps, each step by the broker whose task it
    is (``owner_of``) and the task's name."""

    def __init__(self, owner_of: Any) -> None:
        self.io_waits = 0
        self.steps = 0
        self.by_task: collections.Counter[tuple[str, str]] = collections.Counter()
        self._owner_of = owner_of
        self._owners: dict[trio.lowlevel.Task, str] = {}

    def before_io_wait(self, timeout: float) -> None:
        self.io_waits += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        owner = self._owners.get(task)
        if owner is None:
            owner = self._owners[task] = self._owner_of(task)
        self.by_task[owner, task.name.rsplit(".", 2)[-2] + "." + task.name.rsplit(".", 1)[-1]] += 1


def _owner_finder(brokers: dict[str, Any]) -> Any:
    """Which broker a task belongs to: the first ``self`` along its coroutine's frames and its
    parents' that is, or refers to (through ``broker_id``, ``self_id``, ``mux`` or ``link``),
    one of ``brokers``; "client" otherwise."""
    ids = {b.driver.broker_id: name for name, b in brokers.items()}

    def of_object(obj: Any) -> str | None:
        for _ in range(3):
            if obj is None:
                return None
            for attr in ("broker_id", "self_id"):
                value = getattr(obj, attr, None)
                if isinstance(value, str) and value in ids:
                    return ids[value]
            obj = getattr(obj, "mux", None) or getattr(obj, "driver", None)
        return None

    def owner_of(task: trio.lowlevel.Task | None) -> str:
        if task is not None and task.name.startswith("__main__"):
            return "client"  # (this program's own task: it holds the brokers in its locals)
        while task is not None:
            frame = getattr(task.coro, "cr_frame", None)
            while frame is not None:
                found = of_object(frame.f_locals.get("self"))
                if found is not None:
                    return found
                for value in frame.f_locals.values():
                    found = of_object(value)
                    if found is not None:
                        return found
                frame = None
            nursery = task.parent_nursery
            task = nursery.parent_task if nursery is not None else None
        return "client"

    return owner_of


def _count(driver: Any, counts: collections.Counter[str]) -> None:
    """Wrap the driver's Ready handling, its sends and steps, to count them."""
    handle, step = driver._handle_ready, driver.step

    async def handle_ready(rd: Any) -> None:
        counts["readies"] += 1
        counts["fsynced transactions"] += saving_durably(rd, driver._saved_term_vote)
        return await handle(rd)

    def counted_step(message: Any) -> None:
        counts[f"stepped {type(message).__name__}"] += 1
        return step(message)

    driver._handle_ready = handle_ready
    driver.step = counted_step
    send = driver.peers.send

    def counted_send(message: Any) -> None:
        counts[f"sent {type(message).__name__}"] += 1
        return send(message)

    driver.peers.send = counted_send


def _snapshot(broker: Any) -> dict[str, int]:
    driver = broker.driver
    return {
        "transactions": driver.transactions,
        "Readies applied in a peer's step": getattr(driver, "applied_in_step", 0),
        "Readies persisted by the reader": getattr(driver, "persisted_in_step", 0),
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
        instrument = _Instrument(_owner_finder(brokers))
        trio.lowlevel.add_instrument(instrument)
        started, cpu = trio.current_time(), time.process_time()
        for _ in range(appends):
            answer = await connection.call(
                {"operation": "APPEND", "queue_name": queue_id, "data": payload}
            )
            assert answer.get("status") == "success", answer
        trio.lowlevel.remove_instrument(instrument)
        took, cpu = trio.current_time() - started, time.process_time() - cpu
        after = {name: _snapshot(b) for name, b in brokers.items()}
        for name, broker in brokers.items():
            role = "leader" if broker is leader else "replica"
            print(f"{name} ({role}), per append:")
            rows = dict(counts[name])
            for key in before[name]:
                rows[key] = after[name][key] - before[name][key]
            for key in sorted(rows):
                print(f"  {key:<34} {rows[key] / appends:6.2f}")
            steps = {t: n for (o, t), n in instrument.by_task.items() if o == name}
            print(f"  {'trio task steps':<34} {sum(steps.values()) / appends:6.2f}")
            for task, n in sorted(steps.items(), key=lambda kv: -kv[1]):
                if n / appends >= 0.05:
                    print(f"    {task:<32} {n / appends:6.2f}")
        print("the process (three brokers and the client), per append:")
        # (the clock's ticks, heartbeats and their answers follow the time an append takes)
        print(f"  {'ms (wall time)':<34} {took / appends * 1e3:6.2f}")
        print(f"  {'µs of CPU (all threads)':<34} {cpu / appends * 1e6:6.0f}")
        print(f"  {'epoll waits':<34} {instrument.io_waits / appends:6.2f}")
        print(f"  {'trio task steps':<34} {instrument.steps / appends:6.2f}")
        await connection.aclose()


def _proc(pid: int) -> tuple[float, float, int, int]:
    """(user, system) CPU seconds of a process, and the voluntary context switches of its
    first thread (the event loop's) and of its other threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    switches = [0, 0]
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda t: int(t.name)):
        status = (task / "status").read_text()
        found = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
        switches[task.name != str(pid)] += int(found.group(1)) if found else 0
    return int(fields[11]) / tick, int(fields[12]) / tick, switches[0], switches[1]


def _strace_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] != "total" and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


async def _appending(port: int, appends: int, queue_id: str) -> None:
    from tests.wire import RawConnection

    connection = await RawConnection.open(port)
    for _ in range(appends):
        answer = await connection.call(
            {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
        )
        assert answer.get("status") == "success", answer
    await connection.aclose()


async def _leader_queue(ports: list[int]) -> tuple[int, str]:
    from tests.wire import call

    with trio.fail_after(30):
        while True:
            for port in ports:
                answer = await call(port, {"operation": "CREATE_QUEUE"})
                if answer.get("status") == "success":
                    return port, answer["queue_id"]
            await trio.sleep(0.2)


def _processes(base: Path, appends: int, base_port: int) -> None:
    cluster = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_broker",
            "cluster",
            "--nodes",
            "3",
            "--base-port",
            str(base_port),
            "--data-dir",
            str(base / "cluster"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert cluster.stdout is not None
        nodes: dict[int, int] = {}  # port -> pid
        for line in cluster.stdout:
            found = re.search(r"pid (\d+):.* listening on 127.0.0.1:(\d+)", line)
            if found:
                nodes[int(found.group(2))] = int(found.group(1))
            if line.startswith("cluster of"):
                break
        port, queue_id = trio.run(_leader_queue, sorted(nodes))
        trio.run(_appending, port, 50, queue_id)  # (warm up)
        before = {p: _proc(pid) for p, pid in nodes.items()}
        started = time.perf_counter()
        trio.run(_appending, port, appends, queue_id)
        took = time.perf_counter() - started
        after = {p: _proc(pid) for p, pid in nodes.items()}
        traces = {}
        for p, pid in nodes.items():
            out = base / f"strace-{p}.txt"
            traces[p] = (
                subprocess.Popen(
                    ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                    stderr=subprocess.DEVNULL,
                ),
                out,
            )
        time.sleep(1.0)  # (attached)
        trio.run(_appending, port, appends, queue_id)
        for tracer, _ in traces.values():
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
        print(f"{appends} appends, {took / appends * 1e3:.2f} ms each (without strace)")
        for p in sorted(nodes):
            role = "leader" if p == port else "replica"
            delta = [a - b for a, b in zip(after[p], before[p], strict=True)]
            print(f"port {p} ({role}), per append:")
            print(
                f"  CPU µs user / system           {delta[0] / appends * 1e6:7.0f} /"
                f" {delta[1] / appends * 1e6:.0f}"
            )
            print(
                f"  voluntary switches: loop / rest {delta[2] / appends:7.2f} /"
                f" {delta[3] / appends:.2f}"
            )
            counts = _strace_counts(traces[p][1])
            print(f"  system calls                    {sum(counts.values()) / appends:7.2f}")
            for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                if n / appends >= 0.05:
                    print(f"    {name:<29} {n / appends:7.2f}")
    finally:
        cluster.send_signal(signal.SIGINT)
        try:
            cluster.wait(20)
        except subprocess.TimeoutExpired:
            cluster.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--processes", action="store_true", help="three broker processes")
    parser.add_argument("--base-port", type=int, default=19401, help="with --processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        if args.processes:
            _processes(Path(base), args.appends, args.base_port)
        else:
            trio.run(_run, Path(base), args.appends)


if __name__ == "__main__":
    main()
