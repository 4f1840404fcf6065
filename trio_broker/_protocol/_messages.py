"""Client-facing messages of the wire contract, as frozen attrs classes.

The classes carry no serialization code: the converter in ``_codec`` maps them to and from the
wire, with wire names written down there, never derived from class names.

Longer than the house's ~600 lines on purpose: it is the catalogue of the clients' messages,
plain data classes with no logic; the broker-to-broker and operator requests are in
:mod:`._admin_messages` (re-exported here).
"""

from __future__ import annotations

from typing import Any

import attrs

from .._core._routing import GroupView

# Re-exported: the broker-to-broker and operator requests live in ._admin_messages.
from ._admin_messages import (  # noqa: F401
    ADMIN_REQUESTS,
    PRIVILEGED_REQUESTS,
    AddMember,
    Auth,
    AuthChallenge,
    DataSyncRequest,
    DrainBroker,
    FetchValues,
    JoinCluster,
    PeerHello,
    ProposeMetadata,
    Rebalance,
    RemoveMember,
    SetClusterSettings,
    TakeSnapshot,
    TransferLeadership,
)

# -- requests ------------------------------------------------------------------------------------


@attrs.frozen
class ClusterQuery:
    client_id: str | None = None
    cluster_id: str | None = None
    details: bool | None = None
    """Addition: also report each member's ``membership`` and (from the leader) ``lag``."""


@attrs.frozen
class Retention:
    """Addition: a queue's retention policy (docs/protocol.md, "Retention"). All absent keeps
    every message. Unknown keys are refused: a misspelt rule must not keep everything."""

    max_messages: int | None = None
    max_age_ms: int | None = None
    delete_acknowledged: bool = False


@attrs.frozen
class CreateQueue:
    client_id: str | None = None
    retention: Retention | None = None
    """Addition: the new queue's retention policy."""
    cluster_id: str | None = None
    """Addition: the group to create it in (docs/replication.md, "Where a new queue lands");
    absent, a group the receiving broker leads."""


@attrs.frozen(slots=False)
class Append:
    """One APPEND. Without ``__slots__``: attrs then fills the instance's ``__dict__`` in its
    ``__init__`` (0.35 µs) where a slotted frozen class calls ``object.__setattr__`` once per
    field (0.52 µs); one is built per APPEND and lives only while it is answered
    (docs/performance-history.md, "The peer links' socket calls, and two constructors")."""

    queue_name: str
    data: Any
    """Any JSON value (already checked by the codec); stored and returned unchanged."""
    client_id: str | None = None
    producer_id: str | None = None
    """Addition: with ``producer_seq``, makes the append idempotent (docs/protocol.md)."""
    producer_seq: int | None = None
    headers: dict[str, str] | None = None
    """Addition (work queues): the message's headers, stored and returned with it."""
    producer_epoch: int | None = None
    """Addition (work queues): with ``producer_id`` and ``producer_seq``, a fenced producer."""


@attrs.frozen
class AppendBatch:
    """Addition: several values appended atomically at consecutive sequence numbers."""

    queue_name: str
    values: list[Any]
    client_id: str | None = None
    producer_id: str | None = None
    producer_seq: int | None = None
    headers: list[dict[str, str]] | None = None
    """Addition (work queues): one headers object per value, in order."""
    producer_epoch: int | None = None


@attrs.frozen
class Read:
    queue_name: str
    client_id: str
    max_messages: int | None = None
    """Addition: answer with a ``messages`` list of up to this many messages."""
    mode: str | None = None
    """Addition: ``"move"`` (the default: reading moves the position) or ``"peek"``."""
    wait_ms: int | None = None
    """Addition: when nothing is there to read, wait up to this long for a message."""


@attrs.frozen
class AckRequest:
    """Addition: move a client's position forward to ``sequence_num`` (after a peek)."""

    queue_name: str
    client_id: str
    sequence_num: int


@attrs.frozen
class SeekRequest:
    """Addition: set where a client's next read starts: ``next_sequence_num``, or ``to``
    ``"start"`` / ``"end"``."""

    queue_name: str
    client_id: str
    next_sequence_num: int | None = None
    to: str | None = None


@attrs.frozen
class SetRetentionRequest:
    """Addition: set (or, with every rule absent, remove) a queue's retention policy."""

    queue_name: str
    retention: Retention
    client_id: str | None = None


@attrs.frozen
class ListQueues:
    """Addition: the queues with their lengths and each client's lag, in pages."""

    max_queues: int | None = None
    after: str | None = None
    client_id: str | None = None
    cluster_id: str | None = None
    """The group whose queues to list, on a broker hosting several (absent: its own)."""


