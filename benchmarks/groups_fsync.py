"""What a busy broker hosting many groups pays in fsyncs: ``python -m benchmarks.groups_fsync``.

For each G (default 1, 8 and 64), starts one broker process on 127.0.0.1 founding G groups
(``node --groups G``: with one broker every group has that broker as its only voter and
leader), creates one queue on every group, then drives pipelined APPENDs spread evenly over
the queues of every group (``--connections`` connections, ``--window`` in flight each, one
load generator process per connection share, the bench's own generator) in two windows of
``--seconds``:

1. untraced: appends/s, the broker's CPU per append (``/proc/PID/stat``, every thread) and
   the latency percentiles the generator saw;
2. under ``strace -f -c -e trace=fsync,fdatasync`` attached to the broker (kept apart because
   tracing costs CPU and time): fsync + fdatasync calls per second and per append.

Also reports the broker's threads (``/proc/PID/task``), measured before the load: the event
loop and one storage thread per storage worker.
The figures are in docs/performance.md, "One fsync per turn for every group".
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

from benchmarks.group_cost import _fsyncs
from trio_broker._cli import _loadgen
from trio_broker._cli._bench import _free_port
from trio_broker._cli._bench_load import (
    DRAIN_SECONDS,
    PAYLOAD,
    Load,
    _Conn,
    _topology,
    run_generators,
)
from trio_broker._cli._processes import start_node, stop_nodes

SETTLE = 2.0
READY_WITHIN = 180.0


def _threads(pid: int) -> int:
    """The threads of a process (``/proc/PID/task``): the event loop, one storage thread per
    storage worker, and trio's idle worker threads if any (Python 3.11 does not give the
    kernel a thread's name, so they are counted, not told apart)."""
    return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())


async def _queues(port: int, groups: int) -> list[str]:
    """One queue on every group: a CREATE_QUEUE lands on the group this broker leads with
    fewest queues, so G creates give every group one once all G have a leader."""
    with trio.fail_after(READY_WITHIN):
        while True:
            view = await _topology([port]) or {}
            listed = view.get("groups") or ([view] if groups == 1 and view else [])
            if len(listed) == groups and all(g.get("leader_id") for g in listed):
                break
            await trio.sleep(0.2)
        found: dict[str, str] = {}
        conn = await _Conn.open("127.0.0.1", port)
        async with conn.stream:
            while len(found) < groups:
                answer = await conn.call({"operation": "CREATE_QUEUE"})
                if answer.get("status") != "success":
                    await trio.sleep(0.1)
                    continue
                queue = answer["queue_id"]
                group = queue[2:-5] if groups > 1 else "one"
                if group in found:
                    raise RuntimeError(f"two queues placed on {group}: {queue}")
                found[group] = queue
    return [found[g] for g in sorted(found)]


def _generator_main() -> int:
    """A load generator process (``--generator``): the bench's own generator
    (:mod:`trio_broker._cli._loadgen`), its connections given the requests of the spec's
    ``requests`` list in turn, so that one process drives queues of several groups."""
    spec = orjson.loads(sys.stdin.buffer.read())
    requests = spec.pop("requests")
    turn = itertools.count()
    make = _loadgen._Conn

    def conn(sock: Any, template: Any, client: Any) -> Any:
        return make(sock, requests[next(turn) % len(requests)], client)

    _loadgen._Conn = conn  # type: ignore[assignment,misc]
    sys.stdout.buffer.write(orjson.dumps(_loadgen.run(spec | {"request": requests[0]})))
    return 0


