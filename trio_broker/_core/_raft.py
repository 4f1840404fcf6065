"""The consensus core: a sans-IO Raft state machine in the spirit of etcd raft's RawNode.

The runtime (or the simulator) drives a :class:`RaftNode` with four calls:

- ``tick()`` once per tick of its clock (time only exists as ticks here);
- ``step(message)`` for every message received from another broker;
- ``propose(command)`` / ``propose_config_change(change)`` / ``transfer_leadership(target)``
  on the leader;
- ``ready()`` / ``advance()``: take what must be persisted, sent and applied, do it, then
  acknowledge. Only one Ready is outstanding at a time; ticks and steps may continue while the
  runtime is persisting it, and their effects go into the next Ready.

Protocol summary (see docs/replication.md): terms, one persisted vote per term, the election
restriction, pre-vote, check-quorum, log matching with a term-skipping hint, commit of
current-term entries only, a no-op entry per new leader, single-server membership changes that
take effect when appended, learners, compaction with snapshot install (DATA_SYNC), and
leadership transfer (``transfer_leadership``: TIMEOUT_NOW, thesis 3.10).

``RaftNode`` is one state machine whose rules read and write the same fields (term, role,
log, progress) and check each other's invariants, so it stays one class, as etcd raft's
``raft`` struct does; its rules live in parts by concern, each a mixin in its own module
(typed against ``_raft_state.RaftState``, for the type checker only: at run time no part
imports this module or another part). This module holds its state (the constructor), the
public queries, ``tick``, the proposals and ``step``, which hands each message to the part
that handles it. The parts:

- ``_raft_elections``: the election timer, pre-vote, campaigns, votes asked, given and
  counted, the roles and check-quorum's lease;
- ``_raft_restart``: what a restart may have lost (a recovering log, an unverified reboot, a
  lost vote) and the votes it withholds meanwhile;
- ``_raft_ready``: :class:`Ready` and its hand-off (``has_ready``, ``take_messages``,
  ``ready``, ``advance``).

Apart from the class: its vocabulary (errors, :class:`Role`, :class:`Progress`) in
``_raft_types``, the log in ``_raft_log``, the messages and entries in ``_raft_messages``,
the ReadIndex bookkeeping in ``_read_index``. Every public name is importable from here.
"""

from __future__ import annotations

import random
from typing import Any, cast

import attrs

from ._raft_elections import Elections
from ._raft_log import RaftLog, RaftLogError
from ._raft_messages import (
    ChangeAction,
    ClusterUpdate,
    ClusterUpdateResponse,
    Config,
    ConfigChange,
    ConfigEntry,
    DataSync,
    DenyReason,
    ElectionRequest,
    ElectionResponse,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    MemberView,
    Message,
    PromoteToLeader,
    Replicate,
    ReplicateResponse,
    SnapshotMeta,
    TimeoutNow,
)
from ._raft_ready import Ready, ReadyHandOff
from ._raft_restart import RestartRules
from ._raft_types import (
    ConfigChangeRefused,
    LeadershipTransferring,
    NotLeader,
    Progress,
    ProgressState,
    RaftError,
    ReadIndexUnavailable,
    Role,
    TooManyReads,
    TransferRefused,
    UsageError,
    voting_rank,
)
from ._read_index import ReadIndex

__all__ = [
    "ConfigChangeRefused",
    "LeadershipTransferring",
    "NotLeader",
    "Progress",
    "ProgressState",
    "RaftError",
    "RaftLogError",
    "RaftNode",
    "ReadIndexUnavailable",
    "Ready",
    "Role",
    "TooManyReads",
    "TransferRefused",
    "UsageError",
]


