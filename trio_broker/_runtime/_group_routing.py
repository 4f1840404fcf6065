"""Where the requests a broker hosting several groups receives go (docs/replication.md,
"Several leaders"): :class:`GroupRouting`, the routing room of :class:`~._groups.GroupHost`.

- a request naming a queue (or a ``cluster_id``) goes to this broker's replica of that group;
  a group of the cluster map not hosted here answers NOT_LEADER naming its leader (so a
  client of the original design still routes); anything else to the cluster group, which
  refuses it as before (``QUEUE_NOT_FOUND``, ``WRONG_CLUSTER``);
- CREATE_QUEUE naming a group (``cluster_id``) to that group (NOT_LEADER naming its leader
  when this broker does not lead it; WRONG_CLUSTER for a group the cluster does not have);
  naming none, to the data group this broker leads with fewest queues as the cluster map
  counts them (NOT_LEADER naming a group's leader when it leads none), so an
  original-design client's follow-up requests reach the broker it asked;
- CLUSTER_QUERY naming a group is answered about it (from the map when it is not hosted
  here); naming none, about the group a CREATE_QUEUE would land on; every answer lists
  ``groups`` and names the ``metadata_group``;
- the requests of one receive in runs of consecutive requests of one group, one run after
  the other, so answers keep request order across groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .._core._routing import GroupView, groups_view
from .._errors import BrokerError, ErrorCode
from .._ids import cluster_of_queue
from .._protocol import ClusterQuery, ClusterTopology, CreateQueue, Request
from .._protocol._codec import PlainAppend, as_request
from ._answer import Answer
from ._connections import Session

if TYPE_CHECKING:
    from ._broker import Broker
    from ._metamap import MetaMap


class Hosting(Protocol):
    """What the routing reads of the host."""

    primary: Broker
    groups: dict[str, Broker]
    meta: MetaMap

    @property
    def several(self) -> bool: ...


def named_group(request: Any) -> str | None:
    """The group a request names: its queue id's group, else its ``cluster_id``."""
    if type(request) is tuple:  # (a PlainAppend: its queue first)
        return cluster_of_queue(request[0])
    queue = getattr(request, "queue_name", None)
    if isinstance(queue, str):
        group = cluster_of_queue(queue)
        if group is not None:
            return group
    cluster_id = getattr(request, "cluster_id", None)
    return cluster_id if isinstance(cluster_id, str) else None


