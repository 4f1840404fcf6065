"""What one append costs in pieces, one group against three, with the peer messages: ``python
-m benchmarks.groups11_counts [--appends N] [--connections C] [--window W]``.

``benchmarks.group_steps`` (a three-broker cluster of three groups in this process, the bench's
pipelined APPENDs on one group's queue, then spread over the three groups' queues), plus the
consensus messages every broker's groups queue to their peers, by type, per append and per
broker (the three brokers' sum divided by three): each REPLICATE, and each acknowledgement,
is paid per batch of its group, so a group that gathers a third of the requests pays them
about three times as often (docs/performance-history.md, "Several groups: the CPU per
append, counted and profiled (eleventh round)"). Counts, not timings: the machine's noise does
not change them.
"""

from __future__ import annotations

import collections
import sys
from typing import Any

from benchmarks import group_steps
from trio_broker._runtime._peer_mux import GroupLinks

_SENT: collections.Counter[str] = collections.Counter()


def _count_sends() -> None:
    send = GroupLinks.send

    def counted(self: GroupLinks, message: Any) -> None:
        _SENT[type(message).__name__] += 1
        send(self, message)

    GroupLinks.send = counted  # type: ignore[method-assign]


def _with_messages(measure: Any) -> Any:
    async def measured(
        cluster: Any, targets: list[Any], appends: int, connections: int, window: int
    ) -> None:
        _SENT.clear()
        await measure(cluster, targets, appends, connections, window)
        total = appends // connections * connections
        brokers = len(cluster.brokers)
        print(f"  peer messages queued, per append per broker (mean of {brokers}):")
        for name, n in sorted(_SENT.items()):
            print(f"    {name:<36} {n / total / brokers:6.3f}")
        print(f"    {'all':<36} {sum(_SENT.values()) / total / brokers:6.3f}")

    return measured


def main() -> None:
    _count_sends()
    group_steps._measure = _with_messages(group_steps._measure)  # type: ignore[assignment]
    group_steps.main()


if __name__ == "__main__":
    sys.exit(main())
