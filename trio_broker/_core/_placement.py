"""Where the replication groups live and who leads them: initial placement and the balancer.

Pure functions of the replicated :class:`~trio_broker._core._metadata.ClusterMap` and of what
the metadata leader observes (each group's current leader); time comes in as ticks.

**Initial placement** (:func:`initial_placement`). Groups in id order each take the R brokers
holding fewest replicas so far, so every broker ends with ``floor(G*R/N)`` or ``ceil(G*R/N)``
of them (taking the least loaded never lets two counts differ by more than one); among brokers
holding as many, those that share fewest groups with the ones already taken, so that the groups
of a failed broker fail over to many others, not to the same two. Preferred leaders are then
chosen by :func:`balance_leaders`, whose assignment minimises the largest number of groups one
broker leads: since each broker holds at most
``ceil(G*R/N) <= R * ceil(G/N)`` replicas, giving each group ``1/R`` to each of its replicas is
a fractional assignment with loads of at most ``ceil(G/N)``, so an integral one exists (flow
integrality) and the optimum finds it: no broker leads more than ``ceil(G/N)`` groups.

**The balancer** (:class:`Balancer`, :func:`plan_moves`) runs on the metadata leader at most
once per interval and proposes a bounded list of moves, in this order:

1. the next step of each replica move in progress (add the target as a learner, promote it
   once caught up, move leadership off the source, remove the source): at most one change at a
   time per group, and never one that leaves a group with fewer live voters than it needs
   (:func:`removal_is_safe`). A move whose target left (drains) is undone (the target removed,
   then the move abandoned) unless the target already votes and the source, a voter, leaves
   too (:func:`is_undoing`): undoing would only put back a leaving source, whose leadership
   may have no voter that stays to go to, so the move goes forward (the source is removed and
   the move completes) and a new move takes the target's replica away. A leader being removed
   with no live voter that stays hands over to another live voter although it leaves too (the
   move's target first, :func:`_resting_leader`): leadership rests there until a voter that
   stays is added, and then moves to it like any other;
   Then groups with more voters than R (the replication factor was lowered) lose one each
   (:func:`_shrink`), never their preferred leader;
2. leadership transfers (cheap) towards each group's target leader: its preferred leader when
   that broker is alive and staying, otherwise a live voter chosen so that leadership stays
   spread (the current leader kept unless moving it lowers the largest load);
3. preferred-leader records, when the optimal assignment changed (replicas moved);
4. new replica moves, only when replicas are unevenly spread, which only a broker joining or
   leaving (draining), a new group or a raised replication factor causes: grow groups with
   fewer than R replicas, move replicas off draining brokers, then from the fullest broker to
   the emptiest while they differ by 2 or more.

Every step of 1-4 is deterministic, so the plan for an unchanged map is unchanged: moves that
were applied are not proposed again and nothing flaps. It converges: transfers only go to a
fixed target, preferred leaders only change along load-reducing paths (a finite descent), and
each replica move lowers the sum of the squares of the brokers' replica counts. A move in
progress never waits for ever once every broker is alive: each of its states has a next step
whose leadership hand-over has somewhere to go (the target, once it votes and stays; the source
when undoing; a leaving voter as a last resort), and the one state that had none, a leaving
target voting beside a leaving source and leading it, now goes forward (found by the property
test of joins, leaves and failures in any order, kept as its explicit example).

(A little over the ~600 lines a module keeps to: placement, the leader balance and every step
of a round are one policy, whose parts refer to each other.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from ._metadata import (
    AbandonReplicaMove,
    AddGroups,
    BrokerAddress,
    ClusterMap,
    FoundCluster,
    GroupAssignment,
    GroupRecord,
    SetPreferredLeader,
    StartReplicaMove,
)

# -- moves ----------------------------------------------------------------------------------------
# Group actions are executed by the group's leader (the existing TRANSFER_LEADERSHIP and
# membership changes of its own log); the metadata commands among the moves are proposed to the
# metadata group. A committed membership change of a group is reported back to the metadata
# group as SetGroupReplicas.


@attrs.frozen
class TransferLeader:
    group_id: str
    broker_id: str


@attrs.frozen
class AddLearner:
    group_id: str
    broker_id: str


@attrs.frozen
class PromoteLearner:
    """Promote once ``caught_up`` holds on the group's leader (as a joining broker is)."""

    group_id: str
    broker_id: str