# -- work queues and the queue lifecycle (docs/protocol.md, "Work queues") ----------------------
# These operations refuse unknown fields (BAD_REQUEST): they are new, so no old client sends
# extra ones, and a misspelt option must not be silently ignored. ``client_id`` is accepted by
# each (and ignored), as every client of the original design sends it.


@attrs.frozen
class CreateNamedQueue:
    """CREATE_QUEUE with a ``name``: idempotent, the same name gives the same queue id."""

    name: str
    client_id: str | None = None
    retention: Retention | None = None
    """Used only when the queue is created; a repeated create leaves the policy alone."""


@attrs.frozen
class DeleteQueueRequest:
    queue_name: str
    """The queue's id or name."""
    force: bool = False
    """Delete even while a group holds unexpired leases (never while the queue is some group's
    dead-letter queue)."""
    client_id: str | None = None


@attrs.frozen
class ResolveQueue:
    """Any broker (replica too): the id of the queue called ``name``."""

    name: str
    client_id: str | None = None


@attrs.frozen
class GroupJoin:
    """Join consumer group ``group`` of the queue. With no setting: the group as it is
    (created with the defaults). With any: the settings given, and the defaults of the others,
    create the group or must equal the existing group's."""

    queue_name: str
    group: str
    visibility_ms: int | None = None
    max_deliveries: int | None = None
    dead_letter_queue: str | None = None
    """The dead-letter queue's id or name; with ``max_deliveries`` only."""
    max_in_flight: int | None = None
    client_id: str | None = None


@attrs.frozen
class GroupRead:
    """Lease up to ``max_messages`` (default 1, at most 1,000) of the group's messages to
    ``member`` for the group's visibility timeout; ``wait_ms`` as for READ."""

    queue_name: str
    group: str
    member: str
    max_messages: int | None = None
    wait_ms: int | None = None
    client_id: str | None = None


@attrs.frozen
class GroupAck:
    """Acknowledge messages of a group: ``sequence_nums`` and/or inclusive ``ranges``
    (``[[first, last], ...]``)."""

    queue_name: str
    group: str
    member: str
    sequence_nums: list[int] | None = None
    ranges: list[list[int]] | None = None
    client_id: str | None = None


@attrs.frozen
class GroupNack:
    """End ``member``'s leases: redeliver after ``delay_ms`` (0: now), recording ``error``."""

    queue_name: str
    group: str
    member: str
    sequence_nums: list[int]
    delay_ms: int = 0
    error: str | None = None
    client_id: str | None = None


@attrs.frozen
class GroupExtend:
    """Keep working: ``member``'s leases end ``visibility_ms`` (default: the group's) from now."""

    queue_name: str
    group: str
    member: str
    sequence_nums: list[int]
    visibility_ms: int | None = None
    client_id: str | None = None


@attrs.frozen
class GroupDelete:
    queue_name: str
    group: str
    force: bool = False
    client_id: str | None = None


@attrs.frozen
class ForgetPositionRequest:
    """Forget ``client_id``'s position on the queue: its next READ starts as a new client's."""

    queue_name: str
    client_id: str


WORK_REQUESTS: tuple[type, ...] = (
    CreateNamedQueue,
    DeleteQueueRequest,
    ResolveQueue,
    GroupJoin,
    GroupRead,
    GroupAck,
    GroupNack,
    GroupExtend,
    GroupDelete,
    ForgetPositionRequest,
)
"""The requests that refuse unknown fields (and duplicate keys) with BAD_REQUEST."""

WORK_OPERATIONS: dict[str, type] = {
    "DELETE_QUEUE": DeleteQueueRequest,
    "RESOLVE_QUEUE": ResolveQueue,
    "GROUP_JOIN": GroupJoin,
    "GROUP_READ": GroupRead,
    "GROUP_ACK": GroupAck,
    "GROUP_NACK": GroupNack,
    "GROUP_EXTEND": GroupExtend,
    "GROUP_DELETE": GroupDelete,
    "FORGET_POSITION": ForgetPositionRequest,
}
"""Wire names of the new operations (``CREATE_QUEUE`` with a ``name`` is
:class:`CreateNamedQueue`), for the codec's ``OPERATIONS``."""


Request = (
    ClusterQuery
    | CreateQueue
    | CreateNamedQueue
    | DeleteQueueRequest
    | ResolveQueue
    | GroupJoin
    | GroupRead
    | GroupAck
    | GroupNack
    | GroupExtend
    | GroupDelete
    | ForgetPositionRequest
    | Append
    | AppendBatch
    | Read
    | AckRequest
    | SeekRequest
    | SetRetentionRequest
    | ListQueues
    | PeerHello
    | JoinCluster
    | DataSyncRequest
    | FetchValues
    | RemoveMember
    | AuthChallenge
    | Auth
    | TransferLeadership
    | TakeSnapshot
    | AddMember
    | Rebalance
    | DrainBroker
    | ProposeMetadata
)


