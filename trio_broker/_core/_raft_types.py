"""The consensus core's vocabulary, shared by the parts of :class:`~._raft.RaftNode`: the
refusals it raises (:class:`RaftError` and its kinds) and the misuse error
(:class:`UsageError`), a broker's :class:`Role`, and the leader's record of each member's
log (:class:`Progress`, :class:`ProgressState`). ``trio_broker._core._raft`` re-exports the
public names: import them from there."""

from __future__ import annotations

import enum
from typing import Any

import attrs

__all__ = [
    "ConfigChangeRefused",
    "LeadershipTransferring",
    "NotLeader",
    "Progress",
    "ProgressState",
    "RaftError",
    "ReadIndexUnavailable",
    "Role",
    "TooManyReads",
    "TransferRefused",
    "UsageError",
    "voting_rank",
]

# -- errors ------------------------------------------------------------------------------------


class RaftError(Exception):
    """A request the core refuses; the state machine is unchanged."""


class NotLeader(RaftError):
    """Proposals go to the leader; ``leader_id`` is the leader this broker knows of, if any."""

    def __init__(self, leader_id: Any) -> None:
        super().__init__(f"not the leader (leader is {leader_id!r})")
        self.leader_id = leader_id


class LeadershipTransferring(NotLeader):
    """The leader is handing its leadership to ``leader_id`` and takes no proposals meanwhile.

    A :class:`NotLeader`: nothing was appended, and the broker to retry on is named.
    """

    def __init__(self, leader_id: Any) -> None:
        super().__init__(leader_id)
        self.args = (f"leadership is being transferred to {leader_id!r}",)


class TooManyReads(RaftError):
    """As many reads as the core holds (``max_reads``) wait for their confirmation already."""


class ReadIndexUnavailable(RaftError):
    """Too many voters answer heartbeats without echoing their round (an older version) for
    a read to be confirmed: reads go to the log."""


class TransferRefused(RaftError):
    """A leadership transfer to a broker that is not another voter of the configuration."""


class ConfigChangeRefused(RaftError):
    """A membership change that would break the one-change-at-a-time rule, or is meaningless."""


class UsageError(Exception):
    """The driver misused the API (e.g. called ready() twice without advance()).

    Not a :class:`RaftError`: those are refusals of a peer's or a client's request, which the
    runtime answers or logs; a misuse is a bug of ours and must not be handled as one."""


class Role(enum.Enum):
    """A broker's role; only LEADER accepts proposals. PRE_CANDIDATE has not bumped its term."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class ProgressState(enum.Enum):
    """How the leader feeds one member (etcd's probe/replicate/snapshot flow control)."""

    PROBE = "probe"
    """One Replicate in flight until we learn where the logs match."""
    REPLICATE = "replicate"
    """Logs match; stream entries optimistically."""
    SNAPSHOT = "snapshot"
    """The entries it needs are compacted: waiting for a DATA_SYNC to land."""


@attrs.define
class Progress:
    """The leader's knowledge of one member's log and liveness."""

    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    paused: bool = False
    recent_active: bool = True
    last_heard: int = 0
    snapshot_sent_at: int = 0
    last_progress: int = 0
    """Tick of the last sign that replication to it moves (an ack, a rejection, a fresh send)."""
    lost_to: int = 0
    """When its log went backwards (a probe's answer ended below ``match``): the index it had
    acknowledged, told in every REPLICATE until it is back there (0: nothing lost)."""
    start_id: int = 0
    """The ``start_id`` of its last heartbeat answer: it restarted and does not yet know what
    it may have acknowledged before (0: it does). Echoed in every REPLICATE to it."""
    start_log_end: int = 0
    """Our last index when we first saw that ``start_id``: told with the echo."""
    probe: int = 0
    """The number of the last probe sent to it (``Replicate.probe``): a rejection that
    echoes an older one answers a probe overtaken on the way, and says nothing now."""


def voting_rank(node_id: Any, voters: frozenset[Any]) -> int:
    """Where ``node_id`` stands among the voters, by id (past the last one if not a voter):
    the election timeout's shift and the transfer target's last tie-break."""
    ordered = sorted(voters)
    return ordered.index(node_id) if node_id in voters else len(ordered)
