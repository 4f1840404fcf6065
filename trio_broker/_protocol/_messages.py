"""Client-facing messages of the wire contract, as frozen attrs classes.

The classes carry no serialization code: the converter in ``_codec`` maps them to and from the
wire, with wire names written down there, never derived from class names.
"""

from __future__ import annotations

from typing import Any

import attrs

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


@attrs.frozen
class Append:
    queue_name: str
    data: Any
    """Any JSON value (already checked by the codec); stored and returned unchanged."""
    client_id: str | None = None
    producer_id: str | None = None
    """Addition: with ``producer_seq``, makes the append idempotent (docs/protocol.md)."""
    producer_seq: int | None = None


@attrs.frozen
class AppendBatch:
    """Addition: several values appended atomically at consecutive sequence numbers."""

    queue_name: str
    values: list[Any]
    client_id: str | None = None
    producer_id: str | None = None
    producer_seq: int | None = None


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


# -- broker-to-broker and operator requests (request/response, on the same port) --------------


@attrs.frozen
class PeerHello:
    """Opens a peer stream: after a success answer, the connection carries one-way consensus
    messages from ``broker_id`` to ``to``, and no further answers."""

    cluster_id: str
    broker_id: str
    to: str | None = None
    host: str | None = None
    """Where the sender listens, so the receiver can answer before the address book has it."""
    port: int | None = None
    plaintext_port: int | None = None
    """Addition: the sender's plaintext client port, announced to clients of the original
    design that ask on the receiver's plaintext listener (docs/security.md)."""


@attrs.frozen
class JoinCluster:
    """A new broker asks to become a member (diagram 4). Any member forwards it to the leader."""

    broker_id: str
    host: str
    port: int
    cluster_id: str | None = None


@attrs.frozen
class DataSyncRequest:
    """A replica fetches one chunk of a snapshot the leader offered it in a DATA_SYNC."""

    snapshot_id: str
    offset: int
    cluster_id: str | None = None


@attrs.frozen
class RemoveMember:
    """Operator command: take a broker out of the membership, through the log."""

    broker_id: str
    cluster_id: str | None = None


@attrs.frozen
class TransferLeadership:
    """Operator command: the leader hands its leadership to the voter ``broker_id`` (None: the
    voter whose log is the most up to date); answered once that broker leads."""

    broker_id: str | None = None
    cluster_id: str | None = None


@attrs.frozen
class TakeSnapshot:
    """Operator command: the broker that receives it compacts its own log now, up to the
    index it has applied (any member, leader or not)."""

    cluster_id: str | None = None


@attrs.frozen
class AddMember:
    """Operator command: the leader asks the broker listening at ``host:port`` (started with
    ``node --join-wait``) for its id, checks that it belongs to no cluster yet, and adds it as
    a learner; it becomes a voter once caught up."""

    host: str
    port: int
    cluster_id: str | None = None


ADMIN_REQUESTS: tuple[type, ...] = (RemoveMember, TransferLeadership, TakeSnapshot, AddMember)
"""The operator's requests (they change the membership, the leadership or the log)."""


@attrs.frozen
class AuthChallenge:
    """Addition: ask for a fresh nonce to prove the cluster secret with (docs/security.md)."""


@attrs.frozen
class Auth:
    """Addition: authenticate this connection, as a member or operator (``proof``, an
    HMAC-SHA256 of the last nonce under the cluster secret) or as a client (``token``)."""

    proof: str | None = None
    token: str | None = None


PRIVILEGED_REQUESTS: tuple[type, ...] = (PeerHello, JoinCluster, DataSyncRequest, *ADMIN_REQUESTS)
"""Requests that only brokers (and operators) holding the cluster secret may send, when one is
configured: they replicate, vote, change the membership or the leadership, compact the log or
read a whole snapshot. Gating is membership in this tuple (docs/security.md); never served on
the plaintext listener."""

Request = (
    ClusterQuery
    | CreateQueue
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
    | RemoveMember
    | AuthChallenge
    | Auth
    | TransferLeadership
    | TakeSnapshot
    | AddMember
)


# -- responses -----------------------------------------------------------------------------------


@attrs.frozen
class BrokerInfo:
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
    client_id: str
    next_sequence_num: int
    lag: int


@attrs.frozen
class QueueInfo:
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
    queues: list[QueueInfo]
    next_after: str | None


@attrs.frozen
class Message:
    sequence_num: int
    data: Any


@attrs.frozen
class NoMessages:
    pass


@attrs.frozen
class Done:
    """``{"status": "success"}`` and nothing else."""


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
class Challenge:
    nonce: str
    """Hex; valid for one AUTH on the connection that asked for it."""


@attrs.frozen
class LeadershipTransferred:
    leader_id: str
    """The broker that leads now."""
    term: int
    """The term it leads in."""


@attrs.frozen
class SnapshotTaken:
    broker_id: str
    """The broker whose log was compacted."""
    snapshot_index: int
    """Its log now starts after this index (the state machine stands in for the rest)."""
    snapshot_term: int


@attrs.frozen
class MemberAdded:
    broker_id: str
    """The id of the broker that was added, as a learner."""
    cluster_version: int


Response = (
    ClusterTopology
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
    | Joined
    | SnapshotChunk
    | Challenge
    | LeadershipTransferred
    | SnapshotTaken
    | MemberAdded
)
