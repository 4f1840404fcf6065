"""Placement of groups over brokers and the balancer (docs/replication.md, "Several leaders").

The balancer's plans are executed by a small model of the cluster: each group's configuration
changes and leadership transfers succeed at once (a committed change is reported back to the
metadata map as SetGroupReplicas), failed brokers lose their leaderships to a live voter when
the group still has a live majority. Safety is checked on every change, convergence and
stability at the end.
"""

from __future__ import annotations

import copy
import itertools
import math
import random

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trio_broker._core._commands import CommandRejected
from trio_broker._core._metadata import (
    AbandonReplicaMove,
    BrokerAddress,
    ClusterMap,
    MapChanged,
    RegisterBroker,
    SetBrokerAlive,
    SetBrokerDraining,
    SetGroupReplicas,
    SetPreferredLeader,
    StartReplicaMove,
    UnregisterBroker,
)
from trio_broker._core._placement import (
    AddLearner,
    Balancer,
    BalancerSettings,
    PromoteLearner,
    RemoveReplica,
    TransferLeader,
    balance_leaders,
    found_cluster,
    initial_placement,
    leader_counts,
    plan_moves,
)

MAX_MOVES = 8
MAX_MOVING = 3
INTERVAL = 10


def broker_ids(n: int) -> list[str]:
    return [f"B-{i:05d}" for i in range(n)]


def group_ids(n: int) -> list[str]:
    return [f"G-{i:05d}" for i in range(n)]


def addresses(ids: list[str]) -> list[BrokerAddress]:
    return [BrokerAddress(b, "127.0.0.1", 9000 + int(b[2:])) for b in ids]


def majority(n: int) -> int:
    return n // 2 + 1


