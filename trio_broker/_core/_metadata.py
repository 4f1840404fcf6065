"""The metadata group's replicated state: the cluster map.

A cluster of brokers hosts many replication groups (the design's "clusters", ``G-XXXXX``). Which
groups exist, on which brokers each lives, which broker should lead it, where each queue was
placed and which brokers are alive or leaving is itself replicated state, kept by one more
consensus group, the metadata group (as Kafka's KRaft controller quorum keeps topics and
partitions): never a broker's local guess. Its log holds the commands of
:mod:`._metadata_commands`; applying the same commands in the same order gives the same
:class:`ClusterMap` on every broker.

As with :class:`~trio_broker._core.QueueState`, a command is pure data and a refusal is a result
(:class:`~trio_broker._core.CommandRejected`), never an exception: bad input changes nothing.
Every collection in a command or record is a sorted tuple, never a set, so that nothing depends
on the process's hash seed.

The commands, records and results are data, in :mod:`._metadata_commands` (re-exported here,
where the rest of the project imports them from); this module is the state machine that gives
them their meaning: :class:`ClusterMap`, one handler per command, and their validation. Making
the commands log payloads is one table entry per command in ``_protocol/_entries.py`` (the
names are in docs/replication.md, "Several leaders (design)").

Routing stays a string operation: a queue id names its group (``Q-`` + the group id without
``G-`` + five characters, :func:`trio_broker._ids.cluster_of_queue`); the map only records
placements to count each group's load.
"""

from __future__ import annotations

import re

import attrs

from .._ids import BROKER_ID_RE, CLUSTER_ID_RE, cluster_of_queue
from ._commands import CommandRejected
from ._metadata_commands import (
    BAD_REQUEST,
    DEFAULT_METADATA_VOTERS,
    MAX_BROKERS,
    MAX_GROUPS,
    MAX_HOST_LENGTH,
    MAX_QUEUE_COUNT,
    MAX_REPLICATION_FACTOR,
    QUEUE_EXISTS,
    QUEUE_NOT_FOUND,
    STALE_REPORT,
    UNAVAILABLE,
    WRONG_CLUSTER,
    AbandonReplicaMove,
    AddGroups,
    BrokerAddress,
    BrokerRecord,
    ClusterSettings,
    DropQueue,
    FoundCluster,
    GroupAssignment,
    GroupRecord,
    MapChanged,
    MetadataCommand,
    MetadataResult,
    PlaceQueue,
    QueuePlaced,
    RegisterBroker,
    ReplicaMove,
    SetBrokerAlive,
    SetBrokerDraining,
    SetGroupReplicas,
    SetMetadataVoters,
    SetPreferredLeader,
    SetQueueCount,
    SetReplicationFactor,
    StartReplicaMove,
    UnregisterBroker,
)

_SUFFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


# -- the state machine ----------------------------------------------------------------------------


