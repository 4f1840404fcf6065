"""The balancer's seams over a running broker (docs/replication.md, "Balancer").

:mod:`._balancing` runs the rounds against two small seams; this module implements them over
the real thing: :class:`MetaMapSource` reads the metadata group (its map, its log, its leader's
failure detector), :class:`RemoteGroups` observes the groups' leaders and asks them to act
through the existing membership operations. (The group leaders' side, each committed
membership reported to the map, is :func:`~._metamap.report_replicas`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import trio

from .._core._metadata import (
    ClusterMap,
    MetadataCommand,
    MetadataResult,
)
from .._core._placement import AddLearner, GroupAction, PromoteLearner, TransferLeader
from .._errors import BrokerError, ErrorCode
from .._protocol import (
    ClusterQuery,
    ClusterTopology,
    Done,
    JoinCluster,
    Joined,
    LeadershipTransferred,
    RemoveMember,
    TransferLeadership,
)
from ._balancing import WAITING, Balancing, BalancingSettings
from ._dial import UNREACHABLE, unreachable_reason

# -- the metadata group's seam ----------------------------------------------------------------


class MetaMapLike(Protocol):
    """What :class:`MetaMapSource` reads of the metadata group's seam (``_metamap.MetaMap``)."""

    @property
    def map(self) -> ClusterMap | None: ...

    @property
    def is_leader(self) -> bool: ...

    async def propose(self, command: Any) -> MetadataResult | BrokerError: ...

    async def wait_changed(self) -> None: ...


class MetaMapSource:
    """:class:`MapSource` over the metadata group: the map its broker last loaded, proposals
    through its log, and the failure detector of its consensus core (on its leader, the
    verdict of each member: ``active`` or not)."""

    def __init__(self, meta: MetaMapLike, driver: Any) -> None:
        self.meta = meta
        self.driver = driver

    @property
    def broker_id(self) -> str:
        """This broker: while it leads the metadata group, the balancer counts that
        leadership (``plan_moves``'s ``metadata_leader``)."""
        return str(self.driver.broker_id)

    def is_metadata_leader(self) -> bool:
        return self.meta.is_leader and self.meta.map is not None

    def cluster_map(self) -> ClusterMap:
        return self.meta.map or ClusterMap()

    async def propose(self, command: MetadataCommand) -> MetadataResult | BrokerError:
        return await self.meta.propose(command)

    async def wait_map(self, version: int) -> None:
        while self.meta.map is None or self.meta.map.version < version:
            await self.meta.wait_changed()

    def verdicts(self) -> Mapping[str, bool]:
        node = self.driver.node
        if not node.is_leader:
            return {}
        return {m: view.status == "active" for m, view in node.member_statuses().items()}


# -- group actions as requests to the groups' leaders ----------------------------------------


class Asker(Protocol):
    async def ask(
        self, address: tuple[str, int], request: Any, cls: type[Any], deadline: float
    ) -> Any: ...


@attrs.define
class RemoteGroups:
    """:class:`GroupActions` over the network: observe every live broker's CLUSTER_QUERY
    (one request per broker per round), and ask each action of the group's leader (or, its
    leader unknown, of a live replica, which forwards it)."""

    asker: Asker
    deadline: float
    """Each request's bound."""

    async def leaders(self, cmap: ClusterMap) -> dict[str, str | None]:
        """A group's leader is the broker that says it leads it; None when none or two do
        (an old leader that has not heard of the new one yet: the next round knows)."""
        claims: dict[str, set[str]] = {g: set() for g in cmap.groups}

        async def ask(broker_id: str, address: tuple[str, int]) -> None:
            try:
                answer = await self.asker.ask(
                    address, ClusterQuery(), ClusterTopology, self.deadline
                )
            except UNREACHABLE:
                return
            if not isinstance(answer, ClusterTopology) or answer.self_id != broker_id:
                return
            views = answer.groups
            if views is None:
                if answer.leader_id == broker_id and answer.cluster_id in claims:
                    claims[answer.cluster_id].add(broker_id)
                return
            for view in views:
                if view.leader_id == broker_id and view.cluster_id in claims:
                    claims[view.cluster_id].add(broker_id)

        async with trio.open_nursery() as nursery:
            for broker_id, record in sorted(cmap.brokers.items()):
                if record.alive:
                    nursery.start_soon(ask, broker_id, (record.host, record.port))
        return {g: (next(iter(c)) if len(c) == 1 else None) for g, c in claims.items()}

    async def act(
        self, cmap: ClusterMap, action: GroupAction, leader: str | None
    ) -> BrokerError | str | None:
        g = action.group_id
        if isinstance(action, PromoteLearner):
            return WAITING
        if isinstance(action, TransferLeader):
            request: Any = TransferLeadership(broker_id=action.broker_id, cluster_id=g)
            cls: type[Any] = LeadershipTransferred
        elif isinstance(action, AddLearner):
            target = cmap.broker(action.broker_id)
            if target is None:
                return BrokerError(ErrorCode.BAD_REQUEST, f"{action.broker_id} is not in the map")
            request = JoinCluster(
                broker_id=target.broker_id, host=target.host, port=target.port, cluster_id=g
            )
            cls = Joined
        else:
            request = RemoveMember(broker_id=action.broker_id, cluster_id=g)
            cls = Done
        group = cmap.group(g)
        candidates = [leader] if leader is not None else []
        if group is not None:
            candidates += [v for v in group.voters if v != leader and cmap.is_alive(v)]
        last: BrokerError = BrokerError(ErrorCode.UNAVAILABLE, f"no live replica of {g} known")
        for broker_id in candidates:
            record = cmap.broker(broker_id)
            if record is None:
                continue
            try:
                answer = await self.asker.ask(
                    (record.host, record.port), request, cls, self.deadline
                )
            except UNREACHABLE as exc:
                last = BrokerError(
                    ErrorCode.UNAVAILABLE,
                    f"could not reach {broker_id}: {unreachable_reason(exc, self.deadline)}",
                )
                continue
            return answer if isinstance(answer, BrokerError) else None
        return last


def balancer_for(primary: Any, meta: MetaMapLike) -> Balancing:
    """The balancer of a broker whose cluster group is the metadata group (``primary``, a
    :class:`~._broker.Broker`; ``meta``, its :class:`~._metamap.MetaMap`)."""
    config = primary.config
    return Balancing(
        MetaMapSource(meta, primary.driver),
        RemoteGroups(primary, deadline=config.failure_timeout * 2),
        BalancingSettings.for_timing(config.heartbeat_interval, config.failure_timeout),
    )


__all__ = ["MetaMapSource", "RemoteGroups", "balancer_for"]
