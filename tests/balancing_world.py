"""Stand-ins for the balancer's two seams (``_runtime/_balancing.py``), for tests under the
mock clock: the metadata group as one in-memory :class:`ClusterMap` (:class:`StandInMetadata`),
and brokers and groups whose membership changes as a group's leader would change it
(:class:`World`): one change at a time, learners promoted by the group's leader once caught up,
every committed change reported as ``SetGroupReplicas`` (as ``keep_reported`` does), leaders
elected among live voters when theirs fails, a group without a live majority frozen.

The world checks, on every change, what the runtime must never do: two changes of one group at
once, a change asked of a broker that is not the group's live leader, a group left with fewer
voters than it needs.
"""

from __future__ import annotations

import attrs
import trio

from trio_broker._core._metadata import (
    BrokerAddress,
    ClusterMap,
    MapChanged,
    RegisterBroker,
    SetBrokerAlive,
    SetGroupReplicas,
)
from trio_broker._core._placement import (
    AddLearner,
    PromoteLearner,
    RemoveReplica,
    TransferLeader,
    found_cluster,
)
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._runtime._balancing import WAITING, Balancing, BalancingSettings

TICK = 0.1
CATCH_UP = 1.0
"""Seconds a live learner takes to catch up with its group's leader."""
ELECTION = 1.0
"""Seconds a group without a live leader takes to elect one among its live voters."""
DETECT = 1.0
"""Seconds between two checks of the failure detector."""
ACT = 0.05
"""Seconds each half of a group action takes (the change lands in between)."""


def broker_ids(n: int) -> list[str]:
    return [f"B-0000{i}" for i in range(1, n + 1)]


def group_ids(n: int) -> list[str]:
    return [f"G-0000{chr(ord('A') + i)}" for i in range(n)]


def address(broker_id: str) -> BrokerAddress:
    return BrokerAddress(broker_id, "127.0.0.1", 9000 + int(broker_id[-1]))


@attrs.define
class FakeGroup:
    voters: set[str]
    learners: set[str] = attrs.field(factory=set)
    version: int = 1
    leader: str | None = None
    reported: int = 1
    learner_since: dict[str, float] = attrs.field(factory=dict)
    leaderless_since: float | None = None
    changing: int = 0