# -- responses -----------------------------------------------------------------------------------


@attrs.frozen
class BrokerInfo:
    """One member of a cluster, as ``CLUSTER_QUERY`` describes it (see ``Topology``)."""

    broker_id: str
    host: str
    port: int
    role: str
    """``"leader"`` or ``"replica"``."""
    status: str
    """``"active"`` or ``"inactive"``."""
    membership: str | None = None
    """Addition, with ``details``: ``"voter"`` or ``"learner"`` (still catching up)."""
    lag: int | None = None
    """Addition, with ``details``, from the leader only: log entries this member lacks."""


@attrs.frozen
class ClusterTopology:
    cluster_id: str
    cluster_version: int
    self_role: str
    brokers: list[BrokerInfo]
    self_id: str | None = None
    leader_id: str | None = None
    groups: list[GroupView] | None = None
    """Every replication group, when the broker hosts more than one (docs/replication.md,
    "Several leaders"); absent otherwise."""
    metadata_group: str | None = None
    """With ``groups``: the cluster's own group, whose log holds the group list (what
    ``--cluster-id`` names and a new broker joins first)."""


@attrs.frozen
class QueueCreated:
    queue_id: str


@attrs.frozen
class Appended:
    sequence_num: int
    duplicate: bool = False


@attrs.frozen
class BatchAppended:
    sequence_nums: list[int]
    duplicate: bool = False


@attrs.frozen
class MessageBatch:
    messages: list[Message]


@attrs.frozen
class Position:
    next_sequence_num: int


@attrs.frozen
class ClientLag:
    """One reader of a queue: its next sequence number and how far behind it is."""

    client_id: str
    next_sequence_num: int
    lag: int


@attrs.frozen
class QueueInfo:
    """One queue in :meth:`Client.list_queues`: its length, retention and readers."""

    queue_id: str
    length: int
    """The queue's last sequence number: messages ever appended, retained or not."""
    clients: list[ClientLag]
    first_sequence_num: int | None = None
    """Addition: the first message still retained (``length + 1`` when none is)."""
    retained: int | None = None
    """Addition: how many messages the queue still holds."""
    retention: Retention | None = None
    """Addition: the queue's retention policy, None when it keeps everything."""


@attrs.frozen
class RetentionChanged:
    """Addition: the answer to SET_RETENTION."""

    queue_id: str
    retention: Retention


@attrs.frozen
class QueueList:
    """One page of :meth:`Client.list_queues`: ``queues`` and ``next_after``, the value of
    ``after`` for the next page (None after the last)."""

    queues: list[QueueInfo]
    next_after: str | None


@attrs.frozen
class Message:
    """One message of a queue: its ``sequence_num`` (1 for the first message appended) and
    ``data``, the JSON value exactly as it was appended, and its ``headers`` (a dict of strings,
    None when it was appended without any)."""

    sequence_num: int
    data: Any
    headers: dict[str, str] | None = None
    """Addition (work queues): the message's headers, None when it has none (and then absent
    from the wire, so the original READ answer is unchanged)."""


@attrs.frozen
class NoMessages:
    pass


# -- answers of the work-queue operations ----------------------------------------------------


@attrs.frozen
class HeadedMessage:
    """A message with its headers (omitted when it has none) and, from a group, how many
    times it has been delivered (this delivery included)."""

    sequence_num: int
    data: Any
    headers: dict[str, str] | None = None
    delivery_count: int | None = None


@attrs.frozen
class HeadedMessageBatch:
    """A READ answer (``messages`` form) when a message it returns has headers."""

    messages: list[HeadedMessage]


@attrs.frozen
class NamedQueueCreated:
    queue_id: str
    name: str
    created: bool
    """False: a queue of that name existed; ``queue_id`` is its id."""


@attrs.frozen
class QueueDeleted:
    queue_id: str


@attrs.frozen
class QueueResolved:
    queue_id: str
    name: str


@attrs.frozen
class GroupInfo:
    """The answer to GROUP_JOIN: the group's settings."""

    queue_id: str
    group: str
    visibility_ms: int
    max_deliveries: int | None
    dead_letter_queue: str | None
    max_in_flight: int
    created: bool


@attrs.frozen
class GroupMessages:
    messages: list[HeadedMessage]
    in_flight: int
    """Messages of the group delivered and not acknowledged, after this read."""


@attrs.frozen
class GroupAcked:
    acknowledged: int


@attrs.frozen
class LeasesChanged:
    """The answer to GROUP_NACK and GROUP_EXTEND."""

    changed: list[int]
    not_held: list[int]
    dead_lettered: list[int]


@attrs.frozen
class GroupRemoved:
    queue_id: str
    group: str


@attrs.frozen
class PositionForgotten:
    existed: bool


