"""The pipelined cycle's timeline on the leader and its replicas: ``python -m
benchmarks.leader14_timeline [SECONDS]`` (default 6).

Runs ``python -m trio_broker bench --seconds SECONDS --only pipelined`` with every broker's
driver and store wrapped (a ``sitecustomize`` this module writes into a temporary folder put
first on ``PYTHONPATH``; nothing of the package changes): each broker notes, with the
monotonic clock all processes share, when a Ready starts and ends in the driver's task
(its new entries' and committed entries' commands), when its transaction is handed to the
storage thread and comes back, when the applied entries' answers are settled (the driver's,
or in the step of the acknowledgement that committed them: ``_apply_here``), each
acknowledgement a leader steps, each REPLICATE a replica steps, and each ``Store.save``
(its wall time, and on which thread). Then it prints, for the middle three fifths of the
load, the leader's Readies (what each holds, its phases in ms, where the acknowledgements
land), each broker's saves by kind, and one stretch of the three brokers' events merged in
time (docs/performance.md, "Where the pipelined cycle waits (fourteenth round)").

The wrapping costs a few µs per event: the rate under it is a little lower than the bench's.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_SITE = """import os
if os.environ.get("LEADER14_TRACE"):
    from benchmarks.leader14_timeline import install
    install(os.environ["LEADER14_TRACE"])
