"""The consensus core: a sans-IO Raft state machine in the spirit of etcd raft's RawNode.

The runtime (or the simulator) drives a :class:`RaftNode` with five calls:

- ``tick()`` once per tick of its clock (time only exists as ticks here);
- ``step(message)`` for every message received from another broker;
- ``propose(command)`` / ``propose_config_change(change)`` / ``transfer_leadership(target)``
  on the leader;
- ``ready()`` / ``advance()``: take what must be persisted, sent and applied, do it, then
  acknowledge. Only one Ready is outstanding at a time; ticks and steps may continue while the
  runtime is persisting it, and their effects go into the next Ready;
- ``peer_reconnected(peer)`` each time its link to another broker is established (again):
  what it sends from then on may reach a new process of that broker.

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
- ``_raft_replication``: the leader's ticks, REPLICATEs and heartbeats, the progress of each
  member, the commit by counting; the follower's log matching and acknowledgements;
- ``_raft_snapshots``: compaction, DATA_SYNC built and installed, a snapshot asked for;
- ``_raft_membership``: configuration changes, the configuration at an index, removed
  members pruned, the members' status;
- ``_raft_leading``: leadership transfer and ReadIndex reads;
- ``_raft_ready``: :class:`Ready` and its hand-off (``has_ready``, ``take_messages``,
  ``ready``, ``advance``).

Apart from the class: its vocabulary (errors, :class:`Role`, :class:`Progress`) in
``_raft_types``, the log in ``_raft_log``, the messages and entries in ``_raft_messages``,
the ReadIndex bookkeeping in ``_read_index``. Every public name is importable from here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ._raft_elections import Elections
from ._raft_leading import Leading
from ._raft_log import RaftLog, RaftLogError
from ._raft_membership import Membership
from ._raft_messages import (
    ClusterUpdate,
    ClusterUpdateResponse,
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
    Replicate,
    ReplicateResponse,
    SnapshotMeta,
    TimeoutNow,
)
from ._raft_ready import Ready, ReadyHandOff, hard_state_fields
from ._raft_replication import Replication
from ._raft_restart import RestartRules
from ._raft_snapshots import Snapshots
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


class RaftNode(Elections, RestartRules, Replication, Snapshots, Membership, Leading, ReadyHandOff):
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
        apply_lag: int = 1,
        apply_later: Callable[[Any], bool] | None = None,
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
        self.apply_lag = apply_lag
        """A broker that does not lead applies committed entries whose payloads
        ``apply_later`` accepts once ``apply_lag`` of them wait, or once the leader went idle
        (a tick without a REPLICATE of entries, a heartbeat: ``_apply_due``): each
        Ready of a replica in the sequential workload then persists its entry alone (one page
        in its fsync, not five), and the apply of several entries shares one transaction
        (docs/performance-history.md, "One client, one append at a time (ninth round)"). 1: at
        once."""
        self.apply_later = apply_later
        self._apply_due = False
        """Committed entries wait and the leader went idle (a tick passed without a REPLICATE
        of entries, or a message without entries came): the next Ready applies them."""
        self._later_judged = (0, -1)
        """The committed entries ``(first, last)`` whose payloads ``apply_later`` accepted
        (none at first): each is judged once, not at every ``has_ready`` and ``ready``."""
        self._streaming = False
        """A REPLICATE of entries came since the last tick."""
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
        """The leader's view last announced in CLUSTER_UPDATE (``_maybe_announce``)."""
        self._view_held: set[Any] = set()
        """The members known to hold that view."""
        self._view_sent: dict[Any, int] = {}
        """The tick of the last CLUSTER_UPDATE sent to each member."""
        self._view_other: dict[Any, int] = {}
        """The tick of the last CLUSTER_UPDATE of an earlier view sent to each member."""
        self._view_relinked: set[Any] = set()
        """Members whose link came up since the last CLUSTER_UPDATE sent to them
        (``peer_reconnected``): sent the view at the next heartbeat round."""

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
        return HardState(*hard_state_fields(self))

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
            if self.applied < self.commit and not self._streaming:
                self._apply_due = True  # (no entries came for a whole tick: applied now)
            self._streaming = False
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

    def peer_reconnected(self, peer: Any) -> None:
        """The runtime's link to ``peer`` was established (again): what this broker sends
        from now on may reach a new process of that broker, restarted too quickly for the
        leader to notice a silence, which shows no member view. A leader sends it its view
        again (``_raft_membership``'s ``_view_reconnected``); elsewhere, nothing to do."""
        if self.role is Role.LEADER and peer != self.id and peer in self.config.members:
            self._view_reconnected(peer)

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
            if self.applied < self.commit and not self._streaming:
                self._apply_due = True  # (the leader is idle: what waits is applied now)
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
