"""Replication, a part of :class:`~._raft.RaftNode`. The leader's side: its ticks
(heartbeats, check-quorum, a transfer's deadline), its REPLICATEs and the progress of each
member (etcd's probe, replicate and snapshot states; a stalled stream probed again; a log
that went backwards, whose lost acknowledgements it stops counting and tells the member
about), and the commit by counting a quorum of durable copies (current-term entries only,
paper 5.4.2). The follower's side: log matching with a term-skipping hint, and its
acknowledgements, sent only once persisted.

Typed against ``_raft_state.RaftState`` for the type checker only (see ``_raft_elections``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import attrs

from ._raft_messages import (
    ClusterUpdateResponse,
    ConfigEntry,
    DataSync,
    Heartbeat,
    HeartbeatResponse,
    PromoteToLeader,
    Replicate,
    ReplicateResponse,
)
from ._raft_types import Progress, ProgressState

if TYPE_CHECKING:
    from ._raft_state import RaftState as _Node
else:
    _Node = object


class Replication(_Node):
    """Mixed into :class:`~._raft.RaftNode`: replication and commit (fields: ``progress``,
    ``commit``, ``log``, ``heartbeat_elapsed``)."""

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
        after_silence = self.now - pr.last_heard >= self._resend_ticks
        if after_silence:
            self._view_reheard(m.src)
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
            if not after_silence:  # (it may answer what it held before a restart)
                self._view_acknowledged(m.src)
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
            if m.entries:
                self._streaming = True
            elif self.applied < self.commit:
                self._apply_due = True  # (no entries streaming: what waits is applied now)
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