class RaftNode(Elections, RestartRules, ReadyHandOff):
    """One broker's consensus state machine. Deterministic given its inputs and ``rng``.

    Build it from what storage holds: the persisted ``hard_state``, the ``snapshot`` metadata
    (index 0, term 0 and the bootstrap config for a fresh cluster; an empty config for a broker
    that will join) and the durable ``entries`` after it. ``applied`` is the last index already
    reflected in the state machine (defaults to the snapshot index).

    ``acknowledged``, when storage knows it, is where its log ended at its last durable
    write: everything up to there may have been acknowledged to a leader. A log that now ends
    below it lost acknowledged entries (a checksum found damage and the log was cut before it,
    or a disk lied about a sync), so the broker starts *recovering* until its log reaches that
    index again, learned from a leader: it never campaigns, and votes only for a candidate at
    least as up to date as its log was before the loss (``_beyond_what_was_lost``). A vote on
    its shortened log could elect a leader without an entry that its own acknowledgement
    helped commit (protocol-aware recovery, Alagappan et al., FAST 2018: a damaged log is
    repaired from the cluster, never trusted). A durable commit index beyond the log counts
    as such a loss too. Nothing on this broker's disk may say what it lost: then the leader,
    whose progress record is the independent witness of what it acknowledged, tells it
    (``Replicate.acknowledged``).

    **A reboot votes only once it knows** (docs/reliability.md, "A reboot votes only once it
    knows"). A disk may also lose synced writes without leaving any trace: one that reported
    a flush it did not do loses them when the power goes, and only then (a process that
    crashes leaves every write it made to the kernel, and the disk keeps what it was told to
    sync while it has power). So a broker whose machine rebooted since its store was last
    opened (``HardState.unverified``, set by the runtime when the boot id changed) starts
    ``unverified`` (if it has a past and other voters to hear from): it may have acknowledged
    entries it no longer holds; the same disk may have rolled its term and vote back whole
    (checksum and all), so it starts ``vote_lost`` too ("A lost vote", below: that rule
    first). Until it knows better it grants no vote (a pre-vote, which
    promises nothing, it grants as before) and does not count its own vote when it
    campaigns. It knows better, as TigerBeetle's ``recovering_head`` replica waits for a fresh
    start-view message, once

    - its log holds an entry of a term later than the one it restarted in (``restart_term``):
      the leader that sent it holds every entry committed with our earlier acknowledgements
      (leader completeness), and log matching gave us that leader's log before it;
    - the leader of its term answered its start (``Replicate.start_id``, a number drawn at
      each start, echoed): that leader's log end then (``log_end``, an entry of its term) is
      at least every entry our acknowledgements helped commit;
    - or it heard the log ends of ``voters - quorum + 1`` other voters, from their election
      requests sent in a term later than ``restart_term`` (so none of them can acknowledge
      an entry of our old terms afterwards): any quorum that committed an entry with our
      acknowledgement holds, besides us, one of them. This is how a cluster that lost power
      everywhere at once elects a leader again.

    The last two leave a ``vote_floor``: it votes only for logs at least that up to date
    (and counts its own vote only if its log is), until its log holds an entry of a later
    term. Safe while every entry it lost keeps ``quorum - 1`` intact copies on the other
    voters (one loss at a time), where voting on the shortened log needed ``quorum``. The
    state is durable (``HardState.unverified`` stays set while it is unverified or holds a
    floor): a process restart meanwhile starts it unverified again, never trusting.

    **A lost vote** (docs/reliability.md, "A lost term or vote"). A store whose term or vote
    is missing or fails its checksum (``HardState.vote_lost``) cannot say in which terms this
    broker voted: it may have voted for a candidate in a term later than any it knows, and a
    second vote in that term could elect a second leader. So it starts ``vote_lost`` (and
    ``unverified``): it grants no vote (a pre-vote, as before, promises nothing), counts none
    of its own, and hears the current term of every other voter in what they send (asking
    with a pre-vote round once per election timeout, which every voter answers with its
    term). Once ``voters - quorum + 1`` of them told theirs, the largest, ``M``, bounds every
    term it can have voted in where that vote helped elect a leader: such a leader's quorum
    holds, besides this broker, one of them, which had moved to that term before it voted (or
    campaigned). Terms are heard from its second election timeout on: a vote request the
    leader-to-be sent before the loss could still reach such a voter after it told an older
    term (the one timing assumption here: a message is not older than an election timeout).
    It then moves to term ``M`` as if it had voted in it (``voted_for`` itself, durable with
    the term), and goes on unverified with ``M`` as the term it restarted in (the reboot rule
    then settles what its log may have lost). Until then nothing it learns clears
    ``unverified``.
    """

    def __init__(
        self,
        node_id: Any,
        *,
        hard_state: HardState,
        snapshot: SnapshotMeta,
        entries: list[Entry] | tuple[Entry, ...] = (),
        rng: random.Random,
        applied: int | None = None,
        election_ticks: int = 10,
        heartbeat_ticks: int = 2,
        failure_timeout_ticks: int | None = None,
        max_batch: int = 64,
        max_apply: int = 256,
        pre_vote: bool = True,
        check_quorum: bool = True,
        acknowledged: int | None = None,
        max_reads: int = 4096,
    ) -> None:
        if heartbeat_ticks >= election_ticks:
            raise UsageError("heartbeat_ticks must be smaller than election_ticks")
        self.id = node_id
        self.rng = rng
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.failure_timeout_ticks = failure_timeout_ticks or election_ticks
        self.max_batch = max_batch
        self.max_apply = max_apply
        """At most this many committed entries in one Ready: a bound on the work of the
        runtime's transaction that applies them (a replica catching up applies in steps)."""
        # Without any ack for this long, the leader assumes a loss and probes again.
        self._resend_ticks = max(2 * heartbeat_ticks, election_ticks // 2)
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum

        self.log = RaftLog(snapshot.index, snapshot.term, list(entries))
        self._snapshot_config = snapshot.config
        self.term = hard_state.term
        self.voted_for = hard_state.voted_for
        self.recovering_until: int | None = None
        """While recovering (see the class docstring): the log index to get back to."""
        self.recovering_term = 0
        """While recovering: a term at least that of the last entry it lost."""
        self.losses: list[int] = []
        """The index each loss found since the start went back to (``recovering_until``
        then), oldest first, at most 16: the runtime logs each one, even a loss the leader
        repaired within the same message."""
        # A durable commit index beyond the durable log is storage's own proof that it lost
        # entries this broker acknowledged (a commit is only learned after they were durable).
        found = max(acknowledged or 0, hard_state.commit)
        lost_to = max(found, hard_state.recovering_until)
        if lost_to > self.log.last_index:
            self.recovering_until = lost_to
            # A loss found now bounds the lost entries' terms only by the current term; a
            # loss recorded before keeps its own bound (a restart must not raise it: terms
            # that passed since, without a leader, would then shut out every candidate).
            self.recovering_term = hard_state.recovering_term
            if found > self.log.last_index:
                self.recovering_term = max(self.recovering_term, hard_state.term)
            self.losses.append(lost_to)
            # Storage may hold rows past the log it could read (damaged ones, and what
            # followed them): the first Ready deletes them, in the transaction that persists
            # the recovering state which from then on is the only record of the loss.
            self.log.truncate_from = self.log.last_index + 1
        self.commit = max(min(hard_state.commit, self.log.last_index), snapshot.index)
        self.applied = snapshot.index if applied is None else max(applied, snapshot.index)
        self._persisted_hs = hard_state
        self.config = self._config_at(self.log.last_index)
        self.restart_term = hard_state.term
        """The term this broker started in: it acknowledged no entry of a later term before."""
        self.unverified = bool(
            hard_state.unverified
            and (hard_state.term or self.log.last_index or snapshot.index)
            and not self.config.voters <= {node_id}
        )
        """Whether, since a start after a reboot (``HardState.unverified``), it has not yet
        learned what it may have acknowledged before (see the class docstring): it grants no
        vote meanwhile. A broker without a past, or its group's only voter, never is: its disk
        is all there is (the damage report covers that)."""
        self.vote_lost = bool(
            (hard_state.vote_lost or hard_state.unverified)
            and (hard_state.term or self.log.last_index or snapshot.index)
            and not self.config.voters <= {node_id}
        )
        """Whether its stored term or vote was found lost, or may have been (every start after
        a reboot: a disk that lied about a sync can roll the term and vote back together,
        checksum and all), and it has not yet learned a bound on the terms it may have voted
        in (class docstring, "A lost vote")."""
        self._vote_lost_stored = bool(hard_state.vote_lost)
        """Whether the store recorded the loss (``HardState.vote_lost``). A loss assumed
        from a reboot is not recorded apart: ``HardState.unverified``, durable while the vote
        is unsettled, brings it back at the next start, and the operator's override (``data
        trust-log``), which clears that, settles it too."""
        if self.vote_lost:
            self.unverified = True
            self.restart_term = max(self.restart_term, self.log.last_term)
        self._terms_heard: dict[Any, int] = {}
        """While ``vote_lost``: the largest term each other voter sent."""
        # A number of this start, derived from the rng's state without drawing from it (a
        # draw would move every later election timeout): distinct at each start in practice.
        self.start_id = (hash(rng.getstate()[1]) & 0x7FFFFFFF) or 1
        self.vote_floor: tuple[int, int] | None = None
        """(term, index) a candidate's log must reach to get our vote, learned at the end of
        ``unverified``; None once our own log holds an entry of a later term."""
        self._log_ends: dict[Any, tuple[int, int]] = {}
        """While unverified: the log end each other voter told in an election request."""
        self._told_log_end = 0
        """The last term in which, unverified, it told the other voters its log end."""

        self.role = Role.FOLLOWER
        self.leader_id: Any = None
        self.now = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._reset_randomized_timeout()
        self.votes: dict[Any, bool] = {}
        self.progress: dict[Any, Progress] = {}
        self._term_start_index = 0
        self.transfer_target: Any = None
        """While a leadership transfer is in progress: the voter it goes to (etcd's
        ``leadTransferee``)."""
        self._transfer_elapsed = 0
        self._statuses: dict[Any, str] = {}
        self._announced: tuple[MemberView, ...] = ()

        self._msgs: list[Message] = []
        self._persisted_msgs: list[Message] = []
        self._snapshot_to_install: DataSync | None = None
        self._snapshot_wanted = False
        """Whether the runtime asked for the leader's snapshot (``want_snapshot``)."""
        self._snapshots_to_send: list[Any] = []
        self._inflight: Ready | None = None
        self._append_pending = False
        self.reads = ReadIndex(max_reads)
        """Reads answered without a log entry once confirmed (``read_index``)."""

    # -- public queries ------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether proposals are accepted here (CREATE_QUEUE/APPEND/READ are served here)."""
        return self.role is Role.LEADER

    @property
    def hard_state(self) -> HardState:
        """The current (possibly not yet durable) hard state."""
        return HardState(
            self.term,
            self.voted_for,
            self.commit,
            self.recovering_until or 0,
            self.recovering_term if self.recovering_until else 0,
            self.unverified or self.vote_floor is not None,
            self.vote_lost and self._vote_lost_stored,
        )

    @property
    def cluster_version(self) -> int:
        """The design's ``cluster_version``: the version of the config in force here."""
        return self.config.version

    @property
    def recovering(self) -> bool:
        """Whether this broker lost log entries it had acknowledged and has not got them back
        from a leader yet: it neither votes nor campaigns meanwhile."""
        return self.recovering_until is not None

    # -- driving the node ----------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self.now += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self.vote_lost and self.now % self.election_ticks == 1 % self.election_ticks:
                # Its lost vote waits for the other voters' terms, and a follower of a live
                # leader hears from no other voter: a pre-vote round, which promises nothing
                # and which every voter answers with its term, once per election timeout.
                self._request_votes(pre=True)
            if self.election_elapsed >= self.randomized_timeout:
                if self._promotable():
                    self._campaign()
                elif (
                    self.id in self.config.voters
                    and self.role is Role.FOLLOWER
                    and (self.election_elapsed - self.randomized_timeout) % self.election_ticks == 0
                ):
                    # Recovering, it cannot lead; its log end still helps restarted voters
                    # learn what they may have acknowledged: a pre-vote round it never
                    # follows up (the answers are ignored), once per election timeout. (Its
                    # timer keeps running: how long it has been without a leader is news.)
                    self._request_votes(pre=True)

    def propose(self, command: Any) -> tuple[int, int]:
        """Append ``command`` to the log; returns (term, index) to match it when applied.

        The command is committed only if the entry applied at ``index`` has this ``term``.
        Raises :class:`NotLeader` on any other broker.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.transfer_target is not None:
            # The target must catch up with a log that stops growing (thesis 3.10).
            raise LeadershipTransferring(self.transfer_target)
        entry = Entry(self.term, self.log.last_index + 1, command)
        self.log.append([entry])
        # Replicated when the next Ready is taken: every proposal made meanwhile (while the
        # runtime persists the previous Ready, typically) travels in the same REPLICATE.
        self._append_pending = True
        return entry.term, entry.index

    # -- step ----------------------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Handle one message from another broker. Stale or misdirected input is dropped."""
        if m.dst != self.id or m.src == self.id:
            return
        if self.vote_lost:
            self._note_term(m)
            if self.vote_lost and isinstance(
                m, Replicate | Heartbeat | DataSync | ClusterUpdate | TimeoutNow
            ):
                # Nor does it follow a leader meanwhile: its lost vote may have helped elect
                # a leader of a later term than this sender's, whose entries it may hold; an
                # entry taken (or a suffix cut), an acknowledgement or a heartbeat's echo
                # could then count for this older leader, as its stored term would have
                # refused. Its term is noted (above); the message is otherwise dropped.
                return
        if isinstance(m, ElectionRequest | ElectionResponse) and (
            self.unverified or self.vote_floor is not None
        ):
            self._note_log_end(m)
        if m.term > self.term:
            if isinstance(m, ElectionRequest):
                if self._in_lease() and not m.transfer:
                    # A live leader exists: a disruptive (re)joining broker gets no vote and
                    # does not bump our term (thesis 4.2.3).
                    self._deny(m, DenyReason.LEADER_ALIVE, self.term)
                    return
                if not m.pre_vote:
                    self._become_follower(m.term, None)
            elif isinstance(m, ElectionResponse) and m.pre_vote and m.granted:
                pass  # the future term of a pre-vote; nobody has adopted it yet
            elif isinstance(m, Replicate | Heartbeat | DataSync | ClusterUpdate | TimeoutNow):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if isinstance(m, Replicate | Heartbeat | DataSync | ClusterUpdate):
                # A deposed leader learns the new term from this reply and steps down.
                self._send(self._reply(HeartbeatResponse, m))
            elif isinstance(m, ElectionRequest) and m.pre_vote:
                self._deny(m, DenyReason.STALE_TERM, self.term)
            return

        if isinstance(m, ElectionRequest):
            self._handle_election_request(m)
        elif isinstance(m, ElectionResponse):
            self._handle_election_response(m)
        elif isinstance(m, Replicate):
            self._follow(m.src)
            self._handle_replicate(m)
        elif isinstance(m, Heartbeat):
            self._follow(m.src)
            self.commit = max(self.commit, min(m.commit, self.log.last_index))
            self._send(
                HeartbeatResponse(
                    src=self.id,
                    dst=m.src,
                    term=self.term,
                    cluster_version=self.cluster_version,
                    last_index=self.log.last_index,
                    # (Asked once its lost vote is settled: the echo settles only the log.)
                    start_id=self.start_id if self.unverified and not self.vote_lost else 0,
                    round=m.round,
                )
            )
        elif isinstance(m, DataSync):
            self._follow(m.src)
            self._handle_data_sync(m)
        elif isinstance(m, ClusterUpdate):
            self._follow(m.src)
            self._statuses = {v.node_id: v.status for v in m.members}
            self._send(self._reply(ClusterUpdateResponse, m))
        elif isinstance(m, TimeoutNow):
            if self.role is not Role.LEADER and self._promotable():
                # The leader stopped taking proposals and saw our log match its own: campaign
                # now, skipping pre-vote, which voters in the leader's lease would deny.
                self._become_candidate()
                if self._tally() == "won":
                    self._become_leader()
                else:
                    self._request_votes(transfer=True)
        elif (
            isinstance(m, ReplicateResponse | HeartbeatResponse | ClusterUpdateResponse)
            and self.role is Role.LEADER
        ):
            self._handle_leader_response(m)

    # -- replication -------------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.transfer_target is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.election_ticks:
                # The target did not take over in time (down, partitioned, slow): lead on.
                self.transfer_target = None
        if self.election_elapsed >= self.election_ticks:
            self.election_elapsed = 0
            if self.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
        if self.heartbeat_elapsed >= self.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._prune_removed()
            self._broadcast_heartbeat()
            self._maybe_announce()

    def _quorum_active(self) -> bool:
        """Check-quorum: did a majority of the configured voters answer in the last timeout?"""
        active = 0
        for v in self.config.voters:
            pr = self.progress.get(v)
            if v == self.id or (pr is not None and pr.recent_active):
                active += 1
        for v, pr in self.progress.items():
            if v != self.id:
                pr.recent_active = False
        return active >= self.config.quorum()

    def _broadcast_heartbeat(self) -> None:
        round_ = self.reads.next_round()  # (every broadcast is a round: _read_index)
        for m in sorted(self.progress):
            if m == self.id:
                continue
            pr = self.progress[m]
            self._send(
                Heartbeat(
                    src=self.id,
                    dst=m,
                    term=self.term,
                    cluster_version=self.cluster_version,
                    commit=min(pr.match, self.commit),
                    round=round_,
                )
            )

    def _broadcast_append(self, promote: bool = False, empty_ok: bool = False) -> None:
        """Send new entries to every member; with ``empty_ok``, also spread a new commit."""
        for m in sorted(self.progress):
            if m != self.id:
                self._send_append(m, promote=promote, probe_empty=empty_ok)

    def _send_append(self, peer: Any, promote: bool = False, probe_empty: bool = False) -> None:
        pr = self.progress[peer]
        if pr.state is ProgressState.SNAPSHOT or (pr.paused and not promote):
            return
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None or prev < self.log.snapshot_index:
            # The entries this member needs are compacted: ship the state machine instead.
            pr.state = ProgressState.SNAPSHOT
            pr.snapshot_sent_at = self.now
            self._snapshots_to_send.append(peer)
            return
        hi = min(self.log.last_index, prev + self.max_batch)
        entries = tuple(self.log.slice(prev + 1, hi + 1))
        if not entries and not probe_empty and not promote and pr.state is ProgressState.REPLICATE:
            return
        cls = PromoteToLeader if promote else Replicate
        probing = pr.state is not ProgressState.REPLICATE
        if probing:
            pr.probe += 1
        self._send(
            cls(
                src=self.id,
                dst=peer,
                term=self.term,
                cluster_version=self.cluster_version,
                prev_log_index=prev,
                prev_log_term=prev_term,
                entries=entries,
                leader_commit=self.commit,
                acknowledged=pr.lost_to if pr.lost_to > pr.match else 0,
                start_id=pr.start_id,
                log_end=pr.start_log_end if pr.start_id else 0,
                probe=pr.probe if probing else 0,
            )
        )
        if pr.state is ProgressState.REPLICATE:
            if prev <= pr.match:
                pr.last_progress = self.now  # nothing was outstanding: start the clock
            pr.next = hi + 1
        else:
            pr.last_progress = self.now
            pr.paused = True

    def _handle_leader_response(
        self, m: ReplicateResponse | HeartbeatResponse | ClusterUpdateResponse
    ) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.last_heard = self.now
        if m.src == self.transfer_target and not isinstance(m, ReplicateResponse):
            self._maybe_send_timeout_now(m.src)  # again, in case the first one was lost
        if isinstance(m, HeartbeatResponse):
            self.reads.echo(m.src, m.round)
            if len(self.reads):
                self._confirm_reads()
            if m.start_id != pr.start_id:
                # It restarted and asks what it may have acknowledged: everything that could
                # commit with its acknowledgements is in our log now (see RaftNode).
                pr.start_id, pr.start_log_end = m.start_id, self.log.last_index
                if m.start_id:
                    self._send_append(m.src, probe_empty=True)
            stalled = self.now - pr.last_progress >= self._resend_ticks
            if pr.state is ProgressState.SNAPSHOT:
                if self.now - pr.snapshot_sent_at >= self.election_ticks:
                    pr.state, pr.paused, pr.next = ProgressState.PROBE, False, pr.match + 1
                    self._send_append(m.src)
            elif (
                m.last_index is not None
                and m.last_index < pr.match
                and pr.state is ProgressState.REPLICATE
                and pr.next == pr.match + 1
            ):
                # Its log ends below what it acknowledged (or this answer left before its last
                # acknowledgement): nothing is outstanding, so a probe costs nothing and its
                # answer decides (see _went_backwards).
                pr.state, pr.paused = ProgressState.PROBE, False
                self._send_append(m.src, probe_empty=True)
            elif stalled and (pr.paused or pr.match < self.log.last_index):
                # Nothing moved for a while although entries are outstanding: something was
                # lost (a lost rejection or the tail of the stream). Probe from the match.
                pr.state, pr.paused, pr.next = ProgressState.PROBE, False, pr.match + 1
                self._send_append(m.src, probe_empty=True)
            return
        if isinstance(m, ClusterUpdateResponse):
            return
        if pr.state is ProgressState.SNAPSHOT and not m.success:
            return
        pr.last_progress = self.now
        if m.success:
            if m.match_index > pr.match:
                pr.match = m.match_index
            if pr.lost_to and pr.match >= pr.lost_to:
                pr.lost_to = 0  # back where it was: nothing lost any more
            pr.next = max(pr.next, pr.match + 1)
            was_replicating = pr.state is ProgressState.REPLICATE
            pr.state, pr.paused = ProgressState.REPLICATE, False
            if m.src == self.transfer_target:
                self._maybe_send_timeout_now(m.src)
            if self._maybe_commit():
                self._broadcast_append()  # (the commit rides on the next REPLICATE/heartbeat)
            if m.src not in self.progress:
                pass  # (removed from the configuration by that commit)
            elif pr.next <= self.log.last_index or not was_replicating:
                # Leaving probe: also tells the member the commit index it may now apply.
                self._send_append(m.src, probe_empty=not was_replicating)
            return
        if pr.state is ProgressState.REPLICATE:
            if m.rejected_index <= pr.match:
                return  # stale
        elif m.rejected_index != pr.next - 1 or (m.probe and m.probe != pr.probe):
            # A stale answer to an older probe (one at the same index, overtaken on the way,
            # may hint below a match learned since: it must not look like a lost log).
            return
        elif self._went_backwards(pr, m):
            # It acknowledged up to ``match``, and now its log ends below it: its disk lost
            # synced writes. Not caught up: probe from where its log really ends, stop counting
            # it towards commits it no longer holds, and tell it what it lost.
            pr.lost_to = max(pr.lost_to, pr.match)
            pr.match = 0
        if m.hint_term > 0:
            nxt = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
        else:
            nxt = m.hint_index
        pr.next = max(min(nxt, m.rejected_index - 1) + 1, pr.match + 1, 1)
        pr.state, pr.paused = ProgressState.PROBE, False
        self._send_append(m.src, probe_empty=True)

    def _went_backwards(self, pr: Progress, m: ReplicateResponse) -> bool:
        """Whether the rejection of the current probe (whose ``prev_log_index`` is at least
        ``pr.match``) shows a log that ends below ``pr.match``.

        A member that still holds what it acknowledged answers with a hint at or above
        ``match``: its log matches ours up to there, and our terms up to the probe's are at
        most the probe's term. Only a log that lost acknowledged entries hints below it.
        (In the replicate state a rejection may be an older message overtaken by later
        acknowledgements: it only sends the member back to probing from ``match``, whose
        answer then decides.)"""
        return m.hint_index < pr.match

    def _quorum_size(self) -> int:
        return self.config.quorum()

    def _maybe_commit(self) -> bool:
        """Commit the highest index a quorum of configured voters holds durably.

        Only an entry of the current term is committed by counting (paper 5.4.2, Figure 8);
        earlier entries commit with it. The leader counts itself only for entries it has
        persisted (advance()).
        """
        voters = self.config.voters
        if not voters:
            return False
        matches = []
        for v in voters:
            if v == self.id:
                matches.append(self.log.persisted_index)
            else:
                pr = self.progress.get(v)
                matches.append(pr.match if pr is not None else 0)
        matches.sort(reverse=True)
        q = self._quorum_size()
        if q > len(matches):
            return False
        index = matches[q - 1]
        if index > self.commit and self._can_commit_by_counting(index):
            self.commit = index
            self._after_commit()
            return True
        return False

    def _can_commit_by_counting(self, index: int) -> bool:
        return self.log.term(index) == self.term

    def _handle_replicate(self, m: Replicate) -> None:
        if m.start_id and m.start_id == self.start_id and self.unverified:
            # The leader answers our start: its log end then bounds what we acknowledged.
            self._verified((m.term, m.log_end))
        if m.acknowledged > max(self.log.last_index, self.recovering_until or 0):
            # The leader saw us acknowledge up to there: our disk lost it. Recover. (It says
            # so in every REPLICATE until it sees us back there: a loss is counted once.)
            self.recovering_until = m.acknowledged
            self.recovering_term = max(self.recovering_term, self.term)
            self.losses = [*self.losses[-15:], m.acknowledged]
        if m.prev_log_index < self.commit:
            # Our committed prefix is in every later leader's log (leader completeness), so
            # only the part after our commit needs checking.
            if m.prev_log_index + len(m.entries) <= self.commit:
                self._ack(m, self.commit)
                return
            m = attrs.evolve(
                m,
                prev_log_index=self.commit,
                prev_log_term=cast(int, self.log.term(self.commit)),  # (committed: in the log)
                entries=tuple(e for e in m.entries if e.index > self.commit),
            )
        if self.log.match_term(m.prev_log_index, m.prev_log_term):
            last = self.log.maybe_append(m.prev_log_index, m.entries, self.commit)
            if self.log.truncate_from is not None or any(
                isinstance(e.payload, ConfigEntry) for e in m.entries
            ):
                self._set_config(self._config_at(self.log.last_index))
            self.commit = max(self.commit, min(m.leader_commit, last))
            self._check_recovered()
            self._check_verified()
            self._ack(m, last)
        else:
            hint_index = min(m.prev_log_index, self.log.last_index)
            hint_index = self.log.find_conflict_by_term(hint_index, m.prev_log_term)
            self._persisted_msgs.append(
                ReplicateResponse(
                    src=self.id,
                    dst=m.src,
                    term=self.term,
                    cluster_version=self.cluster_version,
                    success=False,
                    rejected_index=m.prev_log_index,
                    hint_index=hint_index,
                    hint_term=self.log.term(hint_index) or 0,
                    probe=m.probe,
                )
            )

    def _ack(self, m: Replicate | DataSync, match: int) -> None:
        # Sent only after the entries up to ``match`` are durable: persisted_messages.
        self._persisted_msgs.append(
            ReplicateResponse(
                src=self.id,
                dst=m.src,
                term=self.term,
                cluster_version=self.cluster_version,
                success=True,
                match_index=match,
                probe=m.probe if isinstance(m, Replicate) else 0,
            )
        )

    # -- snapshots ---------------------------------------------------------------------------

    def compact(self, index: int) -> SnapshotMeta:
        """Drop log entries up to ``index``: the runtime's state machine now stands in for them.

        ``index`` must be applied and durable. Returns the snapshot metadata to store with the
        state machine (and to delete the log up to). Replicas that need older entries get
        DATA_SYNC.
        """
        if index > self.applied:
            raise UsageError(f"compact({index}) beyond applied index {self.applied}")
        config = self._config_at(index)
        self.log.compact(index)
        self._snapshot_config = config
        return SnapshotMeta(self.log.snapshot_index, self.log.snapshot_term, config)

    def make_data_sync(self, peer: Any, index: int, data: Any) -> DataSync:
        """Build the DATA_SYNC for ``peer`` from the state machine ``data`` at applied ``index``."""
        term = self.log.term(index)
        if term is None or index > self.applied:
            raise UsageError(f"no snapshot possible at {index}")
        meta = SnapshotMeta(index, term, self._config_at(index))
        return DataSync(
            src=self.id,
            dst=peer,
            term=self.term,
            cluster_version=self.cluster_version,
            snapshot=meta,
            data=data,
        )

    def want_snapshot(self) -> None:
        """The runtime cannot apply the next committed entries: one reads a stored value that
        is damaged here and that no other member holds any more (deleted by retention since;
        docs/reliability.md, "A value nobody holds any more"). The next snapshot from the
        leader (DATA_SYNC) is then installed even where this broker's commit index is already
        past its index, or its log already holds that prefix, as long as the snapshot is past
        what is applied or being applied (:meth:`_wanted_fits`): its state holds the effect
        of those entries, so the value is no longer needed. The log after the snapshot's
        index is kept (written again with the install), and the commit index never moves
        back."""
        if self._snapshot_to_install is None:  # (one waiting already stands in)
            self._snapshot_wanted = True

    def drop_snapshot_wish(self) -> None:
        """The held transaction completed (its value was repaired, or a snapshot stands in
        for it): no snapshot inside the committed log is installed any more. A wish left set
        would install a later one over entries applied since."""
        self._snapshot_wanted = False

    def _wanted_fits(self, index: int) -> bool:
        """Whether a wanted snapshot at ``index`` is past everything applied, counting the
        outstanding Ready's committed entries (the runtime is applying them now; ``applied``
        moves to them in advance()): installed behind them, the state would go back to
        ``index`` while the core believes them applied, and they would never be applied
        again on this broker."""
        if index <= self.applied:
            return False
        rd = self._inflight
        if rd is None:
            return True
        if rd.committed_entries and index < rd.committed_entries[-1].index:
            return False
        return rd.snapshot is None or index >= rd.snapshot.snapshot.index

    def snapshot_stands_in(self, index: int) -> bool:
        """Whether a snapshot waiting to be installed (by the next Ready) covers ``index``:
        the runtime may then complete the outstanding Ready without applying its committed
        entries up to there (their effect is in the snapshot's state, which replaces the
        state they would have changed)."""
        pending = self._snapshot_to_install
        return pending is not None and pending.snapshot.index >= index

    def _handle_data_sync(self, m: DataSync) -> None:
        meta = m.snapshot
        wanted = self._snapshot_wanted and self._wanted_fits(meta.index)
        if meta.index <= self.commit and not wanted:
            self._ack(m, self.commit)
            return
        self._snapshot_wanted = False
        if self.log.match_term(meta.index, meta.term):
            self.commit = max(self.commit, meta.index)
            if wanted:
                # Asked for (``want_snapshot``): its state stands in for the entries up to
                # its index, which this log already holds; the entries after it are kept
                # (the install replaces the whole stored log: the same Ready writes them
                # again, so nothing this broker acknowledged is ever missing from its disk).
                kept = self.log.slice(meta.index + 1, self.log.last_index + 1)
                self.log.restore(meta.index, meta.term)
                self.log.append(kept)
                self._snapshot_config = meta.config
                self._snapshot_to_install = m
            # (Else we already hold that prefix: we just learn it is committed.)
            self._ack(m, meta.index)
            return
        self.log.restore(meta.index, meta.term)
        self._snapshot_config = meta.config
        self._set_config(meta.config)
        self.commit = meta.index
        self._snapshot_to_install = m  # applied once the runtime installed it (advance())
        self._check_recovered()
        self._ack(m, meta.index)

    # -- membership --------------------------------------------------------------------------

    @property
    def config_committed(self) -> bool:
        """Whether the configuration in force here is committed (a leader refuses another
        membership change until it is)."""
        return self._config_index() <= self.commit

    def member_statuses(self) -> dict[Any, MemberView]:
        """The CLUSTER_QUERY view: role and active/inactive per configured member.

        On the leader, status comes from its own failure detector (last tick it heard from each
        member, against ``failure_timeout_ticks``); elsewhere from the last CLUSTER_UPDATE.
        Status is informational: it never changes the quorum.
        """
        views = {}
        for m in sorted(self.config.members):
            if m == self.leader_id:
                role = "leader"
            elif m in self.config.voters:
                role = "replica"
            else:
                role = "learner"
            if self.is_leader:
                status = self._status_of(m)
            else:
                status = self._statuses.get(m, "active")
            views[m] = MemberView(m, role, status)
        return views

    def caught_up(self, node_id: Any) -> bool:
        """Whether a learner holds everything committed, so promoting it will not stall commits."""
        pr = self.progress.get(node_id)
        return self.is_leader and pr is not None and pr.match >= self.commit

    def propose_config_change(self, change: ConfigChange) -> tuple[int, int]:
        """Propose one single-server membership change.

        Refused while an earlier change is uncommitted, and until this leader has committed an
        entry of its own term (the fix from the Raft thesis errata for single-server changes).
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.transfer_target is not None:
            raise ConfigChangeRefused("a leadership transfer is in progress")
        if self._config_index() > self.commit:
            raise ConfigChangeRefused("a membership change is already in progress")
        if self.commit < self._term_start_index:
            raise ConfigChangeRefused("leader has not committed an entry of its term yet")
        c = self.config
        n = change.node_id
        if change.action is ChangeAction.ADD_LEARNER:
            if n in c.members:
                raise ConfigChangeRefused(f"{n!r} is already a member")
            new = Config(c.voters, c.learners | {n}, c.version + 1)
        elif change.action is ChangeAction.PROMOTE:
            if n not in c.learners:
                raise ConfigChangeRefused(f"{n!r} is not a learner")
            new = Config(c.voters | {n}, c.learners - {n}, c.version + 1)
        elif change.action is ChangeAction.REMOVE:
            if n not in c.members:
                raise ConfigChangeRefused(f"{n!r} is not a member")
            if c.voters == {n}:
                raise ConfigChangeRefused("cannot remove the last voter")
            new = Config(c.voters - {n}, c.learners - {n}, c.version + 1)
        else:  # pragma: no cover
            raise ConfigChangeRefused(f"unknown change {change!r}")
        entry = Entry(self.term, self.log.last_index + 1, ConfigEntry(new, change))
        self.log.append([entry])
        self._set_config(new)
        self._broadcast_append()
        return entry.term, entry.index

    def _status_of(self, member: Any) -> str:
        if member == self.id:
            return "active"
        pr = self.progress.get(member)
        if pr is None or self.now - pr.last_heard > self.failure_timeout_ticks:
            return "inactive"
        return "active"

    def _maybe_announce(self) -> None:
        """CLUSTER_UPDATE to every member when the role/status view changed."""
        view = tuple(self.member_statuses().values())
        if view == self._announced:
            return
        self._announced = view
        for m in sorted(self.config.members):
            if m != self.id:
                self._send(
                    ClusterUpdate(
                        src=self.id,
                        dst=m,
                        term=self.term,
                        cluster_version=self.cluster_version,
                        members=view,
                    )
                )

    def _config_index(self) -> int:
        found = self.log.last_config_index()
        return self.log.snapshot_index if found is None else found

    def _config_at(self, index: int) -> Config:
        """The configuration in force at ``index``: the latest config entry at or before it."""
        found = self.log.last_config_index(index)
        if found is None:
            return self._snapshot_config
        config: Config = self.log.entry(found).payload.config
        return config

    def _set_config(self, config: Config) -> None:
        """A configuration takes effect as soon as it is in the log (thesis 4.1)."""
        self.config = config
        if self.transfer_target is not None and self.transfer_target not in config.voters:
            self.transfer_target = None
        if self.role is Role.LEADER:
            for m in config.members:
                if m not in self.progress:
                    self.progress[m] = Progress(
                        match=0, next=self.log.last_index, last_heard=self.now
                    )
            # A removed member keeps receiving the log until its removal commits, so that it
            # learns it was removed and stops campaigning (see _after_commit).
            if self._maybe_commit():
                self._broadcast_append(empty_ok=True)

    def _prune_removed(self) -> None:
        """Stop replicating to removed members once they hold their removal (or are gone)."""
        if self._config_index() > self.commit:
            return
        for m in list(self.progress):
            if m == self.id or m in self.config.members:
                continue
            pr = self.progress[m]
            if pr.match >= self._config_index() or self._status_of(m) == "inactive":
                del self.progress[m]

    def _after_commit(self) -> None:
        if self._config_index() > self.commit:
            return
        self._prune_removed()
        # A leader removed from the membership steps down once its removal is committed.
        if self.id not in self.config.voters:
            self._broadcast_append(empty_ok=True)
            self._become_follower(self.term, None)

    # -- leading -----------------------------------------------------------------------------

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

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _reply(self, cls: type, m: Message) -> Message:
        return self._reply_to(cls, m.src)

    def _reply_to(self, cls: type, dst: Any) -> Message:
        reply: Message = cls(
            src=self.id, dst=dst, term=self.term, cluster_version=self.cluster_version
        )
        return reply

    def __repr__(self) -> str:
        return (
            f"<RaftNode {self.id!r} {self.role.value} term={self.term} "
            f"commit={self.commit} last={self.log.last_index}>"
        )