async def _load(
    port: int, pid: int, queues: list[str], per_queue: int, window: int, seconds: float, gens: int
) -> Load:
    """``per_queue`` connections on every queue, spread over ``gens`` generator processes that
    start together; the broker's CPU over the run."""
    start_at = time.time() + 1.0
    requests = [{"operation": "APPEND", "queue_name": q, "data": PAYLOAD} for q in queues]
    every = [r for r in requests for _ in range(per_queue)]
    gens = max(1, min(gens, len(every)))
    shares = [every[i::gens] for i in range(gens)]
    specs = [
        {
            "host": "127.0.0.1",
            "port": port,
            "connections": len(share),
            "window": window,
            "seconds": seconds,
            "requests": share,
            "start_at": start_at,
            "drain_seconds": DRAIN_SECONDS,
        }
        for share in shares
    ]
    generator = [sys.executable, "-m", "benchmarks.groups_fsync", "--generator"]
    load, _ = await run_generators(generator, specs, [pid], start_at)
    return load


async def measure(
    groups: int, seconds: float, connections: int, window: int, gens: int
) -> dict[str, Any]:
    per_queue = max(1, connections // groups)
    with tempfile.TemporaryDirectory() as d:
        port = _free_port()
        process, _ = await start_node(Path(d) / "node-0", port, groups=groups)
        try:
            queues = await _queues(port, groups)
            await trio.sleep(SETTLE)
            pid = process.pid
            threads = _threads(pid)
            print(f"  {groups} groups: untraced", file=sys.stderr)
            plain = await _load(port, pid, queues, per_queue, window, seconds, gens)
            traced: dict[str, Load] = {}

            async def run_traced() -> None:
                traced["load"] = await _load(port, pid, queues, per_queue, window, seconds, gens)

            print(f"  {groups} groups: under strace", file=sys.stderr)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_traced)
                # The generators start one second after they are spawned.
                await trio.sleep(1.0)
                (fsyncs,) = await _fsyncs([pid], seconds)
            tload = traced["load"]
        finally:
            await stop_nodes([process])
    return {
        "groups": groups,
        "connections": per_queue * len(queues),
        "window": window,
        "appends_per_s": plain.rate,
        "broker_cpu_us_per_append": plain.broker_us_per_item(),
        "generator_cpu_us_per_request": plain.generator_us_per_request(),
        "p50_ms": plain.percentile_ms(0.5),
        "p99_ms": plain.percentile_ms(0.99),
        "errors": plain.errors + tload.errors,
        "threads": threads,
        "fsyncs_per_s": None if fsyncs is None else fsyncs / seconds,
        "traced_appends_per_s": tload.rate,
        "fsyncs_per_append": None
        if fsyncs is None or not tload.items
        else fsyncs / (tload.rate * seconds),
    }


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for groups in args.groups:
        print(f"  {groups} groups on one broker", file=sys.stderr)
        results.append(
            await measure(groups, args.seconds, args.connections, args.window, args.generators)
        )
    return results


def _line(r: dict[str, Any]) -> str:
    fsyncs = "-" if r["fsyncs_per_s"] is None else f"{r['fsyncs_per_s']:,.0f}"
    per = "-" if r["fsyncs_per_append"] is None else f"{r['fsyncs_per_append']:.3f}"
    return (
        f"{r['groups']:>6}  {r['connections']:>5}x{r['window']:<3} {r['appends_per_s']:>9,.0f}  "
        f"{r['broker_cpu_us_per_append']:>7,.1f}  {r['p50_ms']:>6.1f}  {r['p99_ms']:>7.1f}  "
        f"{fsyncs:>8}  {per:>7}  {r['traced_appends_per_s']:>9,.0f}  "
        f"{r['threads']:>3}"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--generator"]:
        sys.exit(_generator_main())
    parser = argparse.ArgumentParser(prog="python -m benchmarks.groups_fsync")
    parser.add_argument("groups", type=int, nargs="*", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--connections", type=int, default=64, help="in all, split evenly over the groups"
    )
    parser.add_argument("--window", type=int, default=8, help="requests in flight per connection")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = trio.run(main, args)
    if args.json:
        print(json.dumps(results, indent=2))
        sys.exit(0)
    print(
        "groups  conns     appends/s  CPU us/append  p50 ms  p99 ms  fsyncs/s  "
        "fsyncs/append  appends/s traced  threads"
    )
    for r in results:
        print(_line(r))
