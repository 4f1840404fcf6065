"""Deliberately broken cores: the simulator must catch every one of them.

Each mutant is a small RaftNode subclass breaking exactly one rule. A simulator that lets a
mutant pass on its default seed count is not testing that rule.
"""

from __future__ import annotations

from typing import Any

import attrs

from .._core._raft import RaftNode, Ready


class MinorityCommit(RaftNode):
    """Commits as soon as the leader alone holds an entry (quorum of one)."""

    def _quorum_size(self) -> int:
        return 1


class ForgetVote(RaftNode):
    """Loses ``voted_for`` on restart, so it can vote twice in one term."""

    def __init__(self, node_id: Any, *, hard_state: Any, **kwargs: Any) -> None:
        super().__init__(node_id, hard_state=attrs.evolve(hard_state, voted_for=None), **kwargs)


class NoElectionRestriction(RaftNode):
    """Votes for any candidate, even one whose log lacks committed entries."""

    def _log_ok_for(self, m: Any) -> bool:
        return True


class CommitOldTerm(RaftNode):
    """Commits entries of earlier terms by counting replicas (the Figure 8 bug)."""

    def _can_commit_by_counting(self, index: int) -> bool:
        return self.log.term(index) is not None


class SendBeforePersist(RaftNode):
    """Lets acknowledgements and votes leave before the disk write they promise."""

    def ready(self) -> Ready:
        rd = super().ready()
        return attrs.evolve(rd, messages=rd.messages + rd.persisted_messages, persisted_messages=())


class TrustDamagedLog(RaftNode):
    """Votes and campaigns while recovering: trusts a log that lost entries it acknowledged
    (cut at a checksum mismatch, or shortened by a disk that lost synced writes)."""

    def _log_trusted(self) -> bool:
        return True


class TrustRegressedFollower(RaftNode):
    """The leader believes its record of what a follower acknowledged even when the
    follower's answers show a log that went backwards: it never repairs that follower."""

    def _went_backwards(self, pr: Any, m: Any) -> bool:
        return False


MUTANTS: dict[str, type[RaftNode]] = {
    "minority_commit": MinorityCommit,
    "forget_vote": ForgetVote,
    "no_election_restriction": NoElectionRestriction,
    "commit_old_term": CommitOldTerm,
    "send_before_persist": SendBeforePersist,
    "trust_damaged_log": TrustDamagedLog,
    "trust_regressed_follower": TrustRegressedFollower,
}
