"""Broker-to-broker consensus messages and the persisted records of the Raft core.

Every class is frozen attrs data with no serialization code: the wire converter in
``_protocol`` maps them to the design's operation names (``ELECTION_REQUEST``, ``REPLICATE``,
``PROMOTE_TO_LEADER``, ``HEARTBEAT``, ``CLUSTER_UPDATE``, ``DATA_SYNC_REQUEST``, and the
addition ``TIMEOUT_NOW``). Node ids are any hashable, totally ordered value (broker ids
``"B-XXXXX"`` in production, small ints in tests); the order is only used for the "lowest id
times out first" preference.

Every message carries ``src``, ``dst``, the sender's ``term`` and the sender's
``cluster_version`` (the version of the membership configuration it currently uses).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import Any

import attrs

NodeId = Hashable


# -- log records -----------------------------------------------------------------------------


@attrs.frozen
class Config:
    """The membership: who votes, who only listens, and the version counted by changes.

    ``version`` is the design's ``cluster_version``: every configuration change bumps it by one.
    The quorum is always a majority of ``voters``, whatever their health.
    """

    voters: frozenset = attrs.field(converter=frozenset)
    learners: frozenset = attrs.field(converter=frozenset, factory=frozenset)
    version: int = 1

    @property
    def members(self) -> frozenset:
        """Everyone the leader replicates to (voters and learners)."""
        return self.voters | self.learners

    def quorum(self) -> int:
        """Votes or acknowledgements needed: a majority of the configured voters."""
        return len(self.voters) // 2 + 1


class ChangeAction(enum.Enum):
    """Single-server membership changes (Raft thesis section 4.1)."""

    ADD_LEARNER = "add_learner"
    """A new broker starts as a learner: it receives the log but is not in any quorum."""
    PROMOTE = "promote"
    """A caught-up learner becomes a voter."""
    REMOVE = "remove"
    """A voter or learner leaves the membership."""


@attrs.frozen
class ConfigChange:
    """What a membership change asks for; the core turns it into a :class:`ConfigEntry`."""

    action: ChangeAction
    node_id: Any


@attrs.frozen
class NoOp:
    """Payload of the entry every new leader appends in its term.

    Committing it commits every earlier entry (Figure 8 of the Raft paper) and tells the leader
    that its view of the commit index is current.
    """


@attrs.frozen
class ConfigEntry:
    """Payload of a configuration-change entry; the whole resulting config is carried so that
    the config takes effect as soon as the entry is appended, on every broker."""

    config: Config
    change: ConfigChange | None = None


@attrs.frozen
class Entry:
    """One log entry. ``payload`` is opaque to the core except for NoOp and ConfigEntry.

    ``encoded`` is the payload's bytes as stored in the log and carried by REPLICATE, when
    known: a cache, not part of the entry's value (excluded from equality and repr), filled
    once by the codec (``_protocol._entries.payload_bytes``) so that one entry is encoded once
    for its log write and every replica, and set from the received frame on a replica. The
    runtime forgets it once the entry is applied, so that the in-memory log does not hold every
    payload twice (a later send to a lagging replica encodes it again, once).

    ``checksum`` is the CRC32C of those bytes (with the term and index), computed in the same
    step and cached beside them: stored with the entry in the log and carried in REPLICATE.
    """

    term: int
    index: int
    payload: Any
    encoded: bytes | None = attrs.field(default=None, eq=False, repr=False)
    checksum: int | None = attrs.field(default=None, eq=False, repr=False)

    def remember_encoded(self, encoded: bytes | None, checksum: int | None = None) -> None:
        """Set (or, with None, forget) the cached bytes and their checksum; they never change
        the entry's value."""
        object.__setattr__(self, "encoded", encoded)
        object.__setattr__(self, "checksum", checksum)


@attrs.frozen
class HardState:
    """What must be durable before any message depending on it leaves the broker.

    ``voted_for`` is persisted so that a restarted broker never votes twice in one term.
    """

    term: int = 0
    voted_for: Any = None
    commit: int = 0
    recovering_until: int = 0
    """While recovering (``RaftNode.recovering_until``; 0 otherwise): the index its log lost
    and must get back to. Persisted so that a restart while recovering cannot forget it: the
    damaged entries that first showed the loss are deleted by then."""
    recovering_term: int = 0
    """While recovering: a term at least that of the last entry it lost (its term when the
    loss was found), the other half of the log end it votes by (``RaftNode``)."""
    unverified: bool = False
    """Its machine rebooted (the runtime sets it when the store is opened under another boot
    id than it was last opened under) and it has not yet learned what it may have
    acknowledged before: it may have lost synced writes without a trace, so it votes only
    once it knows (``RaftNode``, "A reboot votes only once it knows"). The core clears it."""
    vote_lost: bool = False
    """The store found its term or vote lost or damaged (``Store.hard_state_loss``): the
    broker may have voted in any term up to one it no longer knows, so it grants no vote
    until it learned a term bound from the other voters (``RaftNode``, "A lost vote"). The
    core clears it."""


