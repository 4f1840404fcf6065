"""Membership, a part of :class:`~._raft.RaftNode`: single-server configuration changes
(a learner added, a learner promoted, a member removed; one at a time, and only once the
leader committed an entry of its term), which take effect as soon as they are in the log;
the configuration in force at an index; removed members pruned once their removal commits
(and a removed leader stepping down); the members' status (CLUSTER_QUERY's view, announced in
CLUSTER_UPDATE).

Typed against ``_raft_state.RaftState`` for the type checker only (see ``_raft_elections``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._raft_messages import (
    ChangeAction,
    ClusterUpdate,
    Config,
    ConfigChange,
    ConfigEntry,
    Entry,
    MemberView,
)
from ._raft_types import ConfigChangeRefused, NotLeader, Progress, Role

if TYPE_CHECKING:
    from ._raft_state import RaftState as _Node
else:
    _Node = object


class Membership(_Node):
    """Mixed into :class:`~._raft.RaftNode`: its membership (fields: ``config``,
    ``_statuses``, ``_announced``, ``_view_held``, ``_view_sent``, ``_view_other``,
    ``_view_relinked``)."""

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

    @property
    def _view_refresh_ticks(self) -> int:
        """How often the current view is sent again to a member not known to hold it, and
        how long after the last CLUSTER_UPDATE of another view a member's answer starts to
        count as holding this one (see ``_maybe_announce``): two election timeouts, far
        beyond a round trip, and a small share of the heartbeats' traffic."""
        return 2 * self.election_ticks

    def _maybe_announce(self) -> None:
        """At each heartbeat round: CLUSTER_UPDATE to every member when the role/status view
        changed; else the current view again to each member not known to hold it, at most
        once per ``_view_refresh_ticks``.

        A CLUSTER_UPDATE can be lost (a partition, a link down, a member restarting): a
        member would then show the view it last got until the next change, which may never
        come. So the leader keeps, per member, whether it is known to hold the current view
        (``_view_held``) and sends it again until it is. Its answer carries nothing that
        names the view it answers (the design's ``{"status": "success"}``), so an answer
        counts only once no CLUSTER_UPDATE of another view can still be on its way to that
        member: ``_view_refresh_ticks`` after the last one sent (``_view_other``, kept for a
        refresh period for a removed member too, which may be added again meanwhile). A
        member silent for a while may have restarted, losing its view: it is no longer
        known to hold it (``_view_reheard``). One restarted too quickly to seem silent is
        reached again through a new connection: the runtime says so
        (``RaftNode.peer_reconnected``), and the member gets the view at the next round,
        whatever the refresh period (``_view_reconnected``). The traffic this adds: per
        member, one CLUSTER_UPDATE per refresh period while it is not known to hold the
        view (one per change when it answers, two when a change came within a refresh
        period of the one before), and at most one per link established; nothing once every
        member holds it.
        """
        view = tuple(self.member_statuses().values())
        members = [m for m in sorted(self.config.members) if m != self.id]
        refresh = self._view_refresh_ticks
        if view != self._announced:
            self._announced = view
            self._view_held = set()
            # Every member sent an update within a refresh period, a removed one too: it may
            # be added again while that update is on its way. Older sends no longer matter
            # (and so the removed members are forgotten).
            sent = {**self._view_other, **self._view_sent}
            self._view_other = {m: t for m, t in sent.items() if self.now - t <= refresh}
            self._view_sent = {}
            self._view_relinked = set()
            due = members
        else:
            relinked = self._view_relinked
            due = [
                m
                for m in members
                if m not in self._view_held
                and (
                    m not in self._view_sent
                    or m in relinked
                    or self.now - self._view_sent[m] >= refresh
                )
            ]
        for m in due:
            self._view_sent[m] = self.now
            self._view_relinked.discard(m)
            self._send(
                ClusterUpdate(
                    src=self.id,
                    dst=m,
                    term=self.term,
                    cluster_version=self.cluster_version,
                    members=view,
                )
            )

    def _view_acknowledged(self, member: Any) -> None:
        """A CLUSTER_UPDATE_RESPONSE from ``member``: it holds the current view, unless a
        CLUSTER_UPDATE of another view sent to it may still arrive after (``_maybe_announce``)."""
        if member in self._view_relinked:
            return  # (an answer from before its link came up again: maybe another process)
        other = self._view_other.get(member)
        if other is None or self.now - other > self._view_refresh_ticks:
            self._view_held.add(member)

    def _view_reheard(self, member: Any) -> None:
        """The first answer from ``member`` after a silence of ``_resend_ticks`` or more: it
        may have restarted, and a restarted broker holds no view: it is sent the view again
        (and that answer does not count as holding it)."""
        self._view_held.discard(member)

    def _view_reconnected(self, member: Any) -> None:
        """The link to ``member`` was established again (``RaftNode.peer_reconnected``): the
        broker behind it may be a new process, which holds no view, restarted too quickly
        for ``_view_reheard`` to see a silence. It is sent the current view at the next
        heartbeat round, once: a flapping link costs one update per link established (less
        than the connection's own handshake), at most one per heartbeat round. An answer
        counts only after that send (one read late from the old connection says nothing of
        the new process). Which view is in force, and when an answer may count
        (``_view_acknowledged``), is unchanged: an older view still on its way cannot be
        taken as held."""
        self._view_held.discard(member)
        self._view_relinked.add(member)

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
