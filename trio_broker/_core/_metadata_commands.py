"""The metadata group's data: its limits, its refusal codes, the cluster map's records, the
commands its log holds and their results. :mod:`._metadata` holds the state machine
(:class:`~._metadata.ClusterMap`) that applies them, and re-exports every name here.

Serialization: every class here is frozen attrs data whose fields are ``str``, ``int``,
``bool``, ``None``, tuples of those, or other classes of this module, so the project's one
cattrs converter (``trio_broker._protocol.converter``) structures and unstructures them as they
are. Every collection in a command or record is a sorted tuple, never a set, so that nothing
depends on the process's hash seed.
"""

from __future__ import annotations

import attrs

from ._commands import CommandRejected, MapCommand

MAX_GROUPS = 1024
"""Groups a cluster may have: each costs a log, timers and buffers on each of its brokers."""
MAX_REPLICATION_FACTOR = 7
MAX_BROKERS = 1024
MAX_HOST_LENGTH = 255
MAX_QUEUE_COUNT = 1 << 53
"""A group's queue count as a report may carry it (JSON integers stay exact below 2**53)."""

# Codes of refusals. The first three are wire codes already (docs/protocol.md, "Errors"); a
# STALE_REPORT never reaches a client: the runtime drops a group's out-of-date report.
BAD_REQUEST = "BAD_REQUEST"
WRONG_CLUSTER = "WRONG_CLUSTER"
QUEUE_NOT_FOUND = "QUEUE_NOT_FOUND"
QUEUE_EXISTS = "QUEUE_EXISTS"
UNAVAILABLE = "UNAVAILABLE"
STALE_REPORT = "STALE_REPORT"


# -- records --------------------------------------------------------------------------------------


DEFAULT_METADATA_VOTERS = 5
"""Voters of the metadata group (the other brokers follow it as learners), unless set."""


@attrs.frozen
class ClusterSettings:
    """Chosen when the cluster is founded (``node --groups N --replication-factor R``)."""

    group_count: int
    replication_factor: int
    metadata_voters: int = DEFAULT_METADATA_VOTERS
    """At most this many voters in the metadata group (:class:`SetMetadataVoters`)."""


@attrs.frozen
class BrokerRecord:
    broker_id: str
    host: str
    port: int
    alive: bool = True
    """As the metadata leader's failure detector last decided (``SetBrokerAlive``)."""
    draining: bool = False
    """Leaving the cluster: the balancer moves its replicas and leadership away."""


@attrs.frozen
class ReplicaMove:
    """A replica on its way from ``source`` to ``target`` (KRaft's adding/removing replicas).

    Its steps, one configuration change at a time in the group's own log: add ``target`` as a
    learner, promote it once caught up, then remove ``source``. ``source`` None: the group grows
    to its replication factor (it was founded on fewer brokers than that).
    """

    source: str | None
    target: str


@attrs.frozen
class GroupRecord:
    group_id: str
    voters: tuple[str, ...]
    """Sorted. What the group's own log last reported (``SetGroupReplicas``)."""
    learners: tuple[str, ...] = ()
    config_version: int = 1
    """The group's configuration version (its ``cluster_version``) those replicas are from."""
    preferred_leader: str | None = None
    """The voter the balancer wants leading; always one of ``voters`` (or None)."""
    move: ReplicaMove | None = None

    @property
    def replicas(self) -> tuple[str, ...]:
        return tuple(sorted(self.voters + self.learners))


# -- commands -------------------------------------------------------------------------------------


@attrs.frozen
class BrokerAddress:
    broker_id: str
    host: str
    port: int


@attrs.frozen
class GroupAssignment:
    group_id: str
    voters: tuple[str, ...]
    preferred_leader: str


@attrs.frozen
class FoundCluster(MapCommand):
    """The metadata log's first command: settings, founding brokers and every group's initial
    voters (built by :func:`trio_broker._core._placement.found_cluster`). Each group has
    ``min(replication_factor, len(brokers))`` voters; it grows as brokers join."""

    replication_factor: int
    brokers: tuple[BrokerAddress, ...]
    groups: tuple[GroupAssignment, ...]


@attrs.frozen
class RegisterBroker(MapCommand):
    """A broker joins, or a member's address changes; it is alive from now on."""

    broker_id: str
    host: str
    port: int


