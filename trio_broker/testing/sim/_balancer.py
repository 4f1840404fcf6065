"""Leadership spread with several groups: the balancer every group's leader runs, and its
checks.

The rule is the runtime's (``_core/_spread.py``): the preferred leader of group ``k`` is its
voters, sorted, at position ``k mod len(voters)``; a group's leader hands its leadership (the
core's transfer) to the preferred voter once that voter is caught up, at most once per
:data:`SPREAD_INTERVAL_TICKS` of its broker's clock per group (``SpreadPacer``). A broker's
pacer is volatile: a restart starts a new one. It runs under every fault, from the start.

Checked (:class:`SpreadChecker`), with several groups only:

- no flapping: once the cluster is healed, a group's leadership moves (a term led by another
  broker than the group's last leader) at most :data:`HEALED_MOVES_MAX` times;
- once converged (every broker up, no fault for the whole liveness phase so far, every group's
  balancer quiet: nothing it wants to hand over to a broker that can take over), no broker
  leads more than ``leader_share(G, N) + 1`` groups (the issue's rule), and every group is led
  by its preferred voter (the rule every broker computes alike) unless that voter cannot take
  over (:func:`can_lead`: it is recovering lost entries, seed 791);
- then, for :data:`STABLE_STEPS` more steps, leadership stays where it is and no balancer
  starts a transfer.

:data:`SPREAD_MUTANTS` are broken balancers (``--mutant``), each of which these checks must
catch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..._core._raft import TransferRefused
from ..._core._spread import SpreadPacer, leader_share, preferred_leader
from ._params import TICK_STEPS, SimulationFailure

if TYPE_CHECKING:
    from ._run import Simulation

SPREAD_INTERVAL_TICKS = 20
"""The pacer's interval: a failed hand-over (abandoned after an election timeout, 8-12 ticks)
is tried again at most this often."""

STABLE_STEPS = SPREAD_INTERVAL_TICKS * TICK_STEPS * 4 // 3 + TICK_STEPS
"""Steps after convergence during which leadership must not move: a pacer interval of the
slowest clock (rate 0.75), and a tick."""

HEALED_MOVES_MAX = 4
"""The most moves of one group's leadership after healing: an election or two (restarted
brokers, a leader left without its quorum by the last partition), then the hand-over to the
preferred voter."""

Target = Callable[[Any, str, Any], Any]
"""A balancer's wish: (the simulation, the group's id, its leader's node) -> the broker it
wants to lead the group (None, or the leader itself: stay)."""


def preferred(sim: Any, group_id: str, node: Any) -> Any:
    """The shared rule (``_core/_spread.py``)."""
    return preferred_leader(sim.group_ids, group_id, node.config.voters)


def _next_voter(sim: Any, group_id: str, node: Any) -> Any:
    voters = sorted(node.config.voters)
    return voters[(voters.index(node.id) + 1) % len(voters)] if node.id in voters else None


def _most_caught_up(sim: Any, group_id: str, node: Any) -> Any:
    return node.best_transfer_target()


def _lowest(sim: Any, group_id: str, node: Any) -> Any:
    return min(node.config.voters)


SPREAD_MUTANTS: dict[str, tuple[Target, int]] = {
    # A leader that hands over every tick, always to the voter after it: leadership circles.
    "spread_rotates": (_next_voter, 0),
    # Paced, but to the most caught-up voter rather than the preferred one: every new leader
    # hands over again, one interval later.
    "spread_to_best": (_most_caught_up, SPREAD_INTERVAL_TICKS),
    # Paced, every group to the lowest voter: one broker leads them all.
    "spread_to_lowest": (_lowest, SPREAD_INTERVAL_TICKS),
}
"""Broken balancers: (their wish, their pacer's interval)."""


def can_lead(group: Any, broker: Any) -> bool:
    """Whether ``broker`` can take the group's leadership over now: it is up and not
    recovering (a broker whose log lost entries it had acknowledged neither votes nor
    campaigns, TIMEOUT_NOW included, until its log is back where it was: in a group that takes
    no writes, it stays so, and its leader's balancer keeps trying, once per interval; the
    leader cannot tell, so the checks do not count those attempts)."""
    node = group.nodes.get(broker)
    return node is not None and not node.recovering


class BalancerMixin:
    """Each group leader's balancer, on the simulation's state (see :class:`Simulation`)."""

    def _balance(self, i: int, node: Any) -> None:
        """After a tick of broker ``i``'s node of the current group."""
        pacer: SpreadPacer = self.pacers[i]
        group_id = self.g.id
        if not node.is_leader:
            pacer.forget(group_id)
            return
        wish = self.spread_target(self, group_id, node)
        if wish == node.id:
            wish = None
        target = pacer.hand_over_to(
            group_id=group_id,
            self_id=node.id,
            preferred=wish,
            caught_up=wish is not None and node.caught_up(wish),
            now=self.broker_ticks[i],
        )
        if target is None:
            return
        try:
            node.transfer_leadership(target)
        except TransferRefused as exc:
            raise SimulationFailure(f"{group_id}: balancer of {i} chose {target}: {exc}") from exc
        self.stats["spread_transfers"] += 1
        if not can_lead(self.g, target):
            self.stats["spread_transfers_futile"] += 1
        self._trace(f"spread {group_id} {i} -> {target}")

    def balancer_quiet(self) -> bool:
        """Whether no group's balancer wants to move anything it can move: every leader's
        wish is itself, or a broker that cannot take over (see :func:`can_lead`)."""
        for group in self.groups:
            for node in group.nodes.values():
                if node is None or not node.is_leader:
                    continue
                target = node.transfer_target
                if target is not None and can_lead(group, target):
                    return False
                wish = self.spread_target(self, group.id, node)
                if wish is not None and wish != node.id and can_lead(group, wish):
                    return False
        return True


class SpreadChecker:
    """The spread's checks (see the module's docstring); one per run with several groups."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.last_leader: dict[int, tuple[int, int]] = {}
        """Group -> (term, broker) of the last leader seen since healing."""
        self.moves: dict[int, int] = {}
        """Group -> moves of its leadership since healing."""
        self.settled: dict[int, tuple[int, int]] | None = None
        """Group -> (term, leader) at convergence."""
        self.transfers_settled = 0
        """The balancers' transfers begun before convergence."""

    def fail(self, message: str) -> None:
        raise SimulationFailure(f"spread: {message}")

    def leaders(self) -> dict[int, tuple[int, int]]:
        """Group -> (term, broker) of its live leader of the highest term."""
        found: dict[int, tuple[int, int]] = {}
        for group in self.sim.groups:
            for i, node in group.nodes.items():
                if node is None or not node.is_leader:
                    continue
                if node.term > found.get(group.index, (0, None))[0]:
                    found[group.index] = (node.term, i)
        return found

    def observe(self) -> None:
        """Every step once healed: count each group's leadership moves."""
        for k, (term, broker) in self.leaders().items():
            last = self.last_leader.get(k)
            if last is not None and term > last[0] and broker != last[1]:
                self.moves[k] = self.moves.get(k, 0) + 1
                stats = self.sim.stats
                stats["spread_moves_healed"] = max(stats["spread_moves_healed"], self.moves[k])
                if self.moves[k] > HEALED_MOVES_MAX:
                    self.fail(
                        f"G-{k}'s leadership moved {self.moves[k]} times since the cluster "
                        f"healed (last {last[1]} -> {broker} in term {term}): flapping"
                    )
            if last is None or term >= last[0]:
                self.last_leader[k] = (term, broker)

    def at_convergence(self) -> None:
        """Every broker up, no fault, every balancer quiet: the spread's outcome."""
        sim = self.sim
        leaders = self.leaders()
        counts: dict[int, int] = {}
        for group in sim.groups:
            _, broker = leaders[group.index]
            want = preferred(sim, group.id, group.nodes[broker])
            if broker == want or can_lead(group, want):  # (else it is not the balancer's doing)
                counts[broker] = counts.get(broker, 0) + 1
        share = leader_share(len(sim.groups), sim.p.node_count)
        busiest = max(counts, key=lambda b: (counts[b], -b), default=None)
        if busiest is not None and counts[busiest] > share + 1:
            self.fail(
                f"broker {busiest} leads {counts[busiest]} of {len(sim.groups)} groups over "
                f"{sim.p.node_count} brokers, more than its share ({share}) + 1"
            )
        for group in sim.groups:
            _, broker = leaders[group.index]
            want = preferred(sim, group.id, group.nodes[broker])
            if broker != want and can_lead(group, want):
                self.fail(f"{group.id} is led by {broker}, its preferred leader is {want}")
        self.settled = leaders
        self.transfers_settled = self._transfers()

    def stable(self) -> None:
        """Each step after convergence: leadership stays, no balancer moves."""
        assert self.settled is not None
        now = self.leaders()
        for k, before in self.settled.items():
            if now.get(k) != before:
                self.fail(f"G-{k}'s leadership moved after convergence: {before} -> {now.get(k)}")
        if self._transfers() != self.transfers_settled:
            self.fail("a balancer began a transfer after convergence")

    def _transfers(self) -> int:
        """The balancers' transfers begun so far, to brokers that could take over."""
        stats = self.sim.stats
        return stats["spread_transfers"] - stats["spread_transfers_futile"]

    def report(self) -> list[str]:
        """Each group's leaders and preferred voters, for a liveness report."""
        sim, lines = self.sim, []
        for group in sim.groups:
            for i, node in group.nodes.items():
                if node is not None and node.is_leader:
                    want = preferred(sim, group.id, node)
                    lines.append(
                        f"  {group.id}: leader {i} term {node.term}, preferred {want}, "
                        f"transferring to {node.transfer_target}"
                    )
        return lines