@attrs.define
class ClusterMap:
    """The metadata group's state. ``settings`` is None until :class:`FoundCluster`."""

    settings: ClusterSettings | None = None
    version: int = 0
    brokers: dict[str, BrokerRecord] = attrs.field(factory=dict)
    groups: dict[str, GroupRecord] = attrs.field(factory=dict)
    queues: dict[str, str] = attrs.field(factory=dict)
    """Queue id -> its group (what the id already says; kept to count loads)."""
    queue_counts: dict[str, int] = attrs.field(factory=dict)
    """Group id -> queues on it: as its leader last reported (:class:`SetQueueCount`), plus
    and minus the queues placed and dropped since."""
    queue_counts_as_of: dict[str, int] = attrs.field(factory=dict)
    """Group id -> the group's log index its last accepted count report was taken at."""

    def apply(self, command: MetadataCommand) -> MetadataResult:
        if isinstance(command, FoundCluster):
            problem = self._found(command)
        elif self.settings is None:
            problem = CommandRejected(UNAVAILABLE, "the cluster is not founded yet")
        elif isinstance(command, PlaceQueue):
            return self._place_queue(command)
        else:
            handler = _HANDLERS.get(type(command))
            if handler is None:
                raise TypeError(f"not a metadata command: {command!r}")
            problem = handler(self, command)
        if problem is not None:
            return problem
        self.version += 1
        return MapChanged(self.version)

    # -- queries --

    @property
    def replication_factor(self) -> int:
        return 0 if self.settings is None else self.settings.replication_factor

    def broker(self, broker_id: object) -> BrokerRecord | None:
        return self.brokers.get(broker_id) if isinstance(broker_id, str) else None

    def group(self, group_id: object) -> GroupRecord | None:
        return self.groups.get(group_id) if isinstance(group_id, str) else None

    def is_eligible(self, broker_id: object) -> bool:
        """Alive and not leaving: may receive replicas and leadership."""
        b = self.broker(broker_id)
        return b is not None and b.alive and not b.draining

    def is_alive(self, broker_id: object) -> bool:
        b = self.broker(broker_id)
        return b is not None and b.alive

    def least_loaded_group(self, among: list[str] | None = None) -> str | None:
        """The group with the fewest queues (ties: lowest id), among ``among`` if given."""
        ids = sorted(self.groups if among is None else (g for g in among if g in self.groups))
        return min(ids, key=lambda g: (self.queue_counts.get(g, 0), g), default=None)

    def groups_of(self, broker_id: str) -> list[str]:
        """The groups ``broker_id`` holds a replica of (voter or learner), sorted."""
        return [g for g, r in sorted(self.groups.items()) if broker_id in r.replicas]

    # -- handlers: each returns a refusal, or None after changing the map --

    def _found(self, c: FoundCluster) -> CommandRejected | None:
        if self.settings is not None:
            return _bad("the cluster is already founded")
        r = c.replication_factor
        if not _is_int(r) or not 1 <= r <= MAX_REPLICATION_FACTOR:
            return _bad(f"replication_factor must be 1 to {MAX_REPLICATION_FACTOR}, not {r!r}")
        if not isinstance(c.brokers, tuple) or not isinstance(c.groups, tuple):
            return _bad("brokers and groups must be lists")
        if not 1 <= len(c.brokers) <= MAX_BROKERS or not 1 <= len(c.groups) <= MAX_GROUPS:
            return _bad(f"a cluster has 1 to {MAX_BROKERS} brokers and 1 to {MAX_GROUPS} groups")
        for b in c.brokers:
            if not isinstance(b, BrokerAddress):
                return _bad(f"not a broker address: {b!r}")
            if (problem := _address_problem(b.broker_id, b.host, b.port)) is not None:
                return problem
        ids = [b.broker_id for b in c.brokers]
        if len(set(ids)) != len(ids):
            return _bad("a broker is listed twice")
        size = min(r, len(ids))
        for g in c.groups:
            if not isinstance(g, GroupAssignment) or not _is_id(g.group_id, CLUSTER_ID_RE):
                return _bad(f"not a group of ids G-XXXXX: {g!r}")
            if (problem := _replica_set_problem(g.voters, (), ids)) is not None:
                return problem
            if len(g.voters) != size:
                return _bad(f"group {g.group_id} needs {size} voters, not {len(g.voters)}")
            if g.preferred_leader not in g.voters:
                return _bad(f"the preferred leader of {g.group_id} is not one of its voters")
        group_ids = [g.group_id for g in c.groups]
        if len(set(group_ids)) != len(group_ids):
            return _bad("a group is listed twice")
        self.settings = ClusterSettings(len(c.groups), r)
        for b in c.brokers:
            self.brokers[b.broker_id] = BrokerRecord(b.broker_id, b.host, b.port)
        for g in c.groups:
            voters = tuple(sorted(g.voters))
            self.groups[g.group_id] = GroupRecord(g.group_id, voters, (), 1, g.preferred_leader)
            self.queue_counts[g.group_id] = 0
        return None

    def _register(self, c: RegisterBroker) -> CommandRejected | None:
        if (problem := _address_problem(c.broker_id, c.host, c.port)) is not None:
            return problem
        old = self.brokers.get(c.broker_id)  # the id is checked above
        if old is None and len(self.brokers) >= MAX_BROKERS:
            return _bad(f"the cluster already has {MAX_BROKERS} brokers")
        draining = old is not None and old.draining
        self.brokers[c.broker_id] = BrokerRecord(c.broker_id, c.host, c.port, True, draining)
        return None

    def _set_alive(self, c: SetBrokerAlive) -> CommandRejected | None:
        old = self.broker(c.broker_id)
        if old is None:
            return _no_broker(c.broker_id)
        if not isinstance(c.alive, bool):
            return _bad("alive must be true or false")
        self.brokers[c.broker_id] = attrs.evolve(old, alive=c.alive)
        return None

    def _set_draining(self, c: SetBrokerDraining) -> CommandRejected | None:
        old = self.broker(c.broker_id)
        if old is None:
            return _no_broker(c.broker_id)
        if not isinstance(c.draining, bool):
            return _bad("draining must be true or false")
        self.brokers[c.broker_id] = attrs.evolve(old, draining=c.draining)
        return None

    def _unregister(self, c: UnregisterBroker) -> CommandRejected | None:
        if self.broker(c.broker_id) is None:
            return _no_broker(c.broker_id)
        held = self.groups_of(c.broker_id) + [
            g
            for g, r in sorted(self.groups.items())
            if r.move is not None and c.broker_id in (r.move.source, r.move.target)
        ]
        if held:
            return _bad(f"{c.broker_id} still holds replicas of {', '.join(sorted(set(held)))}")
        del self.brokers[c.broker_id]
        return None

    def _set_preferred(self, c: SetPreferredLeader) -> CommandRejected | None:
        group = self.group(c.group_id)
        if group is None:
            return _no_group(c.group_id)
        if c.broker_id not in group.voters:
            return _bad(f"{c.broker_id!r} is not a voter of {c.group_id}")
        self.groups[c.group_id] = attrs.evolve(group, preferred_leader=c.broker_id)
        return None

    def _start_move(self, c: StartReplicaMove) -> CommandRejected | None:
        group = self.group(c.group_id)
        if group is None:
            return _no_group(c.group_id)
        if group.move is not None:
            return _bad(f"{c.group_id} is already moving a replica")
        target = self.broker(c.target)
        if target is None or target.draining:
            return _bad(f"the target {c.target!r} is not a registered broker that stays")
        if c.target in group.replicas:
            return _bad(f"{c.target} is already a replica of {c.group_id}")
        if c.source is None:
            if len(group.replicas) >= self.replication_factor:
                return _bad(f"{c.group_id} already has its {self.replication_factor} replicas")
        elif c.source not in group.voters:
            return _bad(f"the source {c.source!r} is not a voter of {c.group_id}")
        move = ReplicaMove(c.source, c.target)
        self.groups[c.group_id] = attrs.evolve(group, move=move)
        return None

    def _abandon_move(self, c: AbandonReplicaMove) -> CommandRejected | None:
        group = self.group(c.group_id)
        if group is None:
            return _no_group(c.group_id)
        if group.move is None:
            return _bad(f"{c.group_id} is not moving a replica")
        if group.move.target in group.replicas:
            return _bad(f"remove {group.move.target} from {c.group_id} before abandoning")
        self.groups[c.group_id] = attrs.evolve(group, move=None)
        return None

    def _set_replicas(self, c: SetGroupReplicas) -> CommandRejected | None:
        group = self.group(c.group_id)
        if group is None:
            return _no_group(c.group_id)
        if not _is_int(c.config_version):
            return _bad("config_version must be an integer")
        if c.config_version <= group.config_version:
            return CommandRejected(
                STALE_REPORT,
                f"{c.group_id} is at configuration {group.config_version}, "
                f"not older {c.config_version}",
            )
        problem = _replica_set_problem(c.voters, c.learners, self.brokers)
        if problem is not None:
            return problem
        voters, learners = tuple(sorted(c.voters)), tuple(sorted(c.learners))
        preferred = group.preferred_leader if group.preferred_leader in voters else None
        move = group.move
        if move is not None and move.target in voters:
            source_gone = move.source not in voters + learners
            if source_gone or len(voters) <= self.replication_factor:
                move = None
        self.groups[c.group_id] = GroupRecord(
            c.group_id, voters, learners, c.config_version, preferred, move
        )
        return None

    def _place_queue(self, c: PlaceQueue) -> MetadataResult:
        suffix = c.queue_suffix
        if not isinstance(suffix, str) or len(suffix) != 5 or not set(suffix) <= _SUFFIX_CHARS:
            return _bad(f"queue_suffix must be five characters from A-Z0-9, not {suffix!r}")
        group_id = c.group_id if c.group_id is not None else self.least_loaded_group()
        if self.group(group_id) is None:
            return _no_group(c.group_id)
        queue_id = "Q-" + group_id[2:] + suffix
        if queue_id in self.queues:
            return CommandRejected(QUEUE_EXISTS, f"queue {queue_id!r} already exists")
        self.queues[queue_id] = group_id
        self.queue_counts[group_id] = self.queue_counts.get(group_id, 0) + 1
        self.version += 1
        return QueuePlaced(queue_id, group_id, self.version)

    def _drop_queue(self, c: DropQueue) -> CommandRejected | None:
        group_id = self.queues.pop(c.queue_id, None) if isinstance(c.queue_id, str) else None
        if group_id is None:
            return CommandRejected(QUEUE_NOT_FOUND, f"queue {c.queue_id!r} was never placed")
        self.queue_counts[group_id] = max(0, self.queue_counts.get(group_id, 0) - 1)
        return None

    def _set_replication_factor(self, c: SetReplicationFactor) -> CommandRejected | None:
        r = c.replication_factor
        if not _is_int(r) or not 1 <= r <= MAX_REPLICATION_FACTOR:
            return _bad(f"replication_factor must be 1 to {MAX_REPLICATION_FACTOR}, not {r!r}")
        assert self.settings is not None
        self.settings = attrs.evolve(self.settings, replication_factor=r)
        return None

    def _set_metadata_voters(self, c: SetMetadataVoters) -> CommandRejected | None:
        n = c.metadata_voters
        if not _is_int(n) or not 1 <= n <= MAX_REPLICATION_FACTOR:
            return _bad(f"metadata_voters must be 1 to {MAX_REPLICATION_FACTOR}, not {n!r}")
        assert self.settings is not None
        self.settings = attrs.evolve(self.settings, metadata_voters=n)
        return None

    def _add_groups(self, c: AddGroups) -> CommandRejected | None:
        assert self.settings is not None
        if not isinstance(c.groups, tuple) or not c.groups:
            return _bad("groups must be a non-empty list")
        if not _is_int(c.group_count) or c.group_count != len(self.groups):
            return _bad(
                f"the cluster has {len(self.groups)} groups, not {c.group_count!r}: "
                "look again and ask again"
            )
        if len(self.groups) + len(c.groups) > MAX_GROUPS:
            return _bad(f"a cluster has at most {MAX_GROUPS} groups")
        seen: set[str] = set()
        for g in c.groups:
            if not isinstance(g, GroupAssignment) or not _is_id(g.group_id, CLUSTER_ID_RE):
                return _bad(f"not a group of ids G-XXXXX: {g!r}")
            if g.group_id in self.groups or g.group_id in seen:
                return _bad(f"group {g.group_id} exists already or is listed twice")
            seen.add(g.group_id)
            if not isinstance(g.voters, tuple) or len(g.voters) != 1:
                return _bad(f"a new group starts on one voter, not {g.voters!r}")
            if not self.is_eligible(g.voters[0]) or g.preferred_leader != g.voters[0]:
                return _bad(f"{g.group_id} must start on a live broker that stays, leading it")
        for g in c.groups:
            self.groups[g.group_id] = GroupRecord(g.group_id, g.voters, (), 1, g.preferred_leader)
            self.queue_counts[g.group_id] = 0
        self.settings = attrs.evolve(self.settings, group_count=len(self.groups))
        return None

    def _set_queue_count(self, c: SetQueueCount) -> CommandRejected | None:
        if self.group(c.group_id) is None:
            return _no_group(c.group_id)
        if not _is_int(c.queue_count) or not 0 <= c.queue_count <= MAX_QUEUE_COUNT:
            return _bad(f"queue_count must be 0 to {MAX_QUEUE_COUNT}, not {c.queue_count!r}")
        if not _is_int(c.as_of) or not 0 < c.as_of <= MAX_QUEUE_COUNT:
            return _bad(f"as_of must be a log index from 1 to {MAX_QUEUE_COUNT}")
        last = self.queue_counts_as_of.get(c.group_id, 0)
        if c.as_of <= last:
            return CommandRejected(
                STALE_REPORT,
                f"{c.group_id}'s queue count is from index {last}, not older {c.as_of}",
            )
        self.queue_counts[c.group_id] = c.queue_count
        self.queue_counts_as_of[c.group_id] = c.as_of
        return None


