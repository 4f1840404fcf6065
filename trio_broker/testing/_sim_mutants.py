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
    """Loses ``voted_for`` on restart, so it can vote twice in one term. It also votes at
    once after a reboot, as every broker did before the unverified state (``RaftNode``, "A
    reboot votes only once it knows"): a rebooted broker that waits for news of a later term
    before any new vote rarely votes again in the term it forgot (a core that only forgot
    its vote survived 1,000 seeds when every crash started unverified)."""

    def __init__(self, node_id: Any, *, hard_state: Any, **kwargs: Any) -> None:
        super().__init__(node_id, hard_state=attrs.evolve(hard_state, voted_for=None), **kwargs)

    def _vouches_for(self, last_term: int, last_index: int, pre_vote: bool) -> bool:
        return True


class NoElectionRestriction(RaftNode):
    """Votes for any candidate, even one whose log lacks committed entries."""

    def _log_ok_for(self, m: Any) -> bool:
        return True


class CommitOldTerm(RaftNode):
    """Commits entries of earlier terms by counting replicas (the Figure 8 bug)."""

    def _can_commit_by_counting(self, index: int) -> bool:
        return self.log.term(index) is not None


class SendBeforePersist(RaftNode):
    """Lets acknowledgements and votes leave before the disk write they promise. It also
    votes at once after a reboot (see ``ForgetVote``): a rebooted broker that waits to learn
    what it may have acknowledged is shielded from most of what a crash then takes (2 of
    1,000 seeds caught the mutant that only sends early when every crash was a reboot)."""

    def _vouches_for(self, last_term: int, last_index: int, pre_vote: bool) -> bool:
        return True

    def ready(self) -> Ready:
        rd = super().ready()
        return attrs.evolve(rd, messages=rd.messages + rd.persisted_messages, persisted_messages=())


class TrustDamagedLog(RaftNode):
    """Votes and campaigns while recovering: trusts a log that lost entries it acknowledged
    (cut at a checksum mismatch, or shortened by a disk that lost synced writes), from the
    moment it knows of the loss. (A rebooted broker also waits to learn what it may have
    acknowledged, the rule ``trust_log_after_reboot`` drops, which covers a loss whose
    entries keep ``quorum - 1`` other copies; this core drops both while it knows its log is
    short.)"""

    def _log_trusted(self) -> bool:
        return True

    def _vouches_for(self, last_term: int, last_index: int, pre_vote: bool) -> bool:
        return self.recovering or super()._vouches_for(last_term, last_index, pre_vote)


class TrustRegressedFollower(RaftNode):
    """The leader believes its record of what a follower acknowledged even when the
    follower's answers show a log that went backwards: it never repairs that follower."""

    def _went_backwards(self, pr: Any, m: Any) -> bool:
        return False


class TrustLogAfterReboot(RaftNode):
    """Votes as soon as its machine rebooted, on whatever its disk kept: a disk that lost
    synced writes without a trace makes it vouch for a log it no longer has (before the
    rule, every broker did this until a leader told it what it had lost)."""

    def _vouches_for(self, last_term: int, last_index: int, pre_vote: bool) -> bool:
        return True


class ReadWithoutConfirmation(RaftNode):
    """Answers reads (ReadIndex) without a majority's echo of a heartbeat round sent after
    they arrived: a leader already replaced, which does not know it yet, answers from its
    stale state."""

    def take_reads(self) -> tuple[list[tuple[Any, int]], list[tuple[Any, Exception]]]:
        self.reads.confirmed_round = self.reads.round + 1
        return super().take_reads()


class TrustLostVote(RaftNode):
    """Votes at once on a store whose term and vote were found lost (``HardState.vote_lost``):
    it may vote a second time in a term in which its lost vote helped elect a leader."""

    def __init__(self, node_id: Any, *, hard_state: Any, **kwargs: Any) -> None:
        super().__init__(node_id, hard_state=attrs.evolve(hard_state, vote_lost=False), **kwargs)


MUTANTS: dict[str, type[RaftNode]] = {
    "minority_commit": MinorityCommit,
    "forget_vote": ForgetVote,
    "no_election_restriction": NoElectionRestriction,
    "commit_old_term": CommitOldTerm,
    "send_before_persist": SendBeforePersist,
    "trust_damaged_log": TrustDamagedLog,
    "trust_regressed_follower": TrustRegressedFollower,
    "trust_log_after_reboot": TrustLogAfterReboot,
    "trust_lost_vote": TrustLostVote,
}

TARGETED_MUTANTS: dict[str, type[RaftNode]] = {
    "read_without_confirmation": ReadWithoutConfirmation,
}
"""Mutants a scenario written for them catches, which the swarm rarely does: a stale read
needs a leader cut off (and unaware of it) before it proposes anything more, since a read
also waits for every entry the leader held when it arrived (``tests/test_read_index_sim.py``:
the simulator's own read checks fail the mutant's run of that scenario)."""