@attrs.frozen
class RemoveReplica:
    group_id: str
    broker_id: str


GroupAction = TransferLeader | AddLearner | PromoteLearner | RemoveReplica
Move = GroupAction | SetPreferredLeader | StartReplicaMove | AbandonReplicaMove


# -- initial placement ----------------------------------------------------------------------------


def initial_placement(
    broker_ids: Iterable[str], group_ids: Iterable[str], replication_factor: int
) -> tuple[GroupAssignment, ...]:
    """Every group's voters (``min(R, N)`` of them) and preferred leader, spread evenly."""
    brokers = sorted(set(broker_ids))
    groups = sorted(set(group_ids))
    if not brokers or not groups or replication_factor < 1:
        raise ValueError("placement needs brokers, groups and a replication factor of 1 or more")
    size = min(replication_factor, len(brokers))
    counts = dict.fromkeys(brokers, 0)
    together = {(a, b): 0 for a in brokers for b in brokers}
    voters: dict[str, tuple[str, ...]] = {}
    for g in groups:
        chosen: list[str] = []
        for _ in range(size):
            best = min(
                (b for b in brokers if b not in chosen),
                key=lambda b: (counts[b], sum(together[b, c] for c in chosen), b),
            )
            chosen.append(best)
        for b in chosen:
            counts[b] += 1
            for c in chosen:
                together[b, c] += 1
        voters[g] = tuple(sorted(chosen))
    preferred = balance_leaders(voters, {})
    return tuple(GroupAssignment(g, voters[g], preferred[g]) for g in groups)


def found_cluster(
    brokers: Sequence[BrokerAddress], group_ids: Iterable[str], replication_factor: int
) -> FoundCluster:
    """The metadata log's first command for these founding brokers and groups."""
    placement = initial_placement([b.broker_id for b in brokers], group_ids, replication_factor)
    ordered = tuple(sorted(brokers, key=lambda b: b.broker_id))
    return FoundCluster(replication_factor, ordered, placement)


def add_groups(cmap: ClusterMap, group_ids: Iterable[str]) -> AddGroups:
    """Groups added after founding (``AddGroups``): each starts on one voter, the live
    broker that stays holding fewest replicas (then leading fewest groups, then the lowest
    id), counting the new groups placed before it; the balancer grows each to the
    replication factor one replica at a time. Raises ValueError when no broker may take one."""
    eligible = [b for b in sorted(cmap.brokers) if cmap.is_eligible(b)]
    if not eligible:
        raise ValueError("no live broker that stays can take a new group")
    held = dict.fromkeys(eligible, 0)
    led = dict.fromkeys(eligible, 0)
    for rec in cmap.groups.values():
        for b in projected_replicas(rec):
            if b in held:
                held[b] += 1
        if rec.preferred_leader in led:
            led[rec.preferred_leader] += 1
    assignments = []
    for g in sorted(set(group_ids)):
        b = min(eligible, key=lambda b: (held[b], led[b], b))
        held[b] += 1
        led[b] += 1
        assignments.append(GroupAssignment(g, (b,), b))
    return AddGroups(len(cmap.groups), tuple(assignments))


# -- leadership assignment ------------------------------------------------------------------------


def balance_leaders(
    candidates: Mapping[str, Sequence[str]], current: Mapping[str, str | None]
) -> dict[str, str | None]:
    """One leader per group among its candidates, minimising the largest load.

    Start from ``current`` (where still a candidate), give the others to their least-loaded
    candidate, then while some broker can pass a group along a path of candidates to a broker
    leading at least two fewer, do so (each such shift lowers the sum of squared loads). With no
    such path left the assignment is optimal for the largest load (Harvey, Ladner, Lovasz and
    Tamir, "Semi-matchings for bipartite graphs and load balancing", 2006).
    """
    load: dict[str, int] = {}
    for g in sorted(candidates):
        for b in candidates[g]:
            load.setdefault(b, 0)
    assign: dict[str, str | None] = {}
    led: dict[str, set[str]] = {b: set() for b in load}
    for g in sorted(candidates):
        c = current.get(g)
        if c is not None and c in candidates[g]:
            assign[g] = c
    for g in sorted(candidates):
        if g not in assign:
            assign[g] = min(candidates[g], key=lambda b: (load[b], b), default=None)
        if (b := assign[g]) is not None:
            load[b] += 1
            led[b].add(g)
    while (path := _reducing_path(candidates, load, led)) is not None:
        for group, old, new in path:
            led[old].discard(group)
            led[new].add(group)
            assign[group] = new
        load[path[0][1]] -= 1
        load[path[-1][2]] += 1
    return assign