@attrs.frozen
class SetBrokerAlive(MapCommand):
    """Proposed by the metadata leader when its failure detector changes its mind."""

    broker_id: str
    alive: bool


@attrs.frozen
class SetBrokerDraining(MapCommand):
    """The operator's "this broker is leaving" (or, with False, "it stays after all")."""

    broker_id: str
    draining: bool


@attrs.frozen
class UnregisterBroker(MapCommand):
    """Forget a broker; refused while it holds any replica."""

    broker_id: str


@attrs.frozen
class SetPreferredLeader(MapCommand):
    group_id: str
    broker_id: str


@attrs.frozen
class StartReplicaMove(MapCommand):
    group_id: str
    source: str | None
    target: str


@attrs.frozen
class AbandonReplicaMove(MapCommand):
    """Give up a move whose target left (it is no longer a replica of the group)."""

    group_id: str


@attrs.frozen
class SetGroupReplicas(MapCommand):
    """A group's leader reports a configuration its own log committed. Reports of older
    versions than the map holds are refused (``STALE_REPORT``), so they may arrive in any
    order. A move whose target votes is complete (cleared) once its source is gone, or once the
    group is back to its replication factor of voters some other way (a dead voter that was
    leaving removed first: the source then stays, and a later move may take it)."""

    group_id: str
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    config_version: int


@attrs.frozen
class PlaceQueue(MapCommand):
    """Place a new queue: on ``group_id``, or (None) on the group with the fewest queues, ties
    to the lowest id. Its id is ``Q-`` + the group id without ``G-`` + ``queue_suffix`` (five
    characters from ``A-Z0-9``, drawn by the proposer). The group's own ``CREATE_QUEUE`` entry
    follows; the answer says which group and id."""

    queue_suffix: str
    group_id: str | None = None


@attrs.frozen
class DropQueue(MapCommand):
    queue_id: str


@attrs.frozen
class SetReplicationFactor(MapCommand):
    """The operator changes the cluster's replication factor after founding
    (docs/replication.md, "Changing the groups and the replication factor"): the balancer
    then adds replicas to every group with fewer (learner catch-up, then promotion) or
    removes voters from every group with more, one change at a time per group."""

    replication_factor: int


@attrs.frozen
class SetMetadataVoters(MapCommand):
    """The operator caps the metadata group's voters (1-7; default 5): its leader promotes a
    caught-up learner only while fewer voters than that are alive, so brokers beyond it follow
    the map as learners, and a dead voter is replaced by a learner."""

    metadata_voters: int


@attrs.frozen
class AddGroups(MapCommand):
    """The operator adds groups after founding. Each new group starts on one voter (its
    preferred leader, which creates it as a founding voter) and the balancer grows it to the
    replication factor one replica at a time. ``group_count`` is the number of groups the
    proposer saw: refused if the map has another, so an operator's retry never adds twice."""

    group_count: int
    groups: tuple[GroupAssignment, ...]


@attrs.frozen
class SetQueueCount(MapCommand):
    """A group's leader reports how many queues the group holds, counted in its own state as
    of its log index ``as_of`` (docs/replication.md, "Queue counts in the map"). Idempotent
    and bounded: it sets one number per group (never one record per queue), and a report
    not newer than the map's (``as_of`` not above the last accepted one) is refused as
    ``STALE_REPORT`` and changes nothing, so reports of several leaders in turn, or the
    same report twice, may arrive in any order."""

    group_id: str
    queue_count: int
    as_of: int


MetadataCommand = (
    FoundCluster
    | RegisterBroker
    | SetBrokerAlive
    | SetBrokerDraining
    | UnregisterBroker
    | SetPreferredLeader
    | StartReplicaMove
    | AbandonReplicaMove
    | SetGroupReplicas
    | PlaceQueue
    | DropQueue
    | SetQueueCount
    | SetReplicationFactor
    | AddGroups
    | SetMetadataVoters
)


# -- results --------------------------------------------------------------------------------------


@attrs.frozen
class MapChanged:
    version: int
    """The map's version after the change (one more per accepted command)."""


@attrs.frozen
class QueuePlaced:
    queue_id: str
    group_id: str
    version: int


MetadataResult = MapChanged | QueuePlaced | CommandRejected
