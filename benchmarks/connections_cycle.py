"""The leader's cycle under the bench's "100 connections x 1 in flight" workload.

    python -m benchmarks.connections_cycle [--seconds S] [--connections N] [--base-port P]
                                           [--dump CYCLES]

Starts three broker processes (``python -m benchmarks.connections_cycle node ...``: the
broker's own ``node`` command with probes installed by this program before it starts; the
broker's code carries none), runs the bench's load generator (``trio_broker._cli._loadgen``,
two processes, one APPEND of 100 bytes in flight per connection) against the leader, and
reads back the leader's events, each stamped with ``time.monotonic_ns`` and the thread's CPU
time: the event loop's waits for I/O (a trio ``Instrument``), ``Store.save`` (on which
thread, how many commands written and applied), ``RaftDriver._handle_ready``, the driver's
``_flush_proposals`` (how many proposals it took), its ``_send_at_once`` (the REPLICATEs
written) and the answers written.

It prints, over the measured window: the durable transactions, on the storage thread or on
the loop's (how many, how many commands each, their wall time), the share of the window spent
in them, the gap between one durable transaction's end and the next one's start, and how the
event loop's thread spent its time while one ran and while none did (busy share and CPU): the
cycle's overlap. ``--dump N`` also prints N whole cycles from the middle of the run, raw: each
event's wall time and the loop thread's CPU since the fsync's end. The probes cost a few
µs per event (a handful of events per request): for the cycle's shape, not for the bench's
absolute figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _probes


def _commands(entries: Any) -> int:
    from trio_broker._core._commands import CommandGroup

    n = 0
    for entry in entries:
        payload = entry.payload
        n += len(payload.commands) if isinstance(payload, CommandGroup) else 1
    return n


def _install(trace: str) -> None:
    from trio_broker._runtime import _direct, _driver
    from trio_broker._storage import _store, _worker

    record = _probes.record
    main = threading.main_thread()
    _probes.dump_at_exit(trace)
    _probes.trace_loop()
    _probes.trace_commits()

    save = _store.Store.save

    def traced_save(self: Any, *args: Any, **kwargs: Any) -> Any:
        written = _commands(kwargs.get("entries") or ())
        applied = _commands(kwargs.get("committed") or ())
        where = "loop" if threading.current_thread() is main else "thread"
        record(f"save<{where}", written * 100_000 + applied)
        try:
            return save(self, *args, **kwargs)
        finally:
            record(f"save>{where}", written * 100_000 + applied)

    _store.Store.save = traced_save  # type: ignore[method-assign]

    flush = _driver.RaftDriver._flush_proposals

    def traced_flush(self: Any) -> None:
        record("flush", self._ledger.queued)
        flush(self)

    _driver.RaftDriver._flush_proposals = traced_flush  # type: ignore[method-assign]

    handle_ready = _driver.RaftDriver._handle_ready

    async def traced_handle_ready(self: Any, rd: Any, *args: Any) -> None:
        record("ready<", _commands(rd.entries))
        try:
            await handle_ready(self, rd, *args)
        finally:
            record("ready>", 0)

    _driver.RaftDriver._handle_ready = traced_handle_ready  # type: ignore[method-assign]

    worker_run = _worker.StorageWorker.run

    async def traced_worker_run(self: Any, fn: Any, *args: Any) -> Any:
        record("handed", 0)
        try:
            return await worker_run(self, fn, *args)
        finally:
            record("returned", 0)

    _worker.StorageWorker.run = traced_worker_run  # type: ignore[method-assign]

    send_now = _direct.DirectSocket.send_now
    events = _probes.EVENTS
    now = time.monotonic_ns

    def traced_send_now(self: Any, data: Any) -> int:
        events.append((now(), "answer", 0, 0))
        return send_now(self, data)

    _direct.DirectSocket.send_now = traced_send_now  # type: ignore[method-assign]

    send_at_once = _driver.RaftDriver._send_at_once

    def traced_send_at_once(self: Any, messages: Any) -> bool:
        record("send<", len(messages))
        try:
            return send_at_once(self, messages)
        finally:
            record("send>", 0)

    _driver.RaftDriver._send_at_once = traced_send_at_once  # type: ignore[method-assign]

    encode = _driver.payload_bytes

    def traced_encode(entry: Any, *args: Any) -> Any:
        record("encode<", 0)
        try:
            return encode(entry, *args)
        finally:
            record("encode>", 0)

    _driver.payload_bytes = traced_encode


def _load(port: int, queue_id: str, connections: int, seconds: float) -> tuple[int, float, float]:
    """Run two load generators at once; (answers, start, end) in monotonic ns."""
    spec = {
        "host": "127.0.0.1",
        "port": port,
        "window": 1,
        "seconds": seconds,
        "request": {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100},
        "start_at": time.time() + 1.0,
        "drain_seconds": 5.0,
    }
    procs = []
    for share in (connections // 2, connections - connections // 2):
        p = subprocess.Popen(
            [sys.executable, "-m", "trio_broker._cli._loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert p.stdin is not None
        p.stdin.write(json.dumps(spec | {"connections": share}).encode())
        p.stdin.close()
        procs.append(p)
    start = time.monotonic_ns() + 1_000_000_000
    answers = 0
    for p in procs:
        assert p.stdout is not None
        answers += json.loads(p.stdout.read())["ok"]
        p.wait()
    return answers, start, start + int(seconds * 1e9)


def _intervals(events: list[Any], begin: str, end: str) -> list[tuple[int, int, int, int, int]]:
    """(start, end, detail, cpu at start, cpu at end) of each begin/end pair."""
    out = []
    opened: tuple[int, int, int] | None = None
    for t, n, d, c in events:
        if n == begin:
            opened = (t, d, c)
        elif n == end and opened is not None:
            out.append((opened[0], t, opened[1], opened[2], c))
            opened = None
    return out


def _durable(events: list[Any]) -> list[tuple[int, int, int, int, int, bool]]:
    """The leader's durable transactions (those that write entries), on the storage thread
    or on the loop's thread (the last field: True on the loop), in time order."""
    threaded = [(*iv, False) for iv in _intervals(events, "save<thread", "save>thread")]
    looped = [(*iv, True) for iv in _intervals(events, "save<loop", "save>loop")]
    return sorted(iv for iv in threaded + looped if iv[2] >= 100_000)