def _reducing_path(
    candidates: Mapping[str, Sequence[str]], load: dict[str, int], led: dict[str, set[str]]
) -> list[tuple[str, str, str]] | None:
    """Shifts ``(group, from, to)`` taking one group off some broker and onto one that leads
    two or more fewer, each intermediate broker giving one and taking one; None if none."""
    if not load:
        return None
    lowest = min(load.values())
    for start in sorted(load, key=lambda b: (-load[b], b)):
        if load[start] < lowest + 2:
            return None
        parent: dict[str, tuple[str, str] | None] = {start: None}
        frontier = [start]
        while frontier:
            x = frontier.pop(0)
            for g in sorted(led[x]):
                for y in candidates[g]:
                    if y in parent:
                        continue
                    parent[y] = (g, x)
                    if load[y] <= load[start] - 2:
                        path = []
                        while (step := parent[y]) is not None:
                            path.append((step[0], step[1], y))
                            y = step[1]
                        return path[::-1]
                    frontier.append(y)
    return None


def leaving_source(cmap: ClusterMap, rec: GroupRecord) -> str | None:
    """The voter a group's move takes away: its source, unless the move is being undone
    (:func:`is_undoing`), when the source stays."""
    if rec.move is None or is_undoing(cmap, rec):
        return None
    return rec.move.source


def is_undoing(cmap: ClusterMap, rec: GroupRecord) -> bool:
    """The group's move is being undone: its target left (drains), and taking the target out
    again is what brings the group back to brokers that stay. It is not when the target already
    votes and its source is a voter that leaves too: undoing would keep a leaving source in
    place of a leaving target, and its leadership may have nowhere to go (every other voter
    leaving), so the move goes forward instead (its source is removed, the move completes) and
    a new move takes the target's replica away like any other on a leaving broker."""
    move = rec.move
    if move is None or _stays(cmap, move.target):
        return False
    return (
        move.target not in rec.voters or move.source not in rec.voters or _stays(cmap, move.source)
    )


def _stays(cmap: ClusterMap, broker_id: str) -> bool:
    b = cmap.broker(broker_id)
    return b is not None and not b.draining


def preferred_candidates(cmap: ClusterMap) -> dict[str, list[str]]:
    """Who may be a group's preferred leader: its voters on brokers that stay, except a move's
    source (:func:`leaving_source`). Liveness does not count, so a failure never changes
    preferred leaders."""
    out = {}
    for g, rec in sorted(cmap.groups.items()):
        leaving = leaving_source(cmap, rec)
        out[g] = [v for v in rec.voters if v != leaving and _stays(cmap, v)]
    return out


METADATA = ""
"""The metadata group's key among the groups whose leadership is balanced (no group id is
empty): its leader is counted, never moved (:func:`plan_moves`)."""


def leader_targets(
    cmap: ClusterMap, observed: Mapping[str, str | None], preferred: Mapping[str, str | None]
) -> dict[str, str | None]:
    """The broker each group should be led by (None: no live voter may lead it).

    Its preferred leader if alive and staying. The others (their preferred leader is down or
    leaving) get their live, staying voters, by :func:`balance_leaders` starting from their
    current leaders: leadership stays where it is unless moving it lowers the largest load.
    Applied, the result is its own starting point, so the next round proposes nothing more.
    """
    candidates: dict[str, list[str]] = {}
    for g, rec in sorted(cmap.groups.items()):
        leaving = leaving_source(cmap, rec)
        live = [v for v in rec.voters if v != leaving and cmap.is_eligible(v)]
        p = preferred.get(g)
        candidates[g] = [p] if p in live else live
    return balance_leaders(candidates, {g: observed.get(g) for g in candidates})


