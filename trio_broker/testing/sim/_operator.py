"""The operator's workload: membership changes, leadership transfers and retention policies,
and the leaders' retention enforcements stamped with their skewed wall clocks.
"""

from __future__ import annotations

from ..._core._commands import ApplyRetention, RetentionPolicy, SetRetention
from ..._core._raft import ConfigChangeRefused, TransferRefused
from ..._core._raft_messages import ChangeAction, ConfigChange
from ._clients import ClientRequest
from ._params import MS_PER_STEP


class OperatorMixin:
    """The operator's steps, on the simulation's state (see :class:`Simulation`)."""

    def _operate(self) -> None:
        """The operator: one membership change at a time, on whoever is leader."""
        if not self.p.churn_rate or self.churn_rng.random() >= self.p.churn_rate:
            return
        leaders = [self.nodes[i] for i in self.live() if self.nodes[i].is_leader]
        if not leaders:
            return
        leader = leaders[0]
        c = leader.config
        outsiders = [i for i in self.ids if i not in c.members]
        if c.learners:
            learner = min(c.learners)
            if not leader.caught_up(learner):
                return
            change = ConfigChange(ChangeAction.PROMOTE, learner)
        elif outsiders and len(c.voters) <= self.p.node_count:
            change = ConfigChange(ChangeAction.ADD_LEARNER, outsiders[0])
        elif len(c.voters) > self.p.node_count:
            change = ConfigChange(ChangeAction.REMOVE, self.churn_rng.choice(sorted(c.voters)))
        else:
            return
        try:
            leader.propose_config_change(change)
        except ConfigChangeRefused:
            return
        self.dirty.add(leader.id)
        self.stats["config_changes"] += 1
        self._trace(f"config change {change.action.value} {change.node_id} at {leader.id}")

    def wall_ms(self, i: int) -> int:
        """Node ``i``'s wall clock, in ms: true time plus its skew (never the same on two
        leaders, which is why the stamps an append gets are made monotonic when applied)."""
        skews = self.p.clock_skews
        return self.now * MS_PER_STEP + (skews[i - 1] if i - 1 < len(skews) else 0)

    def _retention(self) -> None:
        """The operator changes a queue's retention policy now and then, and the leader
        proposes an enforcement every ``retention_every`` steps while a policy exists."""
        due = self.now % self.p.retention_every == 0
        if not due and not (self.faults_on and self.p.retention_rate):
            return  # (nothing to do this step: skip looking for the leader)
        leaders = [i for i in self.live() if self.nodes[i].is_leader]
        if not leaders:
            return
        i = leaders[0]
        leader = self.nodes[i]
        rng = self.retention_rng
        if self.faults_on and self.p.retention_rate and rng.random() < self.p.retention_rate:
            known = sorted(self.checker.created)
            if known:
                kind = rng.random()
                policy = RetentionPolicy(
                    max_messages=rng.randint(2, 12) if kind < 0.5 else None,
                    max_age_ms=rng.choice([200, 1000, 5000]) if 0.3 < kind < 0.8 else None,
                    delete_acknowledged=rng.random() < 0.3,
                )
                # Through the leader's proposal queue, as the runtime's requests: it may share
                # a group with clients' commands.
                self._serve(
                    i, leader, ClientRequest(None, i, 0, SetRetention(rng.choice(known), policy))
                )
                self.dirty.add(i)
                self.stats["retention_policies"] += 1
                self._trace(f"retention {policy} at {i}")
        # Quiescing (the end of the liveness phase) waits for the log to stop growing.
        if due and not self.quiescing and self.apps[i].retention:
            self._serve(i, leader, ClientRequest(None, i, 0, ApplyRetention(self.wall_ms(i))))
            self.dirty.add(i)
            self.stats["retention_runs"] += 1

    def _transfer(self) -> None:
        """The operator asks the leader to hand its leadership to a voter (or a learner or
        itself, which must be refused without any effect)."""
        if not self.p.transfer_rate or self.transfer_rng.random() >= self.p.transfer_rate:
            return
        leaders = [self.nodes[i] for i in self.live() if self.nodes[i].is_leader]
        if not leaders:
            return
        leader = leaders[0]
        if self.transfer_rng.random() < 0.5:
            target = leader.best_transfer_target()
        else:
            target = self.transfer_rng.choice(self.ids)
        try:
            leader.transfer_leadership(target)
        except TransferRefused:
            assert target == leader.id or target not in leader.config.voters, target
            return
        self.dirty.add(leader.id)
        self.stats["transfers"] += 1
        self.g.transfers_requested.append((leader.term, target))
        self._trace(f"transfer leadership {leader.id} -> {target}")