@attrs.frozen
class SnapshotMeta:
    """Where the compacted prefix of the log ends, and the membership at that point."""

    index: int
    term: int
    config: Config


# -- messages --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ElectionRequest:
    """``ELECTION_REQUEST``: a candidate (or pre-candidate) asks a voter for its vote.

    With ``pre_vote`` set, ``term`` is the term the sender *would* campaign in; nobody changes
    term or records a vote for a pre-vote, so a partitioned broker cannot inflate terms.
    """

    src: Any
    dst: Any
    term: int
    cluster_version: int
    pre_vote: bool
    last_log_index: int
    last_log_term: int
    transfer: bool = False
    """Set by a candidate that campaigns because the leader asked it to (:class:`TimeoutNow`):
    voters then grant it despite the leader lease, which would otherwise make them deny any
    vote while they hear from a live leader (thesis 3.10)."""

    @property
    def candidate_id(self) -> Any:
        return self.src


class DenyReason(enum.Enum):
    """Why a vote was denied (the ``reason`` of ``{"status": "denied"}``)."""

    STALE_TERM = "stale_term"
    ALREADY_VOTED = "already_voted"
    LOG_BEHIND = "log_behind"
    LEADER_ALIVE = "leader_alive"


@attrs.frozen(kw_only=True)
class ElectionResponse:
    """Reply to :class:`ElectionRequest`: ``{"status": "granted"}`` or denied with a reason.

    A granted pre-vote carries the requested (future) term; a denial carries the voter's term.
    """

    src: Any
    dst: Any
    term: int
    cluster_version: int
    pre_vote: bool
    granted: bool
    reason: DenyReason | None = None
    last_log_index: int | None = None
    """The voter's log end (with ``last_log_term``), which a candidate that restarted may be
    waiting for (``RaftNode._note_log_end``); None (absent on the wire) from older peers."""
    last_log_term: int | None = None
    voter_term: int | None = None
    """The voter's own term when it answered (``term`` is the requested one in a granted
    pre-vote): a log end counts for a restarted candidate only from a later term than the
    one it restarted in."""


@attrs.frozen(kw_only=True)
class Replicate:
    """``REPLICATE``: append entries after (prev_log_index, prev_log_term), and learn the commit.

    An empty ``entries`` is a probe. The follower only commits up to the last entry it verified
    against the leader's log, never beyond.
    """

    src: Any
    dst: Any
    term: int
    cluster_version: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    acknowledged: int = 0
    """When not 0: the index this member acknowledged earlier in the leader's term, which its
    log no longer reaches (it came back from a disk that lost synced writes). The member
    starts *recovering*: it neither votes nor campaigns until its log is back at that index.
    Absent on the wire when 0 (peers that predate it neither send nor need it)."""
    start_id: int = 0
    """When not 0: the ``HeartbeatResponse.start_id`` of the member's current start, which
    the leader saw: this message was sent after the member restarted, and ``log_end`` is
    the leader's last index when it saw that answer (``RaftNode``, "A restart votes only
    once it knows"). Absent on the wire when 0."""
    log_end: int = 0
    """With ``start_id``: the leader's last log index (an entry of its term) when it saw
    the member's start: the member votes only for logs at least that up to date until its
    own log gets there."""
    probe: int = 0
    """When not 0: the number of this probe among the leader's probes to the member (the
    probe state only), echoed in the answer so that the leader ignores an answer to an
    older probe overtaken on the way. Absent on the wire when 0."""

    @property
    def leader_id(self) -> Any:
        return self.src


@attrs.frozen(kw_only=True)
class PromoteToLeader(Replicate):
    """``PROMOTE_TO_LEADER``: the new leader's announcement, which is also its first append.

    It carries the no-op entry of the new term, so acknowledging it (a :class:`ReplicateResponse`)
    is the design's "Leadership ACK" and a log-matching probe at once.
    """


