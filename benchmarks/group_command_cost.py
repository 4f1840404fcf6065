"""What applying one entry of work-queue commands costs on the calling thread (thread CPU), and
the weight :func:`~trio_broker._runtime._save_place.apply_weight` gives it:
``python -m benchmarks.group_command_cost [N]``.

One COMMAND_GROUP of N commands of one kind each (64 groups of one queue of 10,000 messages,
real SQLite in a temporary directory): the weight of an entry that is still ``light`` should
apply in about 10 ms at most (SHORT_WEIGHT)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from typing import Any

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as wc
from trio_broker._core._raft_messages import Entry
from trio_broker._runtime import _save_place
from trio_broker._storage import Store


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 640
    folder = tempfile.mkdtemp(dir="/tmp")
    store = Store(folder)
    index = [0]

    def apply(payload: Any) -> float:
        index[0] += 1
        entries = (Entry(1, index[0], payload),)
        store.save(entries=entries)
        started = time.thread_time()
        store.save(committed=entries)
        return time.thread_time() - started

    def run(name: str, commands: tuple[Any, ...]) -> None:
        group = cmd.CommandGroup(commands)
        entries = (Entry(1, index[0] + 1, group),)
        weight, light = _save_place.apply_weight(entries), _save_place.light(entries)
        took = apply(group)
        print(
            f"{name}: {len(commands)} in one entry, weight {weight}, light {light}: "
            f"{took * 1000:.1f} ms, {took / len(commands) * 1e6:.0f} µs each"
        )

    try:
        apply(cmd.CreateQueue("q"))
        for _ in range(10):
            apply(cmd.AppendBatch("q", tuple(b'"%d"' % j for j in range(1000))))
        groups = [f"g{i}" for i in range(64)]
        settings = wc.GroupSettings(max_in_flight=10_000, visibility_ms=3_600_000)
        apply(cmd.CommandGroup(tuple(wc.JoinGroup("q", g, settings) for g in groups)))
        run("GROUP_READ(1)", tuple(wc.GroupRead("q", groups[i % 64], "m", 1, 0) for i in range(n)))
        run(
            "GROUP_READ(10)", tuple(wc.GroupRead("q", groups[i % 64], "m", 10, 0) for i in range(n))
        )
        run(
            "GROUP_EXTEND(1)",
            tuple(wc.GroupExtend("q", groups[i % 64], "m", (i // 64,), 1) for i in range(n)),
        )
        run(
            "GROUP_NACK(1)",
            tuple(wc.GroupNack("q", groups[i % 64], "m", (i // 64,), 1) for i in range(n)),
        )
        run(
            "GROUP_ACK(1)",
            tuple(wc.GroupAck("q", groups[i % 64], "m", ((i // 64, i // 64),)) for i in range(n)),
        )
        run("EXPIRE_LEASES", (wc.ExpireLeases(10**12),))
        run("PUBLISH(1)", tuple(wc.Publish("q", (wc.Record(b'"x"', ()),)) for _ in range(n)))
        run("APPEND_MESSAGE", tuple(cmd.AppendMessage("q", b'"x"') for _ in range(n)))
        run("READ", tuple(cmd.ReadNext(f"c{i}", "q") for i in range(n)))
    finally:
        store.close()
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