# -- replica moves --------------------------------------------------------------------------------


def projected_replicas(rec: GroupRecord) -> tuple[str, ...]:
    """A group's replicas once its move in progress (if any) is done."""
    replicas = set(rec.replicas)
    if rec.move is not None:
        replicas.add(rec.move.target)
        replicas.discard(rec.move.source)
    return tuple(sorted(replicas))


def removal_is_safe(cmap: ClusterMap, rec: GroupRecord, broker_id: str) -> bool:
    """Removing this voter leaves the group at least ``min(R, voters left)`` live voters, and
    a live majority of them. (Removing a dead voter changes no live count and lowers the
    majority, so it is always safe; the group's log still needs a live majority to commit it.)
    """
    after = [v for v in rec.voters if v != broker_id]
    if not after:
        return False
    if not cmap.is_alive(broker_id):
        return True
    live_after = sum(1 for v in after if cmap.is_alive(v))
    return live_after >= min(cmap.replication_factor, len(after)) and live_after > len(after) // 2


def _removal(
    cmap: ClusterMap, rec: GroupRecord, broker_id: str, leader: str | None, target: str | None
) -> Move | None:
    """The next step towards removing ``broker_id`` from a group led by ``leader``: hand its
    leadership to ``target`` first (or, with no target, to :func:`_resting_leader`)."""
    if leader == broker_id:
        if target in (None, broker_id):
            target = _resting_leader(cmap, rec, broker_id)
        return None if target is None else TransferLeader(rec.group_id, target)
    if broker_id in rec.learners or removal_is_safe(cmap, rec, broker_id):
        return RemoveReplica(rec.group_id, broker_id)
    return None


def _resting_leader(cmap: ClusterMap, rec: GroupRecord, broker_id: str) -> str | None:
    """Where a leader being removed hands over when no voter that stays is alive: another live
    voter although it leaves too, the move's target first (its replica stays longest), so that
    the removal can go on; leadership moves again once a voter that stays is added. None while
    the removal itself would not be safe (leadership then stays where it is)."""
    if not removal_is_safe(cmap, rec, broker_id):
        return None
    first = rec.move.target if rec.move is not None else None
    live = [v for v in rec.voters if v != broker_id and cmap.is_alive(v)]
    return min(live, key=lambda v: (v != first, v), default=None)


def _move_step(
    cmap: ClusterMap, rec: GroupRecord, leader: str | None, target: str | None
) -> Move | None:
    """The next step of the group's move in progress, or None to wait."""
    move = rec.move
    assert move is not None
    t, replicas = move.target, rec.replicas
    led = leader is not None and cmap.is_alive(leader) and leader in rec.voters
    if not _stays(cmap, t):  # the target left
        if t not in replicas:  # nothing to undo: forget the move
            return AbandonReplicaMove(rec.group_id)
        if not led:
            return None
        if is_undoing(cmap, rec):  # take the target out again, then forget the move
            return _removal(cmap, rec, t, leader, target)
        # Source and target both leave and both vote: finish the move (below); a new move
        # then takes the target's replica away too.
    else:
        if not led or not cmap.is_alive(t):
            return None
        if t not in replicas:
            return AddLearner(rec.group_id, t)
        if t in rec.learners:
            return PromoteLearner(rec.group_id, t)
    # The target votes. Voters on dead brokers that are leaving go first (always safe; it also
    # completes a move stuck because one of them is dead), then the source.
    for v in rec.voters:
        if v != t and not cmap.is_alive(v) and cmap.broker(v).draining:
            return _removal(cmap, rec, v, leader, target)
    if move.source is not None and move.source in replicas:
        return _removal(cmap, rec, move.source, leader, target)
    return None


@attrs.define
class _Round:
    budget: int
    moves: list[Move] = attrs.field(factory=list)
    touched: set[str] = attrs.field(factory=set)
    """Groups given a move this round: one each."""

    def add(self, group_id: str, move: Move | None) -> None:
        if move is not None and self.budget > 0 and group_id not in self.touched:
            self.moves.append(move)
            self.touched.add(group_id)
            self.budget -= 1