"""


def install(folder: str) -> None:
    """Wrap the driver's and the store's methods of this process to note their events."""
    import atexit

    import trio_broker._runtime._driver as driver_module
    import trio_broker._storage._store as store_module
    from trio_broker._core._raft_messages import Replicate, ReplicateResponse

    events: list[tuple[int, str, int]] = []
    clock = time.perf_counter_ns
    path = Path(folder) / f"{os.getpid()}.tsv"

    def dump() -> None:
        if events:
            with path.open("a") as out:
                out.write("".join(f"{t}\t{k}\t{a}\n" for t, k, a in events))
            events.clear()

    atexit.register(dump)

    def note(kind: str, value: int = 0) -> None:
        events.append((clock(), kind, value))
        if len(events) > 4000:
            dump()

    def commands(entries: Any) -> int:
        count = 0
        for entry in entries:
            inner = getattr(entry.payload, "commands", None)
            count += len(inner) if inner is not None else 1
        return count

    driver = driver_module.RaftDriver
    handle_ready, save, apply_here = driver._handle_ready, driver._save, driver._apply_here
    step, answer_applied, applied = driver.step, driver._answer_applied, driver._applied

    async def _handle_ready(self: Any, rd: Any) -> None:
        note("ready", commands(rd.entries))
        note("ready-committed", commands(rd.committed_entries))
        try:
            await handle_ready(self, rd)
        finally:
            note("ready-end")

    async def _save(self: Any, *args: Any, **kwargs: Any) -> Any:
        note("handed")
        try:
            return await save(self, *args, **kwargs)
        finally:
            note("back")

    def _apply_here(self: Any) -> None:
        note("apply-here")
        try:
            apply_here(self)
        finally:
            note("apply-here-end")

    def _step(self: Any, message: Any) -> None:
        if type(message) is ReplicateResponse:
            note("ack", message.match_index)
        elif type(message) is Replicate:
            note("replicate", len(message.entries))
        step(self, message)

    def _answer_applied(self: Any, committed: Any, results: Any) -> None:
        note("answers", commands(committed))
        answer_applied(self, committed, results)

    def _applied(self: Any, committed: Any, results: Any) -> None:
        if committed:
            note("answers", commands(committed))
        applied(self, committed, results)

    driver._handle_ready = _handle_ready  # type: ignore[method-assign]
    driver._save = _save  # type: ignore[method-assign]
    driver._apply_here = _apply_here  # type: ignore[method-assign]
    driver.step = _step  # type: ignore[method-assign]
    driver._answer_applied = _answer_applied  # type: ignore[method-assign]
    driver._applied = _applied  # type: ignore[method-assign]

    store_save = store_module.Store.save

    def _store_save(self: Any, **kwargs: Any) -> Any:
        on_loop = threading.current_thread() is threading.main_thread()
        kind = ("e" if kwargs.get("entries") else "") + ("a" if kwargs.get("committed") else "")
        note("save-" + (kind or "-") + ("-loop" if on_loop else "-thread"))
        cpu = time.thread_time_ns()
        try:
            return store_save(self, **kwargs)
        finally:
            note("save-end", (time.thread_time_ns() - cpu) // 1000)

    store_module.Store.save = _store_save  # type: ignore[method-assign]


def _load(path: Path) -> list[tuple[int, str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        t, kind, value = line.split("\t")
        rows.append((int(t), kind, int(value)))
    return rows


def _quantiles(name: str, values: list[float]) -> None:
    if not values:
        return
    values = sorted(values)
    n = len(values)
    print(
        f"  {name:44s} n={n:5d} p10 {values[n // 10]:7.2f} p50 {values[n // 2]:7.2f}"
        f" p90 {values[9 * n // 10]:7.2f} mean {statistics.fmean(values):7.2f}"
    )


def _report(folder: Path) -> None:
    files = sorted(folder.glob("*.tsv"), key=lambda p: -p.stat().st_size)
    if not files:
        print("no events")
        return
    traces = [_load(p) for p in files]
    leader = max(traces, key=lambda rows: sum(kind == "ack" for _, kind, _ in rows))
    lo, hi = leader[len(leader) // 5][0], leader[4 * len(leader) // 5][0]
    print(f"the leader's Readies (the middle {(hi - lo) / 1e9:.2f} s), ms:")
    readies: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for t, kind, value in leader:
        if not lo <= t <= hi:
            continue
        if kind == "ready":
            current = {"start": t, "entries": value}
        elif current is None:
            continue
        elif kind == "ready-committed":
            current["committed"] = value
        elif kind in ("handed", "back", "answers") and kind not in current:
            current[kind] = t
        elif kind == "ready-end":
            current["end"] = t
            readies.append(current)
            current = None
    acks = [t for t, kind, _ in leader if kind == "ack"]
    ms = 1e-6
    seconds = (hi - lo) / 1e9
    print(f"  Readies per second {len(readies) / seconds:.0f}")
    _quantiles("new entries' commands", [r["entries"] for r in readies])
    _quantiles("committed entries' commands", [r.get("committed", 0) for r in readies])
    saved = [r for r in readies if "back" in r]
    _quantiles("start -> transaction handed", [(r["handed"] - r["start"]) * ms for r in saved])
    _quantiles("transaction (handed -> back)", [(r["back"] - r["handed"]) * ms for r in saved])
    _quantiles(
        "start -> answers (applying Readies)",
        [(r["answers"] - r["start"]) * ms for r in readies if "answers" in r],
    )
    _quantiles(
        "end -> next start", [(b["start"] - a["end"]) * ms for a, b in itertools.pairwise(readies)]
    )
    first_ack = []
    for r in (r for r in saved if r["entries"]):
        at = bisect.bisect_left(acks, r["start"])
        if at < len(acks):
            first_ack.append((acks[at] - r["start"]) * ms)
    _quantiles("start -> next acknowledgement (with entries)", first_ack)
    here = [t for t, kind, _ in leader if kind == "apply-here" and lo <= t <= hi]
    print(f"  applies in an acknowledgement's step per second {len(here) / seconds:.0f}")
    for rows in traces:
        name = "leader" if rows is leader else "replica"
        saves: dict[str, list[float]] = collections.defaultdict(list)
        cpus: dict[str, list[float]] = collections.defaultdict(list)
        began: tuple[int, str] | None = None
        for t, kind, value in rows:
            if not lo <= t <= hi:
                continue
            if kind.startswith("save-") and kind != "save-end":
                began = (t, kind[5:])
            elif kind == "save-end" and began is not None:
                saves[began[1]].append((t - began[0]) * ms)
                cpus[began[1]].append(value / 1000)
                began = None
        print(f"{name}'s saves (e: entries, a: applies), wall ms, then its thread's CPU ms:")
        for kind, walls in sorted(saves.items()):
            _quantiles(kind + " wall", walls)
            _quantiles(kind + " CPU", cpus[kind])
    print("one stretch of the three brokers' events, ms from its start (replicas indented):")
    merged = sorted(
        (t, 0 if rows is leader else 1 + [r for r in traces if r is not leader].index(rows), k, v)
        for rows in traces
        for t, k, v in rows
        if k != "save-end" or rows is not leader
    )
    middle = (lo + hi) // 2
    start = bisect.bisect_left(merged, (middle,))
    for t, who, kind, value in merged[start : start + 60]:
        print(f"  {(t - middle) * ms:8.3f} {'        ' * who}{kind} {value or ''}")


def main(seconds: str) -> None:
    with tempfile.TemporaryDirectory() as site, tempfile.TemporaryDirectory() as out:
        Path(site, "sitecustomize.py").write_text(_SITE)
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, LEADER14_TRACE=out)
        # (the tree on PYTHONPATH first, if any: its package is the one measured)
        env["PYTHONPATH"] = os.pathsep.join(
            [site, *filter(None, [os.environ.get("PYTHONPATH")]), root]
        )
        bench = subprocess.run(
            [
                sys.executable,
                "-m",
                "trio_broker",
                "bench",
                "--seconds",
                seconds,
                "--only",
                "pipelined",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        for line in bench.stderr.splitlines() + bench.stdout.splitlines():
            if "items in" in line or "each:" in line:
                print(line.strip())
        _report(Path(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "6")