_HANDLERS = {
    RegisterBroker: ClusterMap._register,
    SetBrokerAlive: ClusterMap._set_alive,
    SetBrokerDraining: ClusterMap._set_draining,
    UnregisterBroker: ClusterMap._unregister,
    SetPreferredLeader: ClusterMap._set_preferred,
    StartReplicaMove: ClusterMap._start_move,
    AbandonReplicaMove: ClusterMap._abandon_move,
    SetGroupReplicas: ClusterMap._set_replicas,
    DropQueue: ClusterMap._drop_queue,
    SetQueueCount: ClusterMap._set_queue_count,
    SetReplicationFactor: ClusterMap._set_replication_factor,
    AddGroups: ClusterMap._add_groups,
    SetMetadataVoters: ClusterMap._set_metadata_voters,
}


def group_of_queue(queue_id: str) -> str | None:
    """Routing: the group a queue id names (None if it is not a queue id). A string
    operation, the one old clients do: strip ``Q-`` and the last five characters."""
    return cluster_of_queue(queue_id)


# -- validation helpers ---------------------------------------------------------------------------


def _bad(message: str) -> CommandRejected:
    return CommandRejected(BAD_REQUEST, message)


def _no_broker(broker_id: object) -> CommandRejected:
    return _bad(f"no broker {broker_id!r} in the cluster")


