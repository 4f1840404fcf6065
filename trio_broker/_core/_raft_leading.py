"""What a leader serves besides replication, a part of :class:`~._raft.RaftNode`:
leadership transfer (Raft thesis 3.10: proposals refused, the target brought up to date,
then TIMEOUT_NOW) and reads answered without a log entry once a majority confirmed the
leadership (ReadIndex, thesis 6.4; the bookkeeping is :mod:`._read_index`'s).

Typed against ``_raft_state.RaftState`` for the type checker only (see ``_raft_elections``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._raft_messages import TimeoutNow
from ._raft_types import (
    LeadershipTransferring,
    NotLeader,
    ReadIndexUnavailable,
    Role,
    TooManyReads,
    TransferRefused,
    voting_rank,
)

if TYPE_CHECKING:
    from ._raft_state import RaftState as _Node
else:
    _Node = object


class Leading(_Node):
    """Mixed into :class:`~._raft.RaftNode`: transfers and reads (fields:
    ``transfer_target``, ``_transfer_elapsed``, ``reads``)."""

    def transfer_leadership(self, target: Any) -> None:
        """Hand leadership to the voter ``target`` (Raft thesis 3.10, etcd's MsgTransferLeader).

        From now on proposals are refused (:class:`LeadershipTransferring`); the target is
        brought up to date, then sent :class:`TimeoutNow`, on which it campaigns at once. The
        transfer is abandoned (proposals accepted again) if the target has not taken over
        within an election timeout, or if this broker stops leading. Asking again for the same
        target keeps the transfer going; another target replaces it.

        Raises :class:`NotLeader` on a non-leader and :class:`TransferRefused` if ``target`` is
        this broker, a learner or not a member.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if target == self.id:
            raise TransferRefused(f"{target!r} is already the leader")
        if target not in self.config.voters:
            what = "a learner" if target in self.config.learners else "not a member"
            raise TransferRefused(f"{target!r} is {what}; leadership goes to voters only")
        if self.transfer_target == target:
            return
        self.reads.fail_all(LeadershipTransferring(target))
        self.transfer_target = target
        self._transfer_elapsed = 0
        self._maybe_send_timeout_now(target)

    def best_transfer_target(self) -> Any:
        """The voter (not this broker) to hand the leadership to, None if there is none.

        Voters heard from within the failure timeout first (a silent one cannot take over),
        then the one whose log matches ours furthest, the most recently heard from, the lowest
        id.
        """
        if self.role is not Role.LEADER:
            return None
        candidates = [
            (
                self._status_of(v) == "active",
                pr.match,
                pr.last_heard,
                -voting_rank(v, self.config.voters),
                v,
            )
            for v, pr in self.progress.items()
            if v != self.id and v in self.config.voters
        ]
        return max(candidates)[-1] if candidates else None

    def _maybe_send_timeout_now(self, target: Any) -> None:
        """TimeoutNow once the target holds our whole log; else bring it up to date first."""
        pr = self.progress.get(target)
        if pr is None:
            return
        if pr.match >= self.log.last_index:
            self._send(self._reply_to(TimeoutNow, target))
        else:
            self._send_append(target)

    def read_index(self, token: Any, after: int = 0) -> None:
        """A read that changes nothing arrived (Raft thesis 6.4, :mod:`._read_index`): it is
        answered from the applied state once a majority confirmed this broker still led after
        now, and the applied index reaches ``max(commit, after)`` (and this leader's first
        entry). :meth:`take_reads` gives it back, ready or failed, by ``token``.

        Raises :class:`NotLeader`, :class:`LeadershipTransferring`, :class:`TooManyReads` or
        :class:`ReadIndexUnavailable` (nothing registered)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.transfer_target is not None:
            raise LeadershipTransferring(self.transfer_target)
        if self.reads.full:
            raise TooManyReads(f"{self.reads.max_waiting} reads wait already")
        if self.reads.unconfirmable(self.id, self.config.voters, self.config.quorum()):
            raise ReadIndexUnavailable("voters that do not echo heartbeat rounds")
        self.reads.add(token, max(self.commit, after))
        self._confirm_reads()

    def take_reads(self) -> tuple[list[tuple[Any, int]], list[tuple[Any, Exception]]]:
        """The reads to answer now from the applied state, as ``(token, index)``, and those
        that failed, as ``(token, error)``: a :class:`NotLeader` (leadership lost, or a
        :class:`LeadershipTransferring`) or a :class:`ReadIndexUnavailable` (voters that do
        not echo rounds: the read may take the log). Never a read of a broker that no
        longer leads."""
        failed = self.reads.take_failed()
        if self.role is not Role.LEADER or self.commit < self._term_start_index:
            return [], failed
        self.reads.confirm(self.id, self.config.voters, self.config.quorum())
        return self.reads.take(self.applied, self._term_start_index), failed

    def _confirm_reads(self) -> None:
        """Count the echoes. The next round, if a read waits for one, leaves when the
        messages are taken (:meth:`_send_read_round`): every read that arrived until then
        shares it."""
        voters, quorum = self.config.voters, self.config.quorum()
        if self.reads.unconfirmable(self.id, voters, quorum):
            self.reads.fail_all(ReadIndexUnavailable("voters that do not echo heartbeat rounds"))
        self.reads.confirm(self.id, voters, quorum)

    def _send_read_round(self) -> None:
        if self.role is Role.LEADER and self.reads.wants_round():
            self._broadcast_heartbeat()
