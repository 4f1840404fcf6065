"""Broker-to-broker and operator requests of the wire contract (request/response, on the same
port as clients), and which of them need the cluster secret: split from :mod:`._messages`,
which re-exports them, so each module stays one list of one kind of message.
"""

from __future__ import annotations

from typing import Any

import attrs

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
    multiplexed: bool | None = None
    """Addition: the sender's frames may carry ``group_id`` (one link per pair of brokers for
    every group, docs/replication.md "Peer links"); a receiver that understands answers
    :class:`PeerWelcome`, an older one ``{"status": "success"}``."""


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
class FetchValues:
    """A broker repairs its damaged copy of stored messages from another (docs/reliability.md,
    "Repairing damaged values"): the intact rows of ``queue_name`` from ``first`` on."""

    queue_name: str
    """The queue's id (it names the replication group that decides the request)."""
    first: int
    cluster_id: str | None = None
    snapshot_for: str | None = None
    """The asking broker's id, when no member gave the rows and it asks the leader for its
    snapshot instead (docs/reliability.md, "A value nobody holds any more"): the leader offers
    it in a DATA_SYNC and answers with no rows. Absent otherwise (and ignored by a broker of an
    older version, which answers with the rows it holds)."""


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


@attrs.frozen
class ProposeMetadata:
    """Broker to broker: commit a command of the metadata group (``command``, a log payload
    object such as ``{"type": "GROUP_REPLICAS", ...}``) in the cluster group's log; any member
    passes it on to the cluster group's leader. Sent by a group's leader to report its
    committed membership (docs/replication.md, "The metadata group"). Answered ``success``
    once applied, or the refusal's error envelope (its code: ``STALE_REPORT``,
    ``BAD_REQUEST``, ...)."""

    command: Any
    cluster_id: str | None = None


@attrs.frozen
class Rebalance:
    """Operator command (docs/protocol.md, "Balancer operations"): the metadata group's leader
    runs one balancer round now and answers what it did (:class:`Rebalanced`); any broker
    forwards it there."""

    cluster_id: str | None = None


@attrs.frozen
class DrainBroker:
    """Operator command: the broker ``broker_id`` is leaving (``draining`` false: it stays
    after all). The balancer moves its replicas and leadership away; answered at once with
    what it still holds (:class:`DrainState`)."""

    broker_id: str
    draining: bool = True
    cluster_id: str | None = None


@attrs.frozen
class SetClusterSettings:
    """Operator command (docs/protocol.md, "Cluster settings"): change the cluster's number
    of groups (``group_count``: only up, since queues live on groups), its replication factor
    (1-7) and/or its metadata group's voters after founding, through the metadata group; any
    broker proposes it. Answered with the settings now in force (:class:`ClusterSettingsSet`);
    the balancer then places the new groups and adds or removes replicas, one change at a time
    per group."""

    group_count: int | None = None
    replication_factor: int | None = None
    metadata_voters: int | None = None
    """Voters of the metadata group (1-7): brokers beyond them follow it as learners."""
    cluster_id: str | None = None


@attrs.frozen
class ClusterSettingsSet:
    """The answer to SET_CLUSTER_SETTINGS: the settings in the cluster map once applied."""

    group_count: int
    replication_factor: int
    map_version: int
    added_groups: list[str] = attrs.field(factory=list)
    """The ids of the groups this request added (sorted)."""
    metadata_voters: int | None = None


ADMIN_REQUESTS: tuple[type, ...] = (
    RemoveMember,
    TransferLeadership,
    TakeSnapshot,
    AddMember,
    Rebalance,
    DrainBroker,
    SetClusterSettings,
)
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


PRIVILEGED_REQUESTS: tuple[type, ...] = (
    PeerHello,
    JoinCluster,
    DataSyncRequest,
    ProposeMetadata,
    FetchValues,
    *ADMIN_REQUESTS,
)
"""Requests that only brokers (and operators) holding the cluster secret may send, when one is
configured: they replicate, vote, change the membership or the leadership, compact the log or
read a whole snapshot or stored values. Gating is membership in this tuple (docs/security.md);
never served on the plaintext listener."""