@attrs.define
class Cluster:
    """The metadata map, the groups' leaders, and a balancer whose moves always succeed."""

    cmap: ClusterMap
    leaders: dict[str, str | None]
    rng: random.Random
    balancer: Balancer = attrs.field(
        factory=lambda: Balancer(BalancerSettings(INTERVAL, MAX_MOVES, MAX_MOVING), next_round_at=0)
    )
    now: int = 0
    changes: int = 0

    @classmethod
    def found(cls, n: int, g: int, r: int, rng: random.Random) -> Cluster:
        cmap = ClusterMap()
        assert isinstance(
            cmap.apply(found_cluster(addresses(broker_ids(n)), group_ids(g), r)), MapChanged
        )
        leaders = {gid: rec.preferred_leader for gid, rec in cmap.groups.items()}
        return cls(cmap, leaders, rng)

    def meta(self, command) -> None:
        result = self.cmap.apply(command)
        assert not isinstance(result, CommandRejected), (command, result)

    # -- the world --

    def fail(self, brokers: list[str]) -> None:
        for b in brokers:
            self.meta(SetBrokerAlive(b, False))
        self.reelect()

    def heal(self) -> None:
        for b, rec in sorted(self.cmap.brokers.items()):
            if not rec.alive:
                self.meta(SetBrokerAlive(b, True))
        self.reelect()

    def reelect(self) -> None:
        """Groups whose leader is gone elect a live voter, given a live majority."""
        for g, rec in sorted(self.cmap.groups.items()):
            if self.cmap.is_alive(self.leaders.get(g)) and self.leaders[g] in rec.voters:
                continue
            live = [v for v in rec.voters if self.cmap.is_alive(v)]
            self.leaders[g] = (
                self.rng.choice(live) if len(live) >= majority(len(rec.voters)) else None
            )

    # -- executing a plan --

    def round(self) -> list:
        """Advance to the next round and execute its plan; return it."""
        self.now += INTERVAL
        moves = self.balancer.plan(self.cmap, self.leaders, self.now)
        actions = [
            m
            for m in moves
            if isinstance(m, TransferLeader | AddLearner | PromoteLearner | RemoveReplica)
        ]
        touched = [m.group_id for m in actions]
        assert len(touched) == len(set(touched)), f"two changes for one group in a round: {moves}"
        budgeted = [m for m in moves if not isinstance(m, SetPreferredLeader)]
        assert len(budgeted) <= MAX_MOVES
        for m in moves:
            if isinstance(m, SetPreferredLeader | StartReplicaMove | AbandonReplicaMove):
                self.meta(m)
            else:
                self.act(m)
        assert sum(1 for rec in self.cmap.groups.values() if rec.move is not None) <= MAX_MOVING
        return moves

    def act(self, m) -> None:
        rec = self.cmap.groups[m.group_id]
        leader = self.leaders[m.group_id]
        assert leader is not None and self.cmap.is_alive(leader), f"{m} for a group without leader"
        b = m.broker_id
        if isinstance(m, TransferLeader):
            assert b in rec.voters and self.cmap.is_alive(b), m
            self.leaders[m.group_id] = b
            return
        voters, learners = set(rec.voters), set(rec.learners)
        if isinstance(m, AddLearner):
            assert rec.move is not None and rec.move.target == b and b not in voters | learners
            learners.add(b)
        elif isinstance(m, PromoteLearner):
            assert b in learners and self.cmap.is_alive(b), m
            learners.discard(b)
            voters.add(b)
        else:
            assert b != leader and b in voters | learners, m
            voters.discard(b)
            learners.discard(b)
        self.check_change(rec.voters, voters)
        self.changes += 1
        self.meta(
            SetGroupReplicas(
                m.group_id, tuple(sorted(voters)), tuple(sorted(learners)), rec.config_version + 1
            )
        )

    def check_change(self, before, after) -> None:
        """A move never takes a group below R live voters (or below what it had), nor loses
        its live majority."""
        r = self.cmap.replication_factor
        live_before = sum(1 for v in before if self.cmap.is_alive(v))
        live_after = sum(1 for v in after if self.cmap.is_alive(v))
        assert live_after >= min(r, live_before), (before, after)
        if live_before >= majority(len(before)):
            assert live_after >= majority(len(after)), (before, after)

    def run_until_quiet(self, max_rounds: int) -> int:
        """Rounds until a plan is empty; fails past ``max_rounds``."""
        for n in range(max_rounds + 1):
            if not self.round():
                return n
        raise AssertionError(f"no convergence in {max_rounds} rounds: {self.round()}")

    def assert_stable(self, rounds: int = 3) -> None:
        for _ in range(rounds):
            assert self.round() == []

    # -- measures --

    def share(self) -> int:
        eligible = [b for b in self.cmap.brokers if self.cmap.is_eligible(b)]
        return math.ceil(len(self.cmap.groups) / len(eligible))

    def max_led(self) -> int:
        return max(leader_counts(self.cmap, self.leaders).values())

    def replica_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.cmap.brokers, 0)
        for rec in self.cmap.groups.values():
            for b in rec.replicas:
                counts[b] += 1
        return counts


sizes = st.integers(1, 12).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(1, 64), st.integers(1, min(5, n)))
)


