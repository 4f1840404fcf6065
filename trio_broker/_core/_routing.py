"""What a broker hosting several groups tells clients: CLUSTER_QUERY's ``groups`` list, and
which group an original-design client's CLUSTER_QUERY and CREATE_QUEUE land on.

Pure functions of the replicated :class:`~trio_broker._core._metadata.ClusterMap` and of the
leaders the answering broker observes (its own groups' from their consensus cores, the others'
from the metadata group's reports).

The ``groups`` list (docs/replication.md, "Several leaders (design)") is a list of
:class:`GroupView`, unstructured by the project's converter with absent (None) fields dropped,
as ``brokers`` entries are::

    {"cluster_id": "G-XYZ78", "leader_id": "B-7Q2ZX", "leader_host": "127.0.0.1",
     "leader_port": 9001, "voters": ["B-7Q2ZX", "B-K3M9P", "B-Z81QA"], "learners": []}

``leader_id`` is absent when no leader is known, ``leader_host``/``leader_port`` when the
leader's address is not in the map; ``voters`` and ``learners`` are sorted; groups come in id
order. The names match the rest of the contract: a group is a "cluster" (``cluster_id``, as in
the answer's own ``cluster_id`` and in queue ids), and ``leader_*`` are the fields of the
``NOT_LEADER`` error.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ._metadata import ClusterMap


@attrs.frozen(kw_only=True)
class GroupView:
    cluster_id: str
    leader_id: str | None = None
    leader_host: str | None = None
    leader_port: int | None = None
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()
    queue_count: int | None = None
    """An addition: the queues on the group as the map counts them, which the trio client's
    placement reads (filled in by the runtime; absent where nothing counts them)."""


def groups_view(cmap: ClusterMap, observed_leaders: Mapping[str, str | None]) -> list[GroupView]:
    """Every group of the map, with its leader (if known) and where that leader listens."""
    views = []
    for g, rec in sorted(cmap.groups.items()):
        leader = observed_leaders.get(g)
        address = cmap.broker(leader)
        views.append(
            GroupView(
                cluster_id=g,
                leader_id=leader,
                leader_host=None if address is None else address.host,
                leader_port=None if address is None else address.port,
                voters=rec.voters,
                learners=rec.learners,
            )
        )
    return views


def led_by(
    cmap: ClusterMap, observed_leaders: Mapping[str, str | None], broker_id: str
) -> list[str]:
    """The groups ``broker_id`` leads, in id order."""
    return [g for g in sorted(cmap.groups) if observed_leaders.get(g) == broker_id]


def group_for_new_queue(
    cmap: ClusterMap, observed_leaders: Mapping[str, str | None], broker_id: str
) -> str | None:
    """Where a CREATE_QUEUE received by ``broker_id`` goes: the least-loaded group it leads
    (fewest queues, ties to the lowest id), so that the client's next requests, sent to the
    broker it just created the queue on, reach that queue's leader. None when it leads no
    group: answer NOT_LEADER naming the leader of :meth:`ClusterMap.least_loaded_group`."""
    return cmap.least_loaded_group(led_by(cmap, observed_leaders, broker_id))


def group_for_query(
    cmap: ClusterMap, observed_leaders: Mapping[str, str | None], broker_id: str
) -> str | None:
    """The group a CLUSTER_QUERY naming no ``cluster_id`` is answered about
    (PROTOCOL.md): the group a CREATE_QUEUE sent here would land on, else the first group this
    broker holds a replica of, else the least-loaded group (None only before founding); the
    answer's ``self_role`` is then ``replica``."""
    chosen = group_for_new_queue(cmap, observed_leaders, broker_id)
    if chosen is None:
        hosted = cmap.groups_of(broker_id)
        chosen = hosted[0] if hosted else cmap.least_loaded_group()
    return chosen


__all__ = ["GroupView", "group_for_new_queue", "group_for_query", "groups_view", "led_by"]