def _shrink(
    cmap: ClusterMap,
    observed: Mapping[str, str | None],
    preferred: Mapping[str, str | None],
    targets: Mapping[str, str | None],
    rnd: _Round,
) -> None:
    """Groups with more voters than the replication factor (it was lowered) lose one per
    round each: a voter that is down or leaving first, then one on the broker holding most
    replicas; never the group's preferred leader (leadership would be moved back to it), and
    its current leader only when no other voter can go (it hands over first)."""
    r = cmap.replication_factor
    held = dict.fromkeys(cmap.brokers, 0)
    for rec in cmap.groups.values():
        for b in projected_replicas(rec):
            if b in held:
                held[b] += 1
    for g, rec in sorted(cmap.groups.items()):
        if rec.move is not None or rec.learners or len(rec.voters) <= r or g in rnd.touched:
            continue
        leader = observed.get(g)
        options = [v for v in rec.voters if v != preferred.get(g)]
        if not options or leader is None or not cmap.is_alive(leader):
            continue
        victim = min(options, key=lambda v: (cmap.is_eligible(v), v == leader, -held.get(v, 0), v))
        rnd.add(g, _removal(cmap, rec, victim, leader, targets.get(g)))


def _new_moves(cmap: ClusterMap, observed: Mapping[str, str | None], rnd: _Round, room: int):
    r = cmap.replication_factor
    projected = {g: projected_replicas(rec) for g, rec in sorted(cmap.groups.items())}
    counts = dict.fromkeys(sorted(cmap.brokers), 0)
    for replicas in projected.values():
        for b in replicas:
            if b in counts:
                counts[b] += 1
    stays = [b for b in counts if not cmap.brokers[b].draining]
    dests = [b for b in stays if cmap.brokers[b].alive]
    free = [g for g, rec in sorted(cmap.groups.items()) if rec.move is None]

    def start(g: str, source: str | None) -> bool:
        options = [b for b in dests if b not in projected[g]]
        if not options or room <= 0 or rnd.budget <= 0 or g in rnd.touched:
            return False
        target = min(options, key=lambda b: (counts[b], b))
        rnd.add(g, StartReplicaMove(g, source, target))
        projected[g] = tuple(sorted({*projected[g], target} - {source}))
        counts[target] += 1
        if source is not None:
            counts[source] -= 1
        return True

    for g in free:  # grow groups founded on fewer brokers than R
        if len(projected[g]) < r and start(g, None):
            room -= 1
    for g in free:  # move replicas off brokers that leave
        leaving = [v for v in cmap.groups[g].voters if cmap.brokers[v].draining]
        if leaving and g not in rnd.touched and start(g, leaving[0]):
            room -= 1
    while room > 0 and rnd.budget > 0 and dests:  # even out what joins and leaves left uneven
        src = max(stays, key=lambda b: (counts[b], b))
        dst = min(dests, key=lambda b: (counts[b], b))
        if counts[src] - counts[dst] < 2:
            return
        movable = [
            g
            for g in free
            if g not in rnd.touched
            and len(projected[g]) == r
            and src in cmap.groups[g].voters
            and dst not in projected[g]
        ]
        if not movable:
            return
        g = min(movable, key=lambda g: (observed.get(g) == src, g))
        rnd.add(g, StartReplicaMove(g, src, dst))
        projected[g] = tuple(sorted({*projected[g], dst} - {src}))
        counts[dst] += 1
        counts[src] -= 1
        room -= 1