class GroupRouting:
    def __init__(self, host: Hosting) -> None:
        self.host = host

    def target(self, request: Any) -> Broker | BrokerError:
        """The group replica that decides ``request`` (the primary for anything it does not
        route: a queue name, an unknown group, which the primary refuses as before); for a
        group of the map not hosted here, NOT_LEADER naming its leader."""
        group = named_group(request)
        if group is None:
            return self.host.primary
        replica = self.host.groups.get(group)
        if replica is not None:
            return replica
        cmap = self.host.meta.map
        if cmap is not None and group in cmap.groups:
            return self.host.meta.not_leader(group)
        return self.host.primary

    def led(self) -> list[Broker]:
        """The data groups this broker leads, in id order (with a map, the metadata group,
        which holds no queues, is not one of them)."""
        skip = self.host.primary if self.host.meta.map is not None else None
        return [
            b
            for _, b in sorted(self.host.groups.items())
            if b.driver.node.is_leader and b is not skip
        ]

    def for_new_queue(self) -> Broker | None:
        """The group a CREATE_QUEUE naming none sent here lands on: the one this broker leads
        with fewest queues (ties to the lowest id); None when it leads none. Counted here (a
        leader's count is the freshest: it is what it reports to the map), by its counter
        (:class:`~._queue_counts.QueueCounter`) once that has read the store, else by the
        queue ids the replica applied."""
        led = self.led()
        if not led:
            return None
        meta = self.host.meta

        def load(b: Broker) -> tuple[int, str]:
            # A group led here is counted here: exactly once its counter has read the store,
            # else by the queue ids this replica applied, never by the map's count, which
            # lags the creates just made here by a report (two creates in a row would land
            # on the same group).
            counter = meta.counters.get(b.cluster_id)
            count = None if counter is None else counter.estimate()
            return (b.queue_count if count is None else count, b.cluster_id)

        return min(led, key=load)

    def for_named_queue(self, group: str) -> Broker | BrokerError:
        """The group a CREATE_QUEUE naming ``group`` lands on: this broker's replica of it
        (which answers NOT_LEADER naming its leader when it does not lead it); for a group of
        the map not hosted here, NOT_LEADER naming its leader; the metadata group (which holds
        no queues once there is a map) and a group the cluster does not have are refused."""
        cmap = self.host.meta.map
        metadata = self.host.primary
        if cmap is not None and group == metadata.cluster_id:
            return BrokerError(
                ErrorCode.BAD_REQUEST,
                f"{group} is the cluster's metadata group, which holds no queues; name one of "
                "the groups CLUSTER_QUERY lists in groups",
                cluster_id=group,
            )
        replica = self.host.groups.get(group)
        if replica is not None:
            return replica
        if cmap is not None and group in cmap.groups:
            return self.host.meta.not_leader(group)
        return BrokerError(
            ErrorCode.WRONG_CLUSTER,
            f"this cluster has no group {group}; CLUSTER_QUERY lists its groups",
            cluster_id=metadata.cluster_id,
        )

    def for_query(self) -> Broker | str:
        """The group a CLUSTER_QUERY naming none is answered about (PROTOCOL.md): the one a
        CREATE_QUEUE would land on, else (with a map) the first group hosted here, else the
        map's least-loaded group (its id: not hosted here), else the cluster group."""
        chosen = self.for_new_queue()
        if chosen is not None:
            return chosen
        cmap = self.host.meta.map
        if cmap is None:
            return self.host.primary
        hosted = [g for g in sorted(self.host.groups) if g in cmap.groups]
        if hosted:
            return self.host.groups[hosted[0]]
        return cmap.least_loaded_group() or self.host.primary

    def not_leader(self) -> BrokerError:
        """NOT_LEADER for a CREATE_QUEUE here: naming the leader of some group (the cluster
        group's when known, or with a map the least-loaded group with a known leader), so an
        original-design client retries where queues can land."""
        cmap = self.host.meta.map
        if cmap is not None:
            leaders = self.host.meta.observed_leaders()
            group = cmap.least_loaded_group([g for g in cmap.groups if leaders.get(g)])
            if group is not None:
                return self.host.meta.not_leader(group)
        for broker in [self.host.primary, *(b for _, b in sorted(self.host.groups.items()))]:
            error = broker.driver.not_leader_error()
            if "leader_id" in error.details:
                return error
        return self.host.primary.driver.not_leader_error()

    def views(self) -> list[GroupView]:
        """CLUSTER_QUERY's ``groups``: with a map, every group of it (hosted here or not);
        with the stage-1 list, every group hosted here; in id order."""
        meta = self.host.meta
        if meta.map is not None:
            return [
                attrs.evolve(view, queue_count=meta.queue_count(view.cluster_id))
                for view in groups_view(meta.map, meta.observed_leaders())
            ]
        views = []
        for group_id, broker in sorted(self.host.groups.items()):
            node = broker.driver.node
            leader = node.leader_id
            address = None
            if leader is not None:
                address = (
                    broker.driver.self_address
                    if leader == broker.broker_id
                    else broker.driver.address_of(leader)
                )
            views.append(
                GroupView(
                    cluster_id=group_id,
                    leader_id=leader,
                    leader_host=None if address is None else address[0],
                    leader_port=None if address is None else address[1],
                    voters=tuple(sorted(node.config.voters)),
                    learners=tuple(sorted(node.config.learners)),
                )
            )
        return views

    async def _query(self, request: ClusterQuery, session: Session | None) -> Answer:
        group = request.cluster_id
        target: Broker | str
        if group:
            target = self.host.groups.get(group) or self.host.primary
            cmap = self.host.meta.map
            if target is self.host.primary and cmap is not None and group in cmap.groups:
                target = group
        else:
            target = self.for_query()
        if isinstance(target, str):
            topology = self.host.meta.topology(target)
            answer = Answer(
                now=topology if topology is not None else self.host.meta.not_leader(target)
            )
        else:
            answer = await target.decide(request, session)
        if self.host.several and isinstance(answer.now, ClusterTopology):
            answer = Answer(
                now=attrs.evolve(
                    answer.now, groups=self.views(), metadata_group=self.host.primary.cluster_id
                )
            )
        return answer

    async def handle(self, request: Request, session: Session | None = None) -> Answer:
        if isinstance(request, ClusterQuery):
            return await self._query(request, session)
        if isinstance(request, CreateQueue) and self.host.several:
            meta = self.host.meta
            if meta.founding and meta.map is None:
                wanted = self.host.primary.config.founding_brokers
                return Answer(
                    now=BrokerError(
                        ErrorCode.UNAVAILABLE,
                        f"the cluster's groups are placed once {wanted} brokers have joined; "
                        "retry then",
                    )
                )
            if request.cluster_id is not None:
                named = self.for_named_queue(request.cluster_id)
                if isinstance(named, BrokerError):
                    return Answer(now=named)
                return await named.decide(request, session)
            if meta.map is not None:
                # Count what this broker's groups hold now (a store read per group only when
                # a queue was created or deleted there since the last count).
                every = self.host.primary.config.failure_timeout
                for broker in self.led():
                    await meta.counter(broker).refresh(every)
            chosen = self.for_new_queue()
            if chosen is None and not self.host.primary.connections.closing:
                return Answer(now=self.not_leader())
            return await (chosen or self.host.primary).decide(request, session)
        target = self.target(request)
        if isinstance(target, BrokerError):
            return Answer(now=target)
        return await target.decide(request, session)

    async def handle_many(
        self,
        requests: list[Request | PlainAppend],
        session: Session | None,
        answered: Callable[[list[Answer]], None],
    ) -> None:
        """The requests of one receive, in runs of consecutive requests of one group, each run
        decided by that group's :class:`~._runs.Runs`; CLUSTER_QUERY, CREATE_QUEUE and those
        of a group not hosted here alone. Runs are decided one after the other, so answers
        stay in request order. A plain append naming the same queue as the run's first joins
        it without its group worked out again (the same queue id, the same group: nothing
        changes the hosting while the run is gathered, nothing awaits)."""
        start = 0
        count = len(requests)
        while start < count:
            first = requests[start]
            target = self.target(first)
            if isinstance(first, ClusterQuery | CreateQueue) or isinstance(target, BrokerError):
                answered([await self.handle(as_request(first), session)])
                start += 1
                continue
            queue = first[0] if type(first) is tuple else None
            end = start + 1
            while end < count:
                request = requests[end]
                if type(request) is tuple and request[0] == queue:
                    end += 1  # (the pipelined appends of one connection: one queue)
                elif (
                    not isinstance(request, ClusterQuery | CreateQueue)
                    and self.target(request) is target
                ):
                    end += 1
                else:
                    break
            await target.runs.handle_many(requests[start:end], session, answered)
            start = end


__all__ = ["GroupRouting", "Hosting", "named_group"]