class StandInMetadata:
    """:class:`~trio_broker._runtime._balancing.MapSource` over one in-memory map."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.map = ClusterMap()
        self.leading = True
        self.proposed: list[object] = []

    def is_metadata_leader(self) -> bool:
        return self.leading

    def cluster_map(self) -> ClusterMap:
        return self.map

    async def propose(self, command: object):
        await trio.sleep(0.01)
        if not self.leading:
            return BrokerError(ErrorCode.NOT_LEADER, "not the metadata leader")
        self.proposed.append(command)
        return self.map.apply(command)

    async def wait_map(self, version: int) -> None:
        assert self.map.version >= version  # (applied as proposed)

    def verdicts(self) -> dict[str, bool]:
        return {b: b in self.world.up for b in self.world.known}


class World:
    """:class:`~trio_broker._runtime._balancing.GroupActions` over fake groups."""

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.known: set[str] = set()
        self.groups: dict[str, FakeGroup] = {}
        self.metadata = StandInMetadata(self)
        self.actions: list[object] = []
        self.detected: list[tuple[str, bool]] = []
        """What the failure detector recorded in the map (``SetBrokerAlive``), in order."""
        self.changes = 0
        self.min_voters: dict[str, int] = {}

    # -- building a cluster --

    def found(self, brokers: list[str], groups: list[str], r: int) -> None:
        command = found_cluster([address(b) for b in brokers], groups, r)
        assert isinstance(self.metadata.map.apply(command), MapChanged)
        for a in command.groups:
            self.groups[a.group_id] = FakeGroup(set(a.voters), leader=a.preferred_leader)
        self.up |= set(brokers)
        self.known |= set(brokers)

    async def join(self, broker_id: str) -> None:
        """A new broker registers (as the metadata group's join would)."""
        self.up.add(broker_id)
        self.known.add(broker_id)
        a = address(broker_id)
        result = await self.metadata.propose(RegisterBroker(a.broker_id, a.host, a.port))
        assert isinstance(result, MapChanged), result

    def crash(self, broker_id: str) -> None:
        self.up.discard(broker_id)

    def heal(self, broker_id: str) -> None:
        self.up.add(broker_id)

    # -- the groups' own behaviour (their leaders, elections, reports) --

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._detect)
            await self._groups()

    async def _detect(self) -> None:
        """The metadata leader's failure detector, as ``_metamap.track_liveness`` records it:
        a member whose verdict differs from the map on two checks in a row."""
        pending: dict[str, bool] = {}
        while True:
            await trio.sleep(DETECT)
            cmap = self.metadata.map
            seen = {}
            for b, record in sorted(cmap.brokers.items()):
                if b not in self.known or (b in self.up) == record.alive:
                    continue
                if pending.get(b) != (b in self.up):
                    seen[b] = b in self.up
                    continue
                if self.metadata.leading:
                    cmap.apply(SetBrokerAlive(b, b in self.up))
                    self.detected.append((b, b in self.up))
            pending = seen

    async def _groups(self) -> None:
        while True:
            await trio.sleep(TICK)
            now = trio.current_time()
            for g, grp in sorted(self.groups.items()):
                self._elect(grp, now)
                if grp.leader is None or grp.changing:
                    continue
                for learner in sorted(grp.learners):
                    since = grp.learner_since.get(learner)
                    if learner in self.up and since is not None and now - since >= CATCH_UP:
                        grp.learners.discard(learner)
                        grp.voters.add(learner)
                        self._changed(g, grp)
                        break
                if grp.version > grp.reported:
                    command = SetGroupReplicas(
                        g, tuple(sorted(grp.voters)), tuple(sorted(grp.learners)), grp.version
                    )
                    result = await self.metadata.propose(command)
                    if not isinstance(result, BrokerError):
                        grp.reported = max(grp.reported, command.config_version)

    def _elect(self, grp: FakeGroup, now: float) -> None:
        if grp.leader is not None and grp.leader in self.up and grp.leader in grp.voters:
            grp.leaderless_since = None
            return
        grp.leader = None
        if grp.leaderless_since is None:
            grp.leaderless_since = now
        live = sorted(v for v in grp.voters if v in self.up)
        if len(live) > len(grp.voters) // 2 and now - grp.leaderless_since >= ELECTION:
            grp.leader = live[0]
            grp.leaderless_since = None

    def _changed(self, g: str, grp: FakeGroup) -> None:
        grp.version += 1
        self.changes += 1
        for b in grp.voters | grp.learners:
            assert b in self.known, (g, b)
        self.min_voters[g] = min(self.min_voters.get(g, len(grp.voters)), len(grp.voters))

    # -- GroupActions --

    async def leaders(self, _cmap: ClusterMap) -> dict[str, str | None]:
        await trio.sleep(0.01)
        return {
            g: (grp.leader if grp.leader in self.up else None) for g, grp in self.groups.items()
        }

    async def act(self, _cmap: ClusterMap, action, leader):
        self.actions.append(action)
        grp = self.groups[action.group_id]
        if isinstance(action, PromoteLearner):
            return WAITING
        # (The runtime asks the observed leader, or any replica, which forwards to the leader.)
        if grp.leader is None or grp.leader not in self.up:
            return BrokerError(ErrorCode.UNAVAILABLE, f"{action.group_id} has no leader now")
        grp.changing += 1
        try:
            assert grp.changing == 1, f"two changes of {action.group_id} at once"
            await trio.sleep(ACT)
            if grp.leader is None or grp.leader not in self.up:
                return BrokerError(ErrorCode.UNAVAILABLE, "the leader failed")
            b = action.broker_id
            if isinstance(action, TransferLeader):
                if b not in grp.voters or b not in self.up:
                    return BrokerError(ErrorCode.UNAVAILABLE, f"{b} cannot take over")
                grp.leader = b
            elif isinstance(action, AddLearner):
                if b in grp.voters | grp.learners:
                    return BrokerError(ErrorCode.BAD_REQUEST, f"{b} is already a member")
                grp.learners.add(b)
                grp.learner_since[b] = trio.current_time()
                self._changed(action.group_id, grp)
            elif isinstance(action, RemoveReplica):
                if b not in grp.voters | grp.learners:
                    return BrokerError(ErrorCode.BAD_REQUEST, f"{b} is not a member")
                live = [v for v in grp.voters if v in self.up]
                assert len(live) > len(grp.voters) // 2, "a change without a live majority"
                grp.voters.discard(b)
                grp.learners.discard(b)
                grp.learner_since.pop(b, None)
                if b == grp.leader:
                    grp.leader = None
                self._changed(action.group_id, grp)
            await trio.sleep(ACT)  # (a crash now: done, never answered)
            return None
        finally:
            grp.changing -= 1

    # -- checks --

    def consistent(self, r: int) -> bool:
        """The map says what the groups are, each has R voters and no move is left."""
        cmap = self.metadata.map
        for g, grp in self.groups.items():
            rec = cmap.groups[g]
            if set(rec.voters) != grp.voters or set(rec.learners) != grp.learners:
                return False
            if len(grp.voters) != r or grp.learners or rec.move is not None:
                return False
        return True

    def replica_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(sorted(self.metadata.map.brokers), 0)
        for grp in self.groups.values():
            for b in grp.voters | grp.learners:
                counts[b] += 1
        return counts

    def leader_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(sorted(self.metadata.map.brokers), 0)
        for grp in self.groups.values():
            if grp.leader is not None:
                counts[grp.leader] += 1
        return counts

    def balancing(self, **balancer: int) -> Balancing:
        return Balancing(
            self.metadata,
            self,
            BalancingSettings.for_timing(TICK * 2, 1.0, **balancer),
        )