def _overlap(spans: list[tuple[int, int]], a: int, b: int) -> int:
    return sum(max(0, min(e, b) - max(s, a)) for s, e in spans)


def analyse(events: list[Any], start: int, end: int, answers: int, seconds: float) -> None:
    events = [e for e in events if start <= e[0] <= end]
    durable = _durable(events)
    loop_saves = [iv for iv in _intervals(events, "save<loop", "save>loop") if iv[2] < 100_000]
    on_loop = sum(1 for iv in durable if iv[5])
    # The loop thread's busy spans: from a return of epoll_wait to the next entry into it.
    busy: list[tuple[int, int]] = []
    busy_cpu: list[tuple[int, int, int]] = []
    woke: tuple[int, int] | None = None
    for t, n, _d, c in events:
        if n == "wake":
            woke = (t, c)
        elif n == "idle" and woke is not None:
            busy.append((woke[0], t))
            busy_cpu.append((woke[0], t, c - woke[1]))
            woke = None
    window = end - start
    print(f"{answers / seconds:,.0f} appends/s over {seconds:.0f} s ({answers:,} answers)")
    if not durable:
        print("  no durable transaction on the storage thread")
        return
    written = [iv[2] // 100_000 for iv in durable]
    applied = [iv[2] % 100_000 for iv in durable]
    walls = [(iv[1] - iv[0]) / 1e3 for iv in durable]
    gaps = [(b[0] - a[1]) / 1e3 for a, b in itertools.pairwise(durable)]
    thread_busy = sum(iv[1] - iv[0] for iv in durable) / window
    print(
        f"  durable transactions: {len(durable)} ({len(durable) / seconds:.0f}/s; on the"
        f" loop's thread {on_loop}); commands written each: median"
        f" {statistics.median(written):.0f} (p10 {_pct(written, 10):.0f}, p90"
        f" {_pct(written, 90):.0f}); applied in the same transaction: median"
        f" {statistics.median(applied):.0f}, {sum(applied) / max(sum(written), 1):.0%} of all"
    )
    print(
        f"  their wall time: median {statistics.median(walls):,.0f} µs (p90"
        f" {_pct(walls, 90):,.0f}); in a durable transaction {thread_busy:.0%} of the window"
    )
    if gaps:
        print(
            f"  from one's end to the next one's start: median {statistics.median(gaps):,.0f} µs"
            f" (p10 {_pct(gaps, 10):,.0f}, p90 {_pct(gaps, 90):,.0f})"
        )
    fsync_spans = [(iv[0], iv[1]) for iv in durable]
    in_fsync = sum(_overlap(fsync_spans, s, e) for s, e in busy)
    loop_busy = sum(e - s for s, e in busy)
    fsync_time = sum(e - s for s, e in fsync_spans)
    idle_time = window - fsync_time
    loop_cpu = sum(c for _s, _e, c in busy_cpu)
    cpu_in_fsync = sum(c * _overlap(fsync_spans, s, e) / max(e - s, 1) for s, e, c in busy_cpu)
    print(
        f"  the loop's thread busy {loop_busy / window:.0%} of the window"
        f" ({loop_cpu / answers / 1e3:.1f} µs of its CPU per append):"
        f" {in_fsync / max(fsync_time, 1):.0%} of the time while a durable transaction runs"
        f", {(loop_busy - in_fsync) / max(idle_time, 1):.0%} while it is idle;"
        f" {cpu_in_fsync / max(loop_cpu, 1):.0%} of the loop's CPU overlaps an fsync"
    )
    # Each cycle: from one fsync's end to the next one's start, what the loop did.
    flushes = [(t, d) for t, n, d, _c in events if n == "flush"]
    answered = [t for t, n, *_ in events if n == "answer"]
    per_cycle_answers = []
    per_cycle_flushes = []
    for a, b in itertools.pairwise(durable):
        per_cycle_answers.append(sum(1 for t in answered if a[0] <= t < b[0]))
        per_cycle_flushes.append(sum(1 for t, d in flushes if a[0] <= t < b[0] and d))
    proposals = [d for _t, d in flushes if d]
    print(
        f"  proposals taken per flush: median {statistics.median(proposals or [0]):.0f};"
        f" flushes with proposals per cycle: median {statistics.median(per_cycle_flushes):.0f};"
        f" answers written per cycle: median {statistics.median(per_cycle_answers):.0f}"
    )
    _phases(events, durable)
    print(
        f"  apply-only transactions on the loop: {len(loop_saves)}"
        f" ({len(loop_saves) / seconds:.0f}/s), median"
        f" {statistics.median([(e - s) / 1e3 for s, e, *_ in loop_saves] or [0]):.0f} µs"
    )


def _phases(events: list[Any], durable: list[Any]) -> None:
    """Each cycle's phases, from one durable transaction's end (µs, medians over cycles)."""
    marks: dict[str, list[float]] = {}
    names = ("commit", "apply<", "apply>", "last answer", "flush", "ready<", "handed")
    for a, b in itertools.pairwise(durable):
        seen: dict[str, int] = {}
        for t, n, d, _c in events:
            if t < a[1]:
                continue
            if t >= b[0]:
                break
            if n == "commit":
                seen.setdefault("commit", t)
            elif n == "save<loop" and d < 100_000 and d:
                seen.setdefault("apply<", t)
            elif n == "save>loop" and d < 100_000 and d:
                seen.setdefault("apply>", t)
            elif n == "answer":
                seen["last answer"] = t
            elif n == "flush" and d:
                seen.setdefault("flush", t)
            elif n == "ready<" and d:
                seen.setdefault("ready<", t)
            elif n == "handed":
                seen["handed"] = t
        for name in names:
            if name in seen:
                marks.setdefault(name, []).append((seen[name] - a[1]) / 1e3)
    marks["next fsync starts"] = [(b[0] - a[1]) / 1e3 for a, b in itertools.pairwise(durable)]
    handed = [t for t, n, *_ in events if n == "handed"]
    waits = []
    for a in durable:
        if a[5]:
            continue  # (on the loop's thread: not handed over)
        before = [t for t in handed if t <= a[0]]
        if before and a[0] - before[-1] < 100_000_000:
            waits.append((a[0] - before[-1]) / 1e3)
    print(
        "  a hand-off to the storage thread -> its durable transaction starts: median"
        f" {statistics.median(waits or [0]):,.0f} µs (p90 {_pct(waits or [0], 90):,.0f})"
    )
    returned = [t for t, n, *_ in events if n == "returned"]
    back = []
    for a in durable:
        later = [t for t in returned if t >= a[1]]
        if later:
            back.append((later[0] - a[1]) / 1e3)
    print(
        "  an fsync's end -> its task resumes on the loop: median"
        f" {statistics.median(back or [0]):,.0f} µs"
    )
    print("  a cycle from one durable transaction's end (median µs; cycles seen):")
    for name, values in sorted(marks.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"    {name:<20} {statistics.median(values):8,.0f}  ({len(values)})")


def _pct(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * p // 100)]


def run(base: Path, seconds: float, connections: int, base_port: int, dump: int = 0) -> None:
    ports = [base_port, base_port + 1, base_port + 2]
    nodes = _probes.start_cluster("benchmarks.connections_cycle", base, ports)
    try:
        port, queue_id = _probes.leader(ports)
        answers, start, end = _load(port, queue_id, connections, seconds)
    finally:
        _probes.stop(nodes)
    events = _probes.read(nodes[ports.index(port)][1])
    if os.environ.get("CYCLE_KEEP"):
        with open(os.environ["CYCLE_KEEP"], "wb") as f:
            pickle.dump((events, start, end), f)
    analyse(events, start, end, answers, seconds)
    if dump:
        _dump(events, start, end, dump)


def _dump(events: list[Any], start: int, end: int, cycles: int) -> None:
    """``cycles`` whole cycles from the middle of the window, raw: each event's wall time and
    the loop thread's CPU since the cycle's fsync ended (µs; the storage thread's own events
    carry no loop CPU). Answers are counted, not listed."""
    events = [e for e in events if start <= e[0] <= end]
    durable = _durable(events)
    middle = len(durable) // 2
    for a, b in itertools.pairwise(durable[middle : middle + cycles + 1]):
        print(f"  cycle from an fsync's end (its wall {(a[1] - a[0]) / 1e3:,.0f} µs):")
        base_cpu: int | None = None
        answers = 0
        for t, n, d, c in events:
            if t < a[1] or t > b[1]:
                continue
            thread = n.endswith("thread")
            if not thread and base_cpu is None:
                base_cpu = c
            if n == "answer":
                answers += 1
                continue
            if n in ("idle", "wake") or n.startswith("encode"):
                continue
            cpu = "" if thread or base_cpu is None else f"[{(c - base_cpu) / 1e3:,.0f}]"
            tail = f" ({answers} answers so far)" if answers else ""
            print(f"    {(t - a[1]) / 1e3:9,.0f} {cpu:>8} {n} {d}{tail}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        sys.exit(_probes.node_main(_install, sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--base-port", type=int, default=19531)
    parser.add_argument("--dump", type=int, default=0, help="print this many cycles raw")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        run(Path(base), args.seconds, args.connections, args.base_port, args.dump)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
