"""The restart rules, a part of :class:`~._raft.RaftNode`: what a broker may have lost, and
the votes it withholds until it knows (the class docstring of ``RaftNode`` gives the
argument): *recovering* (its log lost entries it acknowledged: it votes only for a
candidate beyond what was lost, and never campaigns), *unverified* after a reboot (no vote
until a leader answers its start, its log holds an entry of a later term, or enough voters
told their log ends; then a ``vote_floor``) and the *lost vote* (no vote until enough voters
told their terms; it then moves to the largest as if it had voted in it). Also the log end
an election answer tells, which restarted voters wait for.

Typed against ``_raft_state.RaftState`` for the type checker only (see ``_raft_elections``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._raft_messages import ElectionRequest, ElectionResponse, Message
from ._raft_types import Role

if TYPE_CHECKING:
    from ._raft_state import RaftState as _Node
else:
    _Node = object


class RestartRules(_Node):
    """Mixed into :class:`~._raft.RaftNode`: the rules of a restart (fields:
    ``recovering_until``, ``recovering_term``, ``unverified``, ``vote_floor``, ``vote_lost``,
    ``restart_term``, ``_log_ends``, ``_terms_heard``)."""

    def _log_trusted(self) -> bool:
        """Whether this broker's log may speak in elections: not while it is recovering (its
        log lost entries it acknowledged, so it cannot vouch for a candidate's, nor lead)."""
        return self.recovering_until is None

    def _check_recovered(self) -> None:
        """A recovering broker whose log again reaches what it had acknowledged (through a
        leader, whose log holds everything committed) may vote again."""
        if self.recovering_until is not None and self.log.last_index >= self.recovering_until:
            self.recovering_until = None
            self.recovering_term = 0

    def _vouches_for(self, last_term: int, last_index: int, pre_vote: bool) -> bool:
        """Whether this broker may vote (or count its own vote) for a log ending at
        (``last_term``, ``last_index``) as far as its restart goes: no real vote while
        unverified, and none below the floor learned since (class docstring). A pre-vote
        promises nothing and changes no term: granted as before, so that the candidates'
        vote requests (the log ends an unverified broker waits for) can follow."""
        if self.unverified and not pre_vote:
            return False
        return self.vote_floor is None or (last_term, last_index) >= self.vote_floor

    def _beyond_what_was_lost(self, m: ElectionRequest) -> bool:
        """The election restriction (paper 5.4.1) against the log a recovering broker had
        before the loss, whose end is at most (``recovering_term``, ``recovering_until``):
        a candidate at least that up to date holds every entry whose commit counted on this
        broker's acknowledgement, exactly as if the log were still whole. So a group whose
        damaged brokers are a majority still elects a broker whose log is intact and newest,
        which repairs them; it stays without a leader only when none is (when too few
        intact copies remain): it refuses to guess."""
        lost = (self.recovering_term, self.recovering_until or 0)
        return (m.last_log_term, m.last_log_index) >= lost

    def _log_end_told(self) -> dict[str, Any]:
        """The log end an election answer tells (``_note_log_end``): the end of the part of
        our log that our acknowledgements can have helped commit. A broker whose log's
        configuration does not count it (removed by it, or a learner) tells the index of that
        configuration's entry: every entry after it was appended under a configuration
        without its vote, so its copy of them proves nothing, and a floor at that tail,
        which perhaps no other voter holds and which a removed broker that knows its removal
        committed never campaigns for, would wait for ever (a gap found by the simulator in
        the rule that started every restart unverified)."""
        index, term = self.log.last_index, self.log.last_term
        if self.id not in self.config.voters:
            at = self._config_index()
            at_term = self.log.term(at)
            if at < index and at_term is not None:
                index, term = at, at_term
        return {"last_log_index": index, "last_log_term": term, "voter_term": self.term}

    def _note_log_end(self, m: ElectionRequest | ElectionResponse) -> None:
        """An election request tells the sender's log end, and so does the answer to one;
        once ``voters - quorum + 1`` other voters told theirs from a term later than ours at
        the start, any ``voters - quorum + 1`` of them include one that holds every entry our
        acknowledgements helped commit (if only we lost it): the largest log end of the
        ``voters - quorum + 1`` smallest is at least that entry. (The smallest such set,
        lowered as more voters tell theirs, so that a broker with a long uncommitted tail,
        perhaps removed or gone, does not set a floor only it reaches.)"""
        if isinstance(m, ElectionResponse):
            if m.last_log_index is None or m.last_log_term is None or m.voter_term is None:
                return
            sender_term = m.voter_term
            end = (m.last_log_term, m.last_log_index)
        else:
            sender_term = m.term - 1 if m.pre_vote else m.term
            end = (m.last_log_term, m.last_log_index)
        voters = self.config.voters
        if sender_term <= self.restart_term or m.src not in voters or self.vote_lost:
            return
        self._log_ends[m.src] = max(self._log_ends.get(m.src, end), end)
        heard = sorted(v for k, v in self._log_ends.items() if k in voters and k != self.id)
        needed = len(voters) - self.config.quorum() + 1
        if len(heard) >= needed:
            # A log with an entry of a later term than our start holds all of it anyway (the
            # leader that wrote it did): no floor beyond the start of that term.
            self._verified(min(heard[needed - 1], (self.restart_term + 1, 0)))

    def _verified(self, floor: tuple[int, int]) -> None:
        """It knows, from the cluster, a log end at least every entry it acknowledged. Each
        such bound is enough alone: a later one may lower the floor, never raise it."""
        if self.vote_lost:
            return  # (nothing it hears about logs bounds the terms it voted in)
        if not self.unverified:
            if self.vote_floor is None:
                return
            floor = min(floor, self.vote_floor)
        self.unverified = False
        own = (self.log.last_term, self.log.last_index)
        self.vote_floor = floor if floor > own else None
        if self.vote_floor is None:
            self._log_ends = {}
        if (
            self.role is Role.CANDIDATE
            and self.voted_for == self.id
            and self.id not in self.votes
            and self._vouches_for_itself(pre_vote=False)
        ):
            self.votes[self.id] = True  # its own vote, which it may give now
            if self._tally() == "won":
                self._after_win()

    def _check_verified(self) -> None:
        """Its log holds an entry of a term later than its start: from a leader that holds
        everything our earlier acknowledgements could have committed, with its log before."""
        if self.log.last_term > self.restart_term and not self.vote_lost:
            self.unverified = False
            self._log_ends = {}
            self.vote_floor = None

    def _note_term(self, m: Message) -> None:
        """While ``vote_lost``: the sender's current term as its message tells it (a pre-vote
        request asks for the term after it; an election answer tells the voter's own when it
        can). Once ``voters - quorum + 1`` other voters told theirs, their largest bounds
        every term in which this broker's lost vote can have helped elect a leader (class
        docstring): it moves there as if it had voted in it, and votes only in later terms."""
        voters = self.config.voters
        if m.src not in voters or self.now < self.election_ticks:
            # (Not in its first election timeout: a vote request sent before the loss may
            # still be on its way to a voter that tells its older term meanwhile.)
            return
        if isinstance(m, ElectionRequest):
            sender_term = m.term - 1 if m.pre_vote else m.term
        elif isinstance(m, ElectionResponse):
            if m.voter_term is not None:
                sender_term = m.voter_term
            elif m.pre_vote:
                return  # (the term asked for, not the voter's)
            else:
                sender_term = m.term
        else:
            sender_term = m.term
        self._terms_heard[m.src] = max(self._terms_heard.get(m.src, 0), sender_term)
        heard = [t for k, t in self._terms_heard.items() if k in voters and k != self.id]
        if len(heard) < len(voters) - self.config.quorum() + 1:
            return
        bound = max(heard)
        self.vote_lost = False
        self._terms_heard = {}
        if bound > self.term:
            self._become_follower(bound, None)
        if self.voted_for is None:
            self.voted_for = self.id  # it may have voted in this term: it votes in no other
        self.restart_term = max(self.restart_term, self.term)
