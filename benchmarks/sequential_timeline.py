"""One sequential append's timeline across the three brokers: when each step happens.

    python -m benchmarks.sequential_timeline [--appends N] [--base-port P] [--keep DIR]

Starts three broker processes (``python -m benchmarks.sequential_timeline node ...``: the
broker's own ``node`` command, with probes installed by this program before it starts; the
broker's code carries none), sends one APPEND at a time on one connection from a plain
blocking socket, and reads back each process's events. Every event is stamped with
``time.monotonic_ns`` (CLOCK_MONOTONIC: one clock for every process on the machine).

The probes wrap, in the broker processes only: the event loop's waits for I/O (a trio
``Instrument``: ``wake`` when the loop returns from ``epoll_wait``, ``idle`` when it enters
it), the request's decode, ``RaftNode.propose``, ``RaftDriver._handle_ready``, ``step``
(the commit index's moves are noted after each), ``_apply_here`` and
``_persist_after_frames``, ``Store.save`` (which thread, how many entries written and
applied: ``R1 save applies too`` counts the appends whose first acknowledgement came from a
save that also applied what waited), the peer links' encode of each batch (it is written
at once after it) and the answer's write to the client's socket. The whole append is then
shown by which replicas' saves of its entry applied (both, one, none), in the same run.

For each append the events between the client's send and its receipt of the answer are
matched by the entry's index where they carry one (the leader's proposal, the REPLICATE and
its acknowledgements, the saves and applies) and by order otherwise; the median time of each
step from the client's send is printed, then the gaps between consecutive steps of the
critical path. Replicas are named by the order of their acknowledgements (``R1`` the first
to acknowledge: the one whose acknowledgement commits the entry).

The probes cost a few µs per event (about 30 events per append on the leader, 10 on each
replica): the timeline is for where the time goes, not for the absolute figures of
``python -m trio_broker bench --only sequential``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _probes

FINE: tuple[str, ...] = tuple(n for n in os.environ.get("TIMELINE_FINE", "").split(",") if n)
"""More of the driver's methods to time (``TIMELINE_FINE=_saved,_applied``): their entry and
exit are printed by ``--dump``."""


def _install(trace: str) -> None:
    """Wrap the broker's functions named in the module's docstring, in this process only;
    the events are written to ``trace`` when the process exits."""
    from trio_broker._core import _raft
    from trio_broker._core._raft_messages import Replicate, ReplicateResponse
    from trio_broker._runtime import _connections, _direct, _driver, _peer_mux
    from trio_broker._storage import _store

    now = time.monotonic_ns
    cpu = time.thread_time_ns
    append = _probes.EVENTS.append

    def rec(event: tuple[int, str, int]) -> None:
        append((*event, cpu()))

    main = threading.main_thread()
    _probes.dump_at_exit(trace)
    _probes.trace_loop()
    _probes.trace_commits()

    decode = _connections.decode_client_request

    def traced_decode(payload: bytes) -> Any:
        rec((now(), "request", 0))
        return decode(payload)

    _connections.decode_client_request = traced_decode  # type: ignore[assignment]

    propose = _raft.RaftNode.propose

    def traced_propose(self: Any, command: Any) -> Any:
        result = propose(self, command)
        rec((now(), "propose", result[1]))
        return result

    _raft.RaftNode.propose = traced_propose  # type: ignore[method-assign]

    def last(entries: Any) -> int:
        return entries[-1].index if entries else 0

    handle_ready = _driver.RaftDriver._handle_ready

    async def traced_handle_ready(self: Any, rd: Any) -> None:
        rec((now(), "ready<", last(rd.entries) or -last(rd.committed_entries)))
        try:
            await handle_ready(self, rd)
        finally:
            rec((now(), "ready>", 0))

    _driver.RaftDriver._handle_ready = traced_handle_ready  # type: ignore[method-assign]

    step = _driver.RaftDriver.step

    def traced_step(self: Any, message: Any) -> None:
        kind = type(message)
        if kind is Replicate and message.entries:
            rec((now(), "step<R", last(message.entries)))
        elif kind is ReplicateResponse:
            rec((now(), "step<A", message.match_index))
        try:
            step(self, message)
        finally:
            if kind is ReplicateResponse or (kind is Replicate and message.entries):
                rec((now(), "step>", 0))

    _driver.RaftDriver.step = traced_step  # type: ignore[method-assign]

    wake = _driver.RaftDriver.wake

    def traced_wake(self: Any) -> None:
        if self._parked and not self._wake.is_set():
            rec((now(), "wake driver", 0))
        wake(self)

    _driver.RaftDriver.wake = traced_wake  # type: ignore[method-assign]

    flush = _driver.RaftDriver._flush_proposals

    def traced_flush(self: Any) -> None:
        rec((now(), "flush<", 0))
        flush(self)

    _driver.RaftDriver._flush_proposals = traced_flush  # type: ignore[method-assign]

    receive_some = _direct.DirectSocket.receive_some

    async def traced_receive_some(self: Any, max_bytes: int) -> bytes:
        data = await receive_some(self, max_bytes)
        rec((now(), "received", len(data)))
        return data

    _direct.DirectSocket.receive_some = traced_receive_some  # type: ignore[method-assign]

    for name in ("_apply_here", "_persist_after_frames", *FINE):
        original = getattr(_driver.RaftDriver, name)

        def traced(
            self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
        ) -> Any:
            rec((now(), _name + "<", 0))
            try:
                return _original(self, *args, **kwargs)
            finally:
                rec((now(), _name + ">", 0))

        setattr(_driver.RaftDriver, name, traced)

    save = _store.Store.save

    def traced_save(self: Any, *args: Any, **kwargs: Any) -> Any:
        entries = kwargs.get("entries") or ()
        committed = kwargs.get("committed") or ()
        where = "loop" if threading.current_thread() is main else "thread"
        kind = f"save<{where}"
        rec((now(), kind, last(entries) or -last(committed)))
        if entries and committed:  # (a replica's save that applies what waited)
            rec((now(), "applies", last(entries)))
        try:
            return save(self, *args, **kwargs)
        finally:
            rec((now(), "save>", last(entries) or -last(committed)))

    _store.Store.save = traced_save  # type: ignore[method-assign]

    encode = _peer_mux._Link._encode

    def traced_encode(self: Any, batch: Any) -> bytes:
        data = encode(self, batch)
        for _group, message in batch:
            kind = type(message)
            if kind is Replicate and message.entries:
                rec((now(), "send R", last(message.entries)))
            elif kind is ReplicateResponse:
                rec((now(), "send A", message.match_index))
        return data

    _peer_mux._Link._encode = traced_encode  # type: ignore[method-assign]

    send_now = _direct.DirectSocket.send_now

    def traced_send_now(self: Any, data: Any) -> int:
        sent = send_now(self, data)
        rec((now(), "answer", sent))
        return sent

    _direct.DirectSocket.send_now = traced_send_now  # type: ignore[method-assign]

    send_all = _direct.DirectSocket.send_all

    async def traced_send_all(self: Any, data: Any) -> None:
        rec((now(), "answer", -len(data)))
        await send_all(self, data)

    _direct.DirectSocket.send_all = traced_send_all  # type: ignore[method-assign]


# -- the client and the analysis ------------------------------------------------------------------


def _first(events: list[tuple[int, str, int]], name: str, after: int, detail: Any = None) -> int:
    for t, n, d, *_ in events:
        if t >= after and n == name and (detail is None or d == detail):
            return t
    return 0


def _last_before(events: list[tuple[int, str, int]], name: str, before: int) -> int:
    found = 0
    for t, n, *_ in events:
        if t > before:
            break
        if n == name:
            found = t
    return found


def _window(events: list[tuple[int, str, int]], start: int, end: int) -> list[Any]:
    return [e for e in events if start - 2_000_000 <= e[0] <= end + 300_000]


def _steps(
    leader: list[Any], replicas: list[list[Any]], send: int, answered: int, index: int
) -> dict[str, int]:
    """The step times (ns since the client's send, 0: not seen) of one append at ``index``."""
    lw = _window(leader, send, answered)
    out: dict[str, int] = {}
    request = _first(lw, "request", send)
    out["L request decoded"] = request
    out["L loop woke (epoll) for it"] = _last_before(lw, "wake", request) if request else 0
    out["L driver woken"] = _first(lw, "wake driver", request or send)
    out["L driver runs (flush)"] = _first(lw, "flush<", request or send)
    out["L proposed"] = _first(lw, "propose", send, index)
    out["L Ready taken"] = _first(lw, "ready<", send, index)
    out["L REPLICATE encoded (written)"] = _first(lw, "send R", send, index)
    out["L own save begins (loop)"] = _first(lw, "save<loop", send, index)
    out["L own save begins (thread)"] = _first(lw, "save<thread", send, index)
    out["L own save done (fsynced)"] = _first(lw, "save>", send, index)
    out["L own Ready done (advance)"] = _first(lw, "ready>", out["L Ready taken"] or send)
    acks = [t for t, n, d, *_ in lw if n == "step<A" and d == index]
    if acks:
        out["L loop woke for 1st ack"] = _last_before(lw, "wake", acks[0])
        out["L 1st ack received"] = _first(lw, "received", out["L loop woke for 1st ack"])
    out["L 1st ack stepped"] = acks[0] if acks else 0
    out["L 2nd ack stepped"] = acks[1] if len(acks) > 1 else 0
    out["L commit known"] = _first(lw, "commit", send, index)
    out["L apply begins"] = _first(lw, "save<loop", send, -index) or _first(
        lw, "save<thread", send, -index
    )
    out["L apply done"] = _first(lw, "save>", send, -index)
    out["L answer written"] = _first(lw, "answer", out["L commit known"] or send)
    ordered = []
    for events in replicas:
        rw = _window(events, send, answered)
        ack = _first(rw, "send A", send, index)
        ordered.append((ack or answered + 1, rw))
    ordered.sort(key=lambda pair: pair[0])
    cpu_of = {"L": {e[0]: e[3] for e in lw}}
    for n, (_, rw) in enumerate(ordered, 1):
        r = f"R{n}"
        cpu_of[r] = {e[0]: e[3] for e in rw}
        stepped = _first(rw, "step<R", send, index)
        out[f"{r} loop woke (epoll)"] = _last_before(rw, "wake", stepped) if stepped else 0
        woke = out[f"{r} loop woke (epoll)"]
        out[f"{r} REPLICATE received"] = _first(rw, "received", woke) if woke else 0
        out[f"{r} REPLICATE stepped"] = stepped
        out[f"{r} persist begins"] = _first(rw, "_persist_after_frames<", stepped or send)
        out[f"{r} save begins"] = _first(rw, "save<loop", send, index) or _first(
            rw, "save<thread", send, index
        )
        out[f"{r} save done (fsynced)"] = _first(rw, "save>", send, index)
        out[f"{r} save applies too"] = _first(rw, "applies", send, index)
        out[f"{r} ack encoded (written)"] = _first(rw, "send A", send, index)
    # The thread's CPU time at each step (same process, same thread: the loop's).
    cpu = {"cpu " + k: cpu_of[k.split(" ", 1)[0]].get(v, 0) for k, v in out.items() if v}
    return {k: (v - send if v else 0) for k, v in out.items()} | cpu


def _wait_for_voters(port: int, voters: int) -> None:
    """Until the leader at ``port`` counts ``voters`` voters: before that, a joining broker
    is a learner and the leader's entries commit on its own fsync, which is not the path
    measured."""
    deadline = time.monotonic() + 60
    request = {"operation": "CLUSTER_QUERY", "details": True}
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            view = _probes.call(sock, request, bytearray())
        members = view.get("brokers", [])
        if sum(b.get("membership") == "voter" for b in members) >= voters:
            return
        time.sleep(0.1)
    raise RuntimeError(f"fewer than {voters} voters within 60 s")


def run(base: Path, appends: int, base_port: int, dump: bool = False) -> None:
    ports = [base_port, base_port + 1, base_port + 2]
    nodes = _probes.start_cluster("benchmarks.sequential_timeline", base, ports)
    sends: list[tuple[int, int]] = []
    try:
        port, queue_id = _probes.leader(ports)
        _wait_for_voters(port, len(ports))
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray()
            request = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
            for _ in range(50):  # warm up
                _probes.call(sock, request, buf)
            for _ in range(appends):
                sent = time.monotonic_ns()
                answer = _probes.call(sock, request, buf)
                sends.append((sent, time.monotonic_ns()))
                assert answer.get("status") == "success", answer
    finally:
        _probes.stop(nodes)
    traces = {p: _probes.read(trace) for p, (_, trace) in zip(ports, nodes, strict=True)}
    leader = traces[port]
    replicas = [traces[p] for p in ports if p != port]
    # Each append's index: the proposal the leader made within its window.
    rows: list[dict[str, int]] = []
    for sent, answered in sends:
        index = next((d for t, n, d, *_ in leader if n == "propose" and sent <= t <= answered), 0)
        if index:
            rows.append(_steps(leader, replicas, sent, answered, index))
            rows[-1]["client has the answer"] = answered - sent
    _report(rows, appends)
    if dump:
        sent, answered = sends[len(sends) // 2]
        for name, events in [("L", leader)] + [(f"r{n}", r) for n, r in enumerate(replicas)]:
            for t, n, d, *_ in _window(events, sent, answered):
                print(f"    {name} {(t - sent) / 1000:8.0f} {n} {d}")


def _report(rows: list[dict[str, int]], appends: int) -> None:
    """Each step's time from the client's send (median, 10th and 90th percentiles), in the
    order of their medians, and the median gap from the step printed before it (taken per
    append, over the appends that have both)."""
    print(f"{appends} sequential appends, {len(rows)} matched; µs from the client's send")
    print(f"  {'step':<36} {'p50':>6} {'p10':>6} {'p90':>6} {'gap':>6}  seen")
    names = sorted(
        {k for row in rows for k in row if not k.startswith("cpu ")}, key=lambda k: _order(rows, k)
    )
    before = None
    for name in names:
        values = sorted(row[name] / 1000 for row in rows if row.get(name))
        if not values:
            continue
        p10 = values[len(values) // 10]
        p90 = values[(len(values) * 9) // 10]
        gap = ""
        if before is not None:
            gaps = [(r[name] - r[before]) / 1000 for r in rows if r.get(name) and r.get(before)]
            gap = f"{statistics.median(gaps):6.0f}" if gaps else ""
        median = statistics.median(values)
        print(f"  {name:<36} {median:6.0f} {p10:6.0f} {p90:6.0f} {gap:>6}  {len(values)}")
        before = name
    _segments(rows)
    _by_applies(rows)


def _by_applies(rows: list[dict[str, int]]) -> None:
    """The whole append (and the first acknowledgement's save) by which replicas' saves of
    its entry also applied what waited: both (every replica at its lag on the same entry),
    only the second to acknowledge, only the first, none. Taken in one run, so the load
    weighs alike on each kind."""
    print(
        f"  {'by the replicas applying on the entry':<40} {'appends':>7} {'p50':>6} {'p90':>6}"
        f" {'R1 save p50':>12}"
    )
    kinds = {"both": (1, 1), "R2 only": (0, 1), "R1 only": (1, 0), "none": (0, 0)}
    for label, (one, two) in kinds.items():
        picked = [
            r
            for r in rows
            if bool(r.get("R1 save applies too")) == one
            and bool(r.get("R2 save applies too")) == two
        ]
        if not picked:
            continue
        whole = sorted(r["client has the answer"] / 1000 for r in picked)
        saves = [
            (r["R1 save done (fsynced)"] - r["R1 save begins"]) / 1000
            for r in picked
            if r.get("R1 save done (fsynced)") and r.get("R1 save begins")
        ]
        save = f"{statistics.median(saves):12.0f}" if saves else ""
        print(
            f"  {label:<40} {len(picked):7} {statistics.median(whole):6.0f}"
            f" {whole[len(whole) * 9 // 10]:6.0f} {save:>12}"
        )


SEGMENTS = (
    ("client's send", "L request decoded"),
    ("L request decoded", "L proposed"),
    ("L proposed", "L REPLICATE encoded (written)"),
    ("L request decoded", "L REPLICATE encoded (written)"),
    ("L REPLICATE encoded (written)", "L own save begins (loop)"),
    ("L own save begins (loop)", "L own save done (fsynced)"),
    ("L REPLICATE encoded (written)", "R1 REPLICATE received"),
    ("R1 REPLICATE received", "R1 save begins"),
    ("R1 REPLICATE received", "R1 ack encoded (written)"),
    ("R1 save begins", "R1 save done (fsynced)"),
    ("R1 save done (fsynced)", "R1 ack encoded (written)"),
    ("R1 ack encoded (written)", "L 1st ack received"),
    ("L 1st ack received", "L apply begins"),
    ("L 1st ack received", "L apply done"),
    ("L apply begins", "L apply done"),
    ("L apply begins", "L answer written"),
    ("L answer written", "client has the answer"),
    ("L apply done", "client has the answer"),
    ("client's send", "client has the answer"),
)
"""The critical path's segments (and the leader's own save beside it), printed as medians
of each append's gap."""


def _segments(rows: list[dict[str, int]]) -> None:
    print(f"  {'segment (median per append, µs)':<66} {'p50':>6} {'p90':>6} {'CPU':>6}")
    for start, end in SEGMENTS:
        cpus = sorted(
            (r["cpu " + end] - r["cpu " + start]) / 1000
            for r in rows
            if r.get("cpu " + end)
            and r.get("cpu " + start)
            and start.split(" ", 1)[0] == end.split(" ", 1)[0]
        )
        gaps = sorted(
            (r[end] - r.get(start, 0)) / 1000
            for r in rows
            if r.get(end) and (start == "client's send" or r.get(start))
        )
        if gaps:
            p90 = gaps[(len(gaps) * 9) // 10]
            label = f"{start} -> {end}"
            used = f"{statistics.median(cpus):6.0f}" if cpus else ""
            print(f"  {label:<66} {statistics.median(gaps):6.0f} {p90:6.0f} {used:>6}")


def _order(rows: list[dict[str, int]], key: str) -> float:
    values = [row[key] for row in rows if row.get(key)]
    return statistics.median(values) if values else float("inf")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        sys.exit(_probes.node_main(_install, sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=400)
    parser.add_argument("--base-port", type=int, default=19431)
    parser.add_argument("--dump", action="store_true", help="print one append's raw events")
    parser.add_argument("--keep", type=Path, help="keep the data and traces in this directory")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args.keep, args.appends, args.base_port, args.dump)
        return
    with tempfile.TemporaryDirectory() as base:
        run(Path(base), args.appends, args.base_port, args.dump)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