@given(sizes)
def test_initial_placement_spreads_replicas_and_leaders(size):
    n, g, r = size
    placement = initial_placement(broker_ids(n), group_ids(g), r)
    counts = dict.fromkeys(broker_ids(n), 0)
    led = dict.fromkeys(broker_ids(n), 0)
    for a in placement:
        assert len(a.voters) == len(set(a.voters)) == min(r, n)
        assert a.preferred_leader in a.voters
        led[a.preferred_leader] += 1
        for b in a.voters:
            counts[b] += 1
    assert sorted(a.group_id for a in placement) == group_ids(g)
    assert set(counts.values()) <= {g * r // n, math.ceil(g * r / n)}
    assert max(led.values()) <= math.ceil(g / n)
    # The same whatever order the ids come in, and accepted by the metadata map.
    assert initial_placement(reversed(broker_ids(n)), reversed(group_ids(g)), r) == placement
    cmap = ClusterMap()
    assert isinstance(
        cmap.apply(found_cluster(addresses(broker_ids(n)), group_ids(g), r)), MapChanged
    )
    assert {gid: rec.preferred_leader for gid, rec in cmap.groups.items()} == {
        a.group_id: a.preferred_leader for a in placement
    }


def test_initial_placement_of_the_issue_example():
    # 6 brokers, R = 3: each broker holds half the groups and leads a sixth of them.
    placement = initial_placement(broker_ids(6), group_ids(12), 3)
    counts = {b: sum(b in a.voters for a in placement) for b in broker_ids(6)}
    assert set(counts.values()) == {6}
    led = {b: sum(a.preferred_leader == b for a in placement) for b in broker_ids(6)}
    assert set(led.values()) == {2}


@pytest.mark.parametrize(("n", "g", "r"), [(6, 12, 3), (12, 64, 3), (5, 10, 2)])
def test_a_failed_brokers_groups_fail_over_to_many_brokers(n, g, r):
    placement = initial_placement(broker_ids(n), group_ids(g), r)
    for b in broker_ids(n):
        peers = {v for a in placement if b in a.voters for v in a.voters} - {b}
        assert peers == set(broker_ids(n)) - {b}
    cluster = Cluster.found(n, g, r, random.Random(5))
    cluster.fail([broker_ids(n)[0]])
    cluster.run_until_quiet(10)
    assert cluster.max_led() <= cluster.share() + 1


def test_initial_placement_refuses_nonsense():
    with pytest.raises(ValueError, match="placement needs"):
        initial_placement([], group_ids(1), 3)
    with pytest.raises(ValueError, match="placement needs"):
        initial_placement(broker_ids(3), group_ids(1), 0)


def brute_force_max_load(candidates: dict[str, list[str]]) -> int:
    best = math.inf
    groups = sorted(g for g in candidates if candidates[g])
    for choice in itertools.product(*(candidates[g] for g in groups)):
        loads: dict[str, int] = {}
        for b in choice:
            loads[b] = loads.get(b, 0) + 1
        best = min(best, max(loads.values(), default=0))
    return int(best)


@given(
    st.dictionaries(
        st.sampled_from(group_ids(7)),
        st.lists(st.sampled_from(broker_ids(5)), min_size=1, max_size=3, unique=True),
        max_size=7,
    ),
    st.dictionaries(st.sampled_from(group_ids(7)), st.sampled_from(broker_ids(5))),
)
def test_balance_leaders_is_optimal_and_keeps_what_it_can(candidates, current):
    assign = balance_leaders(candidates, current)
    assert all(assign[g] in candidates[g] for g in candidates)
    loads: dict[str, int] = {}
    for b in assign.values():
        loads[b] = loads.get(b, 0) + 1
    assert max(loads.values(), default=0) == brute_force_max_load(candidates)
    # An optimal assignment is a fixed point: balancing it again changes nothing.
    assert balance_leaders(candidates, assign) == assign


def test_balance_leaders_changes_nothing_already_balanced():
    candidates = {"G-00000": ["B-00000", "B-00001"], "G-00001": ["B-00000", "B-00001"]}
    current = {"G-00000": "B-00001", "G-00001": "B-00000"}
    assert balance_leaders(candidates, current) == current


@settings(max_examples=150, deadline=None)
@given(sizes, st.randoms(use_true_random=False), st.data())
def test_after_failures_and_heal_leadership_returns_to_balance_and_stays(size, rng, data):
    n, g, r = size
    cluster = Cluster.found(n, g, r, rng)
    assert cluster.max_led() <= cluster.share()
    founding = copy.deepcopy(cluster.cmap.groups)
    failed = data.draw(st.lists(st.sampled_from(broker_ids(n)), unique=True, max_size=n))
    cluster.fail(failed)
    for _ in range(data.draw(st.integers(0, 6))):  # the balancer runs during the outage
        for m in cluster.round():
            assert not isinstance(m, StartReplicaMove | AddLearner), "no replica moves on failure"
            if isinstance(m, TransferLeader):
                assert cluster.cmap.is_eligible(m.broker_id)
    cluster.heal()
    rounds = cluster.run_until_quiet(max_rounds=math.ceil(g / MAX_MOVES) + 1)
    assert cluster.max_led() <= cluster.share() + 1
    # Back to the founding leaders: failures never change replicas nor preferred leaders.
    assert cluster.cmap.groups == founding
    assert cluster.leaders == {gid: rec.preferred_leader for gid, rec in founding.items()}
    assert rounds <= math.ceil(g / MAX_MOVES) + 1
    cluster.assert_stable()


def move_bound(g: int, replica_moves: int) -> int:
    """Rounds ``replica_moves`` replica moves may take: each wave of MAX_MOVING moves takes at
    most five rounds (start, add, promote, transfer, remove), then the transfers that follow."""
    return 5 * (math.ceil(replica_moves / MAX_MOVING) + 1) + 2 * math.ceil(g / MAX_MOVES) + 2


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 11).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(1, 64), st.integers(1, min(5, n + 1)))
    ),
    st.randoms(use_true_random=False),
)
def test_a_joining_broker_takes_its_share_of_replicas_and_leaders(size, rng):
    n, g, r = size
    cluster = Cluster.found(n, g, r, rng)
    newcomer = f"B-{n:05d}"
    cluster.meta(RegisterBroker(newcomer, "127.0.0.1", 9100))
    # It gets its share of the replicas, or, if the groups had fewer than R, one more each.
    cluster.run_until_quiet(move_bound(g, g if n < r else math.ceil(g * r / (n + 1))))
    counts = cluster.replica_counts()
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert counts[newcomer] >= g * r // (n + 1)
    for rec in cluster.cmap.groups.values():
        assert len(rec.voters) == min(r, n + 1) and not rec.learners and rec.move is None
    assert cluster.max_led() <= cluster.share() + 1
    cluster.assert_stable()


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 12).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(1, 64), st.integers(1, min(5, n - 1)))
    ),
    st.randoms(use_true_random=False),
    st.data(),
)
def test_a_leaving_broker_hands_over_everything_and_can_then_go(size, rng, data):
    n, g, r = size
    cluster = Cluster.found(n, g, r, rng)
    leaving = data.draw(st.sampled_from(broker_ids(n)))
    cluster.meta(SetBrokerDraining(leaving, True))
    if cluster.cmap.groups_of(leaving):
        assert isinstance(cluster.cmap.apply(UnregisterBroker(leaving)), CommandRejected)
    cluster.run_until_quiet(move_bound(g, math.ceil(g * r / n)))
    assert cluster.cmap.groups_of(leaving) == []
    assert leader_counts(cluster.cmap, cluster.leaders)[leaving] == 0
    cluster.meta(UnregisterBroker(leaving))
    counts = cluster.replica_counts()
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    for rec in cluster.cmap.groups.values():
        assert len(rec.voters) == r and not rec.learners and rec.move is None
    assert cluster.max_led() <= cluster.share() + 1
    cluster.assert_stable()


