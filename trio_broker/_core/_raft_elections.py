"""Elections, a part of :class:`~._raft.RaftNode`: the randomized election timer, pre-vote
(a round that bumps no term, so a broker that cannot win never disrupts a leader), the
campaign, vote requests answered (the election restriction, one vote per term) and counted,
check-quorum's lease (no vote, and no term bump, while a live leader is heard), and the roles
a broker moves between: follower, pre-candidate, candidate, leader (whose first entry is its
no-op). What a restart withholds from a vote is in ``_raft_restart``.

The part's state lives on the node (``RaftNode.__init__``); the base it is typed against,
``_raft_state.RaftState``, exists for the type checker only: at run time the part is a plain
mixin, and no part imports ``_raft``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._raft_messages import DenyReason, ElectionRequest, ElectionResponse, Entry, NoOp
from ._raft_types import NotLeader, Progress, Role, voting_rank

if TYPE_CHECKING:
    from ._raft_state import RaftState as _Node
else:
    _Node = object


class Elections(_Node):
    """Mixed into :class:`~._raft.RaftNode`: its elections and roles (fields: ``role``,
    ``term``, ``voted_for``, ``leader_id``, ``votes``, the election timer)."""

    def _promotable(self) -> bool:
        """Only voters campaign; learners, removed brokers and recovering ones never do.

        A voter removed by a configuration entry that is not committed yet (as far as it
        knows) still campaigns, under its log's configuration, which does not count its own
        vote (thesis 4.2.2, Figure 4.6): until that entry commits it may hold the only log
        that the other voters of the old configuration can elect, and a group whose longest
        log belongs to a broker that waits for a removal nobody can commit has no leader
        for ever (simulator seed 2003). Once the removal commits it stops, as the thesis's
        removed server does."""
        if not self._log_trusted():
            return False
        if self.id in self.config.voters:
            return True
        return self.commit < self.log.last_index and self.id in self._config_at(self.commit).voters

    def _in_lease(self) -> bool:
        return (
            self.check_quorum
            and self.leader_id is not None
            and self.election_elapsed < self.election_ticks
        )

    def _reset_randomized_timeout(self) -> None:
        # Randomized in [E, 1.5E), shifted by up to E/2 by rank among the voters: the lowest
        # broker id usually times out first (the design's "lowest id triggers"), but that is a
        # preference to avoid split votes, never part of the safety argument.
        e = self.election_ticks
        n = max(1, len(self.config.voters))
        rank = voting_rank(self.id, self.config.voters)
        self.randomized_timeout = e + (e * rank) // (2 * n) + self.rng.randrange(e // 2 + 1)

    def _campaign(self) -> None:
        """Election timeout: pre-vote first (if enabled), so a broker that cannot win never
        bumps the term and so never disrupts a healthy leader (thesis 9.6)."""
        if self.pre_vote:
            self.role = Role.PRE_CANDIDATE
            self.leader_id = None
            self.votes = {self.id: True} if self._vouches_for_itself(pre_vote=True) else {}
            self.election_elapsed = 0
            self._reset_randomized_timeout()
        else:
            self._become_candidate()
        if self._tally() == "won":
            self._after_win()
        else:
            self._request_votes()

    def _request_votes(self, transfer: bool = False, pre: bool | None = None) -> None:
        if pre is None:
            pre = self.role is Role.PRE_CANDIDATE
        for v in sorted(self.config.voters):
            if v == self.id:
                continue
            # Sent after persistence: a real request relies on our durable term and self-vote.
            self._persisted_msgs.append(
                ElectionRequest(
                    src=self.id,
                    dst=v,
                    term=self.term + 1 if pre else self.term,
                    cluster_version=self.cluster_version,
                    pre_vote=pre,
                    last_log_index=self.log.last_index,
                    last_log_term=self.log.last_term,
                    transfer=transfer,
                )
            )

    def _become_candidate(self) -> None:
        self.role = Role.CANDIDATE
        self.term += 1
        self.voted_for = self.id
        self.leader_id = None
        self.votes = {self.id: True} if self._vouches_for_itself(pre_vote=False) else {}
        self.election_elapsed = 0
        self._reset_randomized_timeout()

    def _vouches_for_itself(self, pre_vote: bool) -> bool:
        return self._vouches_for(self.log.last_term, self.log.last_index, pre_vote)

    def _tally(self) -> str:
        q = self.config.quorum()
        granted = sum(1 for v, g in self.votes.items() if g and v in self.config.voters)
        denied = sum(1 for v, g in self.votes.items() if not g and v in self.config.voters)
        if granted >= q:
            return "won"
        if denied >= q:
            return "lost"
        return "pending"

    def _after_win(self) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._become_candidate()
            if self._tally() == "won":
                self._become_leader()
            else:
                self._request_votes()
        else:
            self._become_leader()

    def _log_ok_for(self, m: ElectionRequest) -> bool:
        return self.log.is_up_to_date(m.last_log_index, m.last_log_term)

    def _handle_election_request(self, m: ElectionRequest) -> None:
        if not self._log_trusted() and not self._beyond_what_was_lost(m):
            # Our log lost entries we acknowledged: it can only vouch for a candidate whose
            # log is at least as up to date as ours was before the loss.
            self._deny(m, DenyReason.LOG_BEHIND, self.term)
            return
        can_vote = (
            self.voted_for == m.src
            or (self.voted_for is None and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )
        if not can_vote:
            self._deny(m, DenyReason.ALREADY_VOTED, self.term)
            return
        # A durable vote, asked again (not one read from a store that lost it).
        repeat = self.voted_for == m.src and not m.pre_vote and not self.vote_lost
        if not repeat and not self._vouches_for(m.last_log_term, m.last_log_index, m.pre_vote):
            # Restarted, it may have lost entries it acknowledged, and does not know yet.
            self._deny(m, DenyReason.LOG_BEHIND, self.term)
            if self.unverified and not m.pre_vote and self._told_log_end < self.term:
                # The other voters may be waiting for our log end as we wait for theirs
                # (all restarted): tell it, once a term, in a pre-vote round (answers that
                # come back count only if we campaign in it, for what it asked).
                self._told_log_end = self.term
                self._request_votes(pre=True)
            return
        if not self._log_ok_for(m):
            self._deny(m, DenyReason.LOG_BEHIND, self.term)
            return
        if not m.pre_vote:
            self.voted_for = m.src
            self.election_elapsed = 0
        self._persisted_msgs.append(
            ElectionResponse(
                src=self.id,
                dst=m.src,
                term=m.term,
                cluster_version=self.cluster_version,
                pre_vote=m.pre_vote,
                granted=True,
                **self._log_end_told(),
            )
        )

    def _deny(self, m: ElectionRequest, reason: DenyReason, term: int) -> None:
        self._persisted_msgs.append(
            ElectionResponse(
                src=self.id,
                dst=m.src,
                term=term,
                cluster_version=self.cluster_version,
                pre_vote=m.pre_vote,
                granted=False,
                reason=reason,
                **self._log_end_told(),
            )
        )

    def _handle_election_response(self, m: ElectionResponse) -> None:
        if m.pre_vote:
            if self.role is not Role.PRE_CANDIDATE or m.term not in (self.term, self.term + 1):
                return
        elif self.role is not Role.CANDIDATE:
            return
        self.votes.setdefault(m.src, m.granted)
        result = self._tally()
        if result == "won":
            self._after_win()
        elif result == "lost":
            self._become_follower(self.term, None)

    def _become_follower(self, term: int, leader: Any) -> None:
        self.reads.fail_all(NotLeader(leader))
        if term > self.term:
            self.term = term
            self.voted_for = None
        self.role = Role.FOLLOWER
        self.leader_id = leader
        self.election_elapsed = 0
        self.votes = {}
        self.progress = {}
        self.transfer_target = None
        self._reset_randomized_timeout()

    def _follow(self, leader: Any) -> None:
        """A message from the leader of our term: follow it and restart the election timer."""
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, leader)
        self.leader_id = leader
        self.election_elapsed = 0

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.progress = {}
        self.transfer_target = None
        self.reads.reset()
        for m in self.config.members | {self.id}:
            self.progress[m] = Progress(match=0, next=self.log.last_index + 1, last_heard=self.now)
        noop = Entry(self.term, self.log.last_index + 1, NoOp())
        self._term_start_index = noop.index
        self.log.append([noop])
        self._check_verified()
        self._statuses = {}
        self._announced = ()
        self._broadcast_append(promote=True)