@attrs.frozen
class Done:
    """``{"status": "success"}`` and nothing else."""


@attrs.frozen
class PeerWelcome:
    """The answer to a PEER_HELLO with ``multiplexed``: ``{"status": "success",
    "multiplexed": true}``, this broker routes each frame to the group its ``group_id``
    names (docs/replication.md, "Peer links")."""

    multiplexed: bool = True
    append_runs: bool = True
    """Addition: this broker reads a group of appends in its compact ``APPEND_RUNS`` form
    (docs/replication.md, "A group of appends in runs"); older brokers do not say it, and
    are sent COMMAND_GROUPs."""


@attrs.frozen
class MetadataApplied:
    """The answer to METADATA_PROPOSE: the map's version after the command, and for a
    ``PLACE_QUEUE`` the queue's id and group."""

    version: int
    queue_id: str | None = None
    group_id: str | None = None


@attrs.frozen
class Joined:
    cluster_id: str
    cluster_version: int
    leader_id: str
    brokers: list[BrokerInfo]


@attrs.frozen
class SnapshotChunk:
    snapshot_id: str
    offset: int
    size: int
    """Size of the whole snapshot file, in bytes."""
    data: str
    """The chunk, base64."""
    sha256: str
    """Of the chunk's bytes; the DATA_SYNC message carries the whole file's."""


@attrs.frozen
class StoredValues:
    """The answer to FETCH_VALUES: the rows the broker holds intact, as JSON text of
    ``[[sequence number, base64 bytes, headers, stamp, checksum], ...]``."""

    queue_name: str
    rows: str


@attrs.frozen
class Challenge:
    nonce: str
    """Hex; valid for one AUTH on the connection that asked for it."""


@attrs.frozen
class LeadershipTransferred:
    """The answer to :meth:`Client.transfer_leadership`: who leads now."""

    leader_id: str
    """The broker that leads now."""
    term: int
    """The term it leads in."""


@attrs.frozen
class SnapshotTaken:
    """One broker's answer to :meth:`Client.take_snapshot`."""

    broker_id: str
    """The broker whose log was compacted."""
    snapshot_index: int
    """Its log now starts after this index (the state machine stands in for the rest)."""
    snapshot_term: int


@attrs.frozen
class MemberAdded:
    """The answer to :meth:`Client.add_member`: the learner added."""

    broker_id: str
    """The id of the broker that was added, as a learner."""
    cluster_version: int


@attrs.frozen
class MoveDone:
    """One move of a balancer round, as :class:`Rebalanced` lists it."""

    move: str
    """``TRANSFER_LEADER``, ``ADD_LEARNER``, ``PROMOTE_LEARNER``, ``REMOVE_REPLICA`` (group
    actions, asked of the group's leader) or ``START_REPLICA_MOVE``, ``ABANDON_REPLICA_MOVE``,
    ``PREFERRED_LEADER`` (metadata commands, proposed to the metadata group)."""
    group_id: str
    outcome: str
    """``done``; ``waiting`` (a learner is promoted by the group's leader once caught up);
    ``failed`` (retried next round; ``reason`` says why)."""
    broker_id: str | None = None
    """The broker the move is about (its target for a replica move)."""
    source: str | None = None
    """For ``START_REPLICA_MOVE``: the replica that goes (null: the group grows)."""
    reason: str | None = None


@attrs.frozen
class Rebalanced:
    """The answer to REBALANCE: the moves of the round that ran, in order (empty: the cluster
    is balanced), and the cluster map's version after them."""

    map_version: int
    moves: list[MoveDone]
    moving_groups: int = 0
    """Groups with a replica move in progress after the round."""


@attrs.frozen
class DrainState:
    """The answer to DRAIN_BROKER: what the broker still holds. Once ``replicas`` and
    ``leads`` are 0 it holds nothing and can be stopped and removed."""

    broker_id: str
    draining: bool
    replicas: int
    """Replicas (voters and learners) of groups the broker still holds, as the map says."""
    leads: int
    """Groups it leads, as the metadata leader observed at the last round."""
    map_version: int


Response = (
    ClusterTopology
    | HeadedMessageBatch
    | NamedQueueCreated
    | QueueDeleted
    | QueueResolved
    | GroupInfo
    | GroupMessages
    | GroupAcked
    | LeasesChanged
    | GroupRemoved
    | PositionForgotten
    | QueueCreated
    | Appended
    | BatchAppended
    | Message
    | MessageBatch
    | NoMessages
    | Position
    | QueueList
    | RetentionChanged
    | Done
    | PeerWelcome
    | MetadataApplied
    | Joined
    | SnapshotChunk
    | StoredValues
    | Challenge
    | LeadershipTransferred
    | SnapshotTaken
    | MemberAdded
    | Rebalanced
    | DrainState
)