def _no_group(group_id: object) -> CommandRejected:
    return CommandRejected(WRONG_CLUSTER, f"no group {group_id!r} in the cluster")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _address_problem(broker_id: object, host: object, port: object) -> CommandRejected | None:
    if not _is_id(broker_id, BROKER_ID_RE):
        return _bad(f"broker id must look like B-XXXXX, not {broker_id!r}")
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_LENGTH:
        return _bad(f"host must be a non-empty string of at most {MAX_HOST_LENGTH} characters")
    if not _is_int(port) or not 1 <= port <= 65535:
        return _bad(f"port must be 1 to 65535, not {port!r}")
    return None


def _replica_set_problem(
    voters: object, learners: object, known: list[str] | dict[str, BrokerRecord]
) -> CommandRejected | None:
    if not isinstance(voters, tuple) or not isinstance(learners, tuple):
        return _bad("voters and learners must be lists of broker ids")
    members = voters + learners
    if not voters or len(members) > MAX_REPLICATION_FACTOR + 1:
        return _bad(f"a group has 1 to {MAX_REPLICATION_FACTOR + 1} replicas, at least one voter")
    unknown = [m for m in members if not isinstance(m, str) or m not in known]
    if unknown:
        return _bad(f"unknown brokers among the replicas: {unknown!r}")
    if len(set(members)) != len(members):
        return _bad("a broker appears twice among a group's replicas")
    return None


__all__ = [
    "BAD_REQUEST",
    "DEFAULT_METADATA_VOTERS",
    "MAX_BROKERS",
    "MAX_GROUPS",
    "MAX_HOST_LENGTH",
    "MAX_QUEUE_COUNT",
    "MAX_REPLICATION_FACTOR",
    "QUEUE_EXISTS",
    "QUEUE_NOT_FOUND",
    "STALE_REPORT",
    "UNAVAILABLE",
    "WRONG_CLUSTER",
    "AbandonReplicaMove",
    "AddGroups",
    "BrokerAddress",
    "BrokerRecord",
    "ClusterMap",
    "ClusterSettings",
    "DropQueue",
    "FoundCluster",
    "GroupAssignment",
    "GroupRecord",
    "MapChanged",
    "MetadataCommand",
    "MetadataResult",
    "PlaceQueue",
    "QueuePlaced",
    "RegisterBroker",
    "ReplicaMove",
    "SetBrokerAlive",
    "SetBrokerDraining",
    "SetGroupReplicas",
    "SetMetadataVoters",
    "SetPreferredLeader",
    "SetQueueCount",
    "SetReplicationFactor",
    "StartReplicaMove",
    "UnregisterBroker",
    "group_of_queue",
]
