"""What the peer links of an idle cluster cost, with 1, 8 and 16 replication groups.

Real brokers on a memory network under a mock clock (:func:`trio_broker.testing.open_mock_cluster`),
3 brokers, each group on all three. Once every group has a leader and leadership has spread, it
counts over ``SECONDS`` virtual seconds: the connections between brokers, the consensus messages
the brokers receive (heartbeats and their answers, by type) and the writes (``send_all`` calls,
each one ``send`` system call on a real socket) on those connections, per second. Counts, not
timings: under the mock clock they are exact and repeatable.

Run: ``python -m benchmarks.peer_links [GROUPS ...]``.
"""

from __future__ import annotations

import collections
import sys

import trio
import trio.testing

from trio_broker._runtime._driver import RaftDriver
from trio_broker.testing import open_mock_cluster
from trio_broker.testing._memory_network import MemoryStream

SECONDS = 10.0


_counting = False
_steps: collections.Counter[str] = collections.Counter()
_writes: collections.Counter[str] = collections.Counter()
_original_step = RaftDriver.step
_original_send_all = MemoryStream.send_all


def _step(self, message):  # type: ignore[no-untyped-def]
    if _counting:
        _steps[type(message).__name__] += 1
    return _original_step(self, message)


async def _send_all(self, data):  # type: ignore[no-untyped-def]
    if _counting:
        _writes["writes"] += 1
        _writes["bytes"] += len(data)
    return await _original_send_all(self, data)


async def _measure(groups: int) -> dict[str, float]:
    global _counting
    _steps.clear()
    _writes.clear()
    async with open_mock_cluster(3, groups=groups) as cluster:
        with trio.fail_after(600):
            while True:
                leaders = cluster.group_leaders()
                counts = collections.Counter(leaders.values())
                if all(leaders.values()) and max(counts.values()) <= -(-groups // 3):
                    break
                await trio.sleep(0.5)
        await trio.sleep(5)  # (transfers done, links settled)
        _counting = True
        await trio.sleep(SECONDS)
        _counting = False
        connections = cluster.network.statistics()["connections"]
    return {
        "groups": groups,
        "connections": connections,
        "messages/s": sum(_steps.values()) / SECONDS,
        "heartbeats/s": (_steps["Heartbeat"] + _steps["HeartbeatResponse"]) / SECONDS,
        "writes/s": _writes["writes"] / SECONDS,
        "bytes/s": _writes["bytes"] / SECONDS,
    }


def main(argv: list[str]) -> None:
    RaftDriver.step = _step  # type: ignore[method-assign]
    MemoryStream.send_all = _send_all  # type: ignore[method-assign]
    for groups in [int(a) for a in argv] or [1, 8, 16]:
        clock = trio.testing.MockClock(autojump_threshold=0)
        result = trio.run(_measure, groups, clock=clock)
        print(
            f"groups={result['groups']:>2}  peer connections={result['connections']:>3}  "
            f"consensus messages/s={result['messages/s']:>7.1f}  "
            f"(heartbeats and answers {result['heartbeats/s']:>7.1f})  "
            f"writes/s={result['writes/s']:>7.1f}  bytes/s={result['bytes/s']:>9.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
