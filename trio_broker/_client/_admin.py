"""The client's view of its clusters and the operator's commands (part of
:class:`~._client.Client`): the topologies discovered, asking for one, and membership,
leadership, balancing and snapshot commands. Each is one request to a cluster's leader (or to
each member), sent through :class:`~._routing.Router` like every other operation."""

from __future__ import annotations

import contextlib

from .._errors import BrokerError, ErrorCode, UnavailableError, error_from_wire
from .._protocol import (
    AddMember,
    LeadershipTransferred,
    MemberAdded,
    RemoveMember,
    SnapshotTaken,
    TakeSnapshot,
    TransferLeadership,
)
from .._protocol._admin_messages import (
    ClusterSettingsSet,
    DrainBroker,
    Rebalance,
    SetClusterSettings,
)
from .._protocol._messages import DrainState, Rebalanced
from ._common import Address, Topology, fmt_address, parse_address, structure
from ._connection import Lost, NotSent
from ._routing import Router


class ClusterAdmin(Router):
    """The client's clusters and the operator's commands (part of :class:`Client`)."""

    @property
    def clusters(self) -> tuple[str, ...]:
        """Ids of the clusters discovered so far, in discovery order (the first is the default)."""
        return tuple(self._clusters)

    def topology(self, cluster_id: str | None = None) -> Topology:
        """The last known topology of a cluster (the default one if not given), without asking."""
        return self._clusters[cluster_id or self._default_cluster()].topology

    async def cluster_query(
        self,
        seed: str | tuple[str, int] | None = None,
        *,
        cluster_id: str | None = None,
        details: bool = False,
    ) -> Topology:
        """Ask for a cluster's topology, and remember the answer for routing.

        With ``seed``, ask that broker; otherwise ask the members of ``cluster_id`` (default: the
        first cluster discovered), leader first. Retries until it gets an answer. With
        ``details``, each broker also carries its ``membership`` and, when the leader answered
        (it is asked last, once known), its ``lag``.
        """
        if seed is not None:
            address = parse_address(seed)
            attempt = 0
            while True:
                try:
                    return await self._query(address, details)
                except (NotSent, Lost):
                    attempt = await self._backoff(attempt)
        cid = await self._known_cluster(cluster_id)
        attempt = 0
        while True:
            topology = await self._refresh(cid, seen=None)
            if topology is not None:
                if details and topology.leader is not None:
                    leader = (topology.leader.host, topology.leader.port)
                    with contextlib.suppress(NotSent, Lost, BrokerError):
                        # Named: a leader of several groups answers about the one asked for.
                        return await self._query(leader, details=True, cluster_id=cid)
                return topology
            attempt = await self._backoff(attempt)

    async def remove_member(self, broker_id: str, cluster_id: str | None = None) -> None:
        """Operator command: take ``broker_id`` out of the cluster's membership (through the
        log; the leader answers once the change is committed)."""
        cid = await self._known_cluster(cluster_id)
        await self._leader_call(cid, RemoveMember(broker_id=broker_id, cluster_id=cid))

    async def transfer_leadership(
        self, broker_id: str | None = None, cluster_id: str | None = None
    ) -> LeadershipTransferred:
        """Operator command: the leader hands its leadership to the voter ``broker_id`` (None:
        the most caught-up voter); returns the new leader and its term once it leads.

        A refusal (not a voter, no other voter) or a transfer that did not complete raises
        :class:`BrokerError` at once, without retrying.
        """
        cid = await self._known_cluster(cluster_id)
        request = TransferLeadership(broker_id=broker_id, cluster_id=cid)
        response = await self._leader_call(cid, request, retry_unavailable=False)
        result = structure(response, LeadershipTransferred)
        cluster = self._clusters[cid]
        self._leader_failed(cid, cluster.generation, None)  # ask the cluster again next time
        return result

    async def add_member(self, host: str, port: int, cluster_id: str | None = None) -> MemberAdded:
        """Operator command: the leader adds the broker listening at ``host:port`` (started
        with ``node --join-wait --cluster-id``) as a learner, promoted once caught up. Refused
        if that broker belongs to another cluster or already has a membership."""
        cid = await self._known_cluster(cluster_id)
        request = AddMember(host=host, port=port, cluster_id=cid)
        response = await self._leader_call(cid, request, retry_unavailable=False)
        return structure(response, MemberAdded)

    async def rebalance(self) -> Rebalanced:
        """Operator command: the metadata group's leader runs one balancer round now and
        answers the moves it made (docs/replication.md, "Balancer"). Not retried: a refusal
        (a cluster without a balancer) raises at once."""
        cid = await self._known_cluster(None)
        # No cluster_id: the broker's cluster group decides it (and forwards it to its leader).
        response = await self._leader_call(cid, Rebalance(), retry_unavailable=False)
        return structure(response, Rebalanced)

    async def set_cluster_settings(
        self,
        *,
        group_count: int | None = None,
        replication_factor: int | None = None,
        metadata_voters: int | None = None,
    ) -> ClusterSettingsSet:
        """Operator command: raise the cluster's number of groups, change its replication
        factor and/or cap its metadata group's voters after founding (docs/replication.md,
        "Changing the groups and the replication factor"); the balancer then places and moves
        replicas. Not retried."""
        cid = await self._known_cluster(None)
        request = SetClusterSettings(
            group_count=group_count,
            replication_factor=replication_factor,
            metadata_voters=metadata_voters,
        )
        response = await self._leader_call(cid, request, retry_unavailable=False)
        return structure(response, ClusterSettingsSet)

    async def drain_broker(self, broker_id: str, *, draining: bool = True) -> DrainState:
        """Operator command: ``broker_id`` leaves (``draining`` False: it stays after all); the
        balancer moves its replicas and leadership away. Answers what it still holds."""
        cid = await self._known_cluster(None)
        request = DrainBroker(broker_id=broker_id, draining=draining)
        response = await self._leader_call(cid, request, retry_unavailable=False)
        return structure(response, DrainState)

    async def take_snapshot(
        self, broker: str | tuple[str, int] | None = None, *, cluster_id: str | None = None
    ) -> list[SnapshotTaken]:
        """Operator command: compact the log now, on the broker at ``broker`` or (None) on
        every member of the cluster; returns each broker's snapshot index."""
        if broker is not None:
            return [await self._snapshot_at(parse_address(broker), cluster_id)]
        topology = await self.cluster_query(cluster_id=cluster_id)
        return [
            await self._snapshot_at((b.host, b.port), topology.cluster_id) for b in topology.brokers
        ]

    async def _snapshot_at(self, address: Address, cluster_id: str | None) -> SnapshotTaken:
        try:
            response = await self._exchange(address, self._frame(TakeSnapshot(cluster_id)))
        except (NotSent, Lost) as exc:
            raise UnavailableError(
                ErrorCode.UNAVAILABLE, f"snapshot on {fmt_address(address)} failed: {exc.reason}"
            ) from None
        if response.get("status") == "error":
            raise error_from_wire(response)
        return structure(response, SnapshotTaken)
