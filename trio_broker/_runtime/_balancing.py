"""The balancer's rounds, executed (docs/replication.md, "Balancer").

The pure balancer (:class:`~trio_broker._core._placement.Balancer`) decides; this module runs
it on the metadata group's leader and carries its moves out:

- each round (at most one per :attr:`BalancerSettings.interval_ticks`; the first one interval
  after this broker became the metadata leader, so that elections settle first), the leader
  records the brokers that left the metadata group as dead and forgets drained ones, observes
  each group's leader, asks :meth:`Balancer.plan` what to do, and does it (the members'
  liveness, which the plan reads, is recorded by ``_metamap.track_liveness``);
- metadata commands (``StartReplicaMove``, ``AbandonReplicaMove``, ``SetPreferredLeader``) are
  proposed to the metadata group, one after the other;
- group actions are asked of the group's leader through the existing membership operations
  (``TRANSFER_LEADERSHIP``, ``JOIN_CLUSTER`` to add a learner, ``REMOVE_MEMBER``, each naming
  the group); a learner is promoted by the group's leader itself once caught up (as a joining
  broker is), so ``PromoteLearner`` asks nothing and waits. The plan gives each group at most
  one move per round, and a group's leader refuses a membership change while another is
  uncommitted: one change at a time per group;
- every wait is bounded (an action by :attr:`BalancingSettings.action_deadline`, an
  observation by :attr:`BalancingSettings.observe_deadline`) and cancellable; a failed move is
  logged once (until it succeeds, changes reason or leaves the plan) and, the plan being a
  function of the map, proposed again next round.

The map learns each group's committed membership from the group's own leader
(:func:`keep_reported`: ``SetGroupReplicas`` after each committed change), never from the
balancer's guess of what its action did.

What this module needs from the rest of the broker is two small seams, so that it runs the
same against the metadata group and real brokers (:mod:`._balancing_seams`) or against
stand-ins in tests.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from .._core._commands import CommandRejected
from .._core._metadata import (
    MAX_GROUPS,
    MAX_REPLICATION_FACTOR,
    AbandonReplicaMove,
    AddGroups,
    ClusterMap,
    MapChanged,
    MetadataCommand,
    MetadataResult,
    SetBrokerAlive,
    SetBrokerDraining,
    SetMetadataVoters,
    SetPreferredLeader,
    SetReplicationFactor,
    StartReplicaMove,
    UnregisterBroker,
)
from .._core._placement import (
    AddLearner,
    Balancer,
    BalancerSettings,
    GroupAction,
    Move,
    PromoteLearner,
    RemoveReplica,
    TransferLeader,
    add_groups,
    leader_counts,
    plan_moves,
)
from .._errors import BrokerError, ErrorCode
from .._ids import new_cluster_id
from .._protocol._admin_messages import ClusterSettingsSet, SetClusterSettings
from .._protocol._messages import DrainBroker, DrainState, MoveDone, Rebalance, Rebalanced
from ._log import log_event

WAITING = "waiting"
"""A move that asks nothing now (a learner the group's leader promotes once caught up)."""

MOVE_NAMES: dict[type, str] = {
    TransferLeader: "TRANSFER_LEADER",
    AddLearner: "ADD_LEARNER",
    PromoteLearner: "PROMOTE_LEARNER",
    RemoveReplica: "REMOVE_REPLICA",
    StartReplicaMove: "START_REPLICA_MOVE",
    AbandonReplicaMove: "ABANDON_REPLICA_MOVE",
    SetPreferredLeader: "PREFERRED_LEADER",
}
"""Wire names of the moves, as REBALANCE's answer lists them (docs/protocol.md)."""

GROUP_ACTIONS = (TransferLeader, AddLearner, PromoteLearner, RemoveReplica)


# -- the seams --------------------------------------------------------------------------------


class MapSource(Protocol):
    """What the balancer reads of, and proposes to, the metadata group on this broker."""

    def is_metadata_leader(self) -> bool: ...

    def cluster_map(self) -> ClusterMap:
        """The map as this broker applied it (read, never changed, by the balancer)."""
        ...

    async def propose(self, command: MetadataCommand) -> MetadataResult | BrokerError:
        """Propose one metadata command; its result once applied (unbounded: the caller
        bounds it)."""
        ...

    def verdicts(self) -> Mapping[str, bool]:
        """The metadata leader's failure detector: each member of the metadata group it
        watches -> alive (here, a broker of the map missing from it has left the group)."""
        ...

    async def wait_map(self, version: int) -> None:
        """Until :meth:`cluster_map` is at ``version`` or later (a command applied in the log
        may reach this broker's map a moment later; unbounded: the caller bounds it)."""
        ...


class GroupActions(Protocol):
    """How the balancer observes the groups and asks their leaders to act."""

    async def leaders(self, cmap: ClusterMap) -> dict[str, str | None]:
        """Each group's leader as observed now (None: unknown); bounded by the caller."""
        ...

    async def act(
        self, cmap: ClusterMap, action: GroupAction, leader: str | None
    ) -> BrokerError | str | None:
        """Ask the group's leader to do ``action``: None once done, :data:`WAITING` when
        there is nothing to ask now, or the error that stopped it. Bounded by the caller."""
        ...


@attrs.frozen
class BalancingSettings:
    tick: float
    """Seconds per balancer tick (the consensus tick: half a heartbeat interval)."""
    action_deadline: float
    """The longest a group action may take (a transfer takes up to two failure timeouts)."""
    observe_deadline: float
    """The longest observing the groups' leaders may take."""
    balancer: BalancerSettings = attrs.field(factory=BalancerSettings)

    @classmethod
    def for_timing(
        cls, heartbeat_interval: float, failure_timeout: float, **balancer: int
    ) -> BalancingSettings:
        return cls(
            tick=heartbeat_interval / 2,
            action_deadline=failure_timeout * 4,
            observe_deadline=failure_timeout * 2,
            balancer=BalancerSettings(**balancer),
        )

    @property
    def round_interval(self) -> float:
        return self.balancer.interval_ticks * self.tick


# -- the rounds -------------------------------------------------------------------------------


def describe(move: Move, outcome: str, reason: str | None = None) -> MoveDone:
    """A move as REBALANCE's answer lists it."""
    source = move.source if isinstance(move, StartReplicaMove) else None
    broker = getattr(move, "broker_id", None) or getattr(move, "target", None)
    return MoveDone(
        move=MOVE_NAMES[type(move)],
        group_id=move.group_id,
        outcome=outcome,
        broker_id=broker,
        source=source,
        reason=reason,
    )


class Balancing:
    """The balancer service of one broker: rounds while it leads the metadata group."""

    def __init__(
        self,
        source: MapSource,
        groups: GroupActions,
        settings: BalancingSettings,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.source = source
        self.groups = groups
        self.settings = settings
        self._clock = clock
        self._balancer: Balancer | None = None
        """Armed while this broker leads the metadata group (None: not leading)."""
        self._lock = trio.Lock()
        """One round at a time (a REBALANCE waits for the round in progress)."""
        self._departed: dict[str, bool] = {}
        """Whether each broker of the map had left the metadata group, at the last round."""
        self._unreported: set[str] = set()
        """Departed brokers whose departure could not be recorded yet (retried next round)."""
        self._failing: dict[tuple[str, str, str | None], str] = {}
        """Moves that failed, with why (each logged once); at most one round's moves."""
        self.observed: dict[str, str | None] = {}
        """Each group's leader at the last round."""
        self.rounds = 0
        self.last_round: Rebalanced | None = None

    def _ticks(self) -> int:
        return math.floor(self._clock() / self.settings.tick)

    # -- the service --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: while this broker leads the metadata group, a round whenever the
        balancer's interval has passed. Looks at its leadership every two ticks."""
        task_status.started()
        check = self.settings.round_interval / self.settings.balancer.interval_ticks * 2
        while True:
            if not self.source.is_metadata_leader():
                self._step_down()
                await trio.sleep(check)
                continue
            if self._balancer is None:
                self._balancer = Balancer(self.settings.balancer)
                self._balancer.next_round_at = self._ticks() + self.settings.balancer.interval_ticks
                log_event(logging.INFO, "balancer.leading")
            due = self._balancer.next_round_at or 0
            if self._ticks() < due:
                await trio.sleep(min(check, (due - self._ticks()) * self.settings.tick))
                continue
            await self.run_round(forced=False)

    def _step_down(self) -> None:
        if self._balancer is not None:
            log_event(logging.INFO, "balancer.stopped", reason="not the metadata leader")
        self._balancer = None
        self._departed.clear()
        self._unreported.clear()
        self._failing.clear()

    async def run_round(self, *, forced: bool) -> Rebalanced | BrokerError:
        """One round: ``forced`` (REBALANCE) runs it now, else only when the interval has
        passed (an early call does nothing). Refused (NOT_LEADER) off the metadata leader."""
        async with self._lock:
            if not self.source.is_metadata_leader():
                return BrokerError(ErrorCode.NOT_LEADER, "not the metadata group's leader")
            if self._balancer is None:
                self._balancer = Balancer(self.settings.balancer)
            cmap = self.source.cluster_map()
            if cmap.settings is None:
                return Rebalanced(map_version=cmap.version, moves=[])
            await self._report_departed(cmap)
            await self._unregister_drained(self.source.cluster_map())
            cmap = self.source.cluster_map()
            leaders: dict[str, str | None] = {}
            with trio.move_on_after(self.settings.observe_deadline):
                leaders = await self.groups.leaders(cmap)
            self.observed = leaders
            now = self._ticks()
            # This broker leads the metadata group: counted in the leader balance.
            here = getattr(self.source, "broker_id", None)
            if forced:
                self._balancer.next_round_at = now + self.settings.balancer.interval_ticks
                moves = plan_moves(
                    cmap,
                    leaders,
                    max_moves=self.settings.balancer.max_moves_per_round,
                    max_moving_groups=self.settings.balancer.max_moving_groups,
                    metadata_leader=here,
                )
            else:
                moves = self._balancer.plan(cmap, leaders, now, here)
            done = await self._execute(cmap, leaders, moves)
            self.rounds += 1
            after = self.source.cluster_map()
            report = Rebalanced(
                map_version=after.version,
                moves=done,
                moving_groups=sum(1 for r in after.groups.values() if r.move is not None),
            )
            self.last_round = report
            return report

    async def _report_departed(self, cmap: ClusterMap) -> None:
        """``SetBrokerAlive(False)`` for each broker of the map that is no longer a member of
        the metadata group (removed: nothing may be placed on it), once per departure (again
        only if the proposal failed). The members' liveness is the metadata leader's failure
        detector's to record (``_metamap.track_liveness``), not this round's."""
        members = self.source.verdicts()
        if not members:
            return  # (no detector to read)
        for broker_id, record in sorted(cmap.brokers.items()):
            departed = broker_id not in members
            changed = self._departed.get(broker_id) != departed
            self._departed[broker_id] = departed
            if not (changed or broker_id in self._unreported):
                continue
            self._unreported.discard(broker_id)
            if not departed or not record.alive:
                continue
            result = await self._propose(SetBrokerAlive(broker_id, False))
            if isinstance(result, BrokerError | CommandRejected):
                self._unreported.add(broker_id)
                log_event(
                    logging.WARNING,
                    "balancer.departure_not_recorded",
                    broker=broker_id,
                    reason=result.message,
                )
            else:
                log_event(logging.INFO, "balancer.departed", broker=broker_id)

    async def _unregister_drained(self, cmap: ClusterMap) -> None:
        """``UnregisterBroker`` for each draining broker that holds nothing any more and is
        no longer a member of the metadata group (the operator removed it): the map forgets
        it. (The map refuses while it still holds a replica or a move names it.)"""
        members = self.source.verdicts()
        if not members:
            return
        for broker_id, record in sorted(cmap.brokers.items()):
            if not record.draining or broker_id in members or cmap.groups_of(broker_id):
                continue
            if any(
                r.move is not None and broker_id in (r.move.source, r.move.target)
                for r in cmap.groups.values()
            ):
                continue
            result = await self._propose(UnregisterBroker(broker_id))
            log_event(
                logging.INFO if isinstance(result, MapChanged) else logging.WARNING,
                "balancer.unregistered",
                broker=broker_id,
                result=getattr(result, "message", "done"),
            )

    async def _wait_map(self, version: int) -> None:
        """Until this broker's map includes what was applied up to ``version`` (bounded: a
        map that lags only makes the next round propose what is refused as done)."""
        with trio.move_on_after(self.settings.action_deadline):
            await self.source.wait_map(version)

    async def _propose(self, command: MetadataCommand) -> MetadataResult | BrokerError:
        with trio.move_on_after(self.settings.action_deadline):
            return await self.source.propose(command)
        return BrokerError(
            ErrorCode.UNAVAILABLE,
            f"the metadata group did not apply {type(command).__name__} within "
            f"{self.settings.action_deadline:g} s",
        )

    async def _act(
        self, cmap: ClusterMap, action: GroupAction, leader: str | None
    ) -> BrokerError | str | None:
        with trio.move_on_after(self.settings.action_deadline):
            return await self.groups.act(cmap, action, leader)
        return BrokerError(
            ErrorCode.UNAVAILABLE,
            f"the leader of {action.group_id} did not finish within "
            f"{self.settings.action_deadline:g} s",
        )

    async def _execute(
        self, cmap: ClusterMap, leaders: Mapping[str, str | None], moves: list[Move]
    ) -> list[MoveDone]:
        """Metadata commands first, one after the other, then the group actions side by side
        (the plan gives each group at most one); the report in the plan's order."""
        outcomes: dict[int, MoveDone] = {}
        applied = 0
        for i, move in enumerate(moves):
            if not isinstance(move, GROUP_ACTIONS):
                result = await self._propose(move)
                outcomes[i] = self._outcome(move, result)
                if isinstance(result, MapChanged):
                    applied = max(applied, result.version)
        await self._wait_map(applied)

        async def one(i: int, action: GroupAction) -> None:
            outcomes[i] = self._outcome(
                action, await self._act(cmap, action, leaders.get(action.group_id))
            )

        async with trio.open_nursery() as nursery:
            for i, move in enumerate(moves):
                if isinstance(move, GROUP_ACTIONS):
                    nursery.start_soon(one, i, move)
        report = [outcomes[i] for i in range(len(moves))]
        planned = {_key(m) for m in moves}
        for key in [k for k in self._failing if k not in planned]:
            del self._failing[key]
        return report

    def _outcome(self, move: Move, result: Any) -> MoveDone:
        key = _key(move)
        if isinstance(result, BrokerError | CommandRejected):
            reason = result.message
            if self._failing.get(key) != reason:
                log_event(
                    logging.WARNING,
                    "balancer.move_failed",
                    move=MOVE_NAMES[type(move)],
                    group=move.group_id,
                    broker=key[2],
                    reason=reason,
                    retry="next round",
                )
            self._failing[key] = reason
            return describe(move, "failed", reason)
        self._failing.pop(key, None)
        if result == WAITING:
            return describe(move, WAITING)
        log_event(
            logging.INFO,
            "balancer.move",
            move=MOVE_NAMES[type(move)],
            group=move.group_id,
            broker=key[2],
            source=move.source if isinstance(move, StartReplicaMove) else None,
        )
        return describe(move, "done")

    # -- the operator's requests --

    async def drain(self, broker_id: str, draining: bool) -> DrainState | BrokerError:
        """``SetBrokerDraining`` through the metadata group; answered at once with what the
        broker still holds (the rounds then move it away)."""
        if not self.source.is_metadata_leader():
            return BrokerError(ErrorCode.NOT_LEADER, "not the metadata group's leader")
        result = await self._propose(SetBrokerDraining(broker_id, draining))
        if isinstance(result, BrokerError):
            return result
        if isinstance(result, CommandRejected):
            return BrokerError(ErrorCode.BAD_REQUEST, result.message)
        log_event(logging.INFO, "balancer.draining", broker=broker_id, draining=draining)
        if isinstance(result, MapChanged):
            await self._wait_map(result.version)
        return self.drain_state(broker_id)

    def drain_state(self, broker_id: str) -> DrainState:
        cmap = self.source.cluster_map()
        record = cmap.broker(broker_id)
        return DrainState(
            broker_id=broker_id,
            draining=record is not None and record.draining,
            replicas=len(cmap.groups_of(broker_id)),
            leads=leader_counts(cmap, self.observed).get(broker_id, 0),
            map_version=cmap.version,
        )


def _key(move: Move) -> tuple[str, str, str | None]:
    broker = getattr(move, "broker_id", None) or getattr(move, "target", None)
    return (MOVE_NAMES[type(move)], move.group_id, broker)


# -- the operator's requests, on any broker ---------------------------------------------------


NO_BALANCER = (
    "this cluster has no balancer: its groups are not placed by a cluster map (a cluster "
    "founded before the metadata group; every broker hosts every group)"
)

MAP_NOT_KNOWN = (
    "no cluster map is known on this broker yet: a cluster founded moments ago (or still "
    "being founded) has not applied its map here yet, so retry shortly; a cluster that has "
    "none (one group, or founded before the metadata group: every broker hosts every group) "
    "has no balancer"
)


def groups_listed(broker: Any) -> bool:
    """Whether ``broker`` hosts its cluster's groups by the stage-1 list: a cluster without
    a map for good, which never has a balancer."""
    host = getattr(broker, "host", None)
    return host is not None and bool(host.listed) and host.meta.map is None


def without_balancer(listed: bool) -> BrokerError:
    """The refusal of a broker without a balancer. Certain only for a cluster whose groups
    are ``listed``; else the map may not have reached this broker yet (just after founding,
    the metadata group's entries are still on their way), which this broker cannot tell from
    a cluster without a map: the message says both."""
    return BrokerError(ErrorCode.UNAVAILABLE, NO_BALANCER if listed else MAP_NOT_KNOWN)


async def on_metadata_leader(
    balancing: Balancing | None,
    request: Rebalance | DrainBroker,
    forward: Callable[[Any], Awaitable[Any]],
    *,
    listed: bool = False,
) -> Rebalanced | DrainState | BrokerError:
    """The balancer's requests, each decided on the metadata leader (``forward`` sends it
    there from elsewhere): REBALANCE, a round now; DRAIN_BROKER, ``SetBrokerDraining``.
    ``listed``: the cluster's groups are listed (:func:`groups_listed`)."""
    if balancing is None:
        return without_balancer(listed)
    if not balancing.source.is_metadata_leader():
        return await forward(request)
    if isinstance(request, Rebalance):
        return await balancing.run_round(forced=True)
    return await balancing.drain(request.broker_id, request.draining)


async def set_cluster_settings(
    broker: Any, request: SetClusterSettings
) -> ClusterSettingsSet | BrokerError:
    """SET_CLUSTER_SETTINGS on any broker of a cluster with a map: ``SetReplicationFactor``
    and/or ``AddGroups`` (each new group on one broker, :func:`add_groups`) proposed to the
    metadata group (through its leader); the balancer's rounds do the rest. Fewer groups than
    the cluster has is refused (queues live on groups), as is a bad value, changing nothing."""
    balancing: Balancing | None = getattr(broker, "balancing", None)
    if balancing is None:
        return without_balancer(groups_listed(broker))
    count, factor = request.group_count, request.replication_factor
    voters = request.metadata_voters
    if count is None and factor is None and voters is None:
        return BrokerError(
            ErrorCode.BAD_REQUEST,
            "give at least one of group_count, replication_factor, metadata_voters",
        )
    source = balancing.source
    cmap = source.cluster_map()
    if cmap.settings is None:
        return BrokerError(ErrorCode.UNAVAILABLE, "the cluster map is not founded yet")
    if factor is not None and not 1 <= factor <= MAX_REPLICATION_FACTOR:
        return BrokerError(
            ErrorCode.BAD_REQUEST,
            f"replication_factor must be 1 to {MAX_REPLICATION_FACTOR}, not {factor}",
        )
    if voters is not None and not 1 <= voters <= MAX_REPLICATION_FACTOR:
        return BrokerError(
            ErrorCode.BAD_REQUEST,
            f"metadata_voters must be 1 to {MAX_REPLICATION_FACTOR}, not {voters}",
        )
    if count is not None and count < len(cmap.groups):
        return BrokerError(
            ErrorCode.BAD_REQUEST,
            f"the cluster has {len(cmap.groups)} groups and cannot have fewer ({count}): "
            "queues live on groups, and a group is never removed",
        )
    if count is not None and count > MAX_GROUPS:
        return BrokerError(ErrorCode.BAD_REQUEST, f"a cluster has at most {MAX_GROUPS} groups")
    commands: list[Any] = []
    if factor is not None and factor != cmap.replication_factor:
        commands.append(SetReplicationFactor(factor))
    if voters is not None and voters != cmap.settings.metadata_voters:
        commands.append(SetMetadataVoters(voters))
    added: list[str] = []
    if count is not None and count > len(cmap.groups):
        while len(added) < count - len(cmap.groups):
            group_id = new_cluster_id()
            if group_id not in cmap.groups and group_id not in added:
                added.append(group_id)
        try:
            commands.append(add_groups(cmap, added))
        except ValueError as exc:
            return BrokerError(ErrorCode.UNAVAILABLE, str(exc))
    version = cmap.version
    for command in commands:
        with trio.move_on_after(balancing.settings.action_deadline):
            result: Any = await source.propose(command)
            if isinstance(result, CommandRejected):
                return BrokerError(ErrorCode.BAD_REQUEST, result.message)
            if isinstance(result, BrokerError):
                return result
            version = result.version
            log_event(
                logging.INFO,
                "balancer.settings_changed",
                command=type(command).__name__,
                replication_factor=getattr(command, "replication_factor", None),
                metadata_voters=getattr(command, "metadata_voters", None),
                added_groups=",".join(added) if isinstance(command, AddGroups) else None,
            )
            continue
        return BrokerError(
            ErrorCode.UNAVAILABLE,
            "the metadata group did not apply the change in time; it may or may not have been "
            "applied (ask CLUSTER_QUERY or client groups)",
            outcome="unknown",
        )
    with trio.move_on_after(balancing.settings.action_deadline):
        await source.wait_map(version)
    cmap = source.cluster_map()
    assert cmap.settings is not None
    return ClusterSettingsSet(
        group_count=len(cmap.groups),
        replication_factor=cmap.replication_factor,
        map_version=cmap.version,
        added_groups=sorted(added),
        metadata_voters=cmap.settings.metadata_voters,
    )


__all__ = [
    "GROUP_ACTIONS",
    "MOVE_NAMES",
    "WAITING",
    "Balancing",
    "BalancingSettings",
    "GroupActions",
    "MapSource",
    "describe",
    "on_metadata_leader",
    "set_cluster_settings",
]