events = st.one_of(
    st.tuples(st.just("join")),
    st.tuples(st.just("drain"), st.integers(0, 63)),
    st.tuples(st.just("fail"), st.integers(0, 63)),
    st.tuples(st.just("heal")),
    st.tuples(st.just("undrain"), st.integers(0, 63)),
    st.tuples(st.just("rounds"), st.integers(1, 8)),
)


@settings(max_examples=100, deadline=None)
@given(sizes, st.randoms(use_true_random=False), st.lists(events, max_size=12))
# A move's target drains after it votes while its source drains too (both leaving): the move
# must go forward, not wait for ever to be undone.
@example(
    size=(1, 1, 1),
    rng=random.Random(0),
    script=[("join",), ("join",), ("drain", 0), ("rounds", 4), ("drain", 0)],
)
def test_joins_leaves_and_failures_in_any_order_stay_safe_and_end_balanced(size, rng, script):
    n, g, r = size
    cluster = Cluster.found(n, g, r, rng)
    next_id = n
    for event in script:
        brokers = sorted(cluster.cmap.brokers)
        if event[0] == "join" and len(brokers) < 12:
            cluster.meta(RegisterBroker(f"B-{next_id:05d}", "127.0.0.1", 9000 + next_id))
            next_id += 1
        elif event[0] == "drain":
            staying = [b for b in brokers if not cluster.cmap.brokers[b].draining]
            if len(staying) > r:  # never drain below R brokers that stay
                cluster.meta(SetBrokerDraining(staying[event[1] % len(staying)], True))
        elif event[0] == "undrain":  # the operator's "it stays after all"
            leaving = [b for b in brokers if cluster.cmap.brokers[b].draining]
            if leaving:
                cluster.meta(SetBrokerDraining(leaving[event[1] % len(leaving)], False))
        elif event[0] == "fail":
            cluster.fail([brokers[event[1] % len(brokers)]])
        elif event[0] == "heal":
            cluster.heal()
        elif event[0] == "rounds":
            for _ in range(event[1]):
                cluster.round()
    cluster.heal()
    total = len(cluster.cmap.brokers)
    cluster.run_until_quiet(move_bound(g, g * r * max(1, total - n + 1)))
    staying = [b for b, rec in cluster.cmap.brokers.items() if not rec.draining]
    counts = {b: c for b, c in cluster.replica_counts().items() if b in staying}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    for b, rec in cluster.cmap.brokers.items():
        if rec.draining:
            assert cluster.cmap.groups_of(b) == []
    for rec in cluster.cmap.groups.values():
        assert len(rec.voters) == min(r, len(staying)) and not rec.learners and rec.move is None
    assert cluster.max_led() <= cluster.share() + 1
    cluster.assert_stable()