def plan_moves(
    cmap: ClusterMap,
    observed: Mapping[str, str | None],
    *,
    max_moves: int,
    max_moving_groups: int,
    metadata_leader: str | None = None,
) -> list[Move]:
    """One round of the balancer (see the module docstring): at most ``max_moves`` group
    actions and move starts, one per group, with at most ``max_moving_groups`` groups moving a
    replica at once; plus the preferred-leader records that changed (at most one per group:
    metadata-only, proposed together so that the assignment they form stays optimal).

    ``metadata_leader`` (the broker running the round) counts as leading one more group, the
    metadata group, whose leadership is never moved: once the data groups' preferred leaders
    are balanced, a second pass counting it moves preferences off the metadata leader while
    that lowers the largest number of groups a broker leads, the metadata group included.
    Starting from a data assignment with no reducing path left, that pass only moves groups
    from the metadata leader to brokers leading two fewer in all, so the data groups' balance
    is kept (the metadata group is light: its leadership breaks ties, it never costs a data
    group its spread)."""
    if cmap.settings is None:
        return []
    candidates = preferred_candidates(cmap)
    preferred = balance_leaders(
        candidates, {g: rec.preferred_leader for g, rec in cmap.groups.items()}
    )
    if metadata_leader is not None:
        preferred = balance_leaders(
            {**candidates, METADATA: [metadata_leader]}, {**preferred, METADATA: metadata_leader}
        )
        preferred.pop(METADATA, None)
    targets = leader_targets(cmap, observed, preferred)
    rnd = _Round(max_moves)
    for g, rec in sorted(cmap.groups.items()):
        if rec.move is not None:
            rnd.add(g, _move_step(cmap, rec, observed.get(g), targets[g]))
    _shrink(cmap, observed, preferred, targets, rnd)
    for g, rec in sorted(cmap.groups.items()):
        leader, target = observed.get(g), targets[g]
        if (
            target is not None
            and leader is not None
            and leader != target
            and leader in rec.voters
            and cmap.is_alive(leader)
        ):
            rnd.add(g, TransferLeader(g, target))
    records: list[Move] = [
        SetPreferredLeader(g, p)
        for g, p in sorted(preferred.items())
        if p is not None and p != cmap.groups[g].preferred_leader
    ]
    moving = sum(1 for rec in cmap.groups.values() if rec.move is not None)
    _new_moves(cmap, observed, rnd, max_moving_groups - moving)
    return rnd.moves + records


@attrs.frozen
class BalancerSettings:
    interval_ticks: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    """Ticks between two rounds: longer than a leadership transfer takes (at most an election
    timeout), so that a round sees the effects of the last. At the default timing (a tick is
    half a 0.2 s heartbeat interval) 5 s. A learner's catch-up may take longer: re-proposing
    its promotion while the group's leader waits for ``caught_up`` is harmless."""
    max_moves_per_round: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    max_moving_groups: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    """Groups moving a replica at once: each move copies a group's whole state."""


@attrs.define
class Balancer:
    """Runs :func:`plan_moves` at most once per ``interval_ticks``; the first round comes one
    interval after the first call, so a new metadata leader lets elections settle first."""

    settings: BalancerSettings = attrs.field(factory=BalancerSettings)
    next_round_at: int | None = None

    def plan(
        self,
        cluster_map: ClusterMap,
        observed_leaders: Mapping[str, str | None],
        now_ticks: int,
        metadata_leader: str | None = None,
    ) -> list[Move]:
        if self.next_round_at is None:
            self.next_round_at = now_ticks + self.settings.interval_ticks
        if now_ticks < self.next_round_at:
            return []
        self.next_round_at = now_ticks + self.settings.interval_ticks
        return plan_moves(
            cluster_map,
            observed_leaders,
            max_moves=self.settings.max_moves_per_round,
            max_moving_groups=self.settings.max_moving_groups,
            metadata_leader=metadata_leader,
        )


def leader_counts(cmap: ClusterMap, observed: Mapping[str, str | None]) -> dict[str, int]:
    """How many groups each registered broker leads, as observed."""
    counts = dict.fromkeys(sorted(cmap.brokers), 0)
    for g in cmap.groups:
        if (leader := observed.get(g)) in counts:
            counts[leader] += 1
    return counts


__all__ = [
    "AddLearner",
    "Balancer",
    "BalancerSettings",
    "GroupAction",
    "Move",
    "PromoteLearner",
    "RemoveReplica",
    "TransferLeader",
    "add_groups",
    "balance_leaders",
    "found_cluster",
    "initial_placement",
    "is_undoing",
    "leader_counts",
    "leader_targets",
    "leaving_source",
    "plan_moves",
    "preferred_candidates",
    "projected_replicas",
    "removal_is_safe",
]
