"""How many times one appended entry's payload is encoded and decoded, over three brokers.

    python -m benchmarks.entry_encodings

Starts a three-broker cluster in this process (127.0.0.1, a temporary directory), appends one
message at a time (one log entry each), then counts the calls of the codec's top-level payload
functions (``_entries.payload_to_obj`` and ``payload_from_obj``, not their recursion into a
group's commands) by where they come from: the log write, a REPLICATE sent, a REPLICATE
received, a log read. A count, not a timing: the machine's noise does not change it.
"""

from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from trio_broker._protocol import _entries
from trio_broker.testing import open_local_cluster

APPENDS = 200

_SITES = {
    "entry_to_obj": "REPLICATE sent: encode",
    "entry_from_obj": "REPLICATE received: decode",
    "decode_payload": "log read: decode",
}


def _site(default: str) -> str:
    frame = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            break
        if frame.f_code.co_name in _SITES:
            return _SITES[frame.f_code.co_name]
        frame = frame.f_back
    return default


def _counting(counts: collections.Counter[str]) -> None:
    depth = [0]
    to_obj, from_obj = _entries.payload_to_obj, _entries.payload_from_obj

    def wrap(real: Any, default: str) -> Any:
        def counted(value: Any) -> Any:
            if depth[0] == 0:
                counts[_site(default)] += 1
            depth[0] += 1
            try:
                return real(value)
            finally:
                depth[0] -= 1

        return counted

    _entries.payload_to_obj = wrap(to_obj, "log write: encode")
    _entries.payload_from_obj = wrap(from_obj, "other decode")


async def _run(base: Path) -> tuple[collections.Counter[str], int]:
    from tests.wire import append, create_queue

    counts: collections.Counter[str] = collections.Counter()
    async with open_local_cluster(base, 3) as cluster:
        leader = await cluster.wait_for_leader()
        queue_id = await create_queue(leader.port)
        await trio.sleep(0.5)
        first = leader.node.log.last_index
        _counting(counts)
        for i in range(APPENDS):
            await append(leader.port, queue_id, {"n": i, "pad": "x" * 80})
        last = leader.node.log.last_index
        with trio.fail_after(10):  # every replica stores and applies them
            for broker in cluster.brokers.values():
                while broker.applied_index < last:
                    await broker.driver.wait_changed()
        return counts, last - first


def main() -> None:
    with tempfile.TemporaryDirectory() as base:
        counts, entries = trio.run(_run, Path(base))
    print(f"{entries} entries (one append each), three brokers; calls per entry:")
    for site, n in sorted(counts.items()):
        print(f"  {site:<30} {n / entries:5.2f}")


if __name__ == "__main__":
    main()