def test_the_balancer_runs_at_most_once_per_interval():
    rng = random.Random(7)
    cluster = Cluster.found(3, 6, 3, rng)
    for g in sorted(cluster.leaders):
        cluster.leaders[g] = "B-00000"  # every group led by one broker: much to do
    balancer = Balancer(BalancerSettings(interval_ticks=10, max_moves_per_round=2))
    assert balancer.plan(cluster.cmap, cluster.leaders, 0) == []  # waits one interval first
    assert balancer.plan(cluster.cmap, cluster.leaders, 9) == []
    first = balancer.plan(cluster.cmap, cluster.leaders, 10)
    assert len(first) == 2 and all(isinstance(m, TransferLeader) for m in first)
    for t in range(11, 20):
        assert balancer.plan(cluster.cmap, cluster.leaders, t) == []
    assert balancer.plan(cluster.cmap, cluster.leaders, 20) == first  # nothing applied: same plan


def test_a_transfer_is_planned_for_a_leader_on_a_draining_broker_before_its_replica_moves():
    cluster = Cluster.found(4, 4, 3, random.Random(1))
    g, rec = next(iter(sorted(cluster.cmap.groups.items())))
    leader = cluster.leaders[g]
    cluster.meta(SetBrokerDraining(leader, True))
    moves = plan_moves(cluster.cmap, cluster.leaders, max_moves=8, max_moving_groups=8)
    assert TransferLeader(g, moves[0].broker_id) == moves[0]
    assert moves[0].broker_id != leader and moves[0].broker_id in rec.voters
    assert not any(isinstance(m, StartReplicaMove) and m.group_id == g for m in moves)


def test_a_live_voter_is_not_removed_while_another_voter_is_down():
    cluster = Cluster.found(4, 1, 3, random.Random(2))
    ((g, rec),) = cluster.cmap.groups.items()
    source = next(v for v in rec.voters if v != cluster.leaders[g])
    spare = next(b for b in cluster.cmap.brokers if b not in rec.voters)
    cluster.meta(StartReplicaMove(g, source, spare))
    cluster.round()  # AddLearner
    cluster.round()  # PromoteLearner
    third = next(v for v in rec.voters if v not in (source, cluster.leaders[g]))
    cluster.fail([third])
    before = cluster.changes
    for _ in range(3):
        assert not any(isinstance(m, RemoveReplica) for m in cluster.round())
    assert cluster.changes == before and source in cluster.cmap.groups[g].voters
    cluster.heal()
    cluster.run_until_quiet(10)
    assert source not in cluster.cmap.groups[g].replicas


def test_a_move_whose_target_leaves_is_undone_and_the_source_may_lead_again():
    # Found on one broker, a second joins and takes a group; it leaves while taking it.
    cluster = Cluster.found(1, 2, 1, random.Random(3))
    cluster.meta(RegisterBroker("B-00001", "127.0.0.1", 9001))
    for _ in range(4):  # start, add learner, promote, transfer to the newcomer
        cluster.round()
    ((g, rec),) = [(g, rec) for g, rec in cluster.cmap.groups.items() if rec.move is not None]
    assert rec.voters == ("B-00000", "B-00001") and cluster.leaders[g] == "B-00001"
    cluster.meta(SetBrokerDraining("B-00001", True))
    cluster.run_until_quiet(10)
    assert cluster.cmap.groups[g].voters == ("B-00000",) and cluster.cmap.groups[g].move is None
    assert cluster.leaders[g] == "B-00000"
    cluster.meta(UnregisterBroker("B-00001"))