@attrs.frozen(kw_only=True)
class ReplicateResponse:
    """Reply to Replicate/PromoteToLeader/DataSync.

    On success ``match_index`` is the last index known to match the leader, durable on the
    replica. On rejection, ``rejected_index`` is the prev_log_index that did not match and
    (``hint_index``, ``hint_term``) is the replica's last entry whose term is at most the
    rejected prev_log_term, so the leader can skip a whole term per round trip.
    """

    src: Any
    dst: Any
    term: int
    cluster_version: int
    success: bool
    match_index: int = 0
    rejected_index: int = 0
    hint_index: int = 0
    hint_term: int = 0
    probe: int = 0
    """The ``probe`` number of the REPLICATE answered (0, absent on the wire: none, or a
    peer that predates it; the leader then judges the answer as before)."""


@attrs.frozen(kw_only=True)
class Heartbeat:
    """``HEARTBEAT``, sent leader -> members every heartbeat interval.

    The design's diagram 6 has replicas send HEARTBEAT to the leader. The direction is reversed
    here (as in Raft) because the same message must also keep followers from starting an
    election and carry the commit index; the :class:`HeartbeatResponse` still gives the leader
    exactly what the design's replica heartbeats gave it: proof of life per member for the
    failure detector (``active``/``inactive``) and for check-quorum.

    ``commit`` is ``min(leader commit, the member's known match)`` so that a member never
    commits an entry it has not been shown to hold.
    """

    src: Any
    dst: Any
    term: int
    cluster_version: int
    commit: int
    round: int = 0
    """The number of this heartbeat round among the leader's rounds in its term (from 1),
    echoed in the answer: a majority echoing a round sent after a read arrived confirms the
    leader still led then (ReadIndex, ``_read_index``). 0 (absent on the wire): a leader
    that predates it."""


@attrs.frozen(kw_only=True)
class HeartbeatResponse:
    """Acknowledges a Heartbeat; also the answer to any message from a stale-term leader."""

    src: Any
    dst: Any
    term: int
    cluster_version: int
    last_index: int | None = None
    """The member's last log index, in the answer to a Heartbeat (None from peers that
    predate it): one below what the leader saw it acknowledge shows a log that went
    backwards, which the leader then probes."""
    start_id: int = 0
    """While the member has not yet learned, since its start, what it may have acknowledged
    before (``RaftNode.unverified``): a number drawn at its start, which the leader echoes
    in ``Replicate.start_id`` with its log end. 0 (absent on the wire) otherwise."""
    round: int = 0
    """The ``round`` of the Heartbeat answered (0, absent on the wire: none, or a member
    that predates it, whose answers then never confirm a read: reads take the log)."""


@attrs.frozen
class MemberView:
    """One member as announced in CLUSTER_UPDATE / shown by CLUSTER_QUERY."""

    node_id: Any
    role: str
    """``"leader"``, ``"replica"`` (a voter) or ``"learner"``."""
    status: str
    """``"active"`` or ``"inactive"`` (missed heartbeats for the failure timeout)."""


@attrs.frozen(kw_only=True)
class ClusterUpdate:
    """``CLUSTER_UPDATE``: the leader's view of the members and their health.

    Membership itself changes only through config entries in the log; this message spreads the
    derived view (roles and active/inactive status) so any broker can answer CLUSTER_QUERY.
    Status never changes the quorum, so this message is not replicated through the log.
    """

    src: Any
    dst: Any
    term: int
    cluster_version: int
    members: tuple[MemberView, ...]


@attrs.frozen(kw_only=True)
class ClusterUpdateResponse:
    """``{"status": "success"}`` to a ClusterUpdate."""

    src: Any
    dst: Any
    term: int
    cluster_version: int


@attrs.frozen(kw_only=True)
class TimeoutNow:
    """``TIMEOUT_NOW``: the leader hands its leadership to ``dst`` (thesis 3.10).

    Sent only once ``dst``'s log matches the leader's, while the leader accepts no proposals;
    the receiver starts an election at once, without pre-vote, with ``transfer`` set on its
    vote requests.
    """

    src: Any
    dst: Any
    term: int
    cluster_version: int


@attrs.frozen(kw_only=True)
class DataSync:
    """``DATA_SYNC``: install a snapshot on a replica the leader can no longer feed from its log.

    ``data`` is the application state exactly at ``snapshot.index``; it is opaque to the core and
    produced by the runtime (the simulator uses a deep copy of the QueueState). The reply is a
    :class:`ReplicateResponse` with ``match_index = snapshot.index``.
    """

    src: Any
    dst: Any
    term: int
    cluster_version: int
    snapshot: SnapshotMeta
    data: Any = attrs.field(default=None, eq=False, repr=False)


Message = (
    ElectionRequest
    | ElectionResponse
    | Replicate
    | ReplicateResponse
    | Heartbeat
    | HeartbeatResponse
    | ClusterUpdate
    | ClusterUpdateResponse
    | DataSync
    | TimeoutNow
)