def test_a_dead_voter_of_a_draining_broker_goes_first_and_the_move_completes():
    cluster = Cluster.found(5, 1, 3, random.Random(4))
    ((g, rec),) = cluster.cmap.groups.items()
    leader = cluster.leaders[g]
    source, dead = [v for v in rec.voters if v != leader]
    spare = next(b for b in sorted(cluster.cmap.brokers) if b not in rec.voters)
    cluster.meta(StartReplicaMove(g, source, spare))
    cluster.round()  # AddLearner
    cluster.round()  # PromoteLearner: four voters
    cluster.fail([dead])
    cluster.meta(SetBrokerDraining(dead, True))
    # Removing the live source would leave two live voters of three: the dead one goes first,
    # which brings the group back to three voters and completes the move; the source stays.
    assert cluster.round() == [RemoveReplica(g, dead)]
    assert cluster.cmap.groups[g].move is None
    assert cluster.cmap.groups[g].voters == tuple(sorted({leader, source, spare}))


def _one_group_moving_off_its_founder(rounds: int) -> tuple[Cluster, str]:
    """One group, R = 1, founded on B0; B1 and B2 join and B0 drains: after ``rounds`` rounds
    of its move to B1 (start, add learner, promote, transfer)."""
    cluster = Cluster.found(1, 1, 1, random.Random(6))
    cluster.meta(RegisterBroker("B-00001", "127.0.0.1", 9001))
    cluster.meta(RegisterBroker("B-00002", "127.0.0.1", 9002))
    cluster.meta(SetBrokerDraining("B-00000", True))
    for _ in range(rounds):
        cluster.round()
    ((g, rec),) = cluster.cmap.groups.items()
    assert rec.voters == ("B-00000", "B-00001") and rec.move is not None
    assert (rec.move.source, rec.move.target) == ("B-00000", "B-00001")
    return cluster, g


def test_a_move_whose_source_and_target_both_leave_goes_forward():
    # The target leads and votes when it drains too: undoing would need the leaving source to
    # lead again; the move completes instead and a new one takes the group to B2.
    cluster, g = _one_group_moving_off_its_founder(4)
    assert cluster.leaders[g] == "B-00001"
    cluster.meta(SetBrokerDraining("B-00001", True))
    assert cluster.round() == [RemoveReplica(g, "B-00000")]
    assert cluster.cmap.groups[g].move is None
    cluster.run_until_quiet(10)
    assert cluster.cmap.groups[g].voters == ("B-00002",) and cluster.cmap.groups[g].move is None
    assert cluster.leaders[g] == "B-00002"
    cluster.meta(UnregisterBroker("B-00000"))
    cluster.meta(UnregisterBroker("B-00001"))
    cluster.assert_stable()


def test_a_leader_with_no_voter_that_stays_hands_over_to_a_leaving_one_to_let_a_move_finish():
    # The source still leads when the target drains: no voter stays, so leadership rests on the
    # leaving target for a while (the source must go), and moves on once B2 votes.
    cluster, g = _one_group_moving_off_its_founder(3)
    assert cluster.leaders[g] == "B-00000"
    cluster.meta(SetBrokerDraining("B-00001", True))
    assert cluster.round() == [TransferLeader(g, "B-00001")]
    assert cluster.round() == [RemoveReplica(g, "B-00000")]
    assert cluster.round() == [StartReplicaMove(g, "B-00001", "B-00002")]
    assert cluster.round() == [AddLearner(g, "B-00002")]
    assert cluster.round() == [PromoteLearner(g, "B-00002")]
    assert cluster.round() == [TransferLeader(g, "B-00002"), SetPreferredLeader(g, "B-00002")]
    assert cluster.round() == [RemoveReplica(g, "B-00001")]
    assert cluster.cmap.groups[g].voters == ("B-00002",) and cluster.cmap.groups[g].move is None
    cluster.assert_stable()
